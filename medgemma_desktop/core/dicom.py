"""DICOM files, folders and DICOMDIRs into `DicomImage`s and ordered `DicomSeries`, patient data kept apart.

Pixel values stay in modality units (Hounsfield units for CT) as float32, so window/level and the pixel readout
work on the real numbers; turning them into 8-bit pixels is `windowing`'s job. Identifying tags are copied into
a separate `patient` mapping that no repr, log line or error message ever includes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from medgemma_desktop.core.errors import InputFileError
from medgemma_desktop.core.user_files import MAX_DICOM_BYTES, MAX_PICTURE_BYTES, open_user_file
from medgemma_desktop.core.windowing import CT_WINDOW_PRESETS, Window, apply_window

# pydicom's value validation logs and warns with the offending value quoted ("Invalid value for VR DA:
# '19501332'"), which would copy birth dates, ages or names into the log file. Values are never validated on
# reading in this app: set once, at import, before any file is read.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

# Tags that identify a patient, a visit or the people and places involved (after DICOM PS3.15 Annex E's basic
# profile and HIPAA's identifiers: names, IDs, all dates and times of care, places, UIDs). Their values go only
# into `DicomImage.patient`, never into `metadata`, reprs, logs or error messages.
IDENTIFYING_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientNames",
    "PatientBirthName", "PatientMotherBirthName", "PatientBirthDate", "PatientBirthTime", "PatientSex",
    "PatientAge", "PatientSize", "PatientWeight", "PatientAddress", "PatientTelephoneNumbers", "MilitaryRank",
    "EthnicGroup", "Occupation", "PatientComments", "AdditionalPatientHistory", "MedicalRecordLocator",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "AcquisitionDate",
    "AcquisitionTime", "AcquisitionDateTime", "ContentDate", "ContentTime", "InstanceCreationDate",
    "InstanceCreationTime", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "StationName", "DeviceSerialNumber", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "RequestingPhysician", "StudyInstanceUID",
    "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
)

# Descriptive, non-identifying tags shown in the viewer and allowed in exports and logs.
DESCRIPTIVE_KEYWORDS: tuple[str, ...] = (
    "Modality", "SeriesDescription", "BodyPartExamined", "ImageType", "Manufacturer", "ManufacturerModelName",
    "Rows", "Columns", "NumberOfFrames", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices",
    "PhotometricInterpretation", "BitsStored", "PatientPosition", "ViewPosition", "Laterality", "KVP",
    "ContrastBolusAgent", "ConvolutionKernel", "MagneticFieldStrength", "EchoTime", "RepetitionTime",
    "SeriesNumber", "InstanceNumber",
)

# Default CT window when the file names none: soft tissue, the most common reading window.
DEFAULT_CT_WINDOW = CT_WINDOW_PRESETS["soft tissue"]

_NO_IMAGE_FIX = "Open the CT, MR or X-ray image files themselves."
# What a decoder may raise that says nothing about the file: let through, everything else is a damaged file.
_NOT_THE_FILES_FAULT = (KeyboardInterrupt, SystemExit, GeneratorExit)
# Pixel values (rows x columns x frames x samples) one file may hold: 1,000 frames of 512 x 512, with room.
MAX_DICOM_VALUES = 1 << 30


@dataclass(frozen=True, eq=False)
class DicomImage:
    """One DICOM instance, every frame, in the units the modality measures.

    `values` is (frames, rows, cols) float32 for grayscale images (HU for CT, after Rescale Slope/Intercept) or
    (frames, rows, cols, 3) uint8 for colour. `invert` marks MONOCHROME1 (low values shown white); it is applied
    when rendering so that `values` keep their meaning for the pixel readout.
    """

    source: Path
    values: npt.NDArray[np.float32] | npt.NDArray[np.uint8] = field(repr=False)
    modality: str
    window: Window
    invert: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)
    patient: Mapping[str, str] = field(default_factory=dict, repr=False)
    instance_number: int | None = None
    position: tuple[float, ...] | None = None  # ImagePositionPatient: x, y, z in mm
    orientation: tuple[float, ...] | None = None  # ImageOrientationPatient: row then column direction cosines
    series_uid: str = field(default="", repr=False)

    @property
    def frame_count(self) -> int:
        return int(self.values.shape[0])

    @property
    def is_color(self) -> bool:
        return self.values.ndim == 4

    def frame_rgb(self, index: int = 0, window: Window | None = None) -> npt.NDArray[np.uint8]:
        """Frame `index` as HxWx3 uint8, through `window` (default: the image's own) for grayscale images."""
        frame = self.values[index]
        if self.is_color:
            return np.asarray(frame, dtype=np.uint8)
        center, width = window or self.window
        gray = apply_window(frame, center, width)
        if self.invert:
            gray = 255 - gray
        return np.repeat(gray[..., np.newaxis], 3, axis=-1)


@dataclass(frozen=True, eq=False)
class DicomSeries:
    """The images of one series (one SeriesInstanceUID), ordered along the slice normal."""

    images: tuple[DicomImage, ...]
    uid: str = field(default="", repr=False)

    @property
    def modality(self) -> str:
        return self.images[0].modality

    @property
    def description(self) -> str:
        return self.images[0].metadata.get("SeriesDescription", "")

    @property
    def slice_count(self) -> int:
        return sum(image.frame_count for image in self.images)

    def volume(self) -> npt.NDArray[np.float32] | npt.NDArray[np.uint8]:
        """All frames of all images stacked in order: (slices, rows, cols[, 3])."""
        shapes = {image.values.shape[1:] for image in self.images}
        if len(shapes) > 1:
            raise InputFileError("the series mixes images of different sizes", path=self.images[0].source.parent,
                                 fix="Open the images one at a time.")
        return np.concatenate([image.values for image in self.images], axis=0)


def is_dicom_file(path: Path | str) -> bool:
    """True when the file carries the DICOM Part 10 preamble ('DICM' at byte 128); False for anything that is not
    a readable regular file (a pipe is never opened)."""
    try:
        with open_user_file(path, MAX_DICOM_BYTES) as handle:
            return _has_preamble(handle.read(132))
    except InputFileError:
        return False


def _has_preamble(head: bytes) -> bool:
    return head[128:132] == b"DICM"


def _starts_like_a_dataset(head: bytes) -> bool:
    """A file without the preamble is read as DICOM only when it starts with the File Meta, Directory or
    Identifying group tag (in either byte order): forcing pydicom through arbitrary bytes (a file of zeros)
    takes about a second per megabyte and 'finds' elements in anything."""
    return len(head) >= 8 and (int.from_bytes(head[:2], "little") in _FIRST_GROUPS
                               or int.from_bytes(head[:2], "big") in _FIRST_GROUPS)


_FIRST_GROUPS = frozenset({0x0002, 0x0004, 0x0008})


def read_dataset(path: Path | str) -> Dataset:
    """Read a DICOM file, with or without the Part 10 header; anything else raises `InputFileError`."""
    path = Path(path)
    with open_user_file(path, MAX_DICOM_BYTES) as handle:
        head = handle.read(132)
        has_preamble = _has_preamble(head)
        if not has_preamble and (not _starts_like_a_dataset(head)
                                 or os.fstat(handle.fileno()).st_size > MAX_PICTURE_BYTES):
            raise InputFileError("not a DICOM file", path=path, fix="Use a PNG, JPEG, TIFF, BMP, WebP or DICOM file.")
        handle.seek(0)
        try:
            dataset = pydicom.dcmread(handle, force=not has_preamble)
        except Exception as exc:  # malformed bytes surface as struct.error, EOFError, ValueError, ... : all bad input
            if not has_preamble:
                raise InputFileError("not a DICOM file", path=path,
                                     fix="Use a PNG, JPEG, TIFF, BMP, WebP or DICOM file.") from exc
            raise InputFileError(f"the file is cut short or damaged and cannot be read as DICOM "
                                 f"({type(exc).__name__})", path=path, fix="Copy it again from the source.") from exc
    # Without the preamble, pydicom "reads" almost any file: keep only what looks like a real DICOM object.
    if not has_preamble and "SOPClassUID" not in dataset and "PixelData" not in dataset:
        raise InputFileError("not a DICOM file", path=path, fix="Use a PNG, JPEG, TIFF, BMP, WebP or DICOM file.")
    try:
        _ensure_transfer_syntax(dataset)
    except Exception as exc:  # a damaged file meta group
        raise InputFileError(f"the file's DICOM header is damaged ({type(exc).__name__})", path=path,
                             fix="Copy it again from the source.") from exc
    return dataset


def _ensure_transfer_syntax(dataset: Dataset) -> None:
    """Files without a file meta header still say how they were encoded; pixel decoding needs that as a UID."""
    if "TransferSyntaxUID" in dataset.file_meta:
        return
    implicit, little = dataset.original_encoding
    if implicit:
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def load_dicom(path: Path | str) -> DicomImage:
    """Read one DICOM image file (single- or multi-frame, any installed compression)."""
    path = Path(path)
    return dicom_image_from_dataset(read_dataset(path), path)


def dicom_image_from_dataset(dataset: Dataset, path: Path) -> DicomImage:
    """Decode the pixels of an already-read dataset into a `DicomImage`.

    pydicom converts header values only when they are used, so a damaged value (an unknown VR, a number that is
    not one) surfaces here, as any of many exception types: all of them are the file's fault, and one line.
    """
    try:
        return _image_from_dataset(dataset, path)
    except (InputFileError, *_NOT_THE_FILES_FAULT):
        raise
    except BaseException as exc:  # see the docstring: every failure here is the file's
        raise InputFileError(f"the DICOM header holds invalid values ({type(exc).__name__})", path=path,
                             fix="Copy it again from the source, or export it again.") from exc


def _image_from_dataset(dataset: Dataset, path: Path) -> DicomImage:
    if "PixelData" not in dataset:
        sop_class = dataset.get("SOPClassUID") or dataset.file_meta.get("MediaStorageSOPClassUID")
        if sop_class == MediaStorageDirectoryStorage:
            raise InputFileError("this is a DICOMDIR, the index of a disc or folder, not an image", path=path,
                                 fix="Open the folder that holds it to load its series.")
        if len(dataset) == 0 or (sop_class is not None and sop_class.name.endswith("Image Storage")):
            raise InputFileError("the file is cut short before its image (truncated DICOM)", path=path,
                                 fix="Copy it again from the source.")
        modality = _text(dataset, "Modality") or "unknown type"
        raise InputFileError(f"this DICOM file holds no image ({modality} object)", path=path, fix=_NO_IMAGE_FIX)
    if not dataset.PixelData:  # the element is there with no value: pydicom reads it as None
        raise InputFileError("DICOM instance missing PixelData: its image element is empty", path=path,
                             fix="Copy it again from the source, or export the image again.")
    transfer_syntax = dataset.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as exc:
        raise InputFileError(f"the image is compressed as '{transfer_syntax.name}', which cannot be decoded here",
                             path=path, fix="Export it uncompressed from the source system.") from exc
    if not decoder.is_available:
        raise InputFileError(f"no decoder for '{transfer_syntax.name}' is installed", path=path,
                             fix="Reinstall MedGemma Desktop to restore its image decoders.")
    _refuse_bomb(dataset, path)
    if not transfer_syntax.is_compressed and len(dataset.PixelData) < _expected_length(dataset):
        raise InputFileError("the file is cut short: its image data is incomplete (truncated DICOM)", path=path,
                             fix="Copy it again from the source.")
    try:
        values, invert = _decode(dataset)
        window = _default_window(dataset, values)
    except _NOT_THE_FILES_FAULT:
        raise
    except BaseException as exc:  # the decoder plugins report damaged data with many exception types, and the
        # Rust ones (pyo3) with a PanicException that is not an Exception
        raise InputFileError(f"the image data is cut short, damaged or has invalid header values "
                             f"({type(exc).__name__})", path=path, fix="Copy it again from the source.") from exc
    if not values.size:
        raise InputFileError("the image has no pixels (its Rows or Columns is 0)", path=path,
                             fix="Export the image again from the source system.")
    if not (values.ndim == 3 or (values.ndim == 4 and values.shape[-1] == 3)):
        raise InputFileError(f"the image's samples form an array of shape {list(values.shape)}, not grey or RGB "
                             "frames (check Samples per Pixel and Photometric Interpretation)", path=path,
                             fix="Export the image again from the source system.")
    if values.ndim != 4 and not np.isfinite(values).all():
        raise InputFileError("the image values are not finite numbers (check Rescale Slope and Intercept)",
                             path=path, fix="Export the image again from the source system.")
    return DicomImage(
        source=path,
        values=values,
        modality=_text(dataset, "Modality") or "OT",
        window=window,
        invert=invert,
        metadata=_descriptive(dataset),
        patient={keyword: _text(dataset, keyword) for keyword in IDENTIFYING_KEYWORDS if keyword in dataset},
        instance_number=_instance_number(dataset),
        position=_floats(dataset, "ImagePositionPatient", 3),
        orientation=_floats(dataset, "ImageOrientationPatient", 6),
        series_uid=_text(dataset, "SeriesInstanceUID"),
    )


def _refuse_bomb(dataset: Dataset, path: Path) -> None:
    """Refuse a header that promises more values than any real study holds, before a decoder allocates them."""
    values = 1
    for keyword in ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"):
        try:
            values *= max(int(dataset.get(keyword) or 1), 1)
        except (TypeError, ValueError, OverflowError):
            continue
    if values > MAX_DICOM_VALUES:
        raise InputFileError(f"the image claims {values:,} pixel values, more than the {MAX_DICOM_VALUES:,} this "
                             "app reads (possible decompression bomb)", path=path,
                             fix="Open a smaller series, or export fewer frames.")


def _expected_length(dataset: Dataset) -> int:
    """Bytes the header promises for uncompressed pixels; 0 when the header is too broken to say."""
    try:
        return int(get_expected_length(dataset, unit="bytes"))
    except (AttributeError, TypeError, ValueError, KeyError):
        return 0


def _decode(dataset: Dataset) -> tuple[npt.NDArray[np.float32] | npt.NDArray[np.uint8], bool]:
    """Pixels with a leading frame axis: float32 modality values for grayscale, uint8 RGB for colour.

    pydicom's decoders already turn YBR_FULL/YBR_FULL_422 (and JPEG's YCbCr) into RGB.
    """
    pixels = dataset.pixel_array
    photometric = _text(dataset, "PhotometricInterpretation").upper()
    samples = int(dataset.get("SamplesPerPixel") or 1)
    if photometric == "PALETTE COLOR":
        pixels, samples = apply_color_lut(pixels, dataset), 3
    if int(dataset.get("NumberOfFrames") or 1) == 1:
        pixels = pixels[np.newaxis]
    if samples == 3:
        # palette entries carry their own depth (uint8 or uint16); plain colour samples use Bits Stored
        bits = pixels.dtype.itemsize * 8 if photometric == "PALETTE COLOR" else int(dataset.BitsStored)
        return _to_uint8_rgb(pixels, bits), False
    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)
    return values, photometric == "MONOCHROME1"


def _to_uint8_rgb(pixels: npt.NDArray[np.generic], bits: int) -> npt.NDArray[np.uint8]:
    """Colour samples of `bits` significant bits onto 0..255 (8-bit data passes through unchanged)."""
    if pixels.dtype == np.uint8:
        return np.asarray(pixels, dtype=np.uint8)
    return np.round(pixels.astype(np.float64) / (2**bits - 1) * 255.0).clip(0, 255).astype(np.uint8)


def _default_window(dataset: Dataset, values: npt.NDArray[np.generic]) -> Window:
    """The file's first Window Center/Width, else soft tissue for CT, else the full range of the values."""
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is not None and width is not None:
        center = center[0] if isinstance(center, MultiValue) else center
        width = width[0] if isinstance(width, MultiValue) else width
        try:
            window = Window(float(center), float(width))
        except (TypeError, ValueError):
            window = None  # a window that is not a number: the file's other clues decide
        if window is not None and math.isfinite(window.center) and math.isfinite(window.width) and window.width > 0:
            return window
    if values.ndim == 4:
        return Window(127.5, 255.0)
    if _text(dataset, "Modality") == "CT":
        return DEFAULT_CT_WINDOW
    low, high = float(values.min()), float(values.max())
    width = high - low
    return Window((low + high) / 2, width if math.isfinite(width) and width >= 1.0 else 1.0)


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return ", ".join(str(item) for item in value)
    return str(value)


def _text_items(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, MultiValue) else [str(value)]


def _descriptive(dataset: Dataset) -> dict[str, str]:
    return {keyword: text for keyword in DESCRIPTIVE_KEYWORDS if (text := _text(dataset, keyword))}


def _floats(dataset: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    value = dataset.get(keyword)
    try:
        numbers = tuple(float(item) for item in value) if value is not None else ()
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _instance_number(dataset: Dataset) -> int | None:
    try:
        return int(dataset.get("InstanceNumber"))
    except (TypeError, ValueError):
        return None


def order_slices(images: Iterable[DicomImage]) -> tuple[DicomImage, ...]:
    """Order images along the slice normal (position . (row x column cosines)), else by InstanceNumber.

    Geometry wins because instance numbers run head-to-feet on some scanners and feet-to-head on others; the
    result runs towards increasing position along the normal (for axial slices: feet to head).
    """
    images = list(images)
    orientation = images[0].orientation if images else None
    located = [(image, position) for image in images if (position := image.position) is not None]
    if orientation is not None and len(located) == len(images):
        normal = np.cross(orientation[:3], orientation[3:])
        ordered = sorted(located, key=lambda pair: (float(np.dot(pair[1], normal)), pair[0].instance_number or 0))
        return tuple(image for image, _ in ordered)
    return tuple(sorted(images, key=lambda image: (image.instance_number is None, image.instance_number or 0,
                                                   image.source.name)))


def group_series(images: Iterable[DicomImage]) -> list[DicomSeries]:
    """Group images by SeriesInstanceUID, each series ordered by `order_slices`, largest series first."""
    by_uid: dict[str, list[DicomImage]] = {}
    for image in images:
        by_uid.setdefault(image.series_uid, []).append(image)
    series = [DicomSeries(images=order_slices(members), uid=uid) for uid, members in by_uid.items()]
    return sorted(series, key=lambda item: -item.slice_count)


def load_dicom_files(paths: Iterable[Path]) -> list[DicomSeries]:
    """Load DICOM image files into series; non-DICOM files and image-less objects (reports, plans) are skipped.

    A DICOM image that cannot be decoded stops the load with its name, so no series is silently missing a slice.
    """
    images = []
    for path in paths:
        try:
            dataset = read_dataset(path)
        except InputFileError:
            if is_dicom_file(path):
                raise
            continue
        try:
            is_directory = dataset.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage
        except Exception as exc:  # a damaged file meta value: pydicom converts it only here
            raise InputFileError(f"the file's DICOM header is damaged ({type(exc).__name__})", path=path,
                                 fix="Copy it again from the source.") from exc
        if "PixelData" not in dataset or is_directory:
            continue
        images.append(dicom_image_from_dataset(dataset, path))
    return group_series(images)


def load_dicom_folder(folder: Path | str) -> list[DicomSeries]:
    """Every DICOM image below `folder` (a DICOMDIR in it is followed instead), grouped into ordered series."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError("no such folder", path=folder, fix="Check the path and try again.")
    if (folder / "DICOMDIR").is_file():
        return load_dicomdir(folder / "DICOMDIR")
    series = load_dicom_files(sorted(path for path in folder.rglob("*") if path.is_file()))
    if not series:
        raise InputFileError("the folder holds no DICOM images", path=folder, fix=_NO_IMAGE_FIX)
    return series


def load_dicomdir(path: Path | str) -> list[DicomSeries]:
    """The image files a DICOMDIR references, grouped into ordered series."""
    path = Path(path)
    records = read_dataset(path).get("DirectoryRecordSequence")
    if records is None:
        raise InputFileError("not a DICOMDIR (it has no directory records)", path=path,
                             fix="Open the folder with the image files instead.")
    # ReferencedFileID is the file's path components relative to the DICOMDIR's folder.
    paths = [path.parent.joinpath(*_text_items(record.ReferencedFileID))
             for record in records if "ReferencedFileID" in record]
    inside = path.parent.resolve()
    outside = next((item for item in paths if not item.resolve().is_relative_to(inside)), None)
    if outside is not None:  # a hostile index could make the app read any file the user can
        raise InputFileError("the DICOMDIR points at a file outside its own folder", path=path,
                             fix="Open the folder with the image files instead.")
    missing = [item for item in paths if not item.is_file()]
    if missing:
        raise InputFileError(f"the DICOMDIR lists {len(missing)} files that are not there, e.g. {missing[0].name}",
                             path=path, fix="Copy the whole disc or folder, not just the DICOMDIR.")
    series = load_dicom_files(paths)
    if not series:
        raise InputFileError("the DICOMDIR lists no images", path=path, fix=_NO_IMAGE_FIX)
    return series
