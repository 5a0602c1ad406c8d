"""`batch` over pydicom's own files, the way a user runs it: a row per item, the bad file named in its row, and a
run stopped by Ctrl+C or killed outright goes on where it stopped without answering anything twice."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from medgemma_desktop.core.engine import GenerationSettings
from medgemma_desktop.session.batch import BatchTask, batch_units, run_batch
from medgemma_desktop.session.batch_results import ResultsFile, read_results


def _dicomdir_with_one_series(folder: Path) -> Path:
    """A DICOMDIR (written by pydicom's FileSet) indexing three CT_small slices of one series."""
    slices = folder / "slices"
    slices.mkdir(parents=True)
    uid = generate_uid()
    for index in range(3):
        dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        dataset.SeriesInstanceUID = uid
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.ImagePositionPatient = [0.0, 0.0, 2.5 * index]
        dataset.InstanceNumber = index + 1
        dataset.save_as(slices / f"{index}.dcm")
    files = FileSet()
    for path in sorted(slices.iterdir()):
        files.add(path)
    files.write(folder / "disc")
    return folder / "disc" / "DICOMDIR"


@pytest.fixture
def study_inputs(tmp_path: Path) -> list[Path]:
    ct = Path(shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "CT_small.dcm"))
    mr = Path(shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "MR_small.dcm"))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(ct.read_bytes()[:3000])
    return [ct, mr, _dicomdir_with_one_series(tmp_path), truncated]


def _batch(tiny_checkpoint, inputs: list[Path], out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "medgemma_desktop", "batch", *map(str, inputs), "--model",
               str(tiny_checkpoint.model_dir), "--adapter", str(tiny_checkpoint.adapter_dir), "--max-new-tokens", "3",
               "--out", str(out)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(process: subprocess.Popen, out: Path, more_than: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not (out.exists() and len(read_results(out)) > more_than):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no row was written"
        time.sleep(0.02)


def test_batch_rows_resume_after_ctrl_c_and_a_kill_without_answering_twice(tiny_checkpoint, study_inputs,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    first = _batch(tiny_checkpoint, study_inputs, out)
    _wait_for_rows(first, out, 0)
    first.send_signal(signal.SIGINT)  # Ctrl+C: finish the item being answered, then stop
    _, err = first.communicate(timeout=300)
    assert first.returncode == 130, err
    assert "stopping after this item" in err and "Traceback" not in err
    after_stop = read_results(out)
    assert 1 <= len(after_stop) < 4 and out.read_text().endswith("\n")

    second = _batch(tiny_checkpoint, study_inputs, out)
    _wait_for_rows(second, out, len(after_stop))
    second.kill()
    second.communicate(timeout=60)
    before = read_results(out)
    assert before[:len(after_stop)] == after_stop
    with out.open("a") as handle:  # as if killed in the middle of writing a row
        handle.write('{"input": "/somewhere", "answ')

    third = _batch(tiny_checkpoint, study_inputs, out)
    _, err = third.communicate(timeout=600)
    assert third.returncode == 0, err
    assert f"{len(before)} of 4 inputs were finished by an earlier run" in err
    rows = read_results(out)
    assert rows[:len(before)] == before  # finished rows kept as they were: nothing answered twice
    assert [row["input"] for row in rows] == [str(path) for path in study_inputs]
    assert all(json.loads(line) for line in out.read_text().splitlines())  # every line a whole row
    by_input = {Path(row["input"]).name: row for row in rows}
    assert "truncated.dcm" in by_input["truncated.dcm"]["error"] and "truncated" in by_input["truncated.dcm"]["error"]
    good = [by_input[name] for name in ("CT_small.dcm", "MR_small.dcm", "DICOMDIR")]
    assert all(row["error"] == "" and row["prompt_tokens"] > 0 and row["model_sha256"] for row in good)
    assert by_input["DICOMDIR"]["task"] == "ct_series" and by_input["DICOMDIR"]["label"] == "CT series (3 slices)"
    assert by_input["CT_small.dcm"]["task"] == "describe"
    assert "CompressedSamples" not in out.read_text()  # CT_small's patient name: no patient data unless asked


def _raw(path: Path) -> str:
    with path.open(encoding="utf-8", newline="") as handle:
        return handle.read()


def test_csv_results_hold_line_breaks_and_quotes_and_lose_only_a_cut_last_row(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    rows = [{"input": f"/study/{index}", "item": "", "answer": f'line one\r\nline "two", {index}', "boxes": [[1, 2]],
             "error": ""} for index in range(3)]
    with ResultsFile.open(out) as results:
        for row in rows:
            results.write(row)
    text = _raw(out)
    out.write_text(text[:-9], encoding="utf-8", newline="")  # killed while writing the last row
    reopened = ResultsFile.open(out)
    reopened.close()
    assert reopened.done == {("/study/0", ""), ("/study/1", "")}
    kept = read_results(out)
    assert [row["answer"] for row in kept] == [row["answer"] for row in rows[:2]]
    assert json.loads(kept[0]["boxes"]) == [[1, 2]]
    assert _raw(out) == text[:text.index("/study/2")]  # whole rows only


def test_rows_name_the_inputs_and_carry_patient_data_only_when_asked(tiny_engine, tmp_path: Path) -> None:
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for index, shade in enumerate((30, 200)):
        Image.new("RGB", (64, 48), (shade, shade, shade)).save(pictures / f"{index}.png")
    ct = Path(shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "CT_small.dcm"))
    units = batch_units([pictures, ct])
    assert units == [pictures / "0.png", pictures / "1.png", ct]
    settings = GenerationSettings(max_new_tokens=2)
    for include_patient, name in ((False, "plain.csv"), (True, "with_patient.jsonl")):
        with ResultsFile.open(tmp_path / name, include_patient=include_patient) as results:
            summary = run_batch(units, tiny_engine, BatchTask("describe", "", settings, include_patient), results)
        assert (summary.answered, summary.failed) == (3, 0)
        text = (tmp_path / name).read_text()
        assert ("CompressedSamples^CT1" in text) is include_patient


def test_a_folder_of_studies_is_one_unit_per_study(tmp_path: Path, ct_series) -> None:
    ct_series(tmp_path / "studies" / "a", [0, 10, 20])
    ct_series(tmp_path / "studies" / "b", [5, 15])
    assert batch_units([tmp_path / "studies"]) == [tmp_path / "studies" / "a", tmp_path / "studies" / "b"]
