"""Every command logs to the rotating file in the platform log folder, `--debug` raises the level, no question,
answer or DICOM tag reaches the log, and a native crash leaves a report that is handed over once."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medgemma_desktop import __version__
from medgemma_desktop.cli import main
from medgemma_desktop.core.logging_setup import (
    CRASH_FILE,
    LAST_CRASH_FILE,
    LOG_FILE,
    take_last_crash,
    teardown_logging,
)


@pytest.fixture
def log_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The platform log folder of a fresh user (platformdirs reads XDG_STATE_HOME on every call)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    yield tmp_path / "state" / "MedGemma Desktop" / "log"
    teardown_logging()


def log_text(folder: Path) -> str:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return (folder / LOG_FILE).read_text(encoding="utf-8")


def test_ask_logs_what_it_did_and_no_patient_data(tiny_checkpoint, log_folder: Path) -> None:
    dicom = get_testdata_file("CT_small.dcm")
    tags = pydicom.dcmread(dicom)
    question = "Is Mr Quetzalcoatl's nodule benign?"
    env = {**os.environ, "XDG_STATE_HOME": str(log_folder.parents[1])}
    result = subprocess.run([sys.executable, "-m", "medgemma_desktop", "ask", "--model",
                             str(tiny_checkpoint.model_dir), "--image", dicom, "--max-new-tokens", "8", question],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    text = (log_folder / LOG_FILE).read_text(encoding="utf-8")
    assert f"medgemma-desktop {__version__}: ask" in text and "loading medgemma-tiny" in text
    assert text.rstrip().endswith("exit status 0")
    answer = result.stdout.strip()
    private = [question, "Quetzalcoatl", str(tags.PatientName), str(tags.PatientID), str(tags.StudyDate),
               answer[:20]]
    assert [value for value in private if value and value in text] == []


def test_a_refused_command_logs_the_kind_not_the_message(log_folder: Path, capsys) -> None:
    secret = log_folder.parent / "Patient Quetzalcoatl CT"
    assert main(["ask", "--model", str(secret), "hi"]) == 2
    assert "Quetzalcoatl" in capsys.readouterr().err  # the user is told which folder ...
    text = log_text(log_folder)
    assert "refused (model)" in text and "exit status 2" in text
    assert "Quetzalcoatl" not in text  # ... the log, which may be attached to a bug report, is not


def test_models_logs_and_debug_raises_the_level(tiny_checkpoint, log_folder: Path, capsys) -> None:
    assert main(["models", "check", str(tiny_checkpoint.model_dir)]) == 0
    quiet = log_text(log_folder)
    assert f"medgemma-desktop {__version__}: models" in quiet and " DEBUG " not in quiet
    assert "medgemma-desktop 0" not in capsys.readouterr().err  # no chatter on the terminal without --debug

    assert main(["--debug", "models", "cache"]) == 0
    detailed = log_text(log_folder)[len(quiet):]
    assert " DEBUG " in detailed and f"Python {sys.version.split()[0]}" in detailed
    err = capsys.readouterr().err
    assert f"medgemma-desktop {__version__}: models" in err and "DEBUG" in err  # --debug: the terminal too


def test_a_native_crash_is_reported_once(tmp_path: Path) -> None:
    code = ("import sys, faulthandler\nfrom pathlib import Path\n"
            "from medgemma_desktop.core.logging_setup import setup_logging\n"
            "setup_logging(Path(sys.argv[1]))\nfaulthandler._sigsegv()\n")
    crashed = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                             timeout=120)
    assert crashed.returncode != 0
    report = take_last_crash(tmp_path)
    assert report == tmp_path / LAST_CRASH_FILE
    assert "Segmentation fault" in report.read_text() and "<string>" in report.read_text()
    assert not (tmp_path / CRASH_FILE).exists() and take_last_crash(tmp_path) is None  # handed over once


def test_after_taking_the_last_report_a_new_crash_goes_to_a_fresh_file(tmp_path: Path) -> None:
    (tmp_path / CRASH_FILE).write_text("Fatal Python error: Aborted (the run before)\n")
    code = ("import sys, faulthandler\nfrom pathlib import Path\n"
            "from medgemma_desktop.core.logging_setup import setup_logging, take_last_crash\n"
            "setup_logging(Path(sys.argv[1]))\nprint(take_last_crash(Path(sys.argv[1])))\n"
            "sys.stdout.flush()\nfaulthandler._sigsegv()\n")
    crashed = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                             timeout=120)
    assert crashed.stdout.strip() == str(tmp_path / LAST_CRASH_FILE)
    assert (tmp_path / LAST_CRASH_FILE).read_text() == "Fatal Python error: Aborted (the run before)\n"
    assert "Segmentation fault" in (tmp_path / CRASH_FILE).read_text()
