"""The query/key norm and rotation kernel (`core.qk_norm_rope`) against the model's own modules (Gemma 3's RMS
norms and transformers' `apply_rotary_pos_emb`, in bfloat16 as the step ran them) and against the same in float64,
with MedGemma's shapes (8 query heads, 4 key heads of 256): one token at several positions and both rotary bases,
and a 309-token prompt whose q and k are views of one fused q/k/v output, as the prompt's pass gives them; then
both timed over one token's 34 layers, replayed as a CUDA graph. Usage: python benchmarks/qk_norm_rope_check.py
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


def rotary(positions: torch.Tensor, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inverse = 1.0 / base ** (torch.arange(0, DIM, 2, dtype=torch.float32, device="cuda") / DIM)
    angles = positions.float().view(-1, 1) * inverse
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(0)
    return angles.cos().to(torch.bfloat16), angles.sin().to(torch.bfloat16)


def modules(seed: int) -> tuple[Gemma3RMSNorm, Gemma3RMSNorm]:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    norms = Gemma3RMSNorm(DIM, EPS).cuda().to(torch.bfloat16), Gemma3RMSNorm(DIM, EPS).cuda().to(torch.bfloat16)
    for norm in norms:
        norm.weight.data = (torch.randn(DIM, device="cuda", generator=generator) * 0.3).to(torch.bfloat16)
    return norms


def eager(q, k, norms, cos, sin) -> torch.Tensor:
    """(query heads + key heads, tokens, DIM) as the step's modules compute it."""
    tokens = q.shape[1]
    query = norms[0](q.reshape(1, tokens, Q_HEADS, DIM).transpose(1, 2))
    key = norms[1](k.reshape(1, tokens, K_HEADS, DIM).transpose(1, 2))
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    return torch.cat([query[0], key[0]])


def exact(q, k, norms, cos, sin) -> torch.Tensor:
    out = []
    tokens = q.shape[1]
    for x, norm, heads in ((q, norms[0], Q_HEADS), (k, norms[1], K_HEADS)):
        x = x.double().reshape(tokens, heads, DIM).transpose(0, 1)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * (1 + norm.weight.double())
        rotated = torch.cat([-x[..., DIM // 2:], x[..., :DIM // 2]], dim=-1)
        out.append(x * cos.double() + rotated * sin.double())
    return torch.cat(out)


def compare(q, k, norms, cos, sin) -> dict:
    want = exact(q, k, norms, cos, sin)
    kernel = qk_norm_rope.launch(q, k, norms[0].weight, norms[1].weight, cos, sin, EPS).double()
    modules_out = eager(q, k, norms, cos, sin).double()
    return {"kernel_max_abs_err": float((kernel - want).abs().max()),
            "modules_max_abs_err": float((modules_out - want).abs().max()),
            "kernel_vs_modules_max": float((kernel - modules_out).abs().max()),
            "output_abs_max": float(want.abs().max())}


def main() -> None:
    norms = modules(0)
    assert qk_norm_rope.kernel_runs(type("Attention", (), {"q_norm": norms[0], "k_norm": norms[1]})(), DIM)
    result = {"check": {}}
    for seed, (position, base) in enumerate([(0, 10_000.0), (309, 10_000.0), (1_332, 1_000_000.0),
                                             (2_047, 1_000_000.0)]):
        generator = torch.Generator(device="cuda").manual_seed(seed + 1)
        q = (torch.randn(1, 1, Q_HEADS * DIM, device="cuda", generator=generator) * 3).to(torch.bfloat16)
        k = (torch.randn(1, 1, K_HEADS * DIM, device="cuda", generator=generator) * 3).to(torch.bfloat16)
        cos, sin = rotary(torch.tensor([position], device="cuda"), base)
        result["check"][f"position_{position}_base_{int(base)}"] = compare(q, k, norms, cos, sin)
    generator = torch.Generator(device="cuda").manual_seed(7)
    qkv = (torch.randn(1, 309, (Q_HEADS + 2 * K_HEADS) * DIM, device="cuda", generator=generator) * 3)
    q, k, _ = qkv.to(torch.bfloat16).split([Q_HEADS * DIM, K_HEADS * DIM, K_HEADS * DIM], dim=-1)
    for base in (10_000.0, 1_000_000.0):
        cos, sin = rotary(torch.arange(309, device="cuda"), base)
        result["check"][f"prompt_309_tokens_base_{int(base)}"] = compare(q, k, norms, cos, sin)
    q = torch.randn(1, 1, Q_HEADS * DIM, device="cuda").to(torch.bfloat16)
    k = torch.randn(1, 1, K_HEADS * DIM, device="cuda").to(torch.bfloat16)
    cos, sin = rotary(torch.tensor([500], device="cuda"), 10_000.0)
    result["over_34_layers"] = {
        "kernel_us": graph_time_us(lambda: [qk_norm_rope.launch(q, k, norms[0].weight, norms[1].weight, cos, sin, EPS)
                                            for _ in range(34)]),
        "modules_us": graph_time_us(lambda: [eager(q, k, norms, cos, sin) for _ in range(34)])}
    print(json.dumps(result, indent=1))
    if len(sys.argv) > 1:
        Path(sys.argv[1], "qk_norm_rope_check.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
