"""Bounding boxes from MedGemma's anatomy-localization answers, mapped back onto the user's original image.

The model answers as Google's localization notebook asks: reasoning, then "Final Answer:" and a JSON list like
`[{"box_2d": [800, 3, 840, 471], "label": "right clavicle"}]`, with `[y0, x0, y1, x1]` normalised to 0..1000 over
the whole image it saw (padded to square), sometimes inside a ```json fence, sometimes after a thinking trace. A
4B model is loose with syntax, so parsing forgives what it cheaply can and skips what it cannot, never raising.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from medgemma_desktop.core.thinking import split_thinking

SCALE = 1000  # box_2d coordinates run 0..SCALE over the padded square image

_MAX_DEPTH = 3
_OPENER = re.compile(r"[\[{]")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Box:
    """One labelled box, corners ordered (y0 <= y1, x0 <= x1) and within 0..SCALE."""

    label: str
    y0: float
    x0: float
    y1: float
    x1: float


@dataclass(frozen=True)
class PixelBox:
    """A box in the original image's pixels, named by side so that nobody mixes up the (y, x) order."""

    label: str
    left: float
    top: float
    right: float
    bottom: float


class PaddingMap(Protocol):
    """How the image sent to the model was padded to square (`core.imaging.PaddingInfo` is one).

    `to_original` takes corners normalised to 0..SCALE over the padded square and returns the same corners in
    pixels of the original, unpadded image, in the same (y0, x0, y1, x1) order.
    """

    def to_original(self, y0: float, x0: float, y1: float, x1: float) -> tuple[float, float, float, float]: ...


def parse_boxes(answer: str) -> list[Box]:
    """The boxes of the model's final answer; [] when there are none.

    The thinking trace is ignored. When the answer holds several box lists (a draft in the reasoning, then the
    "Final Answer:"), the last one wins. Accepts a ```json fence or none, single quotes and trailing commas,
    coordinates as numbers or strings, corners in either order; clamps to 0..SCALE; skips entries without a
    `box_2d` of four finite numbers. A list cut off mid-way (the answer hit max_new_tokens) keeps its complete
    entries.
    """
    visible, _ = split_thinking(answer)
    groups = _box_groups(visible)
    return groups[-1] if groups else []


def _box_groups(text: str, depth: int = 0) -> list[list[Box]]:
    """The boxes of each outermost bracketed span of `text` that holds any, in order. A span that does not parse
    as a whole (a slip in one entry, a wrapper object) gives the boxes of the spans inside it, a few levels
    deep: entries sit at the second level, and deeper nesting is not an answer."""
    groups: list[list[Box]] = []
    position = 0
    while (opener := _OPENER.search(text, position)) is not None:
        start = opener.start()
        end = _span_end(text, start)
        if end is None:
            position = start + 1
            continue
        span = text[start:end]
        boxes = _boxes_from(_literal(span))
        if not boxes and depth < _MAX_DEPTH:
            boxes = [box for group in _box_groups(span[1:], depth + 1) for box in group]
        if boxes:
            groups.append(boxes)
        position = end
    return groups


def _span_end(text: str, start: int) -> int | None:
    """Index after the bracket that closes the one at `start`, or the end of the text when it never closes (a
    cut-off answer). None when a quoted string runs into a line break: prose (an apostrophe), not JSON."""
    depth = 0
    quote = ""
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if quote:
            if char == "\n":
                return None
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return index + 1
    return len(text)


def _literal(span: str) -> Any:
    """JSON, or failing that a Python literal (single quotes, trailing commas); None when neither parses."""
    try:
        return json.loads(span)
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(span)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _boxes_from(value: Any) -> list[Box]:
    entries = [value] if isinstance(value, dict) else value if isinstance(value, list | tuple) else []
    boxes = []
    for entry in entries:
        if isinstance(entry, dict) and (box := _box(entry)) is not None:
            boxes.append(box)
    return boxes


def _box(entry: dict) -> Box | None:
    corners = _four_numbers(entry.get("box_2d"))
    if corners is None:
        return None
    y0, x0, y1, x1 = (min(max(value, 0.0), float(SCALE)) for value in corners)
    label = entry.get("label")
    return Box(label="" if label is None else str(label).strip(),
               y0=min(y0, y1), x0=min(x0, x1), y1=max(y0, y1), x1=max(x0, x1))


def _four_numbers(raw: Any) -> tuple[float, float, float, float] | None:
    if isinstance(raw, str):
        items: list[Any] = _NUMBER.findall(raw)
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        return None
    if len(items) != 4:
        return None
    numbers = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float | str):
            return None
        try:
            number = float(item)
        except (ValueError, OverflowError):
            return None
        if not math.isfinite(number):
            return None
        numbers.append(number)
    return numbers[0], numbers[1], numbers[2], numbers[3]


def box_to_pixels(box: Box, image_size: tuple[int, int], padding: PaddingMap | None = None) -> PixelBox:
    """Where `box` lies on the original image of `image_size` (width, height), clamped to it.

    Without `padding` the image went to the model unpadded, and each axis scales on its own (the processor
    stretched it to a square).
    """
    width, height = image_size
    if padding is None:
        y0, x0, y1, x1 = (box.y0 * height / SCALE, box.x0 * width / SCALE,
                          box.y1 * height / SCALE, box.x1 * width / SCALE)
    else:
        y0, x0, y1, x1 = padding.to_original(box.y0, box.x0, box.y1, box.x1)
    return PixelBox(label=box.label, left=_clamp(x0, width), top=_clamp(y0, height),
                    right=_clamp(x1, width), bottom=_clamp(y1, height))


def _clamp(value: float, upper: int) -> float:
    return min(max(float(value), 0.0), float(upper))


def boxes_record(boxes: Sequence[Box], image_size: tuple[int, int], padding: PaddingMap | None = None) -> dict:
    """The boxes as plain data (kept with the answer in the store, read by exports): the model's normalised
    `box_2d` and the original image's pixels side by side."""
    width, height = image_size
    records = []
    for box in boxes:
        pixels = box_to_pixels(box, image_size, padding)
        records.append({
            "label": box.label,
            "box_2d": [_plain(box.y0), _plain(box.x0), _plain(box.y1), _plain(box.x1)],
            "pixels": {"left": _plain(pixels.left), "top": _plain(pixels.top),
                       "right": _plain(pixels.right), "bottom": _plain(pixels.bottom)},
        })
    return {
        "box_2d": f"[y0, x0, y1, x1], 0..{SCALE} over the square image the model saw (padded where needed)",
        "pixels": "left, top, right, bottom in pixels of the original image; origin at its top-left corner",
        "image": {"width": width, "height": height},
        "boxes": records,
    }


def boxes_from_record(record: Any) -> list[Box]:
    """The boxes of a `boxes_record` read back (from the store); [] for anything else."""
    return _boxes_from(record.get("boxes")) if isinstance(record, dict) else []


def boxes_to_json(boxes: Sequence[Box], image_size: tuple[int, int], padding: PaddingMap | None = None, *,
                  disclaimer: str) -> str:
    """The boxes for other programs (`boxes_record`), with the research-use disclaimer every export carries."""
    document = {"disclaimer": disclaimer, **boxes_record(boxes, image_size, padding)}
    return json.dumps(document, indent=2, ensure_ascii=False)


def _plain(value: float) -> float | int:
    """An integer where the value is one, else rounded to 2 decimals: easy to read, exact enough for pixels."""
    rounded = round(float(value), 2)
    return int(rounded) if rounded.is_integer() else rounded
