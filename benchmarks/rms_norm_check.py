"""The RMS norm kernel (`core.rms_norm`) against Gemma3RMSNorm (bfloat16, as the step's modules compute it) and
against the same in float64, with and without the residual sum, for one token and a 309-token prompt of
MedGemma's hidden size (2,560); then both timed over 34 layers' four norms of a 309-token prompt, host time
included (as the prompt's pass runs them). Usage: python benchmarks/rms_norm_check.py OUT (CUDA). Writes
OUT/rms_norm_check.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medgemma_desktop.core import rms_norm

WIDTH, EPS = 2560, 1e-6


def exact(x: torch.Tensor, module: Gemma3RMSNorm, residual: torch.Tensor | None) -> torch.Tensor:
    x = x.double()
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * (1 + module.weight.double())
    return out if residual is None else out + residual.double()


def main() -> None:
    generator = torch.Generator(device="cuda").manual_seed(0)
    module = Gemma3RMSNorm(WIDTH, EPS).cuda().to(torch.bfloat16)
    module.weight.data = (torch.randn(WIDTH, device="cuda", generator=generator) * 0.3).to(torch.bfloat16)
    assert rms_norm.kernel_runs(module)
    result: dict = {"check": {}}
    for tokens in (1, 309):
        x = (torch.randn(1, tokens, WIDTH, device="cuda", generator=generator) * 4).to(torch.bfloat16)
        residual = (torch.randn(1, tokens, WIDTH, device="cuda", generator=generator) * 20).to(torch.bfloat16)
        for given in (None, residual):
            kernel = rms_norm.norm(module, x, given, kernel=True).double()
            modules = rms_norm.norm(module, x, given, kernel=False).double()
            want = exact(x, module, given)
            result["check"][f"tokens_{tokens}_{'with' if given is not None else 'without'}_residual"] = {
                "kernel_max_abs_err": float((kernel - want).abs().max()),
                "modules_max_abs_err": float((modules - want).abs().max()),
                "kernel_vs_modules_max": float((kernel - modules).abs().max()),
                "differing_values": int((kernel != modules).sum()), "values": x.numel(),
                "output_abs_max": float(want.abs().max())}
    x = torch.randn(1, 309, WIDTH, device="cuda").to(torch.bfloat16)
    for kernel in (True, False):
        times = []
        for _ in range(7):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(34):
                for residual in (None, x, None, x):
                    rms_norm.norm(module, x, residual, kernel=kernel)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        result[f"prompt_34_layers_ms_{'kernel' if kernel else 'modules'}"] = round(sorted(times)[3] * 1e3, 2)
    print(json.dumps(result, indent=1))
    if len(sys.argv) > 1:
        Path(sys.argv[1], "rms_norm_check.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
