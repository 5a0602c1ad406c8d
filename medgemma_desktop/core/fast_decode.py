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
embedding. The prompt is prefilled by transformers (images, bidirectional image attention), writing its K/V
straight into the static cache. On the CPU the same step runs eagerly: that is what CI checks against
`EagerDecoder`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import bitsandbytes as bnb
import torch
import torch.nn.functional as F
from bitsandbytes.functional import QuantState
from torch.compiler import is_compiling
from transformers import DynamicCache
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
_FUSED_ATTR = "_fast_decode_fused"  # on the first member's base layer: (weight, member data pointers)
_capture_stream: torch.cuda.Stream | None = None


def _parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The Gemma 3 text model and the lm_head under an optional PEFT wrapper (LoRA layers stay injected)."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    return core.model.language_model, core.lm_head


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
    for module in modules:
        if not hasattr(module, "lora_A") or module.disable_adapters:
            continue
        active = [name for name in module.active_adapters if name in module.lora_A]
        if len(active) > 1:
            return "more than one active LoRA adapter"
        if getattr(module, "merged", False):
            return "a merged LoRA adapter"
        if any(name in getattr(module, "lora_variant", {}) or module.lora_B[name].bias is not None
               for name in active):
            return "a LoRA variant (DoRA, LoRA bias) the fused step does not implement"
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


def _matvec(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, weight)` for one token. Compiled, as a float32 multiply-and-sum rounded to weight's dtype: one
    small reduction kernel where cuBLAS launches two or three for LoRA's 8- and 16-wide matrices. Uncompiled, the
    multiply-and-sum would be four separate kernels, so cuBLAS it is."""
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
    without an active adapter get zero rows and zero scale, which adds exactly nothing. The adapter is the one
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
            a = torch.cat([lora_a for _, (lora_a, _, _) in found])
            b = a.new_zeros(sum(self.sizes), a.shape[0])
            scale = torch.zeros(sum(self.sizes), dtype=torch.float32, device=a.device)
            row = 0
            for i, (lora_a, lora_b, scaling) in found:
                start = sum(self.sizes[:i])
                b[start:start + self.sizes[i], row:row + lora_a.shape[0]] = lora_b
                scale[start:start + self.sizes[i]] = scaling
                row += lora_a.shape[0]
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


def _side_stream() -> torch.cuda.Stream:
    """One stream for every warm-up and capture: each stream that runs a cuBLAS call gets its own workspace
    (tens of MiB on Hopper), kept for the process's life, so a new stream per capture would leak one each time."""
    global _capture_stream
    if _capture_stream is None:
        _capture_stream = torch.cuda.Stream()
    return _capture_stream


class _PrefillIntoStatic(DynamicCache):
    """The prefill's cache: each layer's new K/V go straight into the static cache and are returned for
    attention as a fresh DynamicCache would return them, so no second copy of the prompt's K/V is ever held."""

    def __init__(self, config, state: StaticDecodeState, length: int) -> None:
        super().__init__(config=config)
        self._state, self._length = state, length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        self._state.store_prompt_layer(layer_idx, key_states, value_states, self._length)
        return key_states, value_states


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
            q, k, v = self.qkv[i](layer.input_layernorm(hidden))
            query = attn.q_norm(q.view(1, 1, -1, self.head_dim).transpose(1, 2))
            key = attn.k_norm(k.view(1, 1, -1, self.head_dim).transpose(1, 2))
            value = v.view(1, 1, -1, self.head_dim).transpose(1, 2)
            cos, sin = rotary[self.layer_types[i]]
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            index = ring_index if sliding else position
            self.keys[i][:, :, index] = key
            self.values[i][:, :, index] = value
            # One query token: the `groups` query heads that share a KV head become `groups` query rows of that
            # head (head h = kv * groups + g, as transformers' repeat_kv orders them), so no K/V is repeated.
            # Attention as transformers' eager attention computes it (bfloat16 matmuls, float32 softmax): for one
            # query row cuBLAS spreads the keys over the whole GPU, where the fused SDPA kernels run one block
            # per head and took a third of the step.
            scores = torch.matmul(query.reshape(1, self.kv_heads, self.groups, self.head_dim),
                                  self.keys[i].transpose(2, 3)).float() * attn.scaling
            scores = scores.masked_fill(~(ring_mask if sliding else full_mask), float("-inf"))
            out = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), self.values[i])
            (attended,) = self.o[i](out.reshape(1, 1, -1))
            hidden = residual + layer.post_attention_layernorm(attended)
            gate, up = self.gate_up[i](layer.pre_feedforward_layernorm(hidden))
            (mlp_out,) = self.down[i](layer.mlp.act_fn(gate) * up)
            hidden = hidden + layer.post_feedforward_layernorm(mlp_out)
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
            side = _side_stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up (and compile) off the default stream, as graph capture needs
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            self.state.position.zero_()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
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
        length = int(inputs["input_ids"].shape[1])
        runner.state.check_prompt(length)
        runner.owner = self
        cache = _PrefillIntoStatic(runner.model.config, runner.state, length)
        out = runner.model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
        self._position = length
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
