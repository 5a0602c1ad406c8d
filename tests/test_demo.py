"""Demo mode's model and sample study, through the real loading code."""

from __future__ import annotations

from pathlib import Path

from medgemma_desktop.core.demo import demo_checkpoint, sample_study
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
