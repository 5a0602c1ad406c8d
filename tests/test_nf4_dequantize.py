"""The prompt's dense weights on the CPU: `nf4_dequantize.dequantized` stacks projections' weights in row order
(bitsandbytes' values where the kernel cannot run, as on a CPU), and `prompt_pass.DequantizedLinear` over SigLIP's
q/k/v computes what the modules compute, LoRA included, with LoRA's float32 terms taken by chunks of patches.
The CUDA kernel itself is checked bit for bit against bitsandbytes on the GPU (benchmarks/nf4_dequantize_check.py).
"""

from __future__ import annotations

import bitsandbytes.functional as bf
import pytest
import torch

from medgemma_desktop.core import nf4_dequantize, prompt_pass
from medgemma_desktop.core.engine import Engine
from medgemma_desktop.core.fast_linear import active_lora, base_layer


def test_members_are_stacked_in_row_order_with_bitsandbytes_values_on_the_cpu() -> None:
    generator = torch.Generator().manual_seed(3)
    members = [bf.quantize_4bit(torch.randn(rows, 128, generator=generator) * 0.05, blocksize=64, quant_type="nf4",
                                compress_statistics=True) for rows in (96, 32, 64)]
    weights, states = zip(*members, strict=True)
    assert not any(map(nf4_dequantize.kernel_runs, weights, states))  # a CPU tensor: bitsandbytes dequantises
    dense = nf4_dequantize.dequantized(weights, states, torch.bfloat16)
    want = torch.cat([bf.dequantize_4bit(weight, state) for weight, state in members]).to(torch.bfloat16)
    assert dense.shape == (192, 128) and torch.equal(dense, want)


def test_vision_qkv_as_one_matmul_equals_the_modules(tiny_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompt_pass, "VISION_CHUNK_PATCHES", 5)  # LoRA's terms over several uneven chunks
    attn = tiny_engine.model.get_base_model().model.vision_tower.encoder.layers[0].self_attn
    modules = [attn.q_proj, attn.k_proj, attn.v_proj]
    assert active_lora(attn.q_proj) is not None and active_lora(attn.k_proj) is None  # the adapter's q/v, not k
    dtype = tiny_engine.plan.dtype
    hidden = torch.randn(1, 23, attn.embed_dim, generator=torch.Generator().manual_seed(4)).to(dtype)
    with torch.inference_mode():
        got = prompt_pass.DequantizedLinear(modules, dtype)(hidden)
        want = torch.cat([module(hidden) for module in modules], dim=-1)
        base = torch.cat([base_layer(module)(hidden) for module in modules], dim=-1)
    scale = float(want.abs().max())
    assert got.shape == want.shape == (1, 23, 3 * attn.embed_dim)
    assert float((want - base).abs().max()) > 0.05 * scale  # the adapter's term is there to get right
    assert torch.allclose(got.float(), want.float(), rtol=1e-4, atol=1e-4 * scale)
