"""The NF4 dequantisation kernel (`core.nf4_dequantize`) against bitsandbytes' `dequantize_4bit`, bit for bit, on
weights of every shape MedGemma's 4-bit projections have (Gemma's and SigLIP's, quantised here as the app
quantises: NF4, blocks of 64, double-quantised scales, bfloat16), alone and stacked (q/k/v); then both timed
over one prompt's worth of dequantisation (34 text layers' seven projections and 27 vision layers' six), host
time included, as the prompt's pass runs them. Usage: python benchmarks/nf4_dequantize_check.py OUT (CUDA).
Writes OUT/nf4_dequantize_check.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import bitsandbytes as bnb
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medgemma_desktop.core import nf4_dequantize

TEXT = {"q": (2048, 2560), "k": (1024, 2560), "v": (1024, 2560), "o": (2560, 2048), "gate": (10240, 2560),
        "up": (10240, 2560), "down": (2560, 10240)}
VISION = {"vision_q": (1152, 1152), "vision_k": (1152, 1152), "vision_v": (1152, 1152), "vision_o": (1152, 1152),
          "vision_fc1": (4304, 1152), "vision_fc2": (1152, 4304)}


def quantized(shape: tuple[int, int], generator: torch.Generator) -> tuple[torch.Tensor, object]:
    dense = (torch.randn(shape, device="cuda", generator=generator) * 0.02).to(torch.bfloat16)
    return bnb.functional.quantize_4bit(dense, blocksize=64, compress_statistics=True, quant_type="nf4")


def timed(fn, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return round(sorted(times)[repeats // 2] * 1e3, 2)


def main() -> None:
    generator = torch.Generator(device="cuda").manual_seed(0)
    weights = {name: quantized(shape, generator) for name, shape in (TEXT | VISION).items()}
    result: dict = {"check": {}}
    for name, (weight, state) in weights.items():
        assert nf4_dequantize.kernel_runs(weight, state), name
        kernel = nf4_dequantize.dequantized([weight], [state], torch.bfloat16)
        reference = bnb.functional.dequantize_4bit(weight, state)
        result["check"][name] = {"shape": list(kernel.shape), "bit_identical": bool(torch.equal(kernel, reference)),
                                 "differing_values": int((kernel != reference).sum())}
    for stack in (("q", "k", "v"), ("vision_q", "vision_k", "vision_v")):
        packed, states = zip(*(weights[name] for name in stack), strict=True)
        kernel = nf4_dequantize.dequantized(packed, states, torch.bfloat16)
        reference = torch.cat([bnb.functional.dequantize_4bit(w, s) for w, s in zip(packed, states, strict=True)])
        result["check"]["+".join(stack)] = {"bit_identical": bool(torch.equal(kernel, reference))}
    prompt = [weights[name] for name in TEXT] * 34 + [weights[name] for name in VISION] * 27

    def with_kernel() -> None:
        for weight, state in prompt:
            nf4_dequantize.dequantized([weight], [state], torch.bfloat16)

    def with_bitsandbytes() -> None:
        for weight, state in prompt:
            bnb.functional.dequantize_4bit(weight, state)

    result["prompt_dequantisation_ms"] = {"kernel": timed(with_kernel), "bitsandbytes": timed(with_bitsandbytes)}
    result["projections"] = len(prompt)
    print(json.dumps(result, indent=1))
    if len(sys.argv) > 1:
        Path(sys.argv[1], "nf4_dequantize_check.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
