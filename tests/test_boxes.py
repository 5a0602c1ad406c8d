"""Localization answers -> boxes -> the user's original pixels, on realistic and random model output."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medgemma_desktop.core.boxes import SCALE, Box, PixelBox, box_to_pixels, boxes_to_json, parse_boxes

NOTEBOOK_EXAMPLE = Box("right clavicle", 800, 3, 840, 471)
DISCLAIMER = "Research use only."


@dataclass(frozen=True)
class CentredPadding:
    """Zero padding to a square with the image centred (the odd pixel below / right), as Google's notebooks pad."""

    width: int
    height: int

    @property
    def side(self) -> int:
        return max(self.width, self.height)

    @property
    def top(self) -> int:
        return (self.side - self.height) // 2

    @property
    def left(self) -> int:
        return (self.side - self.width) // 2

    def to_normalised(self, y0: float, x0: float, y1: float, x1: float) -> tuple[float, float, float, float]:
        scale = SCALE / self.side
        return ((y0 + self.top) * scale, (x0 + self.left) * scale, (y1 + self.top) * scale, (x1 + self.left) * scale)

    def to_original(self, y0: float, x0: float, y1: float, x1: float) -> tuple[float, float, float, float]:
        scale = self.side / SCALE
        return (y0 * scale - self.top, x0 * scale - self.left, y1 * scale - self.top, x1 * scale - self.left)


# --- Realistic answers --------------------------------------------------------------------------------------------

FENCED = '```json\n[{"box_2d": [800, 3, 840, 471], "label": "right clavicle"}]\n```'

REALISTIC = {
    "the notebook's example, fenced": FENCED,
    "fence glued to the list, as in the prompt": (
        '```json[{"box_2d": [800, 3, 840, 471], "label": "right clavicle"}]```'),
    "no fence": '[{"box_2d": [800, 3, 840, 471], "label": "right clavicle"}]',
    "reasoning then Final Answer": (
        "The right clavicle is the long bone at the top of the image on the viewer's left, since the patient's "
        "right side is shown on the left of a PA film.\n\nFinal Answer: " + FENCED),
    "Final Answer on the same line, no fence": (
        'Final Answer: [{"box_2d": [800, 3, 840, 471], "label": "right clavicle"}] This is my answer.'),
    "thinking trace before the answer": (
        "<unused94>thought The user wants the right clavicle. It's the patient's right, so the left of the image."
        "<unused95>" + FENCED),
    "single quotes and a trailing comma": "Final Answer: [{'box_2d': [800, 3, 840, 471], 'label': 'right clavicle',},]",
    "coordinates as strings": '[{"box_2d": ["800", "3", "840", "471"], "label": "right clavicle"}]',
    "box as one string": '[{"box_2d": "[800, 3, 840, 471]", "label": "right clavicle"}]',
    "swapped corners": '[{"box_2d": [840, 471, 800, 3], "label": "right clavicle"}]',
    "a single object instead of a list": 'Final Answer: {"box_2d": [800, 3, 840, 471], "label": "right clavicle"}',
    "label padded with spaces, key order swapped": '[{"label": " right clavicle ", "box_2d": [800, 3, 840, 471]}]',
    "float coordinates": '[{"box_2d": [800.0, 3.0, 840.0, 471.0], "label": "right clavicle"}]',
    "wrapped in an object": '{"boxes": [{"box_2d": [800, 3, 840, 471], "label": "right clavicle"}]}',
    "prose brackets and apostrophes around it": (
        "Looking at the [upper] chest, the clavicle's outline is clear (see [the patient's right]).\n"
        "Final Answer: " + FENCED + "\nNote: boxes are approximate."),
}


@pytest.mark.parametrize("case", list(REALISTIC))
def test_realistic_answers_give_the_notebooks_box(case: str):
    assert parse_boxes(REALISTIC[case]) == [NOTEBOOK_EXAMPLE]


def test_several_boxes_keep_their_order_and_labels():
    answer = ('Final Answer: ```json\n[{"box_2d": [100, 520, 600, 900], "label": "left lung"},\n'
              ' {"box_2d": [110, 90, 610, 480], "label": "right lung"},\n'
              ' {"box_2d": [400, 350, 750, 700], "label": "cardiac silhouette"}]\n```')
    assert parse_boxes(answer) == [Box("left lung", 100, 520, 600, 900), Box("right lung", 110, 90, 610, 480),
                                   Box("cardiac silhouette", 400, 350, 750, 700)]


def test_the_last_box_list_wins_over_a_draft():
    answer = ('First guess: [{"box_2d": [1, 2, 3, 4], "label": "right clavicle"}]. On reflection that is too '
              "small.\nFinal Answer: " + FENCED)
    assert parse_boxes(answer) == [NOTEBOOK_EXAMPLE]


def test_boxes_inside_the_thinking_trace_are_ignored():
    assert parse_boxes('<unused94>thought [{"box_2d": [1, 2, 3, 4], "label": "x"}]<unused95>No box found.') == []
    assert parse_boxes('<unused94>thought [{"box_2d": [1, 2, 3, 4], "label": "x"}] and then I was cut') == []


def test_out_of_range_values_are_clamped():
    assert parse_boxes('[{"box_2d": [-20, 950, 1200, 1000.5], "label": "a"}]') == [Box("a", 0, 950, 1000, 1000)]


def test_malformed_entries_are_skipped_and_the_rest_kept():
    answer = ('[{"box_2d": [1, 2, 3], "label": "three numbers"}, {"label": "no box"}, "a string", 7,'
              ' {"box_2d": [1, "two", 3, 4], "label": "a word"}, {"box_2d": [NaN, 2, 3, 4], "label": "nan"},'
              ' {"box_2d": [true, 2, 3, 4], "label": "bool"}, {"box_2d": {"y0": 1}, "label": "dict"},'
              ' {"box_2d": [10, 20, 30, 40]}, {"box_2d": [50, 60, 70, 80], "label": 5}]')
    assert parse_boxes(answer) == [Box("", 10, 20, 30, 40), Box("5", 50, 60, 70, 80)]


def test_a_cut_off_list_keeps_its_complete_entries():
    answer = ('Final Answer: ```json\n[{"box_2d": [800, 3, 840, 471], "label": "right clavicle"}, '
              '{"box_2d": [790, 530, 8')
    assert parse_boxes(answer) == [NOTEBOOK_EXAMPLE]


def test_an_entry_with_a_syntax_slip_loses_only_itself():
    answer = '[{"box_2d": [800, 3, 840, 471], "label": "right clavicle"}, {"box_2d": [1, 2, 3, 4] "label": "x"}]'
    assert parse_boxes(answer) == [NOTEBOOK_EXAMPLE]


@pytest.mark.parametrize("answer", [
    "", "I cannot localize that structure on this image.", "[800, 3, 840, 471]", '[{"label": "heart"}]',
    "Final Answer: ```json\n```", "[" * 5000, "{" * 5000, '[{"box_2d": "' * 1000, "```json\n[]\n```",
])
def test_nothing_parseable_gives_no_boxes(answer: str):
    assert parse_boxes(answer) == []


@given(st.text())
def test_any_text_parses_without_raising(text: str):
    for box in parse_boxes(text):
        assert 0 <= box.y0 <= box.y1 <= SCALE and 0 <= box.x0 <= box.x1 <= SCALE


@given(st.text(alphabet='[]{}"\':,0123456789.-box_2dlabel \n'))
def test_bracket_soup_parses_without_raising(text: str):
    for box in parse_boxes(text):
        assert 0 <= box.y0 <= box.y1 <= SCALE and 0 <= box.x0 <= box.x1 <= SCALE


coordinate = st.one_of(st.integers(-500, 1500), st.floats(-500, 1500, allow_nan=False))


# Any label but one holding a thinking-trace marker, which is not a label but the start of a trace.
label_text = st.text(max_size=20).filter(lambda text: "<unused9" not in text)


@given(st.lists(st.tuples(label_text, coordinate, coordinate, coordinate, coordinate), max_size=8),
       st.sampled_from(["{}", "```json\n{}\n```", "Reasoning first.\nFinal Answer: ```json{}```"]))
def test_random_box_lists_are_ordered_and_clamped(entries, wrapper: str):
    payload = json.dumps([{"box_2d": [y0, x0, y1, x1], "label": label} for label, y0, x0, y1, x1 in entries])
    boxes = parse_boxes(wrapper.format(payload))
    assert len(boxes) == len(entries)
    for box, (label, y0, x0, y1, x1) in zip(boxes, entries, strict=True):
        assert box.label == label.strip()
        assert box.y0 == min(max(min(y0, y1), 0), SCALE) and box.y1 == min(max(max(y0, y1), 0), SCALE)
        assert box.x0 == min(max(min(x0, x1), 0), SCALE) and box.x1 == min(max(max(x0, x1), 0), SCALE)


# --- Back to the original image -------------------------------------------------------------------------------------

@st.composite
def image_and_box(draw) -> tuple[int, int, tuple[int, int, int, int]]:
    """An image of any aspect ratio and a pixel box inside it: (width, height, (top, left, bottom, right))."""
    width, height = draw(st.integers(1, 6000)), draw(st.integers(1, 6000))
    top, bottom = sorted(draw(st.tuples(st.integers(0, height), st.integers(0, height))))
    left, right = sorted(draw(st.tuples(st.integers(0, width), st.integers(0, width))))
    return width, height, (top, left, bottom, right)


@given(image_and_box(), st.sampled_from(["{}", "Final Answer: ```json\n{}\n```", "<unused94>thought x<unused95>{}"]))
def test_pixel_box_survives_padding_the_model_and_parsing(case, wrapper: str):
    width, height, (top, left, bottom, right) = case
    padding = CentredPadding(width, height)
    # The model writes integers in 0..1000 over the padded square: that rounding is the only loss.
    normalised = [round(value) for value in padding.to_normalised(top, left, bottom, right)]
    answer = wrapper.format(json.dumps([{"box_2d": normalised, "label": "structure"}]))
    [box] = parse_boxes(answer)
    pixels = box_to_pixels(box, (width, height), padding)
    tolerance = 0.5 * padding.side / SCALE + 1e-6
    assert pixels.label == "structure"
    assert abs(pixels.top - top) <= tolerance and abs(pixels.bottom - bottom) <= tolerance
    assert abs(pixels.left - left) <= tolerance and abs(pixels.right - right) <= tolerance
    assert 0 <= pixels.left <= pixels.right <= width and 0 <= pixels.top <= pixels.bottom <= height


@given(st.integers(1, 6000), st.integers(1, 6000), coordinate, coordinate, coordinate, coordinate)
def test_boxes_over_the_padding_are_clamped_to_the_image(width: int, height: int, y0, x0, y1, x1):
    [box] = parse_boxes(json.dumps([{"box_2d": [y0, x0, y1, x1], "label": "a"}]))
    pixels = box_to_pixels(box, (width, height), CentredPadding(width, height))
    assert 0 <= pixels.left <= pixels.right <= width and 0 <= pixels.top <= pixels.bottom <= height


def test_a_wide_image_maps_through_its_padding():
    # 1000 x 500 padded to 1000 x 1000: 250 rows of padding above the image.
    padding = CentredPadding(1000, 500)
    assert box_to_pixels(Box("a", 250, 0, 750, 1000), (1000, 500), padding) == PixelBox("a", 0, 0, 1000, 500)
    assert box_to_pixels(Box("a", 0, 100, 200, 200), (1000, 500), padding) == PixelBox("a", 100, 0, 200, 0)


def test_without_padding_each_axis_scales_on_its_own():
    assert box_to_pixels(NOTEBOOK_EXAMPLE, (2000, 500)) == PixelBox("right clavicle", 6, 400, 942, 420)


def test_json_export_has_both_coordinate_systems_and_the_disclaimer():
    padding = CentredPadding(1000, 500)
    boxes = [Box("left lung", 250, 520, 500.5, 900), Box("heart", 400, 350, 600, 700)]
    document = json.loads(boxes_to_json(boxes, (1000, 500), padding, disclaimer=DISCLAIMER))
    assert document["disclaimer"] == DISCLAIMER
    assert document["image"] == {"width": 1000, "height": 500}
    assert document["boxes"] == [
        {"label": "left lung", "box_2d": [250, 520, 500.5, 900],
         "pixels": {"left": 520, "top": 0, "right": 900, "bottom": 250.5}},
        {"label": "heart", "box_2d": [400, 350, 600, 700],
         "pixels": {"left": 350, "top": 150, "right": 700, "bottom": 350}},
    ]
    assert "y0, x0, y1, x1" in document["box_2d"]


@given(st.lists(st.builds(Box, st.text(), *[st.floats(0, SCALE)] * 4), max_size=5), st.integers(1, 4000),
       st.integers(1, 4000))
def test_json_export_round_trips_through_the_parser(boxes: list[Box], width: int, height: int):
    exported = json.loads(boxes_to_json(boxes, (width, height), disclaimer=DISCLAIMER))
    reparsed = parse_boxes(json.dumps(exported["boxes"]))
    assert len(reparsed) == len(boxes)
    for again, box in zip(reparsed, boxes, strict=True):
        assert again.label == box.label.strip()
        assert abs(again.y0 - min(box.y0, box.y1)) <= 0.005 and abs(again.x1 - max(box.x0, box.x1)) <= 0.005
