"""Every bad base-model or adapter folder gives one line naming the file and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medgemma_desktop.core.errors import AdapterFolderError, ModelFolderError
from medgemma_desktop.core.model_folder import check_adapter_folder, check_model_folder


@pytest.fixture
def model_copy(tiny_checkpoint, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint.model_dir, tmp_path / "model"))


@pytest.fixture
def adapter_copy(tiny_checkpoint, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint.adapter_dir, tmp_path / "adapter"))


def _one_line(error: Exception, path: Path) -> str:
    text = str(error)
    assert "\n" not in text and str(path) in text
    return text


def test_good_folders_pass(tiny_checkpoint) -> None:
    model = check_model_folder(tiny_checkpoint.model_dir)
    assert len(model.shards) == 2 and model.tokens_per_image == 16
    adapter = check_adapter_folder(tiny_checkpoint.adapter_dir, model)
    assert (adapter.rank, adapter.alpha, adapter.target_modules) == (8, 16.0, ("o_proj", "q_proj", "v_proj"))


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError) as raised:
        check_model_folder(tmp_path / "nowhere")
    assert "folder not found" in _one_line(raised.value, tmp_path / "nowhere")


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match=r"no config\.json"):
        check_model_folder(tmp_path)


def test_another_architecture(model_copy: Path) -> None:
    config = model_copy / "config.json"
    config.write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(ModelFolderError) as raised:
        check_model_folder(model_copy)
    assert "LlamaForCausalLM model, not MedGemma" in _one_line(raised.value, config)


def test_missing_shard(model_copy: Path) -> None:
    shard = model_copy / "model-00002-of-00002.safetensors"
    shard.unlink()
    with pytest.raises(ModelFolderError) as raised:
        check_model_folder(model_copy)
    assert "missing" in _one_line(raised.value, shard)


def test_truncated_shard(model_copy: Path) -> None:
    shard = model_copy / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ModelFolderError) as raised:
        check_model_folder(model_copy)
    assert "cut short" in _one_line(raised.value, shard)


@pytest.mark.parametrize("name", ["tokenizer.json", "processor_config.json", "chat_template.jinja"])
def test_missing_tokenizer_processor_or_template(model_copy: Path, name: str) -> None:
    (model_copy / name).unlink()
    with pytest.raises(ModelFolderError) as raised:
        check_model_folder(model_copy)
    assert "missing" in _one_line(raised.value, model_copy)


def test_pickle_only_weights_are_refused(model_copy: Path) -> None:
    for shard in model_copy.glob("model*.safetensors*"):
        shard.unlink()
    (model_copy / "pytorch_model.bin").write_bytes(b"\x80\x04 not loaded")
    with pytest.raises(ModelFolderError) as raised:
        check_model_folder(model_copy)
    assert "pickle" in _one_line(raised.value, model_copy)


def test_adapter_for_another_base(tiny_checkpoint, adapter_copy: Path) -> None:
    weights = adapter_copy / "adapter_model.safetensors"
    key = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
    save_file({key: torch.zeros(8, 2560)}, str(weights))
    with pytest.raises(AdapterFolderError) as raised:
        check_adapter_folder(adapter_copy, check_model_folder(tiny_checkpoint.model_dir))
    assert "another base model" in _one_line(raised.value, weights)


def test_adapter_without_weights(tiny_checkpoint, adapter_copy: Path) -> None:
    (adapter_copy / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterFolderError) as raised:
        check_adapter_folder(adapter_copy, check_model_folder(tiny_checkpoint.model_dir))
    assert "adapter_model.safetensors is missing" in _one_line(raised.value, adapter_copy)


def test_adapter_with_pickle_weights_only(tiny_checkpoint, adapter_copy: Path) -> None:
    (adapter_copy / "adapter_model.safetensors").unlink()
    (adapter_copy / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(AdapterFolderError, match="pickle"):
        check_adapter_folder(adapter_copy, check_model_folder(tiny_checkpoint.model_dir))
