"""An answer as a DICOM Comprehensive Structured Report, the way AI results go back to PACS (IHE AI Results).

The report sits in the study of the images it is about (patient and study copied from the first of them) and
holds, as content items: the question (Request), the task (Procedure Description), the answer (Finding), the
research-use disclaimer (Comment), the model and adapter as a device observer and an algorithm identification
(TID 4019: names and SHA-256), every source instance as an IMAGE reference, and each localization box as a Finding
inferred from an image region (SCOORD polyline on its source image). The evidence sequences list every source
instance by study and series. Boxes on a grayscale image also go out as a presentation state
(`core.presentation_state`), which PACS viewers draw directly.

With `deidentify`, the source instances are first copied de-identified (`core.deidentify`) and the report and
presentation state are built from the copies, so they refer to the new UIDs and carry no patient data (apart
from what the question and answer texts themselves say).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medgemma_desktop import __version__
from medgemma_desktop.core.boxes import Box, PixelBox, box_to_pixels
from medgemma_desktop.core.deidentify import burned_in_warning, deidentify
from medgemma_desktop.core.dicom_sources import DicomSource, InputRecord, SourceSet, find_sources, full_dataset
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.export import DISCLAIMER
from medgemma_desktop.core.fingerprint import WeightsIdentity
from medgemma_desktop.core.imaging import square_padding
from medgemma_desktop.core.presentation_state import MANUFACTURER, boxes_presentation_state, rectangle

REPORT_TITLE = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report")
SR_SERIES_NUMBER = 9901
ENGLISH = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
NO_ANSWER = "(no answer text)"


class DicomReportError(UserFacingError):
    """The report or its companions could not be written."""

    kind = "export"


@dataclass(frozen=True)
class ReportedAnswer:
    """What a report says: one question, its answer (thinking removed), how it was produced, and its boxes."""

    question: str
    answer: str
    task: str
    model: WeightsIdentity
    adapter: WeightsIdentity | None
    boxes: tuple[Box, ...] = ()  # normalised 0..1000 over the padded square of the first source image
    complete: bool = True


@dataclass(frozen=True)
class WrittenReport:
    report: Path
    presentation_state: Path | None
    deidentified: tuple[Path, ...] = ()
    notes: tuple[str, ...] = field(default=())  # non-DICOM inputs left out, burned-in text warnings


def box_pixels(box: Box, image: Dataset) -> PixelBox:
    """A box the model gave over the padded square, on the pixels of the DICOM image it was asked about."""
    width, height = int(image.Columns), int(image.Rows)
    return box_to_pixels(box, (width, height), square_padding(width, height))


def _weights_text(identity: WeightsIdentity | None) -> str:
    """"name (sha256 …)"; a remote server's weights may have no hash to give."""
    if identity is None:
        return "none"
    return f"{Path(identity.folder).name} (sha256 {identity.sha256 or 'unknown'})"


def _observation_context(answer: ReportedAnswer) -> hd.sr.ObservationContext:
    entropy = [answer.model.sha256, answer.adapter.sha256 if answer.adapter else ""]
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=entropy),  # the same weights give the same device UID
        name=MANUFACTURER, manufacturer_name=MANUFACTURER, model_name=Path(answer.model.folder).name[:64])
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _algorithm(answer: ReportedAnswer) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=f"MedGemma {Path(answer.model.folder).name}", version=answer.model.sha256 or "unknown",
        parameters=[f"model: {_weights_text(answer.model)}", f"adapter: {_weights_text(answer.adapter)}",
                    f"task: {answer.task}", f"app: {MANUFACTURER} {__version__}"])


def _text(name: hd.sr.CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value or NO_ANSWER,
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _image(header: Dataset, relationship: hd.sr.RelationshipTypeValues) -> hd.sr.ImageContentItem:
    return hd.sr.ImageContentItem(name=codes.DCM.SourceImage, referenced_sop_class_uid=header.SOPClassUID,
                                  referenced_sop_instance_uid=header.SOPInstanceUID, relationship_type=relationship)


def _box_finding(box: PixelBox, image: Dataset) -> hd.sr.TextContentItem:
    finding = _text(codes.DCM.Finding, box.label or "region")
    region = hd.sr.ScoordContentItem(name=codes.DCM.ImageRegion, graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                     graphic_data=rectangle(box),
                                     relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM)
    region.ContentSequence = hd.sr.ContentSequence(
        [_image(image, hd.sr.RelationshipTypeValues.SELECTED_FROM)])
    finding.ContentSequence = hd.sr.ContentSequence([region])
    return finding


def build_report(answer: ReportedAnswer, headers: Sequence[Dataset],
                 pixel_boxes: Sequence[PixelBox] = ()) -> hd.sr.ComprehensiveSR:
    """The report for `answer` about the instances `headers`; `pixel_boxes` lie on `headers[0]`."""
    root = hd.sr.ContainerContentItem(name=REPORT_TITLE)
    items: list[Dataset] = [*hd.sr.LanguageOfContentItemAndDescendants(ENGLISH),
                            *_observation_context(answer), *_algorithm(answer),
                            _text(codes.DCM.Request, answer.question),
                            _text(codes.DCM.ProcedureDescription, answer.task),
                            _text(codes.DCM.Finding, answer.answer),
                            *(_box_finding(box, headers[0]) for box in pixel_boxes),
                            _text(codes.DCM.Comment, DISCLAIMER),
                            *(_image(header, hd.sr.RelationshipTypeValues.CONTAINS) for header in headers)]
    root.ContentSequence = hd.sr.ContentSequence(items)
    return hd.sr.ComprehensiveSR(
        evidence=list(headers), content=root, series_instance_uid=generate_uid(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        is_complete=answer.complete, is_final=False, is_verified=False,
        series_description="MedGemma answer (research use only)", manufacturer_model_name=MANUFACTURER,
        software_versions=__version__)


def _deidentified_copies(sources: Sequence[DicomSource], folder: Path) -> tuple[list[Dataset], list[Path], list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    headers, paths, notes = [], [], []
    for source in sources:
        copy = deidentify(full_dataset(source))
        path = folder / f"{copy.SOPInstanceUID}.dcm"
        copy.save_as(path, enforce_file_format=True)
        paths.append(path)
        headers.append(copy)
        if warning := burned_in_warning(copy):
            notes.append(f"{path.name}: {warning}")
    return headers, paths, notes


def write_dicom_report(answer: ReportedAnswer, inputs: Sequence[InputRecord], out_dir: Path | str, *,
                       deidentify: bool = False, stem: str = "report") -> WrittenReport:
    """Write `<stem>.dcm` (the SR), `<stem>_boxes.dcm` (a presentation state, when there are boxes on a grayscale
    image) and, with `deidentify`, de-identified copies of the sources under `<stem>_images/`, into `out_dir`.

    The original files are only read. Raises `UserFacingError` when none of `inputs` is DICOM or a file cannot be
    written.
    """
    out_dir = Path(out_dir)
    found: SourceSet = find_sources(inputs)
    notes = list(found.skipped)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        copies: list[Path] = []
        if deidentify:
            headers, copies, burned = _deidentified_copies(found.sources, out_dir / f"{stem}_images")
            notes += burned
        else:
            headers = [source.header for source in found.sources]
        pixel_boxes = [box_pixels(box, headers[0]) for box in answer.boxes]
        report = build_report(answer, headers, pixel_boxes)
        report_path = out_dir / f"{stem}.dcm"
        report.save_as(report_path, enforce_file_format=True)
        state_path = None
        if pixel_boxes and found.sources[0].is_grayscale:
            state = boxes_presentation_state(headers[0], pixel_boxes, description=f"MedGemma: {answer.question}")
            state_path = out_dir / f"{stem}_boxes.dcm"
            state.save_as(state_path, enforce_file_format=True)
    except OSError as exc:
        raise DicomReportError(f"cannot write the DICOM report ({exc.strerror or exc})", path=out_dir,
                               fix="Choose another folder or free some disk space.") from exc
    return WrittenReport(report_path, state_path, tuple(copies), tuple(notes))
