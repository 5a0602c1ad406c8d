"""Can a hand-written NF4 matrix-vector kernel beat bitsandbytes' in the decode step? A Triton kernel against
`torch.ops.bitsandbytes.gemm_4bit` for one token at MedGemma's text shapes (q/k/v fused, o, gate/up fused, down),
each checked against the dequantised weight in float32 and timed over 34 layers' worth of distinct weights (so
the L2 cache does not hold them), replayed as a CUDA graph.

The profile of the compiled step put bitsandbytes' 4-bit matmuls at ~2.1 ms of ~4 ms per token, for ~1.6 GB of
packed weights: ~0.75 TB/s against ~4.3 TB/s the copy engine reaches. This measures the headroom before the step
is changed. Usage: python benchmarks/nf4_gemv.py OUT (CUDA; TRITON_INTERPRET=1 python ... --check runs the
correctness part on the CPU). Writes OUT/nf4_gemv.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

SHAPES = {"qkv": (4096, 2560), "o": (2560, 2048), "gate_up": (20480, 2560), "down": (2560, 10240)}
LAYERS = 34
QBLOCK = 64


@triton.jit
def _nf4_gemv(x_ptr, w_ptr, scale_ptr, pair_ptr, out_ptr, N, K: tl.constexpr, BLOCK_N: tl.constexpr,
              QB: tl.constexpr):
    """out[n] = sum_k x[k] * code[w[n, k]] * scale[n, k // 64]: BLOCK_N rows per program, QB quantisation blocks
    (32 packed bytes = 64 weights each) per iteration; `pair` maps a packed byte to its two float32 codes."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = rows < N
    blocks = tl.arange(0, QB)
    lanes = tl.arange(0, 32)
    acc = tl.zeros((BLOCK_N, QB), dtype=tl.float32)
    for q0 in range(0, K // 64, QB):
        cols = (q0 + blocks)[None, :, None] * 32 + lanes[None, None, :]  # byte columns (1, QB, 32)
        packed = tl.load(w_ptr + rows[:, None, None] * (K // 2) + cols, mask=ok[:, None, None], other=0)
        pair = tl.load(pair_ptr + packed.to(tl.int32))
        w_even = (pair >> 32).to(tl.int32).to(tl.float32, bitcast=True)
        w_odd = (pair & 0xFFFFFFFF).to(tl.int32).to(tl.float32, bitcast=True)
        x_even = tl.load(x_ptr + 2 * cols).to(tl.float32)
        x_odd = tl.load(x_ptr + 2 * cols + 1).to(tl.float32)
        partial = tl.sum(w_even * x_even + w_odd * x_odd, axis=2)  # (BLOCK_N, QB)
        scale = tl.load(scale_ptr + rows[:, None] * (K // 64) + q0 + blocks[None, :], mask=ok[:, None],
                        other=0.0)
        acc += partial * scale
    tl.store(out_ptr + rows, tl.sum(acc, axis=1).to(out_ptr.dtype.element_ty), mask=ok)



def pair_table(code: torch.Tensor) -> torch.Tensor:
    """256 int64 entries: byte b -> float32 bits of code[b >> 4] (high word) and code[b & 15] (low word), the
    order bitsandbytes packs two weights in a byte."""
    bits = code.float().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    byte = torch.arange(256, device=code.device)
    return (bits[byte >> 4] << 32) | bits[byte & 15]


def nf4_gemv(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, pairs: torch.Tensor, n: int, k: int,
             block_n: int = 4, qb: int = 4) -> torch.Tensor:
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    _nf4_gemv[(triton.cdiv(n, block_n),)](x, packed, scales, pairs, out, n, K=k, BLOCK_N=block_n, QB=qb)
    return out


def random_layer(n: int, k: int, device: str) -> tuple[torch.Tensor, object]:
    import bitsandbytes.functional as bf

    weight = torch.randn(n, k, dtype=torch.bfloat16, device=device) * 0.02
    packed, state = bf.quantize_4bit(weight, blocksize=QBLOCK, quant_type="nf4", compress_statistics=True)
    return packed, state


def scales_of(state) -> torch.Tensor:
    from bitsandbytes.functional import dequantize_blockwise

    return dequantize_blockwise(state.absmax, state.state2) + state.offset


def check(device: str, configs: list[tuple[int, int]]) -> dict:
    """Max relative error against the dequantised weight (float32 matvec), per shape and tiling."""
    import bitsandbytes.functional as bf

    result = {}
    for name, (n, k) in SHAPES.items():
        if device == "cpu":
            n, k = min(n, 64), min(k, 512)
        packed, state = random_layer(n, k, device)
        x = torch.randn(1, k, dtype=torch.bfloat16, device=device)
        reference = x.float() @ bf.dequantize_4bit(packed, state).float().t()
        pairs, scales = pair_table(state.code), scales_of(state)
        for block_n, qb in configs:
            got = nf4_gemv(x, packed, scales, pairs, n, k, block_n, qb).float()
            error = float((got - reference).norm() / reference.norm())
            result[f"{name}_{block_n}x{qb}"] = round(error, 6)
        if device == "cuda":
            bnb = torch.ops.bitsandbytes.gemm_4bit.default(x, packed, [n, k], scales, QBLOCK, "nf4").float()
            result[f"{name}_bitsandbytes"] = round(float((bnb - reference).norm() / reference.norm()), 6)
    return result


def graph_time(fn, replays: int = 20) -> float:
    """Seconds per call of `fn` (many launches), captured once as a CUDA graph."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / replays


def bench(configs: list[tuple[int, int]]) -> dict:
    layers = {name: [random_layer(n, k, "cuda") for _ in range(LAYERS)] for name, (n, k) in SHAPES.items()}
    scales = {name: [scales_of(state) for _, state in group] for name, group in layers.items()}
    pairs = pair_table(layers["qkv"][0][1].code)
    xs = {name: torch.randn(1, k, dtype=torch.bfloat16, device="cuda") for name, (n, k) in SHAPES.items()}
    packed_bytes = sum(p.numel() + s.numel() * 4 for name in layers for (p, _), s in zip(layers[name], scales[name],
                                                                                       strict=True))

    def run_bnb() -> None:
        for name, (n, k) in SHAPES.items():
            for (packed, _), scale in zip(layers[name], scales[name], strict=True):
                torch.ops.bitsandbytes.gemm_4bit.default(xs[name], packed, [n, k], scale, QBLOCK, "nf4")

    def run_triton(block_n: int, qb: int):
        def run() -> None:
            for name, (n, k) in SHAPES.items():
                for (packed, _), scale in zip(layers[name], scales[name], strict=True):
                    nf4_gemv(xs[name], packed, scale, pairs, n, k, block_n, qb)
        return run

    result = {"bytes_read_gb": round(packed_bytes / 1e9, 3), "bitsandbytes_ms": round(graph_time(run_bnb) * 1e3, 3)}
    for block_n, qb in configs:
        try:
            result[f"triton_{block_n}x{qb}_ms"] = round(graph_time(run_triton(block_n, qb)) * 1e3, 3)
        except Exception as exc:  # a tiling that does not compile (registers, shared memory) is only skipped
            result[f"triton_{block_n}x{qb}_error"] = f"{type(exc).__name__}: {exc}"[:200]
    for key in list(result):
        if key.endswith("_ms"):
            result[key.replace("_ms", "_tb_s")] = round(packed_bytes / (result[key] / 1e3) / 1e12, 2)
    return result


def main() -> None:
    cuda = torch.cuda.is_available() and "--check" not in sys.argv
    configs = [(4, 4), (8, 2), (2, 8), (16, 1), (8, 4), (4, 8)] if cuda else [(4, 4), (2, 2)]
    result = {"check_rel_error": check("cuda" if cuda else "cpu", configs)}
    if cuda:
        result["over_34_layers"] = bench(configs)
    print(json.dumps(result, indent=1))
    if len(sys.argv) > 1 and not sys.argv[1].startswith("--"):
        Path(sys.argv[1], "nf4_gemv.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
