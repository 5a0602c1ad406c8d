"""What each task mode sends the model, from the pictures waiting in the viewer.

Two steps, so that the token budget can be checked before any pixel is computed: `plan_images` orders and
checks the pictures (cheap, on the UI thread, for every budget update), `model_images` renders what the model
sees (a series' windowed slices, a picture padded to square: slow, on a background job).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.imaging import ImageInput, PaddingInfo, pad_to_square, pixels_sha256, volume_image_inputs
from medgemma_desktop.core.prompts import TaskMode
from medgemma_desktop.core.windowing import sample_slice_indices
from medgemma_desktop.ui.pictures import Picture

SERIES_MODES: dict[TaskMode, Literal["CT", "MRI"]] = {TaskMode.CT_SERIES: "CT", TaskMode.MRI_SERIES: "MRI"}
# The series mode to switch to when a series of this DICOM modality is opened.
MODE_FOR_MODALITY = {"CT": TaskMode.CT_SERIES, "MR": TaskMode.MRI_SERIES}


@dataclass(frozen=True)
class ModelImages:
    """The images one question sends, as the model sees them."""

    images: tuple[ImageInput, ...]
    padding: PaddingInfo | None = None  # localization: how the picture was padded to square
    target: ImageInput | None = None  # localization: the original picture the answer's boxes belong on


def plan_images(mode: TaskMode, pictures: Sequence[Picture], prior: Picture | None = None) -> list[Picture]:
    """The pictures in the order the mode sends them; a one-line `UserFacingError` when they cannot go."""
    series = [picture for picture in pictures if picture.series is not None]
    if mode in SERIES_MODES:
        if series and len(pictures) > 1:
            raise UserFacingError(f"{mode.title} reads one series at a time, and {len(pictures)} items are waiting",
                                  fix="Remove the others from the next question (Remove).")
    elif series:
        raise UserFacingError(f"{series[0].input.label} is a series of slices",
                              fix="Choose the CT series or MRI series mode to ask about it.")
    if mode is TaskMode.LONGITUDINAL_CXR and prior is not None and prior in pictures:
        return [prior, *(picture for picture in pictures if picture is not prior)]
    return list(pictures)


def count_model_images(plan: Sequence[Picture], max_slices: int) -> int:
    """How many images `model_images` will send, without rendering them."""
    return sum(len(sample_slice_indices(picture.series.slice_count, max_slices)) if picture.series is not None
               else 1 for picture in plan)


def model_images(mode: TaskMode, plan: Sequence[Picture], max_slices: int) -> ModelImages:
    """Render the planned pictures: series through `volume_image_inputs` (CT: the three-window RGB encoding),
    the localization picture padded to square (the padding kept to map the boxes back), others as they are."""
    if mode is TaskMode.LOCALIZATION and len(plan) == 1:
        original = plan[0].input
        padded, padding = pad_to_square(original.image)
        sent = replace(original, image=padded, sha256=pixels_sha256(padded))
        return ModelImages((sent,), padding, original)
    images: list[ImageInput] = []
    for picture in plan:
        images.extend(volume_image_inputs(picture.series, max_slices) if picture.series is not None
                      else [picture.input])
    return ModelImages(tuple(images))
