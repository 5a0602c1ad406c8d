"""The prompt's pass outside the layers it shares with the step: per-token parts over chunks of tokens, and the
vision tower (SigLIP) through layers dequantised once per prompt.

The prompt's peak memory is set by wide per-token activations, not by the weights (SigLIP's 4304-wide MLP over
4,096 patches per image, Gemma's 10240-wide MLP over a long prompt), so those parts run over
`PROMPT_CHUNK_TOKENS` tokens (`VISION_CHUNK_PATCHES` patches) at a time. Tokens are independent there; only the
kernels' own rounding can differ with the chunk size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from medgemma_desktop.core import nf4_dequantize
from medgemma_desktop.core.fast_linear import active_lora, base_layer

PROMPT_CHUNK_TOKENS = 1024
# An image's 4,096 patches in two halves: on an H200 the vision tower took 53 ms in quarters and 39 ms in halves
# (half the calls, each mostly host time), and its peak (76 MiB above the model) stayed below the text MLP's
# either way (benchmarks/README.md, run 17).
VISION_CHUNK_PATCHES = 2048


def by_tokens(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """`fn(x)` for a per-token `fn`, over `chunk` (else `PROMPT_CHUNK_TOKENS`) tokens of x (1, tokens, ...) at a
    time."""
    chunk = chunk or PROMPT_CHUNK_TOKENS
    if x.shape[1] <= chunk:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(chunk, dim=1)], dim=1)


class DequantizedLinear:
    """4-bit layers of one input (SigLIP's q/k/v, or one layer), each under an optional PEFT LoRA wrapper, for many
    tokens, computed as bitsandbytes and PEFT compute them (the weight dequantised to the input's dtype, then
    `F.linear`; LoRA in float32, cast back and added), but dequantised once (`core.nf4_dequantize`), the layers
    into one dense weight: one cuBLAS matmul per call, where calling the modules costs ~0.15 ms of host time per
    module, and the caller may call it per chunk of tokens. Weights repacked for bitsandbytes' CPU kernel (and
    layers that are not 4-bit) are left to the modules."""

    def __init__(self, modules: list[torch.nn.Module], dtype: torch.dtype) -> None:
        self.modules = modules
        bases = [base_layer(module) for module in modules]
        states = [getattr(base.weight, "quant_state", None) for base in bases]
        self.weight: torch.Tensor | None = None
        if all(state is not None and not getattr(state, "packing_format_for_cpu", False) for state in states):
            self.weight = nf4_dequantize.dequantized([base.weight.data for base in bases], states, dtype)
        sizes = [int(base.out_features) for base in bases]
        self.bias = None
        if any(base.bias is not None for base in bases):
            self.bias = torch.cat([torch.zeros(size, dtype=dtype, device=base.weight.device) if base.bias is None
                                   else base.bias.to(dtype) for base, size in zip(bases, sizes, strict=True)])
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.loras = [(slice(start, start + size), lora)
                      for module, start, size in zip(modules, starts, sizes, strict=True)
                      if (lora := active_lora(module)) is not None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (1, tokens, in_features) through one matmul; LoRA's float32 terms, four times the bytes of their part
        of the output, `VISION_CHUNK_PATCHES` tokens at a time."""
        if self.weight is None:
            outs = [module(x) for module in self.modules]
            return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        out = F.linear(x, self.weight, self.bias)
        for columns, (a, b, scale) in self.loras:
            for start in range(0, x.shape[1], VISION_CHUNK_PATCHES):
                rows = slice(start, start + VISION_CHUNK_PATCHES)
                out[:, rows, columns] += F.linear(F.linear(x[:, rows].to(a.dtype), a), b).mul_(scale).to(out.dtype)
        return out


def vision_attention(attn: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """SigLIP's attention as transformers' SDPA path computes it (all patches see each other), its q/k/v
    projections as one matmul."""
    heads = (1, -1, attn.num_heads, attn.head_dim)
    projections = DequantizedLinear([attn.q_proj, attn.k_proj, attn.v_proj], hidden.dtype)
    query, key, value = (part.reshape(heads).transpose(1, 2)
                         for part in projections(hidden).split(attn.embed_dim, dim=-1))
    out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale).transpose(1, 2)
    return DequantizedLinear([attn.out_proj], hidden.dtype)(out.reshape(1, -1, attn.embed_dim))


def vision_mlp(mlp: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """SigLIP's MLP `by_tokens`: its 4304-wide activations over all 4,096 patches were the prompt's largest."""
    fc1, fc2 = DequantizedLinear([mlp.fc1], hidden.dtype), DequantizedLinear([mlp.fc2], hidden.dtype)
    return by_tokens(lambda part: fc2(mlp.activation_fn(fc1(part))), hidden, VISION_CHUNK_PATCHES)


def image_features(multimodal: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The model's own SigLIP layers and projector, as `get_image_features` runs them, but one image at a time
    (a CT series' slices do not add up their activations) and the per-patch parts `by_tokens`."""
    tower = multimodal.vision_tower
    features = []
    for image in pixels.split(1):
        hidden = tower.embeddings(image)
        for layer in tower.encoder.layers:
            hidden = hidden + vision_attention(layer.self_attn, layer.layer_norm1(hidden))
            hidden = hidden + vision_mlp(layer.mlp, layer.layer_norm2(hidden))
        features.append(multimodal.multi_modal_projector(tower.post_layernorm(hidden)))
    return torch.cat(features)
