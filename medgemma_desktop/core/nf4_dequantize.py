"""The prompt's 4-bit weights as dense ones, dequantised by one CUDA kernel built at run time by NVRTC.

The prompt's many tokens multiply dense weights with cuBLAS, so each 4-bit projection is dequantised first, once
per prompt. bitsandbytes takes three launches and five host calls for it (the 8-bit scales to float32, their
offset added, then the weights); this kernel decodes the 8-bit scales itself, as `core.nf4_matvec`'s does, in one.
The prompt's pass is bound by host time per call (benchmarks/README.md, run 17), and it dequantises every
projection of the model. The values are bitsandbytes' to the bit: `bf16(level * (nested_code[byte] *
group_scale + offset))`, each product and sum rounded as its kernels round them.

Where the kernel does not run (the CPU, no NVRTC, a layout other than double-quantised NF4 in blocks of 64)
`dequantized` calls bitsandbytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import bitsandbytes as bnb
import torch
from bitsandbytes.functional import QuantState

from medgemma_desktop.core import nf4_matvec, nvrtc

THREADS = 256

KERNEL = r"""
// Thread t: the eight weights of 32-bit word t of w (bitsandbytes' packing, flat: the first of two weights in the
// high nibble), written as one 16-byte store of bfloat16 to out[8 t ...], so that a warp's loads and stores are
// each contiguous. Eight words share an 8-bit scale, GROUP of those a second-level scale.
extern "C" __global__ void __launch_bounds__(THREADS) nf4_dequantize(
        const unsigned* __restrict__ w, const unsigned char* __restrict__ absmax,
        const float* __restrict__ group_scale, const float* __restrict__ offset,
        const float* __restrict__ nested_code, const float* __restrict__ code, int words, uint4* __restrict__ out) {
    __shared__ float lut[16];
    if (threadIdx.x < 16) lut[threadIdx.x] = code[threadIdx.x];
    __syncthreads();
    const int word = blockIdx.x * THREADS + threadIdx.x;
    if (word >= words) return;
    const int block = word >> 3;
    // bitsandbytes' decoding of a double-quantised scale: a product, then the offset (not one fma)
    const float scale = __fadd_rn(__fmul_rn(__ldg(nested_code + __ldg(absmax + block)),
                                            __ldg(group_scale + (block >> GROUP_SHIFT))), __ldg(offset));
    const unsigned packed = __ldg(w + word);
    unsigned pairs[4];  // two bfloat16 weights each, the first in the low half (the lower address)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const unsigned byte = (packed >> (8 * i)) & 0xffu;
        pairs[i] = (unsigned)to_bf16(lut[byte >> 4] * scale) | ((unsigned)to_bf16(lut[byte & 15u] * scale) << 16);
    }
    out[word] = make_uint4(pairs[0], pairs[1], pairs[2], pairs[3]);
}
"""
DEFINES = (f"THREADS={THREADS}", f"GROUP_SHIFT={nf4_matvec.GROUP.bit_length() - 1}")


def kernel_runs(weight: torch.Tensor, state: QuantState) -> bool:
    """Whether the kernel can dequantise this packed weight: NF4 in blocks of 64 with double-quantised scales
    (float32 groups of 256) into bfloat16, on an sm_80+ GPU where NVRTC builds it."""
    if not weight.is_cuda or weight.dtype != torch.uint8 or state.quant_type != "nf4" or \
            state.blocksize != nf4_matvec.BLOCK or state.dtype != torch.bfloat16 or not state.nested or \
            not isinstance(state.offset, torch.Tensor) or state.offset.dtype != torch.float32:
        return False
    nested = state.state2
    if nested.blocksize != nf4_matvec.GROUP or nested.absmax.dtype != torch.float32 or \
            nested.code.dtype != torch.float32 or state.absmax.dtype != torch.uint8:
        return False
    if state.shape.numel() % nf4_matvec.BLOCK or state.shape[1] % 8 or weight.data_ptr() % 4:
        return False
    return nvrtc.ready(weight.device.index, KERNEL, "nf4_dequantize", DEFINES, "bitsandbytes' dequantisation")


def launch(weight: torch.Tensor, state: QuantState, out: torch.Tensor) -> None:
    """The kernel on the current stream: `weight`'s values into `out` (contiguous bfloat16 of its shape, on a
    16-byte boundary)."""
    words = state.shape.numel() // 8
    nvrtc.build(weight.device.index, KERNEL, "nf4_dequantize", DEFINES)(
        grid=(-(-words // THREADS), 1, 1), block=(THREADS, 1, 1),
        args=[weight, state.absmax, state.state2.absmax, state.offset, state.state2.code,
              nf4_matvec.nf4_levels(weight.device), words, out])


def dequantized(weights: Sequence[torch.Tensor], states: Sequence[QuantState], dtype: torch.dtype) -> torch.Tensor:
    """The dense weights of 4-bit projections of one input (bitsandbytes' packed `weights` with their `states`),
    stacked row-wise into one (rows, in_features) tensor of `dtype`: our kernel where it runs, writing into its
    rows of the result, bitsandbytes' dequantisation elsewhere."""
    if not all(map(kernel_runs, weights, states)):
        parts = [bnb.functional.dequantize_4bit(weight, state) for weight, state in zip(weights, states, strict=True)]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(dtype)
    rows = [int(state.shape[0]) for state in states]
    out = torch.empty(sum(rows), int(states[0].shape[1]), dtype=torch.bfloat16, device=weights[0].device)
    for weight, state, part in zip(weights, states, out.split(rows), strict=True):
        launch(weight, state, part)
    return out.to(dtype)
