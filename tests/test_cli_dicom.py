"""`ask --sr DIR [--deidentify]` and `history export ID --format dicom` as a user runs them, on the tiny
checkpoint and pydicom's DICOMDIR: every file they write passes dciodvfy and the reports refer to them."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
from dicom_validation import dciodvfy_errors
from PIL import Image
from pydicom.data import get_testdata_file

from medgemma_desktop.cli import main

DICOMDIR = Path(get_testdata_file("DICOMDIR"))  # type: ignore[arg-type]


def referenced(report: Path) -> set[str]:
    evidence = pydicom.dcmread(report).CurrentRequestedProcedureEvidenceSequence
    return {instance.ReferencedSOPInstanceUID for study in evidence for series in study.ReferencedSeriesSequence
            for instance in series.ReferencedSOPSequence}


def test_ask_sr_then_history_export_dicom(capsys, tiny_checkpoint, tmp_path: Path) -> None:
    history, out = tmp_path / "history.sqlite3", tmp_path / "sr"
    # The DICOMDIR's largest CT series has 5 slices; the model sees 3 of them, the report refers to all 5.
    assert main(["ask", "--model", str(tiny_checkpoint.model_dir), "--image", str(DICOMDIR), "--task", "ct-series",
                 "--slices", "3", "--max-new-tokens", "2", "--history-file", str(history), "--sr", str(out),
                 "--deidentify"]) == 0
    err = capsys.readouterr().err
    assert f"-- Saved 1 DICOM report, 5 de-identified images to {out}" in err and "Traceback" not in err
    copies = sorted((out / "report_images").iterdir())
    assert dciodvfy_errors(out / "report.dcm") == []
    # This series' own files lack the Laterality dciodvfy asks for: the copies may carry that, and nothing new.
    series = DICOMDIR.parent / "98892001" / "CT5N"
    inherited = {error for path in series.iterdir() for error in dciodvfy_errors(path)}
    for path in copies:
        assert set(dciodvfy_errors(path)) <= inherited, path.name
    assert referenced(out / "report.dcm") == {pydicom.dcmread(path).SOPInstanceUID for path in copies}

    # `ask` kept the conversation without patient details (the default): its report cannot be made again later.
    conversation = re.search(r"kept as conversation (\d+)", err).group(1)  # type: ignore[union-attr]
    assert main(["history", "--history-file", str(history), "export", conversation, "--format", "dicom",
                 "--out", str(tmp_path / "later")]) == 2
    assert "the history kept no file path or DICOM UIDs" in capsys.readouterr().err


def test_history_export_dicom_of_a_history_with_patient_details(capsys, tmp_path: Path) -> None:
    from medgemma_desktop.core.dicom import load_dicomdir
    from medgemma_desktop.core.fingerprint import WeightsIdentity
    from medgemma_desktop.core.imaging import volume_image_inputs
    from medgemma_desktop.core.store import ConversationStore

    history = tmp_path / "history.sqlite3"
    series = next(item for item in load_dicomdir(DICOMDIR) if item.modality == "CT")
    with ConversationStore(history, keep_patient_data=True) as store:
        conversation = store.create_conversation().id
        message = store.add_question(conversation, "Any bleed?", volume_image_inputs(series, 3), "ct_series")
        store.finish_answer(store.begin_answer(message.id, WeightsIdentity("medgemma", "e" * 64), None, {}),
                            "No bleed.", {})
    exported = tmp_path / "exported"
    assert main(["history", "--history-file", str(history), "export", str(conversation), "--format", "dicom",
                 "--out", str(exported)]) == 0
    assert capsys.readouterr().out.strip() == f"Saved 1 DICOM report to {exported}"
    assert dciodvfy_errors(exported / "question_1.dcm") == []
    assert referenced(exported / "question_1.dcm") == {
        pydicom.dcmread(image.source).SOPInstanceUID for image in series.images}


def test_a_report_of_pictures_or_a_lone_deidentify_is_one_line(capsys, tiny_checkpoint, tmp_path: Path) -> None:
    picture = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (80, 80, 80)).save(picture)
    base = ["ask", "--model", str(tiny_checkpoint.model_dir), "--image", str(picture), "--max-new-tokens", "2",
            "--no-history", "What is this?"]
    assert main([*base, "--deidentify"]) == 2
    assert "--deidentify goes with --sr DIR" in capsys.readouterr().err
    assert main([*base, "--sr", str(tmp_path / "sr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("medgemma-desktop: photo.png: no DICOM image was asked about") and "Markdown" in err
    assert main(["history", "--history-file", str(tmp_path / "h.sqlite3"), "export", "1", "--format", "md",
                 "--deidentify"]) == 2


def test_batch_sr_writes_a_report_per_dicom_item_and_says_why_not_for_pictures(tiny_checkpoint, tmp_path: Path,
                                                                                capsys) -> None:
    import json

    picture = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (80, 80, 80)).save(picture)
    ct = tmp_path / "ct.dcm"
    ct.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())  # type: ignore[arg-type]
    results, reports = tmp_path / "results.jsonl", tmp_path / "reports"
    assert main(["batch", str(ct), str(picture), "--model", str(tiny_checkpoint.model_dir), "--max-new-tokens", "2",
                 "--out", str(results), "--sr", str(reports)]) == 0
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    by_input = {Path(row["input"]).name: row for row in rows}
    assert by_input["photo.png"]["dicom_report"].startswith("photo.png: no DICOM image was asked about")
    report = Path(by_input["ct.dcm"]["dicom_report"])
    assert report.parent == reports and dciodvfy_errors(report) == []
    assert referenced(report) == {pydicom.dcmread(ct).SOPInstanceUID}
    assert main(["batch", str(ct), "--model", str(tiny_checkpoint.model_dir), "--out", str(tmp_path / "r.csv"),
                 "--deidentify"]) == 2
    assert "--deidentify goes with --sr DIR" in capsys.readouterr().err
