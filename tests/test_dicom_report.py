"""Answers as DICOM: structured reports, presentation states and de-identified copies, each checked by dciodvfy
and read back with pydicom, on pydicom's real CT_small, MR_small and DICOMDIR series."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_validation import dciodvfy_errors
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medgemma_desktop.core.boxes import Box
from medgemma_desktop.core.dicom import load_dicom, load_dicom_folder
from medgemma_desktop.core.dicom_export import (
    answer_to_report,
    image_inputs,
    write_conversation_reports,
    written_summary,
)
from medgemma_desktop.core.dicom_report import ReportedAnswer, box_pixels, write_dicom_report
from medgemma_desktop.core.dicom_sources import InputRecord
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.export import DISCLAIMER
from medgemma_desktop.core.fingerprint import WeightsIdentity
from medgemma_desktop.core.imaging import dicom_image_input, load_image, volume_image_inputs
from medgemma_desktop.core.prompts import TaskMode
from medgemma_desktop.core.store import AnswerStatus, ConversationStore

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
MR_SMALL = Path(get_testdata_file("MR_small.dcm"))  # type: ignore[arg-type]
DICOMDIR = Path(get_testdata_file("DICOMDIR"))  # type: ignore[arg-type]
BRAIN_SERIES = DICOMDIR.parent / "77654033" / "CT2"  # "Routine Brain", four slices
MODEL = WeightsIdentity("/models/medgemma-1.5-4b-it", "a" * 64)
ADAPTER = WeightsIdentity("/models/adapter-rank8", "b" * 64)


def answer(boxes: tuple[Box, ...] = ()) -> ReportedAnswer:
    return ReportedAnswer(question="Is there a lesion?", answer="No focal lesion is seen.", task="Describe the image",
                          model=MODEL, adapter=ADAPTER, boxes=boxes)


def record(path: Path) -> InputRecord:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return InputRecord(path.name, path, {"SeriesInstanceUID": header.SeriesInstanceUID})


def series_record(folder: Path) -> InputRecord:
    first = next(path for path in sorted(folder.iterdir()) if path.is_file())
    return InputRecord("Routine Brain", folder, {"SeriesInstanceUID": pydicom.dcmread(first).SeriesInstanceUID})


def content_items(dataset: Dataset) -> list[Dataset]:
    """Every content item of an SR tree, depth first."""
    items = []
    for item in dataset.get("ContentSequence", []):
        items.append(item)
        items.extend(content_items(item))
    return items


def texts(report: Dataset, meaning: str) -> list[str]:
    return [item.TextValue for item in content_items(report)
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def evidence_uids(report: Dataset) -> set[tuple[str, str, str]]:
    """(study, series, instance) of every instance the evidence sequences list."""
    found = set()
    for name in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in report.get(name, []):
            for series in study.ReferencedSeriesSequence:
                for instance in series.ReferencedSOPSequence:
                    found.add((study.StudyInstanceUID, series.SeriesInstanceUID, instance.ReferencedSOPInstanceUID))
    return found


def instance_uids(paths: list[Path]) -> set[tuple[str, str, str]]:
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
    return {(h.StudyInstanceUID, h.SeriesInstanceUID, h.SOPInstanceUID) for h in headers}


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("source", [CT_SMALL, MR_SMALL], ids=["CT_small", "MR_small"])
def test_a_report_on_one_image_validates_and_refers_to_it(tmp_path: Path, source: Path) -> None:
    written = write_dicom_report(answer(), [record(source)], tmp_path)
    assert dciodvfy_errors(written.report) == []
    report = pydicom.dcmread(written.report)
    original = pydicom.dcmread(source, stop_before_pixels=True)
    assert report.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert report.StudyInstanceUID == original.StudyInstanceUID and report.PatientID == original.PatientID
    assert evidence_uids(report) == instance_uids([source])
    images = [item for item in content_items(report) if item.ValueType == "IMAGE"]
    assert [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in images] == [original.SOPInstanceUID]
    assert texts(report, "Request") == ["Is there a lesion?"]
    assert texts(report, "Finding") == ["No focal lesion is seen."]
    assert texts(report, "Procedure Description") == ["Describe the image"]
    assert texts(report, "Comment") == [DISCLAIMER]
    assert texts(report, "Algorithm Version") == [MODEL.sha256]
    parameters = " ".join(texts(report, "Algorithm Parameters"))
    assert f"medgemma-1.5-4b-it (sha256 {MODEL.sha256})" in parameters
    assert f"adapter-rank8 (sha256 {ADAPTER.sha256})" in parameters
    assert texts(report, "Device Observer Model Name") == ["medgemma-1.5-4b-it"]
    assert report.VerificationFlag == "UNVERIFIED" and report.PreliminaryFlag == "PRELIMINARY"
    assert written.presentation_state is None and written.deidentified == ()


def test_a_dicomdir_series_report_refers_to_every_instance(tmp_path: Path) -> None:
    slices = sorted(path for path in BRAIN_SERIES.iterdir() if path.is_file())
    # the viewer keeps one record per slice it sent; they all name the series' folder
    written = write_dicom_report(answer(), [series_record(BRAIN_SERIES)] * 3, tmp_path)
    assert dciodvfy_errors(written.report) == []
    report = pydicom.dcmread(written.report)
    assert len(slices) == 4 and evidence_uids(report) == instance_uids(slices)
    [series] = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert len(series.ReferencedSOPSequence) == 4


def test_a_localization_answer_carries_its_boxes_as_scoord_and_a_presentation_state(tmp_path: Path) -> None:
    box = Box("left lung", y0=100, x0=200, y1=600, x1=700)
    written = write_dicom_report(answer((box,)), [record(CT_SMALL)], tmp_path)
    assert written.presentation_state is not None
    for path in (written.report, written.presentation_state):
        assert dciodvfy_errors(path) == [], path.name
    image = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    # CT_small is 128 x 128: square already, so 0..1000 spans the 128 pixels
    pixels = box_pixels(box, image)
    assert (pixels.left, pixels.top, pixels.right, pixels.bottom) == pytest.approx((25.6, 12.8, 89.6, 76.8))
    expected = [25.6, 12.8, 89.6, 12.8, 89.6, 76.8, 25.6, 76.8, 25.6, 12.8]

    report = pydicom.dcmread(written.report)
    [region] = [item for item in content_items(report) if item.ValueType == "SCOORD"]
    assert region.GraphicType == "POLYLINE"
    np.testing.assert_allclose(region.GraphicData, expected, rtol=1e-6)
    [source] = region.ContentSequence
    assert source.RelationshipType == "SELECTED FROM"
    assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert "left lung" in texts(report, "Finding")

    state = pydicom.dcmread(written.presentation_state)
    assert state.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State
    [annotation] = state.GraphicAnnotationSequence
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    [graphic] = annotation.GraphicObjectSequence
    assert graphic.GraphicAnnotationUnits == "PIXEL"
    np.testing.assert_allclose(graphic.GraphicData, expected, rtol=1e-6)
    assert annotation.TextObjectSequence[0].UnformattedTextValue == "left lung"
    assert state.StudyInstanceUID == image.StudyInstanceUID


def test_boxes_on_a_wide_image_are_mapped_back_through_the_padding() -> None:
    image = Dataset()
    image.Rows, image.Columns = 100, 200  # padded to 200 x 200: 50 rows of black above and below
    pixels = box_pixels(Box("x", y0=250, x0=0, y1=750, x1=1000), image)
    assert (pixels.left, pixels.top, pixels.right, pixels.bottom) == (0, 0, 200, 100)


def test_deidentified_export_refers_to_the_new_uids_and_leaves_the_originals_alone(tmp_path: Path) -> None:
    slices = sorted(path for path in BRAIN_SERIES.iterdir() if path.is_file())
    before = {path: file_hash(path) for path in [CT_SMALL, *slices]}
    box = Box("brain", y0=100, x0=100, y1=900, x1=900)
    written = write_dicom_report(answer((box,)), [record(CT_SMALL)], tmp_path / "ct", deidentify=True)
    series = write_dicom_report(answer(), [series_record(BRAIN_SERIES)], tmp_path / "series", deidentify=True)
    assert {path: file_hash(path) for path in before} == before

    for result in (written, series):
        files = [result.report, *result.deidentified]
        files += [result.presentation_state] if result.presentation_state else []
        for path in files:
            assert dciodvfy_errors(path) == [], path.name
        report = pydicom.dcmread(result.report)
        assert evidence_uids(report) == instance_uids(list(result.deidentified))
        assert report.PatientName == "" and report.PatientID != "CompressedSamples^CT1"
        assert report.PatientIdentityRemoved == "YES"
    assert len(series.deidentified) == 4
    copy = pydicom.dcmread(written.deidentified[0])
    original = pydicom.dcmread(CT_SMALL)
    assert copy.SOPInstanceUID != original.SOPInstanceUID
    assert copy.StudyInstanceUID != original.StudyInstanceUID
    assert copy.PatientIdentityRemoved == "YES"
    assert copy.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    np.testing.assert_array_equal(copy.pixel_array, original.pixel_array)
    state = pydicom.dcmread(written.presentation_state)  # type: ignore[arg-type]
    assert state.GraphicAnnotationSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == \
        copy.SOPInstanceUID
    assert state.PatientID == copy.PatientID and state.StudyInstanceUID == copy.StudyInstanceUID
    assert state.PatientIdentityRemoved == "YES"


def test_pictures_get_no_report_and_one_line_saying_why(tmp_path: Path) -> None:
    picture = tmp_path / "photo.png"
    Image.new("RGB", (20, 20)).save(picture)
    with pytest.raises(UserFacingError) as raised:
        write_dicom_report(answer(), [InputRecord("photo.png", picture)], tmp_path / "out")
    message = str(raised.value)
    assert "\n" not in message and "photo.png" in message and "no DICOM image" in message
    assert not (tmp_path / "out").exists()
    mixed = write_dicom_report(answer(), [InputRecord("photo.png", picture), record(CT_SMALL)], tmp_path / "out")
    assert mixed.notes == ("photo.png: not a DICOM image, so a DICOM report cannot refer to it",)
    assert dciodvfy_errors(mixed.report) == []


def test_images_of_two_patients_get_no_report(tmp_path: Path) -> None:
    with pytest.raises(UserFacingError, match="2 different patients"):
        write_dicom_report(answer(), [record(CT_SMALL), record(MR_SMALL)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_moved_source_is_named_with_what_to_do(tmp_path: Path) -> None:
    gone = InputRecord("CT_small.dcm", tmp_path / "moved.dcm", {"SeriesInstanceUID": "1.2.3"})
    with pytest.raises(UserFacingError, match=r"moved\.dcm: the DICOM files asked about are no longer there"):
        write_dicom_report(answer(), [gone], tmp_path / "out")


def test_a_stored_conversation_exports_one_report_per_dicom_question(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "history.sqlite3", keep_patient_data=True)
    conversation = store.create_conversation().id
    ct = dicom_image_input(load_dicom(CT_SMALL))
    picture = tmp_path / "photo.png"
    Image.new("RGB", (20, 20)).save(picture)
    located = store.add_question(conversation, "right lung", [ct], "localization")
    answer_id = store.begin_answer(located.id, MODEL, ADAPTER, {})
    text = 'Final Answer: [{"box_2d": [100, 200, 600, 700], "label": "right lung"}]'
    store.finish_answer(answer_id, text, {}, AnswerStatus.DONE)
    about_picture = store.add_question(conversation, "What is this?", [load_image(picture)], "describe")
    store.finish_answer(store.begin_answer(about_picture.id, MODEL, None, {}), "A photo.", {})

    written, left_out = write_conversation_reports(store, conversation, tmp_path / "out")
    assert [item.report.name for item in written] == ["question_1.dcm"]
    assert left_out == ["question 2: photo.png: no DICOM image was asked about, so there is nothing a DICOM "
                        "report could refer to. Export it as Markdown, JSON or PDF instead."]
    report = pydicom.dcmread(written[0].report)
    assert texts(report, "Procedure Description") == [TaskMode.LOCALIZATION.title]
    assert "right lung" in texts(report, "Finding")
    assert written[0].presentation_state is not None
    assert dciodvfy_errors(written[0].presentation_state) == []
    store.close()


def test_an_answer_in_hand_about_a_series_as_the_model_saw_it(tmp_path: Path) -> None:
    """`ask --sr` and batch have no store: the images the model was sent (sampled slices) name their series."""
    [series] = load_dicom_folder(BRAIN_SERIES)
    sent = volume_image_inputs(series, max_slices=2)  # two of the four slices went to the model
    reported = answer_to_report("Any bleed?", "<unused94>thought\nhmm<unused95>No bleed.", TaskMode.CT_SERIES.value,
                                MODEL, None)
    assert reported.answer == "No bleed." and reported.task == TaskMode.CT_SERIES.title and reported.boxes == ()
    written = write_dicom_report(reported, image_inputs(sent), tmp_path)
    assert dciodvfy_errors(written.report) == []
    slices = [path for path in BRAIN_SERIES.iterdir() if path.is_file()]
    assert evidence_uids(pydicom.dcmread(written.report)) == instance_uids(slices)  # every slice, not just two


def test_the_summary_line_says_what_was_written_and_left_out(tmp_path: Path) -> None:
    picture = tmp_path / "photo.png"
    Image.new("RGB", (20, 20)).save(picture)
    box = Box("lung", y0=100, x0=100, y1=500, x1=500)
    written = write_dicom_report(answer((box,)), [InputRecord("photo.png", picture), record(CT_SMALL)],
                                 tmp_path / "out", deidentify=True)
    line = written_summary(tmp_path / "out", [written], ["question 2: no answer"])
    assert line == (f"Saved 1 DICOM report, 1 presentation state, 1 de-identified image to {tmp_path / 'out'}. "
                    "Notes: question 2: no answer; photo.png: not a DICOM image, so a DICOM report cannot refer "
                    "to it")


def test_a_single_image_whose_file_is_gone_is_reported_from_what_the_store_kept(tmp_path: Path) -> None:
    moved = tmp_path / "ct.dcm"
    moved.write_bytes(CT_SMALL.read_bytes())
    store = ConversationStore(tmp_path / "history.sqlite3", keep_patient_data=True)
    conversation = store.create_conversation().id
    message = store.add_question(conversation, "spine", [dicom_image_input(load_dicom(moved))], "localization")
    text = 'Final Answer: [{"box_2d": [100, 100, 500, 500], "label": "spine"}]'
    store.finish_answer(store.begin_answer(message.id, MODEL, ADAPTER, {}), text, {})
    moved.unlink()

    [written], _ = write_conversation_reports(store, conversation, tmp_path / "out")
    original = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    for path in (written.report, written.presentation_state):
        assert path is not None and dciodvfy_errors(path) == [], path
    report = pydicom.dcmread(written.report)
    assert evidence_uids(report) == instance_uids([CT_SMALL])
    assert report.PatientName == original.PatientName and report.StudyDate == original.StudyDate
    with pytest.raises(UserFacingError, match="a de-identified copy needs the image itself"):
        write_conversation_reports(store, conversation, tmp_path / "deid", deidentify=True)
    store.close()


def test_weights_from_a_remote_server_without_a_hash_still_validate(tmp_path: Path) -> None:
    remote = ReportedAnswer(question="q", answer="a", task="Describe the image",
                            model=WeightsIdentity("medgemma-1.5-4b-it", ""), adapter=None)
    written = write_dicom_report(remote, [record(CT_SMALL)], tmp_path)
    assert dciodvfy_errors(written.report) == []
    report = pydicom.dcmread(written.report)
    assert texts(report, "Algorithm Version") == ["unknown"]
    assert "medgemma-1.5-4b-it (sha256 unknown)" in " ".join(texts(report, "Algorithm Parameters"))


def test_a_history_kept_without_patient_details_says_what_a_report_needs(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "history.sqlite3")  # the default: no file paths, no UIDs
    conversation = store.create_conversation().id
    message = store.add_question(conversation, "What organ?", [dicom_image_input(load_dicom(CT_SMALL))], "describe")
    store.finish_answer(store.begin_answer(message.id, MODEL, None, {}), "The liver.", {})
    with pytest.raises(UserFacingError, match="the history kept no file path or DICOM UIDs") as raised:
        write_conversation_reports(store, conversation, tmp_path / "out")
    assert "\n" not in str(raised.value) and "keeping patient details" in str(raised.value)
    store.close()
