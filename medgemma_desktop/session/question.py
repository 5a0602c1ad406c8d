"""Preparing one question for its task mode, and THE rule for whether it fits the context.

Two steps, so that the budget can be checked before any pixel is computed: `plan_items` orders and checks the
items (cheap: a window calls it on every key press), `render_images` makes what the model sees (a series' slices
through Google's CT windows or the MRI normalisation, the localization picture padded to square: slow).

The budget rule, used by every front end (window, `ask`, batch, the API): a question fits when its prompt plus
the answer's `max_new_tokens` fit the context limit (`check_fits`). The engine still refuses a prompt that alone
fills the context and clamps the answer to what is left, but no front end relies on that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from PIL import Image

from medgemma_desktop.core.dicom import DicomSeries
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.imaging import ImageInput, PaddingInfo, pad_to_square, pixels_sha256, volume_image_inputs
from medgemma_desktop.core.prompts import MAX_SERIES_SLICES, ChatTurn, TaskMode, build_series
from medgemma_desktop.core.windowing import sample_slice_indices
from medgemma_desktop.session.backend import PromptCounting
from medgemma_desktop.session.inputs import InputItem

SERIES_MODES: dict[TaskMode, Literal["CT", "MRI"]] = {TaskMode.CT_SERIES: "CT", TaskMode.MRI_SERIES: "MRI"}
# The series mode to switch to when a series of this DICOM modality is opened.
MODE_FOR_MODALITY = {"CT": TaskMode.CT_SERIES, "MR": TaskMode.MRI_SERIES}
# Kept in the metadata of a localization picture as sent (padded), so a reopened conversation maps boxes back.
PADDING_KEY = "padding"


class ContextLimitError(UserFacingError):
    kind = "context"


def check_fits(prompt_tokens: int, max_new_tokens: int, context_limit: int) -> bool:
    """The one budget rule: the prompt and the longest answer asked for fit the context together."""
    return prompt_tokens + max_new_tokens <= context_limit


@dataclass(frozen=True)
class BudgetCheck:
    """One question's cost against the context and, for a series that does not fit, the slice count that does."""

    prompt_tokens: int
    max_new_tokens: int
    context_limit: int
    images: int
    series: Literal["CT", "MRI"] | None = None  # the question sends a series of `images` slices
    slices_that_fit: int | None = None
    estimated: bool = False  # counted without the model's tokenizer (a server's own count comes when it answers)

    @property
    def fits(self) -> bool:
        return check_fits(self.prompt_tokens, self.max_new_tokens, self.context_limit)

    @property
    def summary(self) -> str:
        noun = "slice" if self.series else "image"
        images = f", {self.images} {noun}{'s' if self.images != 1 else ''}" if self.images else ""
        about = "about " if self.estimated else ""
        return (f"Input {about}{self.prompt_tokens:,} tokens{images} · limit {self.context_limit:,}, "
                f"{self.max_new_tokens:,} kept for the answer{' (estimated)' if self.estimated else ''}")

    @property
    def problem(self) -> str:
        """Why the question cannot be sent ("" when it fits)."""
        if self.fits:
            return ""
        room = max(self.context_limit - self.max_new_tokens, 0)
        needs = (f"The question needs {self.prompt_tokens:,} tokens, but only {room:,} fit the context limit of "
                 f"{self.context_limit:,} with {self.max_new_tokens:,} kept for the answer.")
        if self.series and self.slices_that_fit:
            return f"{needs} A {self.series} series of {self.slices_that_fit} slices fits."
        return (f"{needs} Use fewer images or a shorter text, or raise the context limit (or lower the new "
                "tokens) in Settings.")

    def refuse(self) -> None:
        """Raise the problem as a one-line `UserFacingError` when the question does not fit."""
        if not self.fits:
            raise ContextLimitError(self.problem)


def slices_that_fit(counter: PromptCounting, question: str, modality: Literal["CT", "MRI"], *,
                    max_new_tokens: int, history: Sequence[ChatTurn] = (), most: int = MAX_SERIES_SLICES) -> int:
    """The largest slice count (0..`most`) whose series prompt, with this question after it, fits (`check_fits`)."""
    placeholder = Image.new("RGB", (1, 1))

    def fits(count: int) -> bool:
        turns = build_series([placeholder] * count, question, modality=modality, history=history)
        return check_fits(counter.count_tokens(turns), max_new_tokens, counter.context_limit)

    low, high = 0, most  # the answer lies in [low, high]; cost grows with the count
    if not fits(low):
        return 0
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


@dataclass(frozen=True)
class PreparedQuestion:
    """One question as the model will read it."""

    mode: TaskMode
    text: str  # as typed; "" asks the mode's default question
    images: tuple[ImageInput, ...]  # as the model sees them (a series' encoded slices, a padded picture)
    padding: PaddingInfo | None = None  # localization: how the picture was padded to square
    target: ImageInput | None = None  # localization: the original picture the answer's boxes belong on
    prior: ImageInput | None = None  # comparison: the older study, sent first
    series: Literal["CT", "MRI"] | None = None  # the images are a DICOM series' slices


def plan_items(mode: TaskMode, items: Sequence[InputItem], prior: InputItem | None = None,
               selected: InputItem | None = None) -> list[InputItem]:
    """The items in the order the mode sends them; a one-line `UserFacingError` when they cannot go.

    A series mode reads one DICOM volume: the `selected` item if it is one, else the newest series (else the
    newest DICOM image, as a one-image volume); pictures waiting beside it are left for a later question. Other
    modes refuse a series (it belongs to a series mode)."""
    series = [item for item in items if item.series is not None]
    if mode in SERIES_MODES:
        volumes = [item for item in items if item.series is not None or item.input.dicom is not None]
        if volumes:
            return [selected if selected in volumes else (series or volumes)[-1]]
        if items:
            raise UserFacingError(f"{mode.title} reads DICOM slices, and {items[0].label} is a picture",
                                  fix="Open a CT or MR series (a folder, a DICOMDIR or its slice files), or choose "
                                      "another task.")
        return []
    if series:
        raise UserFacingError(f"{series[0].label} is a series of slices",
                              fix="Choose the CT series or MRI series mode to ask about it.")
    if mode is TaskMode.LONGITUDINAL_CXR and prior is not None and prior in items:
        return [prior, *(item for item in items if item is not prior)]
    return list(items)


def _volume(item: InputItem) -> DicomSeries | None:
    """The slices an item gives a series mode: its series, or a lone DICOM image as a one-image volume."""
    if item.series is not None:
        return item.series
    return DicomSeries((item.input.dicom,)) if item.input.dicom is not None else None


def count_model_images(mode: TaskMode, plan: Sequence[InputItem], max_slices: int) -> int:
    """How many images `render_images` will send, without rendering them."""
    volumes = [_volume(item) if mode in SERIES_MODES else item.series for item in plan]
    return sum(len(sample_slice_indices(volume.slice_count, max_slices)) if volume is not None else 1
               for volume in volumes)


def padding_text(padding: PaddingInfo) -> str:
    return f"{padding.left},{padding.top},{padding.side},{padding.width},{padding.height}"


def padding_from(metadata: object) -> PaddingInfo | None:
    """The padding a localization picture was sent with, read back from its stored metadata."""
    text = metadata.get(PADDING_KEY) if isinstance(metadata, dict) else None
    try:
        left, top, side, width, height = (int(value) for value in str(text).split(","))
    except ValueError:
        return None
    return PaddingInfo(width=width, height=height, left=left, top=top, side=side)


def unpadded(sent: ImageInput, padding: PaddingInfo) -> ImageInput:
    """The original picture inside a padded one (exact: the padding only added black borders)."""
    box = (padding.left, padding.top, padding.left + padding.width, padding.top + padding.height)
    pixels = sent.image.crop(box)
    metadata = {key: value for key, value in sent.metadata.items() if key != PADDING_KEY}
    return replace(sent, image=pixels, sha256=pixels_sha256(pixels), metadata=metadata)


def render_images(mode: TaskMode, plan: Sequence[InputItem], max_slices: int = MAX_SERIES_SLICES,
                  text: str = "") -> PreparedQuestion:
    """Render the planned items: a series through `volume_image_inputs` (CT: the three-window RGB encoding), the
    localization picture padded to square (the padding kept to map the boxes back), others as they are."""
    if mode is TaskMode.LOCALIZATION and len(plan) == 1:
        original = plan[0].input
        padded, padding = pad_to_square(original.image)
        sent = replace(original, image=padded, sha256=pixels_sha256(padded),
                       metadata={**original.metadata, PADDING_KEY: padding_text(padding)})
        return PreparedQuestion(mode, text, (sent,), padding, original)
    images: list[ImageInput] = []
    series = SERIES_MODES.get(mode)
    for item in plan:
        volume = _volume(item) if series is not None else item.series
        images.extend(volume_image_inputs(volume, max_slices) if volume is not None else [item.input])
    prior = images[0] if mode is TaskMode.LONGITUDINAL_CXR and images else None
    return PreparedQuestion(mode, text, tuple(images), prior=prior, series=series if plan else None)


def prepare_question(mode: TaskMode, items: Sequence[InputItem], text: str = "", prior: InputItem | None = None,
                     *, selected: InputItem | None = None, max_slices: int = MAX_SERIES_SLICES) -> PreparedQuestion:
    """`plan_items` then `render_images`: what `ask`, batch and the API call in one go. (The image count is checked
    when the session builds the turns: a follow-up in the same mode needs no images.)"""
    return render_images(mode, plan_items(mode, items, prior, selected), max_slices, text)
