"""Gemma 3's RMS norm of the hidden state, optionally added to the residual, in one CUDA kernel built at run time
by NVRTC (`core.nvrtc`), for the parts of the fast path that run uncompiled: the prompt's pass and the step where
no compiler is present.

Gemma3RMSNorm is ten small kernels and as many host-side calls (float casts, square, mean, rsqrt, two products,
the cast back), and the residual sum one more; a layer has four of them, so uncompiled they were most of the
prompt's host time per layer. The compiled step leaves them to inductor, which fuses them already. The kernel
rounds where transformers rounds: the norm computed in float32 as `(x * rsqrt(mean(x^2) + eps)) * (1 + weight)`,
rounded to bfloat16, then the residual sum rounded again.

Where the kernel does not run (no NVRTC, the CPU, a dtype other than bfloat16, a torch.compile trace) `norm`
calls the model's own module; `kernel_runs` says whether a GPU can take the kernel at all.
"""

from __future__ import annotations

import torch
from torch.compiler import is_compiling

from medgemma_desktop.core import nvrtc

THREADS = 256

KERNEL = r"""
// Block t: row t of x (rows of `width` values). out = bf16(norm(x) * (1 + weight)) [+ residual, rounded again].
extern "C" __global__ void __launch_bounds__(THREADS) rms_norm(
        const bf16_t* __restrict__ x, const bf16_t* __restrict__ weight, const bf16_t* __restrict__ residual,
        double eps, int width, int add_residual, bf16_t* __restrict__ out) {
    __shared__ float partial[THREADS / 32];
    const size_t start = (size_t)blockIdx.x * width;
    float square = 0.f;
    for (int i = threadIdx.x; i < width; i += THREADS) {
        const float v = bf16_value(x[start + i]);
        square = fmaf(v, v, square);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) square += __shfl_xor_sync(0xffffffffu, square, offset);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = square;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < THREADS / 32; ++w) total += partial[w];
    const float scale = rsqrtf(total / width + (float)eps);
    for (int i = threadIdx.x; i < width; i += THREADS) {
        float value = round_bf16(__fmul_rn(bf16_value(x[start + i]), scale) * (1.f + bf16_value(weight[i])));
        if (add_residual) value = bf16_value(residual[start + i]) + value;
        out[start + i] = to_bf16(value);
    }
}
"""
DEFINES = (f"THREADS={THREADS}",)


def kernel_runs(module: torch.nn.Module) -> bool:
    """Whether the kernel can take this Gemma3RMSNorm's work: a bfloat16 weight on an sm_80+ GPU where NVRTC
    builds it."""
    weight = module.weight
    return weight.is_cuda and weight.dtype == torch.bfloat16 and \
        nvrtc.ready(weight.device.index, KERNEL, "rms_norm", DEFINES, "the model's modules")


def launch(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel on the current stream over x's last dimension (a CUDA graph being captured records it)."""
    x = x.contiguous()
    out = torch.empty_like(x)
    add = residual is not None
    residual = residual.contiguous() if add else x
    nvrtc.build(x.device.index, KERNEL, "rms_norm", DEFINES)(
        grid=(x.numel() // x.shape[-1], 1, 1), block=(THREADS, 1, 1),
        args=[x, weight.contiguous(), residual, float(eps), x.shape[-1], int(add), out])
    return out


def norm(module: torch.nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None,
         kernel: bool = False) -> torch.Tensor:
    """`module(x)` (a Gemma3RMSNorm), plus `residual` when given; through the kernel when `kernel` (the caller's
    `kernel_runs` for its norms) and x is bfloat16, outside a torch.compile trace."""
    if kernel and x.dtype == torch.bfloat16 and (residual is None or residual.dtype == x.dtype) and \
            not is_compiling():
        return launch(x, module.weight, module.eps, residual)
    normed = module(x)
    return normed if residual is None else residual + normed
