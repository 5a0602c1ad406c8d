"""Turning measured values (CT Hounsfield units, MR signal) into the 8-bit pixels people and MedGemma look at.

Pure numpy. The CT colour encoding, the MRI normalisation and the slice sampling follow Google's MedGemma 1.5
notebooks exactly (see docs/MODEL.md): the model was prompted that way, so any drift changes what it sees.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt


class Window(NamedTuple):
    """A display window: values from center - width/2 to center + width/2 span black to white."""

    center: float
    width: float


# Standard CT windows in HU (Radiopaedia, "Windowing (CT)"): what a radiologist picks first for each task.
# The first five are Weasis's CT presets, in its order; the viewer puts them on the number keys.
CT_WINDOW_PRESETS: dict[str, Window] = {
    "lung": Window(-600.0, 1500.0),
    "mediastinum": Window(50.0, 350.0),
    "abdomen": Window(50.0, 400.0),
    "bone": Window(400.0, 1800.0),
    "brain": Window(40.0, 80.0),
    "soft tissue": Window(40.0, 400.0),
}

# The three HU ranges MedGemma 1.5 was trained on, as the R, G and B channels (wide, soft tissue, brain).
CT_RGB_RANGES: tuple[tuple[float, float], ...] = ((-1024.0, 1024.0), (-135.0, 215.0), (0.0, 80.0))

# At most this many CT/MRI slices go to the model: 85 x 256 image tokens = 21,760 tokens.
MAX_MODEL_SLICES = 85


def _range_to_uint8(values: npt.ArrayLike, low: float, high: float) -> npt.NDArray[np.uint8]:
    """Clip to [low, high] and map linearly to 0..255, rounded: the notebook's `norm` step by step, in float32."""
    scaled = np.clip(np.asarray(values), low, high).astype(np.float32)
    scaled -= low
    scaled /= high - low
    scaled *= 255.0
    return np.round(scaled).astype(np.uint8)


def apply_window(values: npt.ArrayLike, center: float, width: float) -> npt.NDArray[np.uint8]:
    """Linear window/level to 8-bit: center - width/2 maps to 0, center + width/2 to 255, clipped outside."""
    if not width > 0:
        raise ValueError(f"window width must be positive, got {width}")
    return _range_to_uint8(values, center - width / 2, center + width / 2)


def ct_rgb_slice(hu: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """One CT slice in HU -> HxWx3 uint8 with R = -1024..1024, G = -135..215, B = 0..80 HU (MedGemma's encoding)."""
    return np.stack([_range_to_uint8(hu, low, high) for low, high in CT_RGB_RANGES], axis=-1)


def normalize_to_uint8(values: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Min-max over all of `values` to 0..255 (a constant array becomes all 0): stretching, never clipping."""
    values = np.asarray(values)
    low, high = float(values.min()), float(values.max())
    return _range_to_uint8(values, low, high) if high > low else np.zeros(values.shape, dtype=np.uint8)


def mri_rgb_volume(volume: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """An MRI volume (NxHxW) -> NxHxWx3 uint8, min-max over the whole volume so slices keep their relative contrast."""
    return np.repeat(normalize_to_uint8(volume)[..., np.newaxis], 3, axis=-1)


def sample_slice_indices(n_slices: int, max_slices: int = MAX_MODEL_SLICES) -> list[int]:
    """Which slices of an n-slice volume go to the model: all of them, or `max_slices` spread evenly.

    Copies Google's CT notebook: ``[round(i / max_slices * (n - 1)) for i in 1..max_slices]``, Python's rounding
    included. The last slice is always kept; the first is skipped once the volume is longer than `max_slices`
    (the notebook's sampling starts one step in).
    """
    if n_slices < 0 or max_slices < 1:
        raise ValueError(f"need n_slices >= 0 and max_slices >= 1, got {n_slices} and {max_slices}")
    if n_slices <= max_slices:
        return list(range(n_slices))
    return [round(i / max_slices * (n_slices - 1)) for i in range(1, max_slices + 1)]
