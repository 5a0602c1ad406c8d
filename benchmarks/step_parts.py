"""The decode step's parts in isolation, 34 layers of MedGemma's shapes replayed as one CUDA graph each: ways to
compute one-query attention, the rank-8 LoRA of q/k/v, and the fused gate/up 4-bit matmul. This chose the
fast step's formulations (benchmarks/README.md).

Usage: python benchmarks/step_parts.py OUT (needs CUDA and bitsandbytes). Writes OUT/step_parts.json.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bitsandbytes.functional import dequantize_4bit, quantize_4bit
from torch.nn.attention import SDPBackend, sdpa_kernel

LAYERS = 34
RING, CONTEXT = 1024, 2048  # 29 sliding layers attend to a 1,024-slot ring, 5 full layers to the whole context
SCALE = 256**-0.5
GEMM = torch.ops.bitsandbytes.gemm_4bit.default


def graph_time_us(work: Callable[[], object], reps: int = 20) -> float:
    """Microseconds per replay of one CUDA graph holding `work`, after warm-up (and compiling) on a side stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            work()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        work()
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        graph.replay()
    torch.cuda.synchronize()
    return round((time.perf_counter() - start) / reps * 1e6, 1)


def sdpa(q, k, v, mask, backend=None):
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=SCALE)
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=SCALE)


def attention_matmul(q, k, v, mask):
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * SCALE
    return torch.matmul(torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).to(q.dtype), v)


def attention_reduce(q, k, v, mask):
    scores = (q.float().unsqueeze(-2) * k.float().unsqueeze(2)).sum(-1) * SCALE
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return (probs.unsqueeze(-1) * v.float().unsqueeze(2)).sum(-2).to(q.dtype)


def attention() -> dict:
    """q: 8 query heads as 2 rows of each of 4 KV heads; a mask that hides the oldest 100 slots."""
    q = torch.randn(1, 4, 2, 256, device="cuda", dtype=torch.bfloat16)
    caches = [(torch.randn(1, 4, slots, 256, device="cuda", dtype=torch.bfloat16),
               torch.randn(1, 4, slots, 256, device="cuda", dtype=torch.bfloat16),
               (torch.arange(slots, device="cuda") >= 100).view(1, 1, 1, slots))
              for slots in [RING] * 29 + [CONTEXT] * 5]
    k, v, mask = caches[-1]
    reference = torch.softmax((q.float() @ k.float().transpose(-1, -2) * SCALE).masked_fill(~mask, float("-inf")),
                              -1) @ v.float()
    variants = {"sdpa_default": sdpa, "sdpa_efficient": lambda *a: sdpa(*a, SDPBackend.EFFICIENT_ATTENTION),
                "sdpa_math": lambda *a: sdpa(*a, SDPBackend.MATH), "matmul": attention_matmul,
                "multiply_and_sum": attention_reduce}
    results = {}
    for name, fn in variants.items():
        compiled = torch.compile(fn, dynamic=False)
        results[name] = {
            "max_abs_err": float((compiled(q, k, v, mask).float() - reference).abs().max()),
            "us_34_layers": graph_time_us(lambda compiled=compiled: [compiled(q, *cache) for cache in caches])}
    return results


def lora_linear(x, a, b, scale):
    return (F.linear(F.linear(x, a), b).float() * scale).to(x.dtype)


def lora_reduce(x, a, b, scale):
    hidden = (x.float().unsqueeze(-2) * a.float()).sum(-1).to(x.dtype)
    return ((hidden.float().unsqueeze(-2) * b.float()).sum(-1).to(x.dtype).float() * scale).to(x.dtype)


def lora() -> dict:
    """q/k/v's LoRA: A of q and v stacked (16 x 2,560), B block-diagonal (4,096 x 16)."""
    x = torch.randn(1, 1, 2560, device="cuda", dtype=torch.bfloat16)
    layers = [(torch.randn(16, 2560, device="cuda", dtype=torch.bfloat16) * 0.02,
               torch.randn(4096, 16, device="cuda", dtype=torch.bfloat16) * 0.02,
               torch.full((4096,), 2.0, device="cuda")) for _ in range(LAYERS)]
    results = {}
    for name, fn in {"cublas": lora_linear, "multiply_and_sum": lora_reduce}.items():
        compiled = torch.compile(fn, dynamic=False)
        results[name] = {
            "max_abs_err_vs_cublas": float((compiled(x, *layers[0]) - lora_linear(x, *layers[0])).float().abs().max()),
            "us_34_layers": graph_time_us(lambda compiled=compiled: [compiled(x, *layer) for layer in layers])}
    return results


def fused_stored_scales(x, members, weight, scales):
    return GEMM(x, weight, [20480, 2560], scales, 64, "nf4")


def fused_scales_per_step(x, members, weight, scales):
    per_member = [code2[q8.int()] * absmax2[torch.arange(q8.numel(), device="cuda") // 256] + offset
                  for _, q8, absmax2, code2, offset in members]
    return GEMM(x, weight, [20480, 2560], torch.cat(per_member), 64, "nf4")


def separate_members(x, members, weight, scales):
    return torch.cat([GEMM(x, packed, [10240, 2560], absmax2, 64, "nf4", absmax_8bit=q8, absmax_code=code2,
                           absmax_offset=offset) for packed, q8, absmax2, code2, offset in members], dim=-1)


def gate_up() -> dict:
    """gate and up (10,240 x 2,560 each, NF4 with double quant): one matmul over both with stored float32 scales
    (0.09 GiB for the model), one with the scales computed from the double quantisation each call, or two."""
    x = torch.randn(1, 1, 2560, device="cuda", dtype=torch.bfloat16)
    layers = []
    for _ in range(LAYERS):
        quantized = [quantize_4bit(torch.randn(10240, 2560, device="cuda", dtype=torch.bfloat16) * 0.02,
                                   blocksize=64, compress_statistics=True, quant_type="nf4") for _ in range(2)]
        members = [(packed, s.absmax, s.state2.absmax, s.state2.code, s.offset) for packed, s in quantized]
        weight = torch.cat([packed.view(-1) for packed, _ in quantized]).view(-1, 1)
        scales = torch.cat([torch.ops.bitsandbytes.dequantize_blockwise.default(
            s.absmax, s.state2.absmax, s.state2.code, 256, torch.float32) + s.offset for _, s in quantized])
        layers.append((members, weight, scales))
        if len(layers) == 1:
            reference = x.float().view(1, -1) @ torch.cat([dequantize_4bit(p, s).float() for p, s in quantized]).t()
    results = {}
    for name, fn in {"fused_stored_float32_scales": fused_stored_scales,
                     "fused_scales_per_step": fused_scales_per_step, "separate": separate_members}.items():
        compiled = torch.compile(fn, dynamic=False)
        results[name] = {
            "max_abs_err": float((compiled(x, *layers[0]).float().view(1, -1) - reference).abs().max()),
            "us_34_layers": graph_time_us(lambda compiled=compiled: [compiled(x, *layer) for layer in layers])}
    return results


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    for part in (attention, lora, gate_up):
        results[part.__name__] = part()
        print(part.__name__, json.dumps(results[part.__name__]), flush=True)
    (out / "step_parts.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
