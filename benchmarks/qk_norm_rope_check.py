"""One token's query/key norm and rotation kernel (`core.qk_norm_rope`) against the model's own modules (Gemma 3's
RMS norms and transformers' `apply_rotary_pos_emb`, in bfloat16 as the step ran them) and against the same in
float64, with MedGemma's shapes (8 query heads, 4 key heads of 256) at several positions and both rotary bases;
then both timed over one token's 34 layers, replayed as a CUDA graph. Usage: python benchmarks/qk_norm_rope_check.py
OUT (CUDA). Writes OUT/qk_norm_rope_check.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm, apply_rotary_pos_emb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.step_parts import graph_time_us
from medgemma_desktop.core import qk_norm_rope

Q_HEADS, K_HEADS, DIM, EPS = 8, 4, 256, 1e-6


def rotary(position: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inverse = 1.0 / base ** (torch.arange(0, DIM, 2, dtype=torch.float32, device="cuda") / DIM)
    angles = torch.cat([position * inverse] * 2)
    return angles.cos().to(torch.bfloat16).view(1, 1, DIM), angles.sin().to(torch.bfloat16).view(1, 1, DIM)


def modules(seed: int) -> tuple[Gemma3RMSNorm, Gemma3RMSNorm]:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    norms = Gemma3RMSNorm(DIM, EPS).cuda().to(torch.bfloat16), Gemma3RMSNorm(DIM, EPS).cuda().to(torch.bfloat16)
    for norm in norms:
        norm.weight.data = (torch.randn(DIM, device="cuda", generator=generator) * 0.3).to(torch.bfloat16)
    return norms


def eager(q, k, norms, cos, sin) -> torch.Tensor:
    query = norms[0](q.view(1, 1, Q_HEADS, DIM).transpose(1, 2))
    key = norms[1](k.view(1, 1, K_HEADS, DIM).transpose(1, 2))
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    return torch.cat([query.reshape(Q_HEADS, DIM), key.reshape(K_HEADS, DIM)])


def exact(q, k, norms, cos, sin) -> torch.Tensor:
    out = []
    for x, norm, heads in ((q, norms[0], Q_HEADS), (k, norms[1], K_HEADS)):
        x = x.double().view(heads, DIM)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * (1 + norm.weight.double())
        rotated = torch.cat([-x[:, DIM // 2:], x[:, :DIM // 2]], dim=-1)
        out.append(x * cos.double().view(1, DIM) + rotated * sin.double().view(1, DIM))
    return torch.cat(out)


def main() -> None:
    norms = modules(0)
    assert qk_norm_rope.kernel_runs(type("Attention", (), {"q_norm": norms[0], "k_norm": norms[1]})(), DIM)
    result = {"check": {}}
    for seed, (position, base) in enumerate([(0, 10_000.0), (309, 10_000.0), (1_332, 1_000_000.0),
                                             (2_047, 1_000_000.0)]):
        generator = torch.Generator(device="cuda").manual_seed(seed + 1)
        q = (torch.randn(1, 1, Q_HEADS * DIM, device="cuda", generator=generator) * 3).to(torch.bfloat16)
        k = (torch.randn(1, 1, K_HEADS * DIM, device="cuda", generator=generator) * 3).to(torch.bfloat16)
        cos, sin = rotary(position, base)
        want = exact(q, k, norms, cos, sin)
        kernel = qk_norm_rope.launch(q, k, norms[0].weight, norms[1].weight, cos, sin, EPS).double()
        modules_out = eager(q, k, norms, cos, sin).double()
        result["check"][f"position_{position}_base_{int(base)}"] = {
            "kernel_max_abs_err": float((kernel - want).abs().max()),
            "modules_max_abs_err": float((modules_out - want).abs().max()),
            "kernel_vs_modules_max": float((kernel - modules_out).abs().max()),
            "output_abs_max": float(want.abs().max())}
    q = torch.randn(1, 1, Q_HEADS * DIM, device="cuda").to(torch.bfloat16)
    k = torch.randn(1, 1, K_HEADS * DIM, device="cuda").to(torch.bfloat16)
    cos, sin = rotary(500, 10_000.0)
    result["over_34_layers"] = {
        "kernel_us": graph_time_us(lambda: [qk_norm_rope.launch(q, k, norms[0].weight, norms[1].weight, cos, sin, EPS)
                                            for _ in range(34)]),
        "modules_us": graph_time_us(lambda: [eager(q, k, norms, cos, sin) for _ in range(34)])}
    print(json.dumps(result, indent=1))
    if len(sys.argv) > 1:
        Path(sys.argv[1], "qk_norm_rope_check.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
