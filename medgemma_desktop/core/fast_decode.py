"""Fast decoding: our own one-token step over a pre-allocated KV cache, captured once as a CUDA graph.

Plain decoding spends ~90 ms per token on Python and thousands of tiny kernel launches, not on bytes. This step
is written so that nothing in it depends on a Python value that changes per token: the token, its position, the
cache write index, the rotary angle, the attention masks and the sliding-window ring all live in device tensors
updated in place. So one CUDA graph, captured once per cache size, replays every token (optionally after
torch.compile has fused the step's small kernels; its artifacts are cached on disk so compiling happens once
per machine).

Per token the step is bound by kernel count and by kernels that leave most of the GPU idle, so: each layer's
projections that read the same input run as one bitsandbytes 4-bit matmul (`FusedLinear`: q/k/v as one and
gate/up as one, their packed NF4 bytes concatenated row-wise; o and down alone), their active LoRA as two small
multiply-and-sum reductions scaled exactly as PEFT scales it, and attention as plain matmuls with a float32
softmax (the fused SDPA kernels run one thread block per head for a single query and cost a third of the step).
The norms, the MLP activation and the tied lm_head are the model's own modules, with transformers' own rotary
embedding. The prompt runs through the same layers (`StaticDecodeState.prefill`: transformers' masks, images
through the model's own vision tower, K/V straight into the static cache) on the same CUDA stream: transformers'
own forward spends twice the host time per layer, and its per-token activations are computed here over chunks of
tokens, so the prompt's peak memory stays under the recipe's. On the CPU the same step and prompt pass run
eagerly: that is what CI checks against `EagerDecoder`.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import bitsandbytes as bnb
import torch
import torch.nn.functional as F
from bitsandbytes.functional import QuantState
from torch.compiler import is_compiling
from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb

from medgemma_desktop.core.app_dirs import cache_dir
from medgemma_desktop.core.decoding import Decoder, EagerDecoder
from medgemma_desktop.core.device import DevicePlan
from medgemma_desktop.core.errors import ContextTooLongError

log = logging.getLogger(__name__)

DecoderFactory = Callable[[torch.nn.Module], Decoder]
SUPPORTED_LAYER_TYPES = {"sliding_attention", "full_attention"}
QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")
# The step's 4-bit matmuls per decoder layer: (submodule, projections that read the same input).
STEP_PROJECTIONS = {"qkv": ("self_attn", QKV), "o": ("self_attn", ("o_proj",)), "gate_up": ("mlp", GATE_UP),
                    "down": ("mlp", ("down_proj",))}
# The prompt's pass runs per-token parts over this many tokens at a time (SigLIP's projections and MLP, Gemma's
# MLP): their wide activations, not the weights, set its peak memory (SigLIP's 4304-wide MLP over 4,096 patches
# per image, Gemma's 10240-wide MLP over a long prompt). Tokens are independent there; only the kernels' own
# rounding can differ with the chunk size.
PROMPT_CHUNK_TOKENS = 1024
_FUSED_ATTR = "_fast_decode_fused"  # on the first member's base layer: (weight, member data pointers)
_fast_stream: torch.cuda.Stream | None = None
_captured: weakref.WeakSet[StepRunner] = weakref.WeakSet()  # runners whose graph is alive


def _parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """The Gemma 3 multimodal model (vision tower, projector), its text model and the lm_head under an optional
    PEFT wrapper (LoRA layers stay injected)."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    return core.model, core.model.language_model, core.lm_head


def _base(module: torch.nn.Module) -> torch.nn.Module:
    """The bitsandbytes layer under a PEFT LoRA wrapper (or the layer itself)."""
    return getattr(module, "base_layer", module)


def _projections(layer: torch.nn.Module, group: str) -> list[torch.nn.Module]:
    """One of `STEP_PROJECTIONS`' groups of a decoder layer, as modules."""
    parent, names = STEP_PROJECTIONS[group]
    return [getattr(getattr(layer, parent), name) for name in names]


def _active_lora(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(A, B, scaling) of the adapter PEFT would apply in this module's forward now; None when none would."""
    if not hasattr(module, "lora_A") or module.disable_adapters:
        return None
    names = [name for name in module.active_adapters if name in module.lora_A]
    if not names:
        return None
    name = names[0]  # `fusion_problem` refuses more than one
    return module.lora_A[name].weight, module.lora_B[name].weight, float(module.scaling[name])


def fusion_problem(modules: list[torch.nn.Module]) -> str | None:
    """Why these projections cannot run as one 4-bit matmul with exact LoRA, or None when they can."""
    bases = [_base(m) for m in modules]
    if not all(isinstance(b, bnb.nn.Linear4bit) and b.bias is None for b in bases):
        return "the projections are not bias-free bitsandbytes 4-bit layers"
    states = [b.weight.quant_state for b in bases]
    if any(state is None for state in states) or any(b.weight.dtype != torch.uint8 for b in bases):
        return "the 4-bit weights are not packed in uint8"
    if any(getattr(state, "packing_format_for_cpu", False) for state in states):
        return "the 4-bit weights are repacked for bitsandbytes' CPU kernel"
    if len({(s.blocksize, s.quant_type, s.shape[1]) for s in states}) != 1 or \
            any(s.shape[0] * s.shape[1] % s.blocksize for s in states):
        return "the 4-bit layers of one input differ in block size, type or input size"
    return next(filter(None, map(lora_problem, modules)), None)


def lora_problem(module: torch.nn.Module) -> str | None:
    """Why this layer's active LoRA is not the plain `B(A(x)) * scaling` computed here, or None when it is."""
    if not hasattr(module, "lora_A") or module.disable_adapters:
        return None
    active = [name for name in module.active_adapters if name in module.lora_A]
    if len(active) > 1:
        return "more than one active LoRA adapter"
    if getattr(module, "merged", False):
        return "a merged LoRA adapter"
    if any(name in getattr(module, "lora_variant", {}) or module.lora_B[name].bias is not None for name in active):
        return "a LoRA variant (DoRA, LoRA bias) the fast path does not implement"
    return None


def _fuse_weights(bases: list[torch.nn.Module]) -> torch.Tensor:
    """One packed weight for `bases`, concatenated row-wise (NF4 packs rows flat and every member's size is a
    multiple of its block size, so each member's scales still cover its own bytes). The layers become views of
    the fused storage, so the 4-bit bytes exist once; their quantisation states are left as they are. Done once
    per model."""
    if len(bases) == 1:
        return bases[0].weight.data.view(-1, 1)
    cached = getattr(bases[0], _FUSED_ATTR, None)
    if cached is not None and [b.weight.data_ptr() for b in bases] == cached[1]:
        return cached[0]
    weight = torch.cat([b.weight.data.reshape(-1) for b in bases]).view(-1, 1)
    at = 0
    for base in bases:
        size = base.weight.numel()
        base.weight.data = weight[at:at + size]
        base.support_avx512bf16_for_cpu = False  # a CPU repack would give the layer a private copy again
        at += size
    setattr(bases[0], _FUSED_ATTR, (weight, [b.weight.data_ptr() for b in bases]))
    return weight


def _block_scales(state: QuantState) -> torch.Tensor:
    """A 4-bit layer's float32 scale per block, computed as bitsandbytes dequantises its double quantisation
    (code[8-bit scale] * second-level scale + offset). In the compiled step this is one small kernel whose output
    lives only during the matmul, so fused layers cost no float32 copy of their scales in memory."""
    if not state.nested:
        return state.absmax
    nested = state.state2
    group = torch.arange(state.absmax.numel(), device=state.absmax.device) // nested.blocksize
    return nested.code[state.absmax.int()] * nested.absmax[group] + state.offset


def _by_tokens(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`fn(x)` for a per-token `fn`, over `PROMPT_CHUNK_TOKENS` tokens of x (1, tokens, ...) at a time."""
    if x.shape[1] <= PROMPT_CHUNK_TOKENS:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(PROMPT_CHUNK_TOKENS, dim=1)], dim=1)


def _matvec(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, weight)`. Compiled (only the one-token step is), as a float32 multiply-and-sum rounded to
    weight's dtype: one small reduction kernel where cuBLAS launches two or three for LoRA's 8- and 16-wide
    matrices. Uncompiled, the multiply-and-sum would be four separate kernels, so cuBLAS it is."""
    if is_compiling():
        return (x.float().unsqueeze(-2) * weight.float()).sum(-1).to(weight.dtype)
    return F.linear(x, weight)


class FusedLinear:
    """Projections of one input (q/k/v, gate/up, or o or down alone) as one bitsandbytes 4-bit matmul plus their
    active LoRA.

    Compiled (the fast path's normal case), the members' packed bytes are one matmul whose float32 scales are
    computed per step (`_block_scales`: their double-quantised offsets differ per member); uncompiled, each
    member runs with its own scales, which bitsandbytes' kernel expands itself.
    LoRA as PEFT computes it per member (`B(A(x.to(lora dtype))) * scaling`, cast back, added to the base
    output), with the A matrices stacked into one matmul and the B matrices block-diagonal in another; members
    without an active adapter get zero rows and zero scale, which adds exactly nothing. PEFT's A and B become
    views of the stacked matrices, so the adapter's numbers exist once here too. The adapter is the one
    active now (none when adapters are disabled): the engine captures again after switching.
    """

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        problem = fusion_problem(modules)
        if problem is not None:
            raise ValueError(problem)
        bases = [_base(m) for m in modules]
        self.weight = _fuse_weights(bases)
        self.member_weights = [b.weight.data for b in bases]  # views of `weight`
        self.states = [b.weight.quant_state for b in bases]
        self.sizes = [int(state.shape[0]) for state in self.states]
        self.shape = [sum(self.sizes), int(self.states[0].shape[1])]
        self.lora: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        found = [(i, lora) for i, lora in enumerate(map(_active_lora, modules)) if lora is not None]
        if found:
            a = torch.cat([lora_a.data for _, (lora_a, _, _) in found])
            b = a.new_zeros(sum(self.sizes), a.shape[0])
            scale = torch.zeros(sum(self.sizes), dtype=torch.float32, device=a.device)
            row = 0
            for i, (lora_a, lora_b, scaling) in found:
                start, rank = sum(self.sizes[:i]), lora_a.shape[0]
                b[start:start + self.sizes[i], row:row + rank] = lora_b.data
                scale[start:start + self.sizes[i]] = scaling
                lora_a.data = a[row:row + rank]
                lora_b.data = b[start:start + self.sizes[i], row:row + rank]
                row += rank
            self.lora = (a, b, scale)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.states) > 1 and is_compiling():  # the scales fuse into one small kernel
            state = self.states[0]
            scales = torch.cat([_block_scales(s) for s in self.states])
            return torch.ops.bitsandbytes.gemm_4bit.default(x, self.weight, self.shape, scales, state.blocksize,
                                                            state.quant_type)
        # Uncompiled, computing the scales takes more launches than one matmul per member with its own scales.
        outs = [bnb.matmul_4bit(x, weight, state)
                for weight, state in zip(self.member_weights, self.states, strict=True)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self._matmul(x)
        if self.lora is not None:
            a, b, scale = self.lora
            out = out + (_matvec(_matvec(x.to(a.dtype), a), b).float() * scale).to(out.dtype)
        return out.split(self.sizes, dim=-1)


def _fast_path_stream() -> torch.cuda.Stream:
    """The one stream for the fast path's warm-up, capture and prompt pass. Each stream that runs a cuBLAS call
    holds its own workspace (32 MiB on Hopper) for the process's life, so one stream, not one per capture, and the
    prompt on it too rather than on the default stream. The graph replays on the caller's stream but with this
    stream's workspace, fixed at capture: work queued here must be ordered against the caller's stream both ways
    (`StepRunner.prefill`), never run beside a replay."""
    global _fast_stream
    if _fast_stream is None:
        _fast_stream = torch.cuda.Stream()
    return _fast_stream


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled kernels and graphs: the platform cache dir, so compiling happens once."""
    return cache_dir() / "torch-compile"


class _DequantizedLinear:
    """A bitsandbytes 4-bit layer (under an optional PEFT LoRA wrapper) for many tokens, computed as
    bitsandbytes and PEFT compute it (the weight dequantised to the input's dtype, then `F.linear`; LoRA in
    float32, cast back and added), but dequantised once so that the caller can run it over chunks of tokens
    with cuBLAS alone: calling the modules per chunk costs ~0.15 ms of host time each. Weights repacked for
    bitsandbytes' CPU kernel are left to the module."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype) -> None:
        self.module = module
        base = _base(module)
        state = getattr(base.weight, "quant_state", None)
        self.weight: torch.Tensor | None = None
        if not getattr(state, "packing_format_for_cpu", False):
            self.weight = bnb.functional.dequantize_4bit(base.weight.data, state).to(dtype)
        self.bias = None if base.bias is None else base.bias.to(dtype)
        self.lora = _active_lora(module)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return self.module(x)
        out = F.linear(x, self.weight, self.bias)
        if self.lora is not None:
            a, b, scale = self.lora
            out = out + (F.linear(F.linear(x.to(a.dtype), a), b) * scale).to(out.dtype)
        return out


def _vision_attention(attn: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """SigLIP's attention as transformers' SDPA path computes it (all patches see each other), with the q/k/v
    and output projections `_by_tokens`: PEFT runs an adapter's LoRA on them in float32, four times the bytes
    of their bfloat16 outputs."""
    heads = (1, -1, attn.num_heads, attn.head_dim)
    query, key, value = (_by_tokens(_DequantizedLinear(projection, hidden.dtype), hidden).view(heads).transpose(1, 2)
                         for projection in (attn.q_proj, attn.k_proj, attn.v_proj))
    out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale).transpose(1, 2)
    return _by_tokens(_DequantizedLinear(attn.out_proj, hidden.dtype), out.reshape(1, -1, attn.embed_dim))


def _vision_mlp(mlp: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """SigLIP's MLP `_by_tokens`: its 4304-wide activations over all 4,096 patches were the prompt's largest."""
    fc1, fc2 = _DequantizedLinear(mlp.fc1, hidden.dtype), _DequantizedLinear(mlp.fc2, hidden.dtype)
    return _by_tokens(lambda part: fc2(mlp.activation_fn(fc1(part))), hidden)


class StaticDecodeState:
    """The static KV cache, the position tensors, the prompt's pass and the one-token step over them.

    Full-attention layers get `capacity` slots indexed by absolute position. Sliding layers get a ring of
    `min(sliding_window, capacity)` slots (slot = position mod ring) with each slot's absolute position kept in
    `slot_positions` (-1 = empty), so the window mask is computed on the device. A full-length cache for the 29
    sliding layers would cost 116 KiB per token more (928 MiB at 8K) for no gain.
    """

    def __init__(self, model: torch.nn.Module, capacity: int) -> None:
        self.multimodal, text, lm_head = _parts(model)
        config = text.config
        self.text, self.lm_head = text, lm_head
        self.image_token = int(self.multimodal.config.image_token_id)
        self.capacity = capacity
        self.window = int(config.sliding_window)
        self.ring = min(self.window, capacity)
        self.kv_heads, self.head_dim = int(config.num_key_value_heads), int(config.head_dim)
        self.groups = int(config.num_attention_heads) // self.kv_heads
        self.layer_types = list(config.layer_types[: config.num_hidden_layers])
        weight = text.embed_tokens.weight
        device, dtype = weight.device, weight.dtype
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, 1, dtype=torch.long, device=device)  # of the token being fed
        self.full_positions = torch.arange(capacity, device=device)
        self.slot_positions = torch.full((self.ring,), -1, dtype=torch.long, device=device)
        layers = text.layers[: len(self.layer_types)]
        self.qkv = [FusedLinear(_projections(layer, "qkv")) for layer in layers]
        self.o = [FusedLinear(_projections(layer, "o")) for layer in layers]
        self.gate_up = [FusedLinear(_projections(layer, "gate_up")) for layer in layers]
        self.down = [FusedLinear(_projections(layer, "down")) for layer in layers]
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for layer_type in self.layer_types:
            slots = self.ring if layer_type == "sliding_attention" else capacity
            shape = (1, self.kv_heads, slots, self.head_dim)
            self.keys.append(torch.zeros(shape, dtype=dtype, device=device))
            self.values.append(torch.zeros(shape, dtype=dtype, device=device))

    @property
    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def check_prompt(self, length: int) -> None:
        if length >= self.capacity:
            raise ContextTooLongError(f"the prompt needs {length:,} tokens but the decode cache holds "
                                      f"{self.capacity:,}", fix="Raise the context limit or shorten the question.")

    def store_prompt_layer(self, i: int, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """Write layer i's prompt K/V (positions 0..length-1) into the static cache: all of it for full layers,
        the newest `ring` positions into the sliding ring (slot = position mod ring). Sets `position` at the end."""
        if i == 0:
            self.slot_positions.fill_(-1)
        positions = torch.arange(length, device=keys.device)
        if self.layer_types[i] == "sliding_attention":
            kept = min(length, self.ring)
            keys, values, positions = keys[:, :, -kept:], values[:, :, -kept:], positions[-kept:]
            index = positions % self.ring
            self.slot_positions[index] = positions
        else:
            index = positions
        self.keys[i].index_copy_(2, index, keys.to(self.keys[i].dtype))
        self.values[i].index_copy_(2, index, values.to(self.values[i].dtype))
        if i == len(self.layer_types) - 1:
            self.position.fill_(length)

    def _attention_inputs(self, i: int, hidden: torch.Tensor,
                          rotary: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        """Layer i's query, key and value heads for `hidden` (1, tokens, hidden): projected, normed, rotated."""
        layer = self.text.layers[i]
        attn, tokens = layer.self_attn, hidden.shape[1]
        q, k, v = self.qkv[i](layer.input_layernorm(hidden))
        query = attn.q_norm(q.view(1, tokens, -1, self.head_dim).transpose(1, 2))
        key = attn.k_norm(k.view(1, tokens, -1, self.head_dim).transpose(1, 2))
        value = v.view(1, tokens, -1, self.head_dim).transpose(1, 2)
        cos, sin = rotary[self.layer_types[i]]
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        return query, key, value

    def _after_attention(self, i: int, residual: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The rest of layer i: o projection, residual, MLP, residual; `attended` is (1, tokens, heads * dim)."""
        layer = self.text.layers[i]
        (out,) = self.o[i](attended)
        hidden = residual + layer.post_attention_layernorm(out)
        return _by_tokens(lambda part: self._mlp_block(i, part), hidden)

    def _mlp_block(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        layer = self.text.layers[i]
        gate, up = self.gate_up[i](layer.pre_feedforward_layernorm(hidden))
        (mlp_out,) = self.down[i](layer.mlp.act_fn(gate) * up)
        return hidden + layer.post_feedforward_layernorm(mlp_out)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (float32, 1-D) from the last position's final hidden state. No final soft-capping:
        transformers' Gemma 3 image-text model applies none (only its text-only model does)."""
        return self.lm_head(self.text.norm(hidden[:, -1:]))[0, -1].float()

    def _prompt_masks(self, length: int, token_type_ids: torch.Tensor | None,
                      device: torch.device) -> dict[str, torch.Tensor | None]:
        """Which keys each prompt position attends to, per layer type, as transformers builds them for Gemma 3:
        causal, or within the same image (its tokens see each other both ways); sliding layers only the last
        `window` positions of that. (1, 1, length, length), True = attend; None where plain causal attention is
        the mask (no image, within the window), so SDPA needs no length x length mask at all."""
        positions = torch.arange(length, device=device)
        query, key = positions.view(-1, 1), positions.view(1, -1)
        allowed = key <= query
        if token_type_ids is not None:
            is_image = token_type_ids[0] == 1
            starts = is_image & ~F.pad(is_image, (1, 0))[:-1]
            block = torch.where(is_image, torch.cumsum(starts.int(), 0) - 1, -1)
            allowed = allowed | ((block.view(-1, 1) == block.view(1, -1)) & (block.view(-1, 1) >= 0))
        masks = {"full_attention": allowed, "sliding_attention": allowed & (key > query - self.window)}
        masks = {kind: mask.view(1, 1, length, length) for kind, mask in masks.items()}
        if token_type_ids is None:
            masks["full_attention"] = None
            if length <= self.window:
                masks["sliding_attention"] = None
        return masks

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The model's own SigLIP layers and projector, as `get_image_features` runs them, but one image at a
        time (a CT series' slices do not add up their activations) and the per-patch parts `_by_tokens`."""
        tower = self.multimodal.vision_tower
        features = []
        for image in pixels.split(1):
            hidden = tower.embeddings(image)
            for layer in tower.encoder.layers:
                hidden = hidden + _vision_attention(layer.self_attn, layer.layer_norm1(hidden))
                hidden = hidden + _vision_mlp(layer.mlp, layer.layer_norm2(hidden))
            features.append(self.multimodal.multi_modal_projector(tower.post_layernorm(hidden)))
        return torch.cat(features)

    def prefill(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The prompt through the same fused layers as the step, its K/V written straight into the static cache;
        returns the last position's next-token logits. Images go through the model's own vision tower and
        projector; the masks are transformers' (see `_prompt_masks`). Transformers' own forward costs twice the
        host time per layer (PEFT and module dispatch per projection), which is most of the time to first token.
        The engine's prompts are single and unpadded, so `attention_mask` (all ones) is not read."""
        unknown = set(inputs) - {"input_ids", "attention_mask", "token_type_ids", "pixel_values"}
        if unknown:
            raise ValueError(f"the fast prefill does not take {sorted(unknown)}")
        ids = inputs["input_ids"]
        length = int(ids.shape[1])
        self.check_prompt(length)
        pixels = inputs.get("pixel_values")
        is_image = ids == self.image_token
        hidden = self.text.embed_tokens(ids.masked_fill(is_image, 0) if pixels is not None else ids)
        if pixels is not None:
            features = self.image_features(pixels)
            hidden = hidden.masked_scatter(is_image.unsqueeze(-1), features.to(hidden.dtype))
        types = inputs.get("token_type_ids") if pixels is not None else None  # image blocks need images
        masks = self._prompt_masks(length, types, hidden.device)
        positions = torch.arange(length, device=hidden.device).view(1, -1)
        rotary = {kind: self.text.rotary_emb(hidden, positions, kind) for kind in set(self.layer_types)}
        for i, layer_type in enumerate(self.layer_types):
            query, key, value = self._attention_inputs(i, hidden, rotary)
            self.store_prompt_layer(i, key, value, length)
            mask = masks[layer_type]
            attended = F.scaled_dot_product_attention(
                query, key.repeat_interleave(self.groups, dim=1), value.repeat_interleave(self.groups, dim=1),
                attn_mask=mask, is_causal=mask is None, scale=self.text.layers[i].self_attn.scaling)
            hidden = self._after_attention(i, hidden, attended.transpose(1, 2).reshape(1, length, -1))
        return self._logits(hidden)

    def step(self) -> torch.Tensor:
        """Feed `token` at `position`, write its K/V, return next-token logits (float32) and advance `position`."""
        position = self.position.view(1)
        ring_index = position % self.ring
        self.slot_positions[ring_index] = position
        full_mask = (self.full_positions <= position).view(1, 1, 1, -1)
        ring_mask = ((self.slot_positions >= 0) & (self.slot_positions > position - self.window)).view(1, 1, 1, -1)
        hidden = self.text.embed_tokens(self.token)
        rotary = {kind: self.text.rotary_emb(hidden, self.position, kind) for kind in set(self.layer_types)}
        for i, layer_type in enumerate(self.layer_types):
            sliding = layer_type == "sliding_attention"
            query, key, value = self._attention_inputs(i, hidden, rotary)
            index = ring_index if sliding else position
            self.keys[i][:, :, index] = key
            self.values[i][:, :, index] = value
            # One query token: the `groups` query heads that share a KV head become `groups` query rows of that
            # head (head h = kv * groups + g, as transformers' repeat_kv orders them), so no K/V is repeated.
            # Attention as transformers' eager attention computes it (bfloat16 matmuls, float32 softmax): for one
            # query row cuBLAS spreads the keys over the whole GPU, where the fused SDPA kernels run one block
            # per head and took a third of the step.
            scores = torch.matmul(query.reshape(1, self.kv_heads, self.groups, self.head_dim),
                                  self.keys[i].transpose(2, 3)).float() * self.text.layers[i].self_attn.scaling
            scores = scores.masked_fill(~(ring_mask if sliding else full_mask), float("-inf"))
            out = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), self.values[i])
            hidden = self._after_attention(i, hidden, out.reshape(1, 1, -1))
        self.position.add_(1)
        return self._logits(hidden)


class StepRunner:
    """Runs the prompt and the step: eagerly (CPU, CI), or on CUDA the step as one CUDA graph captured at
    construction, optionally compiled first, and the prompt on the same stream.

    One runner serves one generation at a time; it keeps its cache and graph between generations, so capture
    (and compile) cost is paid at load, not at each question's first token.
    """

    def __init__(self, model: torch.nn.Module, capacity: int, cuda_graph: bool = False,
                 compile_step: bool = False) -> None:
        self.model = model
        self.state = StaticDecodeState(model, capacity)
        self.cuda_graph = cuda_graph
        self.compiled = compile_step
        self.owner: object | None = None
        self.setup_s = 0.0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_logits: torch.Tensor | None = None
        if cuda_graph:
            start = time.perf_counter()
            self._capture(compile_step)
            self.setup_s = time.perf_counter() - start

    def _capture(self, compile_step: bool) -> None:
        step: Callable[[], torch.Tensor] = self.state.step
        if compile_step:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir()))
            step = torch.compile(step, fullgraph=False, dynamic=False)
        with torch.inference_mode():
            torch.cuda.synchronize()
            # Loading ran cuBLAS on the default stream; from here on the fast path's stream is the only one that
            # does, so the default stream's workspace is given back rather than held beside it. Not while another
            # captured step is alive: its graph keeps using the fast stream's workspace, which this also frees.
            if not _captured:
                torch._C._cuda_clearCublasWorkspaces()
            stream = _fast_path_stream()
            with torch.cuda.stream(stream):  # warm-up (and compile) off the default stream, as capture needs
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(stream)
            self.state.position.zero_()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                self._graph_logits = step()
            self._graph = graph
        _captured.add(self)
        torch.cuda.synchronize()

    def prefill(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.cuda_graph:
            return self.state.prefill(inputs)
        stream, current = _fast_path_stream(), torch.cuda.current_stream()
        stream.wait_stream(current)
        try:
            with torch.cuda.stream(stream):
                logits = self.state.prefill(inputs)
        finally:
            current.wait_stream(stream)
        logits.record_stream(current)  # read on the caller's stream after this returns
        return logits

    def run(self, token: torch.Tensor) -> torch.Tensor:
        self.state.token.copy_(token.view(1, 1))
        if self._graph is None:
            return self.state.step()
        self._graph.replay()
        return self._graph_logits.clone()  # the next replay overwrites the graph's output


class FastDecoder:
    """The `Decoder` over a `StepRunner`: the prompt through the runner's own layers, then its step per token."""

    name = "fast"

    def __init__(self, runner: StepRunner) -> None:
        self._runner = runner
        self._position = 0
        self.name = "fast-graph-compiled" if runner.compiled else ("fast-graph" if runner.cuda_graph else "fast")

    def prefill(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        runner = self._runner
        runner.owner = self
        logits = runner.prefill(inputs)
        self._position = int(inputs["input_ids"].shape[1])
        return logits

    def step(self, token: torch.Tensor) -> torch.Tensor:
        runner = self._runner
        if runner.owner is not self:
            raise RuntimeError("another generation is using this decode cache")
        if self._position >= runner.state.capacity:
            raise ContextTooLongError(f"the answer reached the decode cache size of {runner.state.capacity:,} tokens",
                                      fix="Raise the context limit or ask for a shorter answer.")
        logits = runner.run(token)
        self._position += 1
        return logits

    def release(self) -> None:
        if self._runner.owner is self:
            self._runner.owner = None


class FastDecoderFactory:
    """`Engine.decoder_factory` for the fast path: hands out decoders over one shared runner."""

    def __init__(self, runner: StepRunner) -> None:
        self.runner = runner

    def __call__(self, model: torch.nn.Module) -> Decoder:
        if model is not self.runner.model:
            raise ValueError("this fast decoder was built for another model")
        return FastDecoder(self.runner)


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the static step cannot reproduce this model's attention, or None when it can."""
    try:
        multimodal, text, _ = _parts(model)
        vision = multimodal.vision_tower
    except AttributeError:
        return "the model is not a Gemma 3 image-text model"
    if not all(hasattr(vision, name) for name in ("embeddings", "encoder", "post_layernorm")) or \
            getattr(vision, "use_head", False):
        return "the vision tower is not Gemma 3's SigLIP encoder"
    for layer in vision.encoder.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for module in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, mlp.fc1, mlp.fc2):
            if not isinstance(_base(module), bnb.nn.Linear4bit) or _base(module).weight.quant_state is None:
                return "the vision tower's layers are not bitsandbytes 4-bit layers"
            problem = lora_problem(module)
            if problem is not None:
                return problem
    config = text.config
    if config.attn_logit_softcapping is not None:
        return "attention logit soft-capping is not implemented in the fast step"
    if not set(config.layer_types) <= SUPPORTED_LAYER_TYPES:
        return f"unknown attention layer types {sorted(set(config.layer_types) - SUPPORTED_LAYER_TYPES)}"
    for layer in text.layers[: config.num_hidden_layers]:
        for group in STEP_PROJECTIONS:
            problem = fusion_problem(_projections(layer, group))
            if problem is not None:
                return problem
    return None


def choose_decoder(model: torch.nn.Module, plan: DevicePlan, context_limit: int = 8192,
                   compile_step: bool = True) -> tuple[DecoderFactory, str]:
    """The fast factory on CUDA (graph captured now, compiled first when possible), else eager with the reason."""
    if not plan.is_cuda:
        return EagerDecoder, "plain decoding: the fast path replays CUDA graphs and needs an NVIDIA GPU"
    reason = unsupported_reason(model)
    if reason is not None:
        return EagerDecoder, f"plain decoding: {reason}"
    for compiled in ((True, False) if compile_step else (False,)):
        try:
            runner = StepRunner(model, context_limit, cuda_graph=True, compile_step=compiled)
        except Exception:  # any failure of compile or capture falls back; the log keeps the traceback
            log.exception("fast decode setup failed (compile=%s)", compiled)
            torch.cuda.empty_cache()
            continue
        how = "compiled and captured" if compiled else "captured"
        return FastDecoderFactory(runner), (f"fast decoding: static {context_limit:,}-token cache, one-token step "
                                            f"{how} as a CUDA graph in {runner.setup_s:.1f} s")
    return EagerDecoder, "plain decoding: the fast path failed to start (see the log)"
