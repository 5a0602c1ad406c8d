"""The NF4 matrix-vector kernel (`core.nf4_matvec`, built by NVRTC) against bitsandbytes' for one token at
MedGemma's text shapes (q/k/v fused, o, gate/up fused, down), each checked against the dequantised weight in
float32 and timed over 34 layers' worth of distinct weights (so the L2 cache does not hold them), replayed as a CUDA
graph, for several tilings (rows per warp x threads per block).

The profile of the compiled step put bitsandbytes' 4-bit matmuls at ~2.1 ms of ~3.5 ms per token for ~1.6 GB of
packed weights: ~0.75 TB/s against ~4.3 TB/s the copy engine reaches. (A Triton kernel tried in run 14 was 2.6-4.7x
slower than bitsandbytes'.) Usage: python benchmarks/nf4_gemv.py OUT (CUDA). Writes OUT/nf4_gemv.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.step_parts import graph_time_us
from medgemma_desktop.core.nf4_matvec import launch

SHAPES = {"qkv": (4096, 2560), "o": (2560, 2048), "gate_up": (20480, 2560), "down": (2560, 10240)}
LAYERS = 34
QBLOCK = 64


def random_layer(n: int, k: int, device: str) -> tuple[torch.Tensor, object]:
    import bitsandbytes.functional as bf

    weight = torch.randn(n, k, dtype=torch.bfloat16, device=device) * 0.02
    packed, state = bf.quantize_4bit(weight, blocksize=QBLOCK, quant_type="nf4", compress_statistics=True)
    return packed, state


def scales_of(state) -> torch.Tensor:
    from bitsandbytes.functional import dequantize_blockwise

    return dequantize_blockwise(state.absmax, state.state2) + state.offset


def check(configs: list[tuple[str, int, int]]) -> dict:
    """Relative error against the dequantised weight (float32 matvec), per shape and tiling, beside
    bitsandbytes' own; and the largest difference from bitsandbytes' output in bfloat16 steps of its size."""
    import bitsandbytes.functional as bf

    result = {}
    for name, (n, k) in SHAPES.items():
        packed, state = random_layer(n, k, "cuda")
        x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
        reference = x.float() @ bf.dequantize_4bit(packed, state).float().t()
        scales = scales_of(state)
        bnb = torch.ops.bitsandbytes.gemm_4bit.default(x, packed, [n, k], scales, QBLOCK, "nf4").float()
        result[f"{name}_bitsandbytes"] = round(float((bnb - reference).norm() / reference.norm()), 6)
        for kind, a, b in configs:
            tag = f"{name}_{kind}_{a}x{b}"
            try:
                got = launch(x, packed, scales, n, a, b).float()
            except Exception as exc:  # reported, and the timing loop skips it too
                result[f"{tag}_error"] = f"{type(exc).__name__}: {exc}"[:400]
                continue
            result[tag] = round(float((got - reference).norm() / reference.norm()), 6)
            result[f"{tag}_max_vs_bnb"] = round(float((got - bnb).abs().max()), 6)
    return result


def graph_time(fn) -> float:
    """Seconds per call of `fn` (many launches), captured once as a CUDA graph."""
    return graph_time_us(fn) / 1e6


def bench(configs: list[tuple[str, int, int]]) -> dict:
    layers = {name: [random_layer(n, k, "cuda") for _ in range(LAYERS)] for name, (n, k) in SHAPES.items()}
    scales = {name: [scales_of(state) for _, state in group] for name, group in layers.items()}
    xs = {name: torch.randn(1, k, dtype=torch.bfloat16, device="cuda") for name, (n, k) in SHAPES.items()}
    packed_bytes = sum(p.numel() + s.numel() * 4 for name in layers for (p, _), s in zip(layers[name], scales[name],
                                                                                       strict=True))

    def run_with(matvec, shapes=SHAPES):
        def run() -> None:
            for name, (n, k) in shapes.items():
                for (packed, _), scale in zip(layers[name], scales[name], strict=True):
                    matvec(xs[name], packed, scale, n, k)
        return run

    def bnb(x, packed, scale, n, k):
        return torch.ops.bitsandbytes.gemm_4bit.default(x, packed, [n, k], scale, QBLOCK, "nf4")

    result = {"bytes_read_gb": round(packed_bytes / 1e9, 3),
              "bitsandbytes_ms": round(graph_time(run_with(bnb)) * 1e3, 3),
              "bitsandbytes_per_shape_ms": {name: round(graph_time(run_with(bnb, {name: shape})) * 1e3, 3)
                                            for name, shape in SHAPES.items()}}
    for kind, a, b in configs:
        tag = f"{kind}_{a}x{b}"
        try:
            def ours(x, packed, scale, n, k, a=a, b=b):
                return launch(x, packed, scale, n, a, b)
            result[f"{tag}_ms"] = round(graph_time(run_with(ours)) * 1e3, 3)
            result[f"{tag}_per_shape_ms"] = {name: round(graph_time(run_with(ours, {name: shape})) * 1e3, 3)
                                             for name, shape in SHAPES.items()}
        except Exception as exc:  # a tiling that does not build or launch is only skipped
            result[f"{tag}_error"] = f"{type(exc).__name__}: {exc}"[:200]
    for key in list(result):
        if key.endswith("_ms") and not isinstance(result[key], dict):
            result[key.replace("_ms", "_tb_s")] = round(packed_bytes / (result[key] / 1e3) / 1e12, 2)
    return result


def main() -> None:
    # (outputs per block, warps per block splitting each row); 0 x 0: the app's choice per row length
    configs = [("lut", 0, 0), ("lut", 1, 1), ("lut", 2, 1), ("lut", 4, 4), ("lut", 2, 2), ("lut", 8, 4)]
    torch.zeros(1, device="cuda")  # CUDA's own start-up, not the kernel's build
    torch.cuda.synchronize()
    started = time.perf_counter()
    launch(torch.zeros(1, 64, dtype=torch.bfloat16, device="cuda"), torch.zeros(32, 1, dtype=torch.uint8,
           device="cuda"), torch.ones(1, device="cuda"), 1)
    result = {"first_build_s": round(time.perf_counter() - started, 3), "check_rel_error": check(configs),
              "over_34_layers": bench(configs)}
    print(json.dumps(result, indent=1))
    if len(sys.argv) > 1:
        Path(sys.argv[1], "nf4_gemv.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
