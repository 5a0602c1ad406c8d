"""Window/level, MedGemma's CT colour encoding, MRI normalisation and slice sampling, checked value by value."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medgemma_desktop.core.windowing import (
    CT_WINDOW_PRESETS,
    apply_window,
    ct_rgb_slice,
    mri_rgb_volume,
    normalize_to_uint8,
    sample_slice_indices,
)


def test_window_maps_its_edges_to_black_and_white_and_clips_outside() -> None:
    values = np.array([-1000.0, -160.0, -159.0, 40.0, 239.0, 240.0, 3000.0])
    # soft tissue: 40 +- 200 HU; 40 sits at 127.5, which rounds half to even like the notebook's np.round
    assert apply_window(values, 40, 400).tolist() == [0, 0, 1, 128, 254, 255, 255]
    assert apply_window(values, 40, 400).dtype == np.uint8


@pytest.mark.parametrize("width", [0.0, -10.0])
def test_window_width_must_be_positive(width: float) -> None:
    with pytest.raises(ValueError, match="width"):
        apply_window(np.zeros(3), 0.0, width)


def test_presets_are_the_standard_ct_windows() -> None:
    assert CT_WINDOW_PRESETS["lung"] == (-600.0, 1500.0)
    assert CT_WINDOW_PRESETS["mediastinum"] == (50.0, 350.0)
    assert CT_WINDOW_PRESETS["soft tissue"] == (40.0, 400.0)
    assert CT_WINDOW_PRESETS["abdomen"] == (50.0, 400.0)
    assert CT_WINDOW_PRESETS["bone"] == (400.0, 1800.0)
    assert CT_WINDOW_PRESETS["brain"] == (40.0, 80.0)


def test_ct_rgb_slice_puts_the_three_notebook_windows_into_r_g_b() -> None:
    hu = np.array([[-3000.0, -1024.0, -135.0, 0.0, 80.0, 215.0, 1024.0, 3000.0]])
    rgb = ct_rgb_slice(hu)
    assert rgb.shape == (1, 8, 3)
    assert rgb.dtype == np.uint8
    assert rgb[0].tolist() == [
        [0, 0, 0],          # below every window
        [0, 0, 0],          # -1024: bottom of the wide window
        [111, 0, 0],        # -135: bottom of the soft-tissue window (R = 889/2048*255 = 110.7)
        [128, 98, 0],       # water: R = 127.5 -> 128, G = 135/350*255 = 98.4, B at the bottom of 0..80
        [137, 157, 255],    # 80: top of the brain window
        [154, 255, 255],    # 215: top of the soft-tissue window
        [255, 255, 255],    # 1024: top of the wide window
        [255, 255, 255],    # above every window
    ]


def _notebook_window(ct_slice: np.ndarray) -> np.ndarray:
    """Google's high_dimensional_ct_hugging_face notebook, `norm` + `window` + the rounding cell, as published."""
    def norm(ct_vol: np.ndarray, low: float, high: float) -> np.ndarray:
        ct_vol = np.clip(ct_vol, low, high).astype(np.float32)
        ct_vol -= low
        ct_vol /= high - low
        ct_vol *= 255.0
        return ct_vol
    stacked = np.stack([norm(ct_slice, low, high) for low, high in [(-1024, 1024), (-135, 215), (0, 80)]], axis=-1)
    return np.round(stacked, 0).astype(np.uint8)


def test_ct_rgb_slice_is_bit_identical_to_the_notebook() -> None:
    hu = np.random.default_rng(0).uniform(-2000, 3000, size=(64, 48))
    np.testing.assert_array_equal(ct_rgb_slice(hu), _notebook_window(hu))


def test_mri_volume_is_normalised_over_the_whole_volume_not_per_slice() -> None:
    volume = np.array([[[100.0, 200.0]], [[300.0, 500.0]]])  # 2 slices of 1x2
    rgb = mri_rgb_volume(volume)
    assert rgb.shape == (2, 1, 2, 3)
    assert rgb[..., 0].tolist() == [[[0, 64]], [[128, 255]]]  # the dark slice stays dark
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_a_constant_volume_becomes_black_instead_of_dividing_by_zero() -> None:
    assert not mri_rgb_volume(np.full((3, 4, 4), 7.0)).any()
    assert not normalize_to_uint8(np.full((2, 2), 65535, dtype=np.uint16)).any()


def test_short_volumes_send_every_slice() -> None:
    assert sample_slice_indices(0) == []
    assert sample_slice_indices(1) == [0]
    assert sample_slice_indices(85) == list(range(85))


def test_long_volumes_follow_the_notebook_sampling() -> None:
    indices = sample_slice_indices(200)
    assert len(indices) == 85
    assert indices == [int(round(i / 85 * 199)) for i in range(1, 86)]  # noqa: RUF046  (the notebook's expression)
    assert indices[0] == 2 and indices[-1] == 199


@given(n_slices=st.integers(0, 3000), max_slices=st.integers(1, 120))
def test_sampling_is_sorted_unique_in_range_and_keeps_the_last_slice(n_slices: int, max_slices: int) -> None:
    indices = sample_slice_indices(n_slices, max_slices)
    assert len(indices) == min(n_slices, max_slices)
    assert all(a < b for a, b in itertools.pairwise(indices))
    assert all(0 <= index < n_slices for index in indices)
    if n_slices:
        assert indices[-1] == n_slices - 1


def test_sampling_refuses_nonsense_arguments() -> None:
    with pytest.raises(ValueError):
        sample_slice_indices(10, 0)
