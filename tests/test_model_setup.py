"""Issue 5 on the tiny checkpoint: the saved 4-bit model (hit, miss, corruption) and adapter switching."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medgemma_desktop.core.engine import Engine
from medgemma_desktop.core.errors import AdapterFolderError
from medgemma_desktop.core.fingerprint import FingerprintCache
from medgemma_desktop.core.prompts import build_chat
from medgemma_desktop.core.quant_cache import MANIFEST, QuantizedModelCache

TURNS = build_chat("What is shown?")


def _logits(engine: Engine) -> torch.Tensor:
    with torch.inference_mode():
        return engine.model(**engine.prepare(TURNS)).logits[0, -1]


def test_cache_miss_then_hit_gives_the_same_model(tiny_checkpoint, tmp_path: Path) -> None:
    cache = QuantizedModelCache(tmp_path / "nf4")
    first = Engine.load(tiny_checkpoint.model_dir, cache=cache)
    assert not first.loaded_from_cache and len(cache.entries()) == 1
    second = Engine.load(tiny_checkpoint.model_dir, cache=cache)
    assert second.loaded_from_cache
    assert torch.equal(_logits(first), _logits(second))
    assert second.identity.model == first.identity.model


@pytest.mark.parametrize("damage", ["truncate", "manifest", "garbage"])
def test_a_damaged_cache_entry_is_rebuilt(tiny_checkpoint, tmp_path: Path, damage: str) -> None:
    cache = QuantizedModelCache(tmp_path / "nf4")
    reference = _logits(Engine.load(tiny_checkpoint.model_dir, cache=cache))
    (entry,) = cache.entries()
    weights = next(entry.path.glob("*.safetensors"))
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "manifest":
        (entry.path / MANIFEST).unlink()
    else:  # same size, not safetensors: caught when loading
        weights.write_bytes(b"\0" * weights.stat().st_size)
    rebuilt = Engine.load(tiny_checkpoint.model_dir, cache=cache)
    assert not rebuilt.loaded_from_cache
    assert torch.equal(_logits(rebuilt), reference)
    assert Engine.load(tiny_checkpoint.model_dir, cache=cache).loaded_from_cache


def test_cache_key_follows_the_quantization_settings(tiny_checkpoint, tmp_path: Path) -> None:
    from medgemma_desktop.core.engine import LoadOptions

    cache = QuantizedModelCache(tmp_path / "nf4")
    Engine.load(tiny_checkpoint.model_dir, cache=cache)
    engine = Engine.load(tiny_checkpoint.model_dir, cache=cache, options=LoadOptions(double_quant=False))
    assert not engine.loaded_from_cache and len(cache.entries()) == 2
    assert cache.clear() == 2 and cache.entries() == []


def test_file_digests_are_remembered_by_stat(tiny_checkpoint, tmp_path: Path) -> None:
    shards = sorted(tiny_checkpoint.model_dir.glob("*.safetensors"))
    fingerprints = FingerprintCache(tmp_path / "digests.json")
    digest = fingerprints.folder_digest(shards)
    seen: list[tuple[int, int]] = []
    assert FingerprintCache(tmp_path / "digests.json").folder_digest(shards, lambda d, t: seen.append((d, t))) == digest
    assert len(seen) == 1  # nothing re-read: only the final report


@pytest.fixture
def second_adapter(tiny_checkpoint, tmp_path: Path) -> Path:
    folder = Path(shutil.copytree(tiny_checkpoint.adapter_dir, tmp_path / "lora-second"))
    weights = folder / "adapter_model.safetensors"
    tensors = {k: (v * -3 if "lora_B" in k else v) for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    return folder


def test_switching_adapters_without_reloading_the_base(tiny_checkpoint, second_adapter: Path) -> None:
    engine = Engine.load(tiny_checkpoint.model_dir, tiny_checkpoint.adapter_dir)
    base_weights = engine.model.base_model.model.model.language_model.layers[0].mlp.down_proj.weight
    first = _logits(engine)
    engine.add_adapter(second_adapter)
    assert engine.identity.adapter_name == "lora-second"
    second = _logits(engine)
    engine.use_adapter(None)
    assert engine.identity.adapter_name is None
    plain = _logits(engine)
    engine.use_adapter("lora-r8-tiny")
    again = _logits(engine)

    reference = _logits(Engine.load(tiny_checkpoint.model_dir))
    # bitsandbytes' CPU backend may switch its NF4 kernel (bf16 vs float32 accumulation) once PEFT re-wraps a
    # layer, so "adapter off" equals the plain base only up to kernel noise, far below any adapter's effect.
    adapter_effect = (first - reference).abs().max()
    assert (plain - reference).abs().max() < 0.1 * adapter_effect
    assert (again - first).abs().max() < 0.1 * adapter_effect
    assert (second - first).abs().max() > adapter_effect / 2
    assert engine.model.base_model.model.model.language_model.layers[0].mlp.down_proj.weight is base_weights
    assert engine.identity.adapter is not None and engine.identity.adapter.sha256 != engine.model_sha256


def test_more_adapters_are_attached_at_load_and_a_gone_one_is_left_out(tiny_checkpoint, second_adapter: Path,
                                                                         tmp_path: Path) -> None:
    gone = tmp_path / "lora-moved-away"
    engine = Engine.load(tiny_checkpoint.model_dir, tiny_checkpoint.adapter_dir,
                         more_adapters=[second_adapter, gone, tiny_checkpoint.adapter_dir])
    assert sorted(engine.adapters) == ["lora-r8-tiny", "lora-second"]
    assert engine.identity.adapter_name == "lora-r8-tiny"  # the extras wait to be switched to
    assert list(engine.skipped_adapters) == [gone] and str(gone) in engine.skipped_adapters[gone]
    with_first = _logits(engine)
    engine.use_adapter("lora-second")
    assert (_logits(engine) - with_first).abs().max() > 0

    base_alone = Engine.load(tiny_checkpoint.model_dir, more_adapters=[second_adapter])
    assert list(base_alone.adapters) == ["lora-second"] and base_alone.identity.adapter_name is None


def test_an_unknown_or_duplicate_adapter_is_refused(tiny_checkpoint) -> None:
    engine = Engine.load(tiny_checkpoint.model_dir, tiny_checkpoint.adapter_dir)
    with pytest.raises(AdapterFolderError, match="no adapter named"):
        engine.use_adapter("missing")
    with pytest.raises(AdapterFolderError, match="already loaded"):
        engine.add_adapter(tiny_checkpoint.adapter_dir)
