"""The NF4 kernel's arguments on the CPU, through `nf4_matvec.reference` (what the kernel computes, in PyTorch):
fused members' 8-bit scales with each member's own second-level groups (sizes that cross group boundaries), and
LoRA's B product added in the epilogue, against bitsandbytes' dequantised weights and the model's own modules.
The CUDA kernel itself is checked against the same dequantised weights on the GPU (benchmarks/nf4_gemv.py) and,
inside the step, against plain transformers (benchmarks/bench_decode.py's per-step logits)."""

from __future__ import annotations

import bitsandbytes.functional as bf
import torch

from medgemma_desktop.core import fast_linear, nf4_matvec
from medgemma_desktop.core.engine import Engine
from medgemma_desktop.core.fast_linear import STEP_PROJECTIONS, FusedLinear, LoraSlots, base_layer, projections

BF16_STEP = 2.0**-7  # bfloat16's relative spacing: the kernel rounds its output once, the reference in float32


def _quantized(rows: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, object]:
    weight = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed)) * (0.02 * (seed + 1))
    packed, state = bf.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
    return weight, packed, state


def test_fused_members_scales_cross_group_boundaries() -> None:
    """Three members of 300, 100 and 200 rows of 128 weights (600, 200 and 400 scales: groups of 256 that end
    part-full inside each member) with different offsets: the fused product equals each member's own."""
    k, x = 128, torch.randn(1, 128, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    members = [_quantized(rows, k, seed) for seed, rows in enumerate((300, 100, 200))]
    states = [state for _, _, state in members]
    assert nf4_matvec.NestedScales.readable(states)
    assert len({float(s.offset) for s in states}) == 3  # each member's own offset must be used
    absmax, group_scale = torch.cat([s.absmax for s in states]), torch.cat([s.state2.absmax for s in states])
    scales = nf4_matvec.NestedScales.of(states, absmax, group_scale)
    assert scales.bounds == (300, 400, 3, 4)
    fused_weight = torch.cat([packed.reshape(-1) for _, packed, _ in members])
    got = nf4_matvec.reference(x, fused_weight, scales, 600)
    want = torch.cat([x.float() @ bf.dequantize_4bit(packed, state).float().t() for _, packed, state in members],
                     dim=-1)
    assert got.dtype == torch.bfloat16 and got.shape == (1, 600)
    assert torch.allclose(got.float(), want, rtol=BF16_STEP, atol=BF16_STEP * float(want.abs().max()) / 64)


def test_lora_epilogue_adds_b_times_ax_scaled_as_peft_rounds() -> None:
    """A float32 adapter (PEFT loads adapters as float32): the base output plus bf16((B . ax) * scaling)."""
    k, n, width = 128, 96, 16
    _, packed, state = _quantized(n, k, 4)
    scales = nf4_matvec.NestedScales.of([state], state.absmax, state.state2.absmax)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, k, generator=generator).to(torch.bfloat16)
    ax, b = torch.randn(1, width, generator=generator), torch.randn(n, width, generator=generator)
    scale = torch.full((n,), 2.0)
    base = nf4_matvec.reference(x, packed, scales, n)
    got = nf4_matvec.reference(x, packed, scales, n, (ax, b, scale))
    assert torch.equal(got, base + ((ax @ b.t()) * 2.0).to(torch.bfloat16))


def test_fused_linear_through_the_kernels_arguments_equals_the_modules(tiny_engine: Engine) -> None:
    """Every projection group of a decoder layer, one bfloat16 token as on a GPU: the kernel's path (the op's
    CPU implementation is `reference`, the float32 adapter's B product in its epilogue) gives the modules'
    outputs, and the members' 8-bit scales become views of the fused ones (their bytes exist once) with the
    modules' own outputs unchanged."""
    layer = tiny_engine.model.get_base_model().model.language_model.layers[1]
    slots = LoraSlots.covering([layer])
    assert slots.dtype == torch.float32
    for group, (_, names) in STEP_PROJECTIONS.items():
        modules = projections(layer, group)
        x = torch.randn(1, 1, modules[0].in_features, generator=torch.Generator().manual_seed(6))
        with torch.inference_mode():
            before = [m(x) for m in modules]
        fused = FusedLinear(modules, names, slots)
        assert fused.nf4_scales is None  # no GPU here: bitsandbytes' path
        fused.nf4_scales = fast_linear._nested_scales(fused.states)  # as where the kernel runs
        for shared, own in ((fused.nf4_scales.absmax, lambda state: state.absmax),
                            (fused.nf4_scales.group_scale, lambda state: state.state2.absmax)):
            start, end = shared.data_ptr(), shared.data_ptr() + shared.numel() * shared.element_size()
            assert all(start <= own(base_layer(m).weight.quant_state).data_ptr() < end for m in modules)
        with torch.inference_mode():
            after = [m(x) for m in modules]
            got = fused(x.to(torch.bfloat16))
        for was, now, out in zip(before, after, got, strict=True):
            assert torch.equal(was, now)
            assert out.dtype == torch.bfloat16
            tolerance = 4 * BF16_STEP * float(was.abs().max())
            assert float((out.float() - was).abs().max()) <= tolerance, (group, out, was)
        if fused.lora is not None:  # the adapter is really in the kernel's epilogue here
            assert float(fused.lora[1].abs().max()) > 0
        assert fused.fuses_activation(x.to(torch.bfloat16)) == (group == "gate_up")
        if group == "gate_up":  # the MLP's activation in the epilogue: act_fn(gate) * up
            with torch.inference_mode():
                activated = fused.gelu_product(x.to(torch.bfloat16))
                want = layer.mlp.act_fn(before[0]) * before[1]
            assert activated.dtype == torch.bfloat16 and activated.shape == want.shape
            assert float((activated.float() - want).abs().max()) <= 4 * BF16_STEP * float(want.abs().max())


def test_paired_rows_give_the_activation_of_gate_times_up() -> None:
    """`paired`: the first half of the rows is the gate, the second the up projection; the output is
    gelu_tanh(gate) * up of the unpaired output (rounded once), with LoRA added to both halves first."""
    k, n = 128, 96
    _, packed, state = _quantized(n, k, 7)
    scales = nf4_matvec.NestedScales.of([state], state.absmax, state.state2.absmax)
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(1, k, generator=generator).to(torch.bfloat16)
    lora = (torch.randn(1, 8, generator=generator), torch.randn(n, 8, generator=generator), torch.full((n,), 0.5))
    for given in (None, lora):
        gate, up = nf4_matvec.reference(x, packed, scales, n, given).float().chunk(2, dim=-1)
        got = nf4_matvec.reference(x, packed, scales, n, given, paired=True)
        assert got.shape == (1, n // 2)
        assert torch.equal(got, (torch.nn.functional.gelu(gate, approximate="tanh") * up).to(torch.bfloat16))
