"""The fast path's state and computation: a static KV cache, the prompt's pass into it and the one-token step.

The step is written so that nothing in it depends on a Python value that changes per token: the token, its
position, the cache write index, the rotary angle, the attention masks and the sliding-window ring all live in
device tensors updated in place, and the LoRA matrices in fixed slots (`core.fast_linear`). So one CUDA graph,
captured once per cache size, replays every token and follows adapter switches.

Each layer's projections that read the same input run as one 4-bit matmul (`FusedLinear`), and attention as
plain matmuls with a float32 softmax (the fused SDPA kernels run one thread block per head for a single query
and cost a third of the step). The norms, the MLP activation, the rotary embedding and the tied lm_head are the
model's own modules and transformers' functions, except where our kernels take their part on the GPU: the query
and key norms with the rotation (`core.qk_norm_rope`, for the prompt's tokens too), the activation inside the
gate/up product (`FusedLinear.gelu_product`), and uncompiled, the layers' norms with their residual sums
(`core.rms_norm`). The prompt runs through the same layers (`StaticDecodeState.prefill`: transformers' masks,
images through the model's own vision tower, K/V straight into the static cache): transformers' own forward
spends twice the host time per layer.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb

from medgemma_desktop.core import qk_norm_rope, rms_norm
from medgemma_desktop.core.errors import ContextTooLongError
from medgemma_desktop.core.fast_linear import STEP_PROJECTIONS, FusedLinear, LoraSlots, projections
from medgemma_desktop.core.prompt_pass import by_tokens, image_features

# The prompt's attention without cuDNN's: it builds a plan for each new prompt length, which cost the first
# questions of new lengths 0.16-1.6 s more on an H200 (every new question has a new length), where these backends
# take a new length at no cost (benchmarks/README.md, run 18).
PROMPT_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def model_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """The Gemma 3 multimodal model (vision tower, projector), its text model and the lm_head under an optional
    PEFT wrapper (LoRA layers stay injected)."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    return core.model, core.model.language_model, core.lm_head


class StaticDecodeState:
    """The static KV cache, the position tensors, the prompt's pass and the one-token step over them.

    Full-attention layers get `capacity` slots indexed by absolute position. Sliding layers get a ring of
    `min(sliding_window, capacity)` slots (slot = position mod ring) with each slot's absolute position kept in
    `slot_positions` (-1 = empty), so the window mask is computed on the device. A full-length cache for the 29
    sliding layers would cost 116 KiB per token more (928 MiB at 8K) for no gain.
    """

    def __init__(self, model: torch.nn.Module, capacity: int, slots: LoraSlots | None = None) -> None:
        self.multimodal, text, lm_head = model_parts(model)
        config = text.config
        self.text, self.lm_head = text, lm_head
        self.image_token = int(self.multimodal.config.image_token_id)
        self.capacity = capacity
        self.window = int(config.sliding_window)
        self.ring = min(self.window, capacity)
        self.kv_heads, self.head_dim = int(config.num_key_value_heads), int(config.head_dim)
        self.groups = int(config.num_attention_heads) // self.kv_heads
        self.layer_types = list(config.layer_types[: config.num_hidden_layers])
        layers = text.layers[: len(self.layer_types)]
        self.slots = slots or LoraSlots.covering(layers)
        fused = {group: [FusedLinear(projections(layer, group), names, self.slots) for layer in layers]
                 for group, (_, names) in STEP_PROJECTIONS.items()}
        self.qkv, self.o, self.gate_up, self.down = fused["qkv"], fused["o"], fused["gate_up"], fused["down"]
        self._allocate_cache()
        self.tanh_gelu = config.hidden_activation == "gelu_pytorch_tanh"
        self.norm_rope_kernel = all(qk_norm_rope.kernel_runs(layer.self_attn, self.head_dim) for layer in layers) \
            and all(layer.self_attn.q_norm.eps == layer.self_attn.k_norm.eps for layer in layers)
        norms = [text.norm] + [getattr(layer, name) for layer in layers for name in (
            "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")]
        self.norm_kernel = all(map(rms_norm.kernel_runs, norms))  # uncompiled only: inductor fuses the norms

    def _allocate_cache(self) -> None:
        """The per-token tensors the step reads and writes: token, position, ring positions and the K/V cache."""
        device, dtype = self.text.embed_tokens.weight.device, self.text.embed_tokens.weight.dtype
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, 1, dtype=torch.long, device=device)  # of the token being fed
        self.full_positions = torch.arange(self.capacity, device=device)
        self.slot_positions = torch.full((self.ring,), -1, dtype=torch.long, device=device)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for layer_type in self.layer_types:
            slots = self.ring if layer_type == "sliding_attention" else self.capacity
            shape = (1, self.kv_heads, slots, self.head_dim)
            self.keys.append(torch.zeros(shape, dtype=dtype, device=device))
            self.values.append(torch.zeros(shape, dtype=dtype, device=device))

    def scratch(self) -> StaticDecodeState:
        """A state sharing this one's layers, weights and LoRA slots but with its own cache and positions, of the
        same shapes: compiling runs the step, and a compile on this copy leaves the live cache alone while the
        step it produces (guarded on shapes, not on which tensors) serves this state too."""
        other = copy.copy(self)
        other._allocate_cache()
        return other

    @property
    def fused(self) -> list[FusedLinear]:
        return self.qkv + self.o + self.gate_up + self.down

    def adapter_problem(self) -> str | None:
        """Why the active adapter does not fit the LoRA slots, or None when `load_adapter` can take it."""
        return next(filter(None, (fused.adapter_problem() for fused in self.fused)), None)

    def load_adapter(self) -> None:
        """Copy the active adapter (zeros for the base alone) into the LoRA slots the step reads."""
        for fused in self.fused:
            fused.load_adapter()

    @property
    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def check_prompt(self, length: int) -> None:
        if length >= self.capacity:
            raise ContextTooLongError(f"the prompt needs {length:,} tokens but the decode cache holds "
                                      f"{self.capacity:,}", fix="Raise the context limit or shorten the question.")

    def _prompt_slots(self, positions: torch.Tensor) -> dict[str, tuple[int, torch.Tensor]]:
        """Where the prompt's K/V go, per layer type: (how many of the newest positions are kept, their cache
        slots). Full layers keep all of `positions` (0..length-1) at their positions; sliding layers the newest
        `ring` in the ring (slot = position mod ring), whose positions `slot_positions` records now."""
        length = positions.numel()
        kept = min(length, self.ring)
        ring_index = positions[-kept:] % self.ring
        self.slot_positions.fill_(-1)
        self.slot_positions[ring_index] = positions[-kept:]
        return {"full_attention": (length, positions), "sliding_attention": (kept, ring_index)}

    def _store_prompt_layer(self, i: int, keys: torch.Tensor, values: torch.Tensor,
                            slots: tuple[int, torch.Tensor]) -> None:
        """Write layer i's prompt K/V (one per position) into the static cache at `_prompt_slots`' slots."""
        kept, index = slots
        self.keys[i].index_copy_(2, index, keys[:, :, -kept:].to(self.keys[i].dtype))
        self.values[i].index_copy_(2, index, values[:, :, -kept:].to(self.values[i].dtype))

    def _attention_inputs(self, i: int, hidden: torch.Tensor,
                          rotary: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        """Layer i's query, key and value heads for `hidden` (1, tokens, hidden): projected, normed, rotated."""
        layer = self.text.layers[i]
        attn, tokens = layer.self_attn, hidden.shape[1]
        q, k, v = self.qkv[i](rms_norm.norm(layer.input_layernorm, hidden, kernel=self.norm_kernel))
        value = v.view(1, tokens, -1, self.head_dim).transpose(1, 2)
        cos, sin = rotary[self.layer_types[i]]
        if self.norm_rope_kernel:
            heads = torch.ops.medgemma.qk_norm_rope(q, k, attn.q_norm.weight, attn.k_norm.weight, cos, sin,
                                                    attn.q_norm.eps)
            query_heads = q.shape[-1] // self.head_dim
            return heads[:query_heads].unsqueeze(0), heads[query_heads:].unsqueeze(0), value
        query = attn.q_norm(q.view(1, tokens, -1, self.head_dim).transpose(1, 2))
        key = attn.k_norm(k.view(1, tokens, -1, self.head_dim).transpose(1, 2))
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        return query, key, value

    def _after_attention(self, i: int, residual: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The rest of layer i: o projection, residual, MLP, residual; `attended` is (1, tokens, heads * dim)."""
        layer = self.text.layers[i]
        (out,) = self.o[i](attended)
        hidden = rms_norm.norm(layer.post_attention_layernorm, out, residual, self.norm_kernel)
        return by_tokens(lambda part: self._mlp_block(i, part), hidden)

    def _mlp_block(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        layer, gate_up = self.text.layers[i], self.gate_up[i]
        normed = rms_norm.norm(layer.pre_feedforward_layernorm, hidden, kernel=self.norm_kernel)
        if self.tanh_gelu and gate_up.fuses_activation(normed):  # the activation in the NF4 kernel's epilogue
            activated = gate_up.gelu_product(normed)
        else:
            gate, up = gate_up(normed)
            activated = layer.mlp.act_fn(gate) * up
            del gate, up  # a prompt's peak is the down projection's dequantised weight: not these beside it
        (mlp_out,) = self.down[i](activated)
        return rms_norm.norm(layer.post_feedforward_layernorm, mlp_out, hidden, self.norm_kernel)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (float32, 1-D) from the last position's final hidden state. No final soft-capping:
        transformers' Gemma 3 image-text model applies none (only its text-only model does)."""
        return self.lm_head(rms_norm.norm(self.text.norm, hidden[:, -1:], kernel=self.norm_kernel))[0, -1].float()

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

    def prefill(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The prompt through the same fused layers as the step, its K/V written straight into the static cache;
        returns the last position's next-token logits. Images go through the model's own vision tower and
        projector; the masks are transformers' (see `_prompt_masks`), attention without cuDNN's backend
        (`PROMPT_ATTENTION`). Transformers' own forward costs twice the host time per layer (PEFT and module
        dispatch per projection), which is most of the time to first token. The engine's prompts are single and
        unpadded, so `attention_mask` (all ones) is not read."""
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
            features = image_features(self.multimodal, pixels)
            hidden = hidden.masked_scatter(is_image.unsqueeze(-1), features.to(hidden.dtype))
        types = inputs.get("token_type_ids") if pixels is not None else None  # image blocks need images
        masks = self._prompt_masks(length, types, hidden.device)
        positions = torch.arange(length, device=hidden.device).view(1, -1)
        rotary = {kind: self.text.rotary_emb(hidden, positions, kind) for kind in set(self.layer_types)}
        slots = self._prompt_slots(positions[0])
        with sdpa_kernel(PROMPT_ATTENTION):
            for i, layer_type in enumerate(self.layer_types):
                query, key, value = self._attention_inputs(i, hidden, rotary)
                self._store_prompt_layer(i, key, value, slots[layer_type])
                mask = masks[layer_type]
                attended = F.scaled_dot_product_attention(
                    query, key.repeat_interleave(self.groups, dim=1), value.repeat_interleave(self.groups, dim=1),
                    attn_mask=mask, is_causal=mask is None, scale=self.text.layers[i].self_attn.scaling)
                hidden = self._after_attention(i, hidden, attended.transpose(1, 2).reshape(1, length, -1))
        self.position.fill_(length)
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
