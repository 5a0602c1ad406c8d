"""Demo mode's model, sample study and synthetic CT series, through the real loading code."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from medgemma_desktop.core.demo import (
    SERIES_DESCRIPTION,
    SERIES_SLICES,
    demo_checkpoint,
    demo_series,
    sample_study,
)
from medgemma_desktop.core.dicom import load_dicom_folder
from medgemma_desktop.core.engine import Engine, GenerationSettings
from medgemma_desktop.core.prompts import build_chat


def test_demo_checkpoint_is_made_once_and_repaired(tmp_path: Path) -> None:
    first = demo_checkpoint(tmp_path)
    config = first.model_dir / "config.json"
    stamp = config.stat().st_mtime_ns
    assert demo_checkpoint(tmp_path).model_dir == first.model_dir and config.stat().st_mtime_ns == stamp
    (first.adapter_dir / "adapter_model.safetensors").unlink()
    repaired = demo_checkpoint(tmp_path)
    assert (repaired.adapter_dir / "adapter_model.safetensors").is_file()


def test_sample_study_is_a_real_ct_and_mr_through_the_dicom_path() -> None:
    ct, mr = sample_study()
    assert ct.dicom is not None and ct.dicom.modality == "CT" and ct.label == "CT_small.dcm"
    assert mr.dicom is not None and mr.dicom.modality == "MR"
    assert ct.image.mode == "RGB" and ct.patient  # identifying tags were read, and kept apart


def test_the_demo_model_answers_about_the_study(tmp_path: Path) -> None:
    checkpoint = demo_checkpoint(tmp_path)
    engine = Engine.load(checkpoint.model_dir, checkpoint.adapter_dir)
    generation = engine.generate(build_chat("Compare.", [image.image for image in sample_study()]),
                                 GenerationSettings(max_new_tokens=8))
    assert len(list(generation)) > 0 and generation.stats.new_tokens == 8


def test_demo_series_is_a_valid_synthetic_ct_series_made_once(tmp_path: Path) -> None:
    folder = demo_series(tmp_path / "series")
    files = sorted(folder.glob("slice*.dcm"))
    stamps = [file.stat().st_mtime_ns for file in files]
    assert demo_series(tmp_path / "series") == folder and [f.stat().st_mtime_ns for f in files] == stamps
    (series,) = load_dicom_folder(folder)
    assert series.modality == "CT" and series.slice_count == SERIES_SLICES
    assert series.description == SERIES_DESCRIPTION
    volume = series.volume()
    assert volume.min() == -1000 and volume.max() == 700  # air and bone, in Hounsfield units
    lungs = [(volume[number] == -850).sum() for number in range(SERIES_SLICES)]
    assert lungs[SERIES_SLICES // 2] > 2 * lungs[0]  # the slices differ: scrolling shows the lungs grow
    dataset = pydicom.dcmread(files[0])
    assert str(dataset.PatientName) == "SYNTHETIC^PHANTOM" and "SYNTHETIC" in dataset.StudyDescription
    assert not any(element.tag.is_private for element in dataset)
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    report = subprocess.run(["dciodvfy", str(files[0])], capture_output=True, text=True, check=False)
    assert "Error" not in report.stdout + report.stderr, report.stdout + report.stderr
