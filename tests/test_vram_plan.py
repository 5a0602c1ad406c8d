"""The VRAM planner's arithmetic, against docs/MODEL.md's KV formula and the real loaded tiny model."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from transformers import BitsAndBytesConfig, Gemma3ForConditionalGeneration

from medgemma_desktop.core.model_folder import check_model_folder
from medgemma_desktop.core.vram_plan import GIB, KIB, MIB, judge, kv_cache_bytes, plan_vram, weight_bytes

MEDGEMMA = {
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
                    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 262208,
                    "sliding_window": 1024},
    "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                      "num_attention_heads": 16, "image_size": 896, "patch_size": 14},
    "mm_tokens_per_image": 256,
}


@pytest.mark.parametrize("tokens", [1, 100, 1024, 2048, 4096, 8192, 32768])
def test_kv_cache_follows_the_5_global_29_sliding_formula(tokens: int) -> None:
    # docs/MODEL.md: 4 KiB per token per layer; about 20 KiB x L + 116 KiB x min(L, 1024) in bf16.
    assert kv_cache_bytes(MEDGEMMA, tokens) == 20 * KIB * tokens + 116 * KIB * min(tokens, 1024)


def test_kv_cache_at_the_documented_sizes() -> None:
    assert kv_cache_bytes(MEDGEMMA, 1024) == 136 * MIB
    assert kv_cache_bytes(MEDGEMMA, 4096) == 196 * MIB
    assert kv_cache_bytes(MEDGEMMA, 32768) == 756 * MIB


def test_medgemma_nf4_weights_are_about_three_gib() -> None:
    # 3.8B quantized parameters at ~0.52 bytes plus the 1.34 GB bf16 embedding (docs/MODEL.md).
    assert 2.8 * GIB < weight_bytes(MEDGEMMA, 2) < 3.2 * GIB
    assert weight_bytes(MEDGEMMA, 2, double_quant=False) > weight_bytes(MEDGEMMA, 2)


def _loaded_weight_bytes(model: torch.nn.Module) -> int:
    """Parameters (the tied embedding / lm_head once) plus every NF4 layer's quantization state."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() skips tied duplicates
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            total += state.absmax.numel() * state.absmax.element_size()
            if state.state2 is not None:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return total


def test_weight_estimate_matches_the_loaded_tiny_model(tiny_checkpoint) -> None:
    # Loaded as the engine loads it, but measured before any forward pass: on some CPUs bitsandbytes repacks a
    # layer's NF4 weights for its CPU kernel at the first forward, which changes the layout being counted.
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.float32, bnb_4bit_use_double_quant=True)
    model = Gemma3ForConditionalGeneration.from_pretrained(tiny_checkpoint.model_dir, quantization_config=quantization,
                                                           dtype=torch.float32, local_files_only=True)
    config = check_model_folder(tiny_checkpoint.model_dir).config
    assert weight_bytes(config, dtype_bytes=4) == pytest.approx(_loaded_weight_bytes(model), rel=0.01)


def test_an_8_gb_card_fits_2k_context_with_one_image() -> None:
    plan = plan_vram(MEDGEMMA, 2048, images=1, adapter_bytes=50 * MIB)
    assert judge(plan, 8 * GIB - 300 * MIB, MEDGEMMA).fits


def test_too_long_a_context_suggests_one_that_fits() -> None:
    free = 6 * GIB
    verdict = judge(plan_vram(MEDGEMMA, 32768, images=1), free, MEDGEMMA)
    assert not verdict.fits and "A context of" in verdict.message
    suggested = int(verdict.message.split("A context of ")[1].split(" tokens")[0].replace(",", ""))
    assert plan_vram(MEDGEMMA, suggested).total <= free < plan_vram(MEDGEMMA, suggested + 1).total


def test_a_card_too_small_for_the_weights_points_to_cpu_mode() -> None:
    verdict = judge(plan_vram(MEDGEMMA, 1024), 2 * GIB, MEDGEMMA)
    assert not verdict.fits and "CPU mode" in verdict.message
