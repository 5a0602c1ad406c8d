"""What a language-model-only LoRA server (vLLM) would ignore of an adapter, read from the adapter's weights."""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from medgemma_desktop.cli import main
from medgemma_desktop.core.lora_coverage import lora_coverage


def test_an_adapter_on_both_towers_is_reported(tiny_checkpoint, capsys) -> None:
    coverage = lora_coverage(tiny_checkpoint.adapter_dir)
    assert coverage.language == ("o_proj", "q_proj", "v_proj")
    assert coverage.vision == ("q_proj", "v_proj") and coverage.vision_layers > 0
    assert "vision-tower LoRA (q_proj, v_proj" in coverage.language_only_note()
    assert main(["models", "check", str(tiny_checkpoint.model_dir), "--adapter", str(tiny_checkpoint.adapter_dir)]) == 0
    assert "on vLLM: a server that applies LoRA to the language model only" in capsys.readouterr().out


def test_a_language_only_adapter_loses_nothing(tiny_checkpoint, tmp_path: Path) -> None:
    adapter = Path(shutil.copytree(tiny_checkpoint.adapter_dir, tmp_path / "language-only"))
    weights = adapter / "adapter_model.safetensors"
    save_file({key: value for key, value in load_file(weights).items() if "vision_tower" not in key}, weights)
    coverage = lora_coverage(adapter)
    assert coverage.vision == () and coverage.language_only_note() == ""
