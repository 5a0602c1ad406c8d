"""DICOM loading on pydicom's own test files: HU, codecs, colour, frames, series order, bad files, patient data."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medgemma_desktop.core.dicom import (
    DEFAULT_CT_WINDOW,
    DESCRIPTIVE_KEYWORDS,
    IDENTIFYING_KEYWORDS,
    is_dicom_file,
    load_dicom,
    load_dicom_files,
    load_dicom_folder,
    load_dicomdir,
    order_slices,
)
from medgemma_desktop.core.errors import InputFileError
from medgemma_desktop.core.imaging import dicom_image_input, load_any, volume_image_inputs
from medgemma_desktop.core.windowing import Window, ct_rgb_slice


def bundled(name: str) -> Path:
    """A file bundled with pydicom (only bundled ones: others would be downloaded, and tests run offline)."""
    return Path(get_testdata_file(name))  # type: ignore[arg-type]


def test_ct_values_are_hounsfield_units_after_rescale() -> None:
    image = load_dicom(bundled("CT_small.dcm"))
    raw = pydicom.dcmread(bundled("CT_small.dcm")).pixel_array
    assert image.modality == "CT"
    assert image.values.shape == (1, 128, 128)
    assert image.values.dtype == np.float32
    np.testing.assert_array_equal(image.values[0], raw * 1.0 - 1024.0)  # slope 1, intercept -1024
    assert image.window == DEFAULT_CT_WINDOW  # the file names no window
    assert image.metadata["Modality"] == "CT"


def test_window_comes_from_the_file_when_it_has_one() -> None:
    assert load_dicom(bundled("MR_small.dcm")).window == Window(600.0, 1600.0)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_lossless_compressed_and_other_encodings_decode_to_the_same_values(name: str) -> None:
    reference = load_dicom(bundled("MR_small.dcm")).values
    np.testing.assert_array_equal(load_dicom(bundled(name)).values, reference)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPGExtended.dcm"])
def test_jpeg_2000_and_jpeg_extended_images_decode(name: str) -> None:
    image = load_dicom(bundled(name))
    assert image.values.shape == (1, 1024, 256)
    assert image.values.max() > image.values.min()


@pytest.mark.parametrize(("name", "tolerance"), [("SC_rgb_jpeg_dcmtk.dcm", 6), ("SC_ybr_full_422_uncompressed.dcm", 6),
                                                  ("SC_rgb_jpeg_gdcm.dcm", 0)])
def test_ybr_and_jpeg_colour_images_come_out_as_rgb(name: str, tolerance: int) -> None:
    reference = load_dicom(bundled("SC_rgb_rle.dcm")).values  # RGB, lossless
    image = load_dicom(bundled(name))
    assert image.is_color and image.values.dtype == np.uint8
    assert np.abs(image.values.astype(int) - reference).max() <= tolerance


def test_colour_16_bit_samples_are_scaled_to_8_bit() -> None:
    np.testing.assert_array_equal(load_dicom(bundled("SC_rgb_rle_16bit.dcm")).values,
                                  load_dicom(bundled("SC_rgb_rle.dcm")).values)


def test_multi_frame_files_keep_every_frame() -> None:
    image = load_dicom(bundled("SC_rgb_rle_2frame.dcm"))
    assert image.frame_count == 2
    np.testing.assert_array_equal(image.values[1], 255 - image.values[0])  # frame 2 is the negative of frame 1
    dose = load_dicom(bundled("rtdose.dcm"))
    assert dose.values.shape == (15, 10, 10)
    assert dicom_image_input(dose, frame=14).label == "rtdose.dcm frame 15"


def test_palette_colour_goes_through_the_lookup_table() -> None:
    image = load_dicom(bundled("examples_palette.dcm"))
    dataset = pydicom.dcmread(bundled("examples_palette.dcm"))
    expected = np.round(pydicom.pixels.apply_color_lut(dataset.pixel_array, dataset) / 65535 * 255)
    assert image.is_color
    np.testing.assert_array_equal(image.values[0], expected.astype(np.uint8))


def test_monochrome1_is_shown_inverted_but_keeps_its_values(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(bundled("MR_small.dcm"))
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.save_as(tmp_path / "mono1.dcm")
    normal, inverted = load_dicom(bundled("MR_small.dcm")), load_dicom(tmp_path / "mono1.dcm")
    np.testing.assert_array_equal(inverted.values, normal.values)
    np.testing.assert_array_equal(inverted.frame_rgb(), 255 - normal.frame_rgb())


def test_single_dicom_becomes_a_model_input_through_its_default_window() -> None:
    item = dicom_image_input(load_dicom(bundled("MR_small.dcm")))
    pixels = np.asarray(item.image)
    assert item.image.mode == "RGB" and item.image.size == (64, 64)
    values = load_dicom(bundled("MR_small.dcm")).values[0]
    np.testing.assert_array_equal(pixels[..., 0], np.clip(np.round((values - (600 - 800)) / 1600 * 255), 0, 255))
    assert item.metadata["window_center"] == "600" and item.metadata["window_width"] == "1600"
    assert item.dicom is not None and item.patient["PatientName"] == "CompressedSamples^MR1"


# --- files that must fail with one clear line -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "says"), [
    ("MR_truncated.dcm", "cut short"),
    ("rtplan_truncated.dcm", "holds no image (RTPLAN"),
    ("rtplan.dcm", "holds no image (RTPLAN"),
    ("badVR.dcm", "invalid header values"),
    ("JPEG-lossy.dcm", "damaged"),
    ("README.txt", "not a DICOM file"),
    ("DICOMDIR", "Open the folder that holds it"),
])
def test_bad_files_raise_one_line_naming_the_file_and_the_fix(name: str, says: str) -> None:
    path = bundled(name)
    with pytest.raises(InputFileError) as caught:
        load_dicom(path)
    message = str(caught.value)
    assert says in message
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert message.split(". ")[-1]  # a sentence with the next step follows the problem


def test_a_file_cut_anywhere_raises_input_file_error(tmp_path: Path) -> None:
    data = bundled("CT_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    for length in range(0, len(data) - 100, len(data) // 40):
        cut.write_bytes(data[:length])
        with pytest.raises(InputFileError, match=r"cut short|not a DICOM file|is empty"):
            load_dicom(cut)


# --- folders, DICOMDIR and slice order ----------------------------------------------------------------------------


def test_shuffled_slices_are_grouped_by_series_and_ordered_along_the_normal(tmp_path: Path, ct_slices) -> None:
    sagittal = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # normal = (-1, 0, 0)
    positions = [-7.5, 0.0, 2.5, 5.0, 12.5]
    # instance numbers run against the geometry: position must win
    ct_slices(tmp_path, positions, sagittal, instance_numbers=[5, 4, 3, 2, 1])
    ct_slices(tmp_path, [0.0, 3.0, 6.0])
    (tmp_path / "README.txt").write_text("not dicom")
    shutil.copy(bundled("rtplan.dcm"), tmp_path / "plan.dcm")

    series = load_dicom_folder(tmp_path)

    assert [item.slice_count for item in series] == [5, 3]
    normal = np.cross(sagittal[:3], sagittal[3:])
    along = [float(np.dot(image.position, normal)) for image in series[0].images]  # type: ignore[arg-type]
    assert along == pytest.approx(sorted(along)) and along == pytest.approx([p + along[0] + 7.5 for p in positions])
    assert [image.instance_number for image in series[0].images] == [5, 4, 3, 2, 1]
    assert series[0].volume().shape == (5, 128, 128)


def test_slices_without_geometry_fall_back_to_instance_number(tmp_path: Path) -> None:
    for number in (3, 1, 2):
        dataset = pydicom.dcmread(bundled("CT_small.dcm"))
        del dataset.ImagePositionPatient
        dataset.InstanceNumber = number
        dataset.save_as(tmp_path / f"slice{number * 7 % 5}.dcm")
    images = [load_dicom(path) for path in tmp_path.iterdir()]
    assert [image.instance_number for image in order_slices(images)] == [1, 2, 3]


def test_a_damaged_slice_in_a_folder_is_named_not_skipped(tmp_path: Path, ct_slices) -> None:
    ct_slices(tmp_path, [0.0, 1.0])
    shutil.copy(bundled("MR_truncated.dcm"), tmp_path / "broken.dcm")
    with pytest.raises(InputFileError, match=r"broken\.dcm: the file is cut short"):
        load_dicom_folder(tmp_path)


def test_a_folder_without_dicom_images_says_so(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputFileError, match="holds no DICOM images"):
        load_dicom_folder(tmp_path)


def test_dicomdir_series_are_grouped_and_ordered() -> None:
    dicomdir = bundled("DICOMDIR")
    series = load_dicomdir(dicomdir)
    assert len(series) == 13
    assert sum(item.slice_count for item in series) == 31
    for item in series:
        assert len({image.series_uid for image in item.images}) == 1
    brain = next(item for item in series if item.description == "Routine Brain")
    assert [image.position[2] for image in brain.images] == pytest.approx(  # type: ignore[index]
        [-99.48, 103.02, 104.27, 105.52])
    cervical = next(item for item in series if item.description == "Cervical LAT")
    assert cervical.images[0].invert  # CR in MONOCHROME1
    # opening the folder follows its DICOMDIR
    assert [item.slice_count for item in load_dicom_folder(dicomdir.parent)] == [s.slice_count for s in series]


def test_a_dicomdir_with_missing_files_says_what_to_copy(tmp_path: Path) -> None:
    shutil.copy(bundled("DICOMDIR"), tmp_path / "DICOMDIR")
    with pytest.raises(InputFileError, match="not there"):
        load_dicomdir(tmp_path / "DICOMDIR")


def test_ct_series_become_notebook_encoded_slices(tmp_path: Path, ct_slices) -> None:
    ct_slices(tmp_path, [2.0, 0.0, 1.0])
    (series,) = load_dicom_files(sorted(tmp_path.iterdir()))
    inputs = volume_image_inputs(series)
    assert len(inputs) == 3
    np.testing.assert_array_equal(np.asarray(inputs[0].image), ct_rgb_slice(series.volume()[0]))
    assert len({item.sha256 for item in inputs}) == 1  # same pixels in every copy: same content hash


def test_mr_series_are_normalised_over_the_volume_and_sampled(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(bundled("MR_small.dcm"))
    pixels = dataset.pixel_array
    dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    for number in range(12):
        dataset.ImagePositionPatient = [0.0, 0.0, float(number)]
        dataset.PixelData = (pixels + number * 10).astype(pixels.dtype).tobytes()
        dataset.save_as(tmp_path / f"{number}.dcm")
    (series,) = load_dicom_folder(tmp_path)
    inputs = volume_image_inputs(series, max_slices=10)
    assert len(inputs) == 10
    first, last = np.asarray(inputs[0].image), np.asarray(inputs[-1].image)
    assert last.max() == 255 and first.max() < 255  # one scale for the whole volume
    assert inputs[-1].label.endswith("slice 12/12")


# --- patient data -------------------------------------------------------------------------------------------------


def test_identifying_and_descriptive_tags_never_overlap() -> None:
    assert not set(IDENTIFYING_KEYWORDS) & set(DESCRIPTIVE_KEYWORDS)
    image = load_dicom(bundled("CT_small.dcm"))
    assert not set(image.metadata) & set(IDENTIFYING_KEYWORDS)
    assert {"PatientName", "PatientID", "StudyDate"} <= set(image.patient)


def test_patient_data_never_reaches_logs_warnings_or_reprs(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                            recwarn: pytest.WarningsRecorder) -> None:
    secrets = ["Zaphod^Beeblebrox", "19501332", "4242-SECRET", "abcd"]
    dataset = pydicom.dcmread(bundled("CT_small.dcm"))
    dataset.PatientName = secrets[0]
    dataset.PatientBirthDate = secrets[1]  # an invalid date: pydicom would log it while validating
    dataset.PatientID = secrets[2]
    dataset.PatientAge = secrets[3]  # an invalid age string
    dataset.save_as(tmp_path / "phi.dcm")
    broken = dataset.copy()
    broken.PixelData = broken.PixelData[:100]
    broken.save_as(tmp_path / "broken.dcm")
    caplog.set_level(logging.DEBUG)

    image = load_dicom(tmp_path / "phi.dcm")
    item = load_any(tmp_path / "phi.dcm")
    (series,) = load_dicom_files([tmp_path / "phi.dcm"])
    with pytest.raises(InputFileError) as caught:
        load_dicom(tmp_path / "broken.dcm")

    shown = "\n".join([caplog.text, *(str(w.message) for w in recwarn), repr(image), repr(item), repr(series),
                       str(caught.value), repr(item.metadata)])
    for secret in secrets:
        assert secret not in shown
    assert image.patient["PatientName"] == secrets[0]  # kept, apart, for the user who asks


def test_is_dicom_file_reads_the_preamble(tmp_path: Path) -> None:
    assert is_dicom_file(bundled("CT_small.dcm"))
    assert not is_dicom_file(bundled("README.txt"))
    assert not is_dicom_file(tmp_path / "missing.dcm")
