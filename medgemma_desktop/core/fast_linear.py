"""The fast step's projections: the 4-bit projections of one input as one 4-bit matmul (in the compiled step our
NF4 kernel, `core.nf4_matvec`, where it runs; bitsandbytes' otherwise), plus LoRA read from fixed slots.

A captured CUDA graph reads the memory it was captured with, so the LoRA matrices are not the adapter's own
tensors but slots of a fixed shape (`LoraSlots`: a rank and the projections that have one) that switching an
adapter copies into, zeros where the adapter has nothing (the base alone, an untargeted projection, ranks below
the slot's). Zeros add exactly nothing, so every adapter that fits computes as PEFT computes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import bitsandbytes as bnb
import torch
import torch.nn.functional as F
from bitsandbytes.functional import QuantState
from torch.compiler import is_compiling

from medgemma_desktop.core import nf4_dequantize, nf4_matvec

QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")
# The step's 4-bit matmuls per decoder layer: (submodule, projections that read the same input).
STEP_PROJECTIONS = {"qkv": ("self_attn", QKV), "o": ("self_attn", ("o_proj",)), "gate_up": ("mlp", GATE_UP),
                    "down": ("mlp", ("down_proj",))}
_FUSED_ATTR = "_fast_decode_fused"  # on the first member's base layer: (weight, member data pointers)
# The prompt's pass dequantises a group's members into one dense weight while it has at most this many values
# (q/k/v: 10.5 million in MedGemma); larger groups one member at a time (gate and up: 26 million each, as many
# as the down projection, whose dense weight is the prompt's memory peak).
DEQUANTIZE_TOGETHER = 16 * 2**20


def base_layer(module: torch.nn.Module) -> torch.nn.Module:
    """The bitsandbytes layer under a PEFT LoRA wrapper (or the layer itself)."""
    return getattr(module, "base_layer", module)


def projections(layer: torch.nn.Module, group: str) -> list[torch.nn.Module]:
    """One of `STEP_PROJECTIONS`' groups of a decoder layer, as modules."""
    parent, names = STEP_PROJECTIONS[group]
    return [getattr(getattr(layer, parent), name) for name in names]


def active_lora(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(A, B, scaling) of the adapter PEFT would apply in this module's forward now; None when none would."""
    if not hasattr(module, "lora_A") or module.disable_adapters:
        return None
    names = [name for name in module.active_adapters if name in module.lora_A]
    if not names:
        return None
    name = names[0]  # `lora_problem` refuses more than one
    return module.lora_A[name].weight, module.lora_B[name].weight, float(module.scaling[name])


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


def fusion_problem(modules: list[torch.nn.Module]) -> str | None:
    """Why these projections cannot run as one 4-bit matmul with exact LoRA, or None when they can."""
    bases = [base_layer(m) for m in modules]
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


@dataclass(frozen=True)
class LoraSlots:
    """The LoRA shapes a captured step holds: `rank` rows for each projection named in `targets`, in `dtype`.
    An adapter fits when it targets only those projections, with ranks up to `rank`, in that dtype."""

    rank: int
    targets: frozenset[str]
    dtype: torch.dtype | None

    @classmethod
    def covering(cls, layers: Iterable[torch.nn.Module]) -> LoraSlots:
        """Slots that fit every adapter loaded on these decoder layers (PEFT keeps them all attached), in the
        active adapter's dtype (else the first one's): switching among them only copies."""
        rank, targets, active_dtypes, dtypes = 0, set(), [], []
        for layer in layers:
            for group in STEP_PROJECTIONS:
                for name, module in zip(STEP_PROJECTIONS[group][1], projections(layer, group), strict=True):
                    for adapter, lora_a in getattr(module, "lora_A", {}).items():
                        rank, targets = max(rank, lora_a.weight.shape[0]), targets | {name}
                        active = adapter in module.active_adapters and not module.disable_adapters
                        (active_dtypes if active else dtypes).append(lora_a.weight.dtype)
        dtypes = active_dtypes + dtypes
        return cls(rank, frozenset(targets), dtypes[0] if dtypes else None)


def _shared_concat(owner: object, attr: str, parts: list[torch.Tensor],
                   adopt: Callable[[int, torch.Tensor], None]) -> torch.Tensor:
    """`parts` concatenated flat, once per model: `adopt(i, view)` gives part i's holder its view of the result,
    so the bytes exist once. The result is remembered on `owner` under `attr`, and reused while the parts are
    still those views (a step built again for another adapter shape shares it)."""
    if len(parts) == 1:
        return parts[0].reshape(-1)
    cached = getattr(owner, attr, None)
    if cached is not None and [p.data_ptr() for p in parts] == cached[1]:
        return cached[0]
    joined = torch.cat([p.reshape(-1) for p in parts])
    views, at = [], 0
    for part in parts:
        views.append(joined[at:at + part.numel()].view(part.shape))
        at += part.numel()
    for i, view in enumerate(views):
        adopt(i, view)
    setattr(owner, attr, (joined, [v.data_ptr() for v in views]))
    return joined


def _fuse_weights(bases: list[torch.nn.Module]) -> torch.Tensor:
    """One packed weight for `bases`, concatenated row-wise (NF4 packs rows flat and every member's size is a
    multiple of its block size, so each member's scales still cover its own bytes). The layers become views of
    the fused storage; their quantisation states are left as they are. Done once per model."""
    def adopt(i: int, view: torch.Tensor) -> None:
        bases[i].weight.data = view
        bases[i].support_avx512bf16_for_cpu = False  # a CPU repack would give the layer a private copy again

    return _shared_concat(bases[0], _FUSED_ATTR, [b.weight.data for b in bases], adopt).view(-1, 1)


def _nested_scales(states: list[QuantState]) -> nf4_matvec.NestedScales:
    """The members' double-quantised scales as the NF4 kernel reads them, their 8-bit and second-level scales
    fused like the weights (the states keep views)."""
    def adopt_absmax(i: int, view: torch.Tensor) -> None:
        states[i].absmax = view

    def adopt_group_scale(i: int, view: torch.Tensor) -> None:
        states[i].state2.absmax = view

    absmax = _shared_concat(states[0], "_fast_decode_absmax", [s.absmax for s in states], adopt_absmax)
    group_scale = _shared_concat(states[0], "_fast_decode_group_scale", [s.state2.absmax for s in states],
                                 adopt_group_scale)
    return nf4_matvec.NestedScales.of(states, absmax, group_scale)


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
    """`F.linear(x, weight)`. Compiled (only the one-token step is), as a float32 multiply-and-sum rounded to
    weight's dtype: one small reduction kernel where cuBLAS launches two or three for LoRA's 8- and 16-wide
    matrices. Uncompiled, the multiply-and-sum would be four separate kernels, so cuBLAS it is (the prompt's
    pass too)."""
    if is_compiling():
        return (x.float().unsqueeze(-2) * weight.float()).sum(-1).to(weight.dtype)
    return F.linear(x, weight)


class FusedLinear:
    """Projections of one input (q/k/v, gate/up, or o or down alone) as one 4-bit matmul plus the active LoRA
    from fixed slots.

    For one bfloat16 token on a GPU that runs it (the fast path's normal case), the members' packed bytes are one
    launch of our NF4 kernel (`core.nf4_matvec`), which also decodes the 8-bit scales and adds LoRA's B product
    (given `A @ x`, computed before) when the adapter is in float32, as PEFT loads adapters. Otherwise, compiled,
    one bitsandbytes matmul whose float32 scales are computed per step (`_block_scales`: the members'
    double-quantised offsets differ); uncompiled, each member runs bitsandbytes' kernel with its own scales. The
    prompt's many tokens multiply the members' dequantised weights (`_prompt_matmul`).
    LoRA as PEFT computes it per member (`B(A(x.to(lora dtype))) * scaling`, cast back, added to the base
    output), with the members' A slots stacked into one matmul and their B slots block-diagonal in another.
    `load_adapter` copies the adapter active now into the slots (zeros for none), so a graph captured over them
    follows a switch. Members without a slot never have LoRA here; `adapter_problem` says when that matters.
    """

    def __init__(self, modules: list[torch.nn.Module], names: tuple[str, ...], slots: LoraSlots) -> None:
        problem = fusion_problem(modules)
        if problem is not None:
            raise ValueError(problem)
        bases = [base_layer(m) for m in modules]
        self.modules, self.names, self.slots = modules, names, slots
        self.weight = _fuse_weights(bases)
        self.member_weights = [b.weight.data for b in bases]  # views of `weight`
        self.states = [b.weight.quant_state for b in bases]
        self.sizes = [int(state.shape[0]) for state in self.states]
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.shape = [sum(self.sizes), int(self.states[0].shape[1])]
        state = self.states[0]
        kernel = nf4_matvec.matvec_supported(self.weight.device, self.shape[1], state.quant_type, state.blocksize)
        self.nf4_scales = _nested_scales(self.states) \
            if kernel and nf4_matvec.NestedScales.readable(self.states) else None
        slotted = [i for i, name in enumerate(names) if name in slots.targets]
        self._slot_rows = {i: k * slots.rank for k, i in enumerate(slotted)}  # member -> first row of its slot
        self.lora: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if slotted:
            device, width = self.weight.device, len(slotted) * slots.rank
            self.lora = (torch.zeros(width, self.shape[1], dtype=slots.dtype, device=device),
                         torch.zeros(self.shape[0], width, dtype=slots.dtype, device=device),
                         torch.zeros(self.shape[0], dtype=torch.float32, device=device))
        self.load_adapter()

    def adapter_problem(self) -> str | None:
        """Why the active adapter does not fit these slots (another rank, projection or dtype), or None."""
        for i, module in enumerate(self.modules):
            lora = active_lora(module)
            if lora is None:
                continue
            problem = lora_problem(module)
            if problem is not None:
                return problem
            if i not in self._slot_rows:
                return f"the adapter targets {self.names[i]}, which the captured step has no LoRA slot for"
            if lora[0].shape[0] > self.slots.rank or lora[0].dtype != self.slots.dtype:
                return (f"the adapter's rank {lora[0].shape[0]} ({lora[0].dtype}) does not fit the captured rank "
                        f"{self.slots.rank} ({self.slots.dtype})")
        return None

    def load_adapter(self) -> None:
        """Copy the active adapter's matrices and scaling into the slots (all zeros when none is active). Call only
        when `adapter_problem` is None and no step is running."""
        if self.lora is None:
            return
        a, b, scale = self.lora
        with torch.inference_mode():
            a.zero_()
            b.zero_()
            scale.zero_()
            for i, row in self._slot_rows.items():
                lora = active_lora(self.modules[i])
                if lora is None:
                    continue
                lora_a, lora_b, scaling = lora
                rank, rows = lora_a.shape[0], slice(self.starts[i], self.starts[i] + self.sizes[i])
                a[row:row + rank].copy_(lora_a)
                b[rows, row:row + rank].copy_(lora_b)
                scale[rows] = scaling

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        state = self.states[0]
        if is_compiling() and len(self.states) > 1:  # the scales fuse into one small kernel
            scales = torch.cat([_block_scales(s) for s in self.states])
            return torch.ops.bitsandbytes.gemm_4bit.default(x, self.weight, self.shape, scales, state.blocksize,
                                                            state.quant_type)
        if x.numel() > self.shape[1]:
            return self._prompt_matmul(x)
        # Uncompiled, computing the scales takes more launches than one matmul per member with its own scales.
        outs = [bnb.matmul_4bit(x, weight, state)
                for weight, state in zip(self.member_weights, self.states, strict=True)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def _prompt_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """Many tokens times the members' weights, dequantised (`core.nf4_dequantize`) into one dense weight for
        one cuBLAS matmul, or one member at a time past `DEQUANTIZE_TOGETHER`."""
        members = list(zip(self.member_weights, self.states, strict=True))
        groups = [members] if self.shape[0] * self.shape[1] <= DEQUANTIZE_TOGETHER else [[m] for m in members]
        outs = [F.linear(x, nf4_dequantize.dequantized(*zip(*group, strict=True), x.dtype)) for group in groups]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def takes_kernel(self, x: torch.Tensor) -> bool:
        """Whether `x` runs through our NF4 kernel: one bfloat16 token, where the kernel runs."""
        return self.nf4_scales is not None and x.numel() == self.shape[1] and x.dtype == torch.bfloat16

    def fuses_activation(self, x: torch.Tensor) -> bool:
        """Whether `gelu_product` runs for `x`: through the kernel, two members of one size (gate and up), any
        adapter in float32 (so that all of LoRA is inside the kernel)."""
        return self.takes_kernel(x) and len(self.sizes) == 2 and self.sizes[0] == self.sizes[1] and \
            (self.lora is None or self.lora[0].dtype == torch.float32)

    def gelu_product(self, x: torch.Tensor) -> torch.Tensor:
        """gelu_tanh(gate) * up for gate and up in one launch, the activation in the kernel's epilogue. Check
        `fuses_activation` first."""
        return self._kernel(x, paired=True)[0]

    def _kernel(self, x: torch.Tensor, paired: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The kernel's output, and the LoRA term it could not take (an adapter not in float32) or None."""
        lora, ax, b, scale = self.lora, None, None, None
        if lora is not None and lora[0].dtype == torch.float32:  # B's product in the kernel, after `A @ x`
            (a, b, scale), lora = lora, None
            ax = _matvec(x.to(a.dtype), a)
        out = torch.ops.medgemma.nf4_matvec(x, self.weight, *self.nf4_scales.tensors, list(self.nf4_scales.bounds),
                                            self.shape[0], ax, b, scale, paired)
        return out, lora

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.takes_kernel(x):
            out, lora = self._kernel(x)
        else:
            out, lora = self._matmul(x), self.lora
        if lora is not None:
            a, b, scale = lora
            out = out + (_matvec(_matvec(x.to(a.dtype), a), b).float() * scale).to(out.dtype)
        return out.split(self.sizes, dim=-1)
