"""Fast decoding: our own one-token step over a pre-allocated KV cache, captured once as a CUDA graph.

Plain decoding spends ~90 ms per token on Python and thousands of tiny kernel launches, not on bytes. This step
is written so that nothing in it depends on a Python value that changes per token: the token, its position, the
cache write index, the rotary angle, the attention masks and the sliding-window ring all live in device tensors
updated in place. So one CUDA graph, captured once per cache size, replays every token (optionally after
torch.compile has fused the step's small kernels; its artifacts are cached on disk so compiling happens once
per machine).

The step calls the model's own modules (scaled embedding, RMSNorms, q/k norms, the PEFT-wrapped bitsandbytes
projections so the LoRA runs exactly as in eager decoding, the MLPs, the tied lm_head) and transformers' own
rotary embedding and rotation. Only the cache, the masks and the attention call are ours. The prompt is still
prefilled by transformers (images, bidirectional image attention), then its K/V are copied into the static cache.
On the CPU the same step runs eagerly: that is what CI checks against `EagerDecoder`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb

from medgemma_desktop.core.app_dirs import cache_dir
from medgemma_desktop.core.decoding import Decoder, EagerDecoder
from medgemma_desktop.core.device import DevicePlan
from medgemma_desktop.core.errors import ContextTooLongError

log = logging.getLogger(__name__)

DecoderFactory = Callable[[torch.nn.Module], Decoder]
SUPPORTED_LAYER_TYPES = {"sliding_attention", "full_attention"}


def _parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The Gemma 3 text model and the lm_head under an optional PEFT wrapper (LoRA layers stay injected)."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    return core.model.language_model, core.lm_head


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled kernels and graphs: the platform cache dir, so compiling happens once."""
    return cache_dir() / "torch-compile"


class StaticDecodeState:
    """The static KV cache, the position tensors and the one-token step over them.

    Full-attention layers get `capacity` slots indexed by absolute position. Sliding layers get a ring of
    `min(sliding_window, capacity)` slots (slot = position mod ring) with each slot's absolute position kept in
    `slot_positions` (-1 = empty), so the window mask is computed on the device. A full-length cache for the 29
    sliding layers would cost 116 KiB per token more (928 MiB at 8K) for no gain.
    """

    def __init__(self, model: torch.nn.Module, capacity: int) -> None:
        text, lm_head = _parts(model)
        config = text.config
        self.text, self.lm_head = text, lm_head
        self.capacity = capacity
        self.window = int(config.sliding_window)
        self.ring = min(self.window, capacity)
        self.kv_heads, self.head_dim = int(config.num_key_value_heads), int(config.head_dim)
        self.groups = int(config.num_attention_heads) // self.kv_heads
        self.layer_types = list(config.layer_types[: config.num_hidden_layers])
        self.final_softcap = config.final_logit_softcapping
        weight = text.embed_tokens.weight
        device, dtype = weight.device, weight.dtype
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, 1, dtype=torch.long, device=device)  # of the token being fed
        self.full_positions = torch.arange(capacity, device=device)
        self.slot_positions = torch.full((self.ring,), -1, dtype=torch.long, device=device)
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

    def load_prefill(self, cache: DynamicCache, length: int) -> None:
        """Copy transformers' prefill K/V into the static cache (its sliding layers hold only the last window-1)."""
        if length >= self.capacity:
            raise ContextTooLongError(f"the prompt needs {length:,} tokens but the decode cache holds "
                                      f"{self.capacity:,}", fix="Raise the context limit or shorten the question.")
        device = self.token.device
        self.slot_positions.fill_(-1)
        for i, layer_type in enumerate(self.layer_types):
            keys, values = cache.layers[i].keys, cache.layers[i].values
            kept = keys.shape[2]
            positions = torch.arange(length - kept, length, device=device)
            if layer_type == "sliding_attention":
                if kept > self.ring:  # only when capacity < window: keep the newest `ring` positions
                    keys, values, positions = keys[:, :, -self.ring:], values[:, :, -self.ring:], positions[-self.ring:]
                index = positions % self.ring
                self.slot_positions[index] = positions
            else:
                index = positions
            self.keys[i].index_copy_(2, index, keys.to(self.keys[i].dtype))
            self.values[i].index_copy_(2, index, values.to(self.values[i].dtype))
        self.position.fill_(length)

    def step(self) -> torch.Tensor:
        """Feed `token` at `position`, write its K/V, return next-token logits (float32) and advance `position`."""
        text = self.text
        position = self.position.view(1)
        ring_index = position % self.ring
        self.slot_positions[ring_index] = position
        full_mask = (self.full_positions <= position).view(1, 1, 1, -1)
        ring_mask = ((self.slot_positions >= 0) & (self.slot_positions > position - self.window)).view(1, 1, 1, -1)
        hidden = text.embed_tokens(self.token)
        rotary = {kind: text.rotary_emb(hidden, self.position, kind) for kind in set(self.layer_types)}
        for i, layer in enumerate(text.layers[: len(self.layer_types)]):
            sliding = self.layer_types[i] == "sliding_attention"
            attn = layer.self_attn
            residual = hidden
            x = layer.input_layernorm(hidden)
            query = attn.q_norm(attn.q_proj(x).view(1, 1, -1, self.head_dim).transpose(1, 2))
            key = attn.k_norm(attn.k_proj(x).view(1, 1, -1, self.head_dim).transpose(1, 2))
            value = attn.v_proj(x).view(1, 1, -1, self.head_dim).transpose(1, 2)
            cos, sin = rotary[self.layer_types[i]]
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            index = ring_index if sliding else position
            self.keys[i][:, :, index] = key
            self.values[i][:, :, index] = value
            # One query token: the `groups` query heads that share a KV head become `groups` query rows of that
            # head (head h = kv * groups + g, as transformers' repeat_kv orders them), so no K/V is repeated.
            out = F.scaled_dot_product_attention(
                query.reshape(1, self.kv_heads, self.groups, self.head_dim), self.keys[i], self.values[i],
                attn_mask=ring_mask if sliding else full_mask, scale=attn.scaling)
            hidden = residual + layer.post_attention_layernorm(attn.o_proj(out.reshape(1, 1, -1)))
            residual = hidden
            hidden = residual + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden)))
        logits = self.lm_head(text.norm(hidden))[0, -1].float()
        if self.final_softcap is not None:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        self.position.add_(1)
        return logits


class StepRunner:
    """Runs the step: eagerly (CPU, CI), or as one CUDA graph captured at construction, optionally compiled first.

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
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up (and compile) off the capture stream, as graph capture needs
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            self.state.position.zero_()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._graph_logits = step()
            self._graph = graph
        torch.cuda.synchronize()

    def run(self, token: torch.Tensor) -> torch.Tensor:
        self.state.token.copy_(token.view(1, 1))
        if self._graph is None:
            return self.state.step()
        self._graph.replay()
        return self._graph_logits.clone()  # the next replay overwrites the graph's output


class FastDecoder:
    """The `Decoder` over a `StepRunner`: transformers prefill, then the static-cache step per token."""

    name = "fast"

    def __init__(self, runner: StepRunner) -> None:
        self._runner = runner
        self._position = 0
        self.name = "fast-graph-compiled" if runner.compiled else ("fast-graph" if runner.cuda_graph else "fast")

    def prefill(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        runner = self._runner
        cache = DynamicCache(config=runner.model.config)
        out = runner.model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
        self._position = int(inputs["input_ids"].shape[1])
        runner.owner = self
        runner.state.load_prefill(cache, self._position)
        return out.logits[0, -1].float()

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
        text, _ = _parts(model)
    except AttributeError:
        return "the model is not a Gemma 3 image-text model"
    config = text.config
    if config.attn_logit_softcapping is not None:
        return "attention logit soft-capping is not implemented in the fast step"
    if not set(config.layer_types) <= SUPPORTED_LAYER_TYPES:
        return f"unknown attention layer types {sorted(set(config.layer_types) - SUPPORTED_LAYER_TYPES)}"
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
