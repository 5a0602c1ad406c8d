"""The DICOM instances an answer was about, found again on disk for a report that refers to them.

The store keeps where each input came from (a file, or for a series the folder of its files) and, kept apart with
the patient data, its Series Instance UID; a series' every instance is found again by that UID below the folder.
A single image whose file is gone is still referred to, from the UIDs, size and patient/study fields the store
kept (`stored_header`); only its de-identified copy then cannot be made.
Only the headers are read (no pixels), except for de-identified copies, which need the whole file. Pictures that
are not DICOM cannot be referred to by a DICOM report; they are named in `SourceSet.skipped`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medgemma_desktop.core.errors import InputFileError, UserFacingError

NOT_DICOM_FIX = "Export it as Markdown, JSON or PDF instead."


@dataclass(frozen=True)
class InputRecord:
    """What the store knows about one input: its label, where it came from, and its UIDs (patient data)."""

    label: str
    source: Path
    patient: Mapping[str, str] = field(default_factory=dict, repr=False)
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DicomSource:
    """One DICOM instance behind an answer: its file and its header (pixel data not read)."""

    path: Path
    header: Dataset = field(repr=False)
    on_disk: bool = True  # False: the file is gone and `header` was rebuilt from what the store kept

    @property
    def is_grayscale(self) -> bool:
        return int(self.header.get("SamplesPerPixel") or 1) == 1


@dataclass(frozen=True)
class SourceSet:
    sources: tuple[DicomSource, ...]
    skipped: tuple[str, ...]  # one line per input that is not DICOM


def read_header(path: Path) -> Dataset | None:
    """The file's DICOM header without pixel data, or None when it is not a DICOM image file."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    return header if "SOPInstanceUID" in header and "Rows" in header else None


# What the store keeps of a single DICOM image is enough to refer to it once its file is gone.
_STORED_REFERENCE = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Rows", "Columns")
_STORED_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                         "AccessionNumber", "StudyID", "ReferringPhysicianName")
_COLOUR = ("RGB", "YBR")


def stored_header(item: InputRecord) -> Dataset | None:
    """The header a report needs, rebuilt from the store's fields of a single DICOM image (not a slice of a
    series, whose other instances the store does not list); None when something is missing."""
    known = {**item.metadata, **item.patient}
    if "slice_index" in item.metadata or any(not known.get(key) for key in _STORED_REFERENCE):
        return None
    header = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        setattr(header, keyword, known[keyword])
    header.Rows, header.Columns = int(known["Rows"]), int(known["Columns"])
    header.Modality = known.get("Modality", "OT")
    for keyword in _STORED_PATIENT_STUDY:
        setattr(header, keyword, known.get(keyword, ""))  # Type 2: empty when the file had none
    if known.get("FrameOfReferenceUID"):
        header.FrameOfReferenceUID = known["FrameOfReferenceUID"]
    photometric = known.get("PhotometricInterpretation", "MONOCHROME2")
    header.SamplesPerPixel = 3 if photometric.startswith(_COLOUR) else 1
    return header


def _series_files(folder: Path, series_uid: str) -> list[DicomSource]:
    found = []
    for path in sorted(item for item in folder.rglob("*") if item.is_file() and item.name != "DICOMDIR"):
        header = read_header(path)
        if header is not None and header.get("SeriesInstanceUID") == series_uid:
            found.append(DicomSource(path, header))
    return found


def find_sources(inputs: Iterable[InputRecord]) -> SourceSet:
    """The DICOM instances behind `inputs`, each once, in the order given.

    Raises `UserFacingError` when none of the inputs is DICOM (a report needs something to refer to) or when a
    DICOM input's files are no longer where they were.
    """
    sources: dict[str, DicomSource] = {}
    skipped: list[str] = []
    searched: set[tuple[Path, str]] = set()
    inputs = list(inputs)
    for item in inputs:
        series_uid = item.patient.get("SeriesInstanceUID", "")
        if str(item.source) in ("", ".") and not item.patient:
            raise UserFacingError(f"{item.label}: the history kept no file path or DICOM UIDs for this image (patient "
                                  "details are kept only by choice), and a DICOM report needs them",
                                  fix="Turn on keeping patient details in Settings before asking, or write the "
                                      "report when asking (File > Save as DICOM report… right after the answer, or "
                                      "ask --sr).")
        if item.source.is_dir() and series_uid:
            if (item.source, series_uid) in searched:
                continue
            searched.add((item.source, series_uid))
            found = _series_files(item.source, series_uid)
            if not found:
                raise InputFileError("the series' DICOM files are no longer in this folder", path=item.source,
                                     fix="Put them back, or open the series again and ask again.")
        elif item.source.is_file() and (header := read_header(item.source)) is not None:
            found = [DicomSource(item.source, header)]
        elif (header := stored_header(item)) is not None:
            found = [DicomSource(item.source, header, on_disk=False)]
        elif series_uid:
            raise InputFileError("the DICOM files asked about are no longer there", path=item.source,
                                 fix="Put them back, or open them again and ask again.")
        else:
            skipped.append(f"{item.label}: not a DICOM image, so a DICOM report cannot refer to it")
            continue
        for source in found:
            sources.setdefault(str(source.header.SOPInstanceUID), source)
    patients = {str(source.header.get("PatientID", "")) for source in sources.values()}
    if len(patients) > 1:
        raise UserFacingError(f"the images belong to {len(patients)} different patients; a DICOM report is about "
                              "one patient's images", fix="Ask about each patient's images separately.")
    if not sources:
        first = inputs[0].label if inputs else "the question"
        raise UserFacingError(f"{first}: no DICOM image was asked about, so there is nothing a DICOM report could "
                              "refer to", fix=NOT_DICOM_FIX)
    return SourceSet(tuple(sources.values()), tuple(skipped))


def full_dataset(source: DicomSource) -> Dataset:
    """The whole instance, pixel data included (for a de-identified copy)."""
    if not source.on_disk:
        raise InputFileError("this DICOM file is no longer there, and a de-identified copy needs the image itself",
                             path=source.path, fix="Put it back, or save the report without de-identifying.")
    try:
        return pydicom.dcmread(source.path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise InputFileError(f"the file could not be read again ({type(exc).__name__})", path=source.path,
                             fix="Check that it is still there and readable.") from exc
