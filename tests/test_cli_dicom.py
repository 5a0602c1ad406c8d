"""The command line's DICOM report options (`cli.dicom_options`), which `ask --sr`, batch `--sr` and `history
export --format dicom` call: real files, a real store, every output checked by dciodvfy."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from dicom_validation import dciodvfy_errors
from PIL import Image
from pydicom.data import get_testdata_file

from medgemma_desktop.cli.dicom_options import add_dicom_report_arguments, write_answer_report, write_history_reports
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.fingerprint import WeightsIdentity
from medgemma_desktop.core.imaging import load_any
from medgemma_desktop.core.prompts import TaskMode
from medgemma_desktop.core.store import ConversationStore

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Identity:
    model: WeightsIdentity
    adapter: WeightsIdentity | None


IDENTITY = Identity(WeightsIdentity("medgemma-1.5-4b-it", "c" * 64), WeightsIdentity("lora", "d" * 64))


def test_the_options_parse() -> None:
    parser = argparse.ArgumentParser()
    add_dicom_report_arguments(parser)
    args = parser.parse_args(["--sr", "out", "--deidentify"])
    assert args.sr == Path("out") and args.deidentify
    assert parser.parse_args([]).sr is None


def test_ask_sr_writes_a_valid_report_of_the_answer(tmp_path: Path) -> None:
    text = 'Final Answer: [{"box_2d": [100, 100, 500, 500], "label": "spine"}]'
    line = write_answer_report(tmp_path, "spine", text, TaskMode.LOCALIZATION.value, IDENTITY,
                               [load_any(CT_SMALL)], deidentify=True)
    assert line.startswith(f"Saved 1 DICOM report, 1 presentation state, 1 de-identified image to {tmp_path}")
    for path in tmp_path.rglob("*.dcm"):
        assert dciodvfy_errors(path) == [], path.name
    assert pydicom.dcmread(tmp_path / "report.dcm").PatientIdentityRemoved == "YES"


def test_ask_sr_about_a_picture_says_why_in_one_line(tmp_path: Path) -> None:
    picture = tmp_path / "photo.png"
    Image.new("RGB", (16, 16)).save(picture)
    with pytest.raises(UserFacingError, match=r"photo\.png: no DICOM image was asked about"):
        write_answer_report(tmp_path / "out", "What?", "A photo.", "", IDENTITY, [load_any(picture)])


def test_history_export_writes_every_dicom_question(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "history.sqlite3")
    conversation = store.create_conversation().id
    message = store.add_question(conversation, "What organ?", [load_any(CT_SMALL)], TaskMode.DESCRIBE.value)
    store.finish_answer(store.begin_answer(message.id, IDENTITY.model, None, {}), "The liver.", {})
    store.close()
    line = write_history_reports(tmp_path / "history.sqlite3", conversation, tmp_path / "out")
    assert line == f"Saved 1 DICOM report to {tmp_path / 'out'}"
    assert dciodvfy_errors(tmp_path / "out" / "question_1.dcm") == []
    with pytest.raises(UserFacingError, match="there is no conversation 99"):
        write_history_reports(tmp_path / "history.sqlite3", 99, tmp_path / "out")
