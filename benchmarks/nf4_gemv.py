"""The NF4 matrix-vector kernel (`core.nf4_matvec`, built by NVRTC) against bitsandbytes' for one token at
MedGemma's text shapes (q/k/v fused, o, gate/up fused, down), each checked against the dequantised weights in
float32 and against `nf4_matvec.reference`, and timed over 34 layers' worth of distinct weights (so the L2 cache
does not hold them), replayed as a CUDA graph, for several tilings (rows per block x warps per block x chunk-loop
unroll).

Our kernel decodes the double-quantised 8-bit scales itself (one byte per 64 weights); bitsandbytes' reads float32
scales, which the step had to compute and write first: its time here leaves that out. One LoRA case (rank 8 on
two of q/k/v, B's product in the kernel's epilogue) and gate/up with the activation in the epilogue (`paired`)
are checked and timed too. Usage: python
benchmarks/nf4_gemv.py OUT (CUDA). Writes OUT/nf4_gemv.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.step_parts import graph_time_us
from medgemma_desktop.core.nf4_matvec import NestedScales, launch, reference

# Fused members' rows per projection group, and the row length.
SHAPES = {"qkv": ((2048, 1024, 1024), 2560), "o": ((2560,), 2048), "gate_up": ((10240, 10240), 2560),
          "down": ((2560,), 10240)}
LAYERS = 34
QBLOCK = 64
LORA_RANK = 8


class Layer:
    """One projection group's members, quantised as the app loads them and fused as the step fuses them."""

    def __init__(self, rows: tuple[int, ...], k: int) -> None:
        import bitsandbytes.functional as bf

        self.n, self.k = sum(rows), k
        members = [bf.quantize_4bit(torch.randn(r, k, dtype=torch.bfloat16, device="cuda") * 0.02, blocksize=QBLOCK,
                                    quant_type="nf4", compress_statistics=True) for r in rows]
        self.members = members
        self.packed = torch.cat([p.reshape(-1) for p, _ in members]).view(-1, 1)
        states = [s for _, s in members]
        self.nested = NestedScales.of(states, torch.cat([s.absmax for s in states]),
                                      torch.cat([s.state2.absmax for s in states]))
        self.float_scales = torch.cat([bf.dequantize_blockwise(s.absmax, s.state2) + s.offset for s in states])

    def dense(self) -> torch.Tensor:
        import bitsandbytes.functional as bf

        return torch.cat([bf.dequantize_4bit(p, s).float() for p, s in self.members])

    @property
    def bytes(self) -> int:
        return self.packed.numel() + sum(t.numel() * t.element_size() for t in self.nested.tensors)


def bitsandbytes_matvec(x: torch.Tensor, layer: Layer) -> torch.Tensor:
    return torch.ops.bitsandbytes.gemm_4bit.default(x, layer.packed, [layer.n, layer.k], layer.float_scales, QBLOCK,
                                                    "nf4")


def lora_for(layer: Layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device="cuda").manual_seed(1)
    width = 2 * LORA_RANK
    ax = torch.randn(1, width, device="cuda", generator=generator) * x.float().norm() * 0.01
    b = torch.randn(layer.n, width, device="cuda", generator=generator) * 0.05
    return ax, b, torch.full((layer.n,), 2.0, device="cuda")


def check(configs: list[tuple[int, int, int]]) -> dict:
    """Relative error against the dequantised weights (float32 matvec), per shape and tiling, beside
    bitsandbytes'; the largest difference from `reference` in bfloat16 steps of the output's size; the same with
    LoRA's B product for q/k/v."""
    result = {}
    for name, (rows, k) in SHAPES.items():
        layer = Layer(rows, k)
        x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
        exact = x.float() @ layer.dense().t()
        step = float(exact.abs().max()) * 2.0**-8

        def error(got: torch.Tensor, want: torch.Tensor = exact) -> float:
            return round(float((got.float() - want).norm() / want.norm()), 6)

        result[f"{name}_bitsandbytes"] = error(bitsandbytes_matvec(x, layer))
        expected = reference(x, layer.packed, layer.nested, layer.n).float()
        for tiling in configs:
            tag = f"{name}_{'x'.join(map(str, tiling))}"
            got = launch(x, layer.packed, layer.nested, layer.n, tiling=tiling if any(tiling) else None)
            result[tag] = error(got)
            result[f"{tag}_max_vs_reference_steps"] = round(float((got.float() - expected).abs().max()) / step, 3)
        if name == "qkv":
            lora = lora_for(layer, x)
            got = launch(x, layer.packed, layer.nested, layer.n, lora)
            want = reference(x, layer.packed, layer.nested, layer.n, lora).float()
            result["qkv_lora_max_vs_reference_steps"] = round(float((got.float() - want).abs().max()) / step, 3)
            result["qkv_lora_change_steps"] = round(float((want - expected).abs().max()) / step, 1)
        if name == "gate_up":
            got = launch(x, layer.packed, layer.nested, layer.n, paired=True).float()
            want = reference(x, layer.packed, layer.nested, layer.n, paired=True).float()
            paired_step = float(want.abs().max()) * 2.0**-8
            result["gate_up_paired_max_vs_reference_steps"] = round(float((got - want).abs().max()) / paired_step, 3)
    return result


def bench(configs: list[tuple[int, int, int]]) -> dict:
    layers = {name: [Layer(rows, k) for _ in range(LAYERS)] for name, (rows, k) in SHAPES.items()}
    xs = {name: torch.randn(1, k, dtype=torch.bfloat16, device="cuda") for name, (_, k) in SHAPES.items()}
    loras = [lora_for(layer, xs["qkv"]) for layer in layers["qkv"]]
    ours_bytes = sum(layer.bytes for group in layers.values() for layer in group)
    bnb_bytes = sum(layer.packed.numel() + layer.float_scales.numel() * 4 for g in layers.values() for layer in g)

    def run_with(matvec, names=tuple(SHAPES)):
        def run() -> None:
            for name in names:
                for layer in layers[name]:
                    matvec(xs[name], layer)
        return run

    def ms(work) -> float:
        return round(graph_time_us(work) / 1e3, 3)

    bnb_ms = ms(run_with(bitsandbytes_matvec))
    result = {"bytes_read_gb": round(ours_bytes / 1e9, 3), "bitsandbytes_bytes_read_gb": round(bnb_bytes / 1e9, 3),
              "bitsandbytes_ms": bnb_ms, "bitsandbytes_tb_s": round(bnb_bytes / bnb_ms / 1e9, 2),
              "bitsandbytes_per_shape_ms": {n: ms(run_with(bitsandbytes_matvec, (n,))) for n in SHAPES}}
    for tiling in configs:
        tag = "x".join(map(str, tiling))
        chosen = tiling if any(tiling) else None

        def ours(x, layer, chosen=chosen):
            return launch(x, layer.packed, layer.nested, layer.n, tiling=chosen)

        result[f"{tag}_ms"] = ms(run_with(ours))
        result[f"{tag}_tb_s"] = round(ours_bytes / result[f"{tag}_ms"] / 1e9, 2)
        result[f"{tag}_per_shape_ms"] = {n: ms(run_with(ours, (n,))) for n in SHAPES}

    def qkv_lora() -> None:
        for layer, lora in zip(layers["qkv"], loras, strict=True):
            launch(xs["qkv"], layer.packed, layer.nested, layer.n, lora)

    def gate_up_paired() -> None:
        for layer in layers["gate_up"]:
            launch(xs["gate_up"], layer.packed, layer.nested, layer.n, paired=True)

    result["qkv_with_lora_epilogue_ms"] = ms(qkv_lora)
    result["gate_up_with_activation_epilogue_ms"] = ms(gate_up_paired)
    return result


def main() -> None:
    # (rows per block, warps per block splitting each row, unroll); 0 x 0 x 0: the app's choice per row length
    configs = [(0, 0, 0), (2, 1, 1), (2, 1, 2), (2, 2, 1), (2, 2, 2), (4, 2, 2), (8, 4, 1)]
    layer = Layer((64,), 128)  # CUDA's own start-up and the quantisation, not the kernel's build
    torch.cuda.synchronize()
    started = time.perf_counter()
    launch(torch.zeros(1, 128, dtype=torch.bfloat16, device="cuda"), layer.packed, layer.nested, 64)
    result = {"first_build_s": round(time.perf_counter() - started, 3), "check": check(configs),
              "over_34_layers": bench(configs)}
    print(json.dumps(result, indent=1))
    if len(sys.argv) > 1:
        Path(sys.argv[1], "nf4_gemv.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
