"""Property-based fuzzing of the picture and DICOM readers: random bytes, real pictures with bytes changed or cut,
real DICOM files from pydicom's test set with bytes changed, and real DICOM datasets with header values changed.
Each case gives a picture or the app's one-line error in time (`fuzz_support`). 2,400 fixed cases in all."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pydicom
import pytest
from fuzz_support import FUZZ_SETTINGS, answers_or_refuses
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from medgemma_desktop.core.imaging import ImageInput, load_any

DICOM_SAMPLES = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm",
                 "examples_palette.dcm", "JPGExtended.dcm", "MR_small_bigendian.dcm", "no_meta.dcm",
                 "rtdose_1frame.dcm", "SC_ybr_full_422_uncompressed.dcm", "liver_1frame.dcm")
PICTURE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "PPM", "ICO")
# Header values that decide how pixels are decoded, and values hostile to each.
DICOM_FIELDS = {
    "Rows": st.integers(0, 70_000), "Columns": st.integers(0, 70_000),
    "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64, 255]),
    "BitsStored": st.integers(0, 70), "HighBit": st.integers(0, 70),
    "SamplesPerPixel": st.integers(0, 5), "PixelRepresentation": st.integers(0, 3),
    "PlanarConfiguration": st.integers(0, 3), "NumberOfFrames": st.sampled_from(["0", "1", "2", "-1", "1e9", "x"]),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR",
                                                  "YBR_FULL_422", "HSV", ""]),
    "RescaleSlope": st.sampled_from(["0", "-1", "1e308", "nan", "inf", "abc", ""]),
    "RescaleIntercept": st.sampled_from(["-1024", "1e308", "nan", ""]),
    "WindowCenter": st.sampled_from(["40", "nan", "-inf", "1e308", "x", ""]),
    "WindowWidth": st.sampled_from(["400", "0", "-5", "nan", "inf", "x", ""]),
    "Modality": st.sampled_from(["CT", "MR", "", "X" * 64]),
    "ImagePositionPatient": st.sampled_from([["1", "2"], ["nan", "0", "0"], []]),
}


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """One file rewritten by every case (a fuzz run writes thousands)."""
    with tempfile.TemporaryDirectory(prefix="medgemma-fuzz-") as folder:
        yield Path(folder)


@cache
def _sample_bytes(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]


@cache
def _picture_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (24, 17), (200, 30, 90))
    image.putpixel((3, 4), (0, 255, 0))
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _read(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    result = answers_or_refuses(lambda: load_any(path))
    if isinstance(result, ImageInput):
        assert result.image.mode == "RGB" and result.image.width > 0 and result.image.height > 0


@st.composite
def _mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """A real file with a few bytes changed, a run of bytes removed or repeated, or cut short."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "delete", "repeat", "zero"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[position:]
        elif kind == "delete":
            del data[position:position + draw(st.integers(1, 64))]
        elif kind == "repeat":
            data[position:position] = data[position:position + draw(st.integers(1, 64))] * draw(st.integers(1, 8))
        else:
            data[position:position + draw(st.integers(1, 256))] = bytes(draw(st.integers(1, 256)))
    return bytes(data)


@settings(FUZZ_SETTINGS, max_examples=600)
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".png", ".jpg", ".dcm", ".bin", ""]))
def test_random_bytes(scratch: Path, data: bytes, suffix: str) -> None:
    _read(scratch / f"random{suffix}", data)


@settings(FUZZ_SETTINGS, max_examples=600)
@given(data=st.sampled_from(PICTURE_FORMATS).map(_picture_bytes).flatmap(_mutated))
def test_real_pictures_with_bytes_changed(scratch: Path, data: bytes) -> None:
    _read(scratch / "picture.png", data)


@settings(FUZZ_SETTINGS, max_examples=600)
@given(data=st.sampled_from(DICOM_SAMPLES).map(_sample_bytes).flatmap(_mutated))
def test_real_dicom_files_with_bytes_changed(scratch: Path, data: bytes) -> None:
    _read(scratch / "instance.dcm", data)


@st.composite
def _mutated_dataset(draw: st.DrawFn) -> bytes:
    """A real DICOM dataset with one to four decoding-relevant header values set to hostile ones."""
    name = draw(st.sampled_from(DICOM_SAMPLES))
    dataset = pydicom.dcmread(io.BytesIO(_sample_bytes(name)), force=True)
    for keyword in draw(st.lists(st.sampled_from(sorted(DICOM_FIELDS)), min_size=1, max_size=4, unique=True)):
        value = draw(DICOM_FIELDS[keyword])
        try:
            setattr(dataset, keyword, value)
        except (ValueError, TypeError, OverflowError):
            continue  # pydicom refuses to even hold this value: no file can carry it either
    buffer = io.BytesIO()
    try:
        dataset.save_as(buffer, enforce_file_format=False)
    except Exception:  # a value pydicom cannot write (e.g. an integer too large for its VR): write it raw
        return _sample_bytes(name)
    return buffer.getvalue()


@settings(FUZZ_SETTINGS, max_examples=600)
@given(data=_mutated_dataset())
def test_real_dicom_datasets_with_hostile_header_values(scratch: Path, data: bytes) -> None:
    _read(scratch / "instance.dcm", data)


def test_the_property_fails_a_hang_a_foreign_exception_and_a_multi_line_message() -> None:
    import threading

    from medgemma_desktop.core.errors import InputFileError

    release = threading.Event()
    with pytest.raises(AssertionError, match="did not finish"):
        answers_or_refuses(lambda: release.wait(30), within_s=0.2)
    release.set()
    with pytest.raises(AssertionError, match="raised KeyError"):
        answers_or_refuses(lambda: {}["missing"])
    refusal = InputFileError("bad", path="x.png")
    refusal.fix = "line one\nline two"  # bypassing the constructor: __str__ must still give one line
    assert answers_or_refuses(lambda: (_ for _ in ()).throw(refusal)) is refusal
