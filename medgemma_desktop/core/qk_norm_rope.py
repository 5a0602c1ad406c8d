"""A token's query and key heads normed and rotated in one CUDA kernel built at run time by NVRTC (`core.nvrtc`),
for one token in the step and for all of a prompt's tokens.

Gemma 3 norms each query and key head (RMS norm with its own weight) and then applies the rotary embedding, which
pairs value d with value d +- half a head. Inductor cannot fuse a reduction with a consumer that reads across the
reduced values, so the compiled step ran four small kernels per layer for this (query norm, key norm, and the two
rotations, one with the key's cache write): at one token each is mostly launch and latency. In the prompt's pass
the modules cost ~30 host-side calls per layer. Here one block per head and token does the head's norm and
rotation, rounding where transformers rounds the norm (its output to bfloat16) and computing the rotation in
float32, rounded once (as inductor computes it; transformers' eager rotation rounds each product too).

Where the kernel does not run (no NVRTC, the CPU, another head size or dtype) the step calls the model's own
modules: `kernel_runs` says which.
"""

from __future__ import annotations

import torch

from medgemma_desktop.core import nvrtc

HEAD_DIM = 256  # one thread per value of a head: Gemma 3 4B's head size
DEFINES = (f"HEAD_DIM={HEAD_DIM}",)

KERNEL = r"""
// Block (h, t): head h of token t (h < q_heads: query head h; else key head h - q_heads); thread d: value d. Token
// t's heads start at q + t * q_row and k + t * k_row. out holds the query heads, then the key heads, each
// (tokens, HEAD_DIM); cos and sin are (tokens, HEAD_DIM).
extern "C" __global__ void __launch_bounds__(HEAD_DIM) qk_norm_rope(
        const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ q_weight,
        const bf16_t* __restrict__ k_weight, const bf16_t* __restrict__ cos, const bf16_t* __restrict__ sin,
        double eps, int q_heads, int tokens, int q_row, int k_row, bf16_t* __restrict__ out) {
    __shared__ float partial[HEAD_DIM / 32];
    __shared__ float normed[HEAD_DIM];
    const int head = blockIdx.x, d = threadIdx.x;
    const bool is_query = head < q_heads;
    const float weight = bf16_value(is_query ? q_weight[d] : k_weight[d]);
    for (int t = blockIdx.y; t < tokens; t += gridDim.y) {
        const float x = bf16_value(is_query ? q[(size_t)t * q_row + head * HEAD_DIM + d]
                                            : k[(size_t)t * k_row + (head - q_heads) * HEAD_DIM + d]);
        const float c = bf16_value(cos[(size_t)t * HEAD_DIM + d]), s = bf16_value(sin[(size_t)t * HEAD_DIM + d]);
        float square = x * x;
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) square += __shfl_xor_sync(0xffffffffu, square, offset);
        if ((d & 31) == 0) partial[d >> 5] = square;
        __syncthreads();
        float total = 0.f;
#pragma unroll
        for (int w = 0; w < HEAD_DIM / 32; ++w) total += partial[w];
        // Gemma3RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + weight) in float32, rounded to bfloat16
        const float value = round_bf16(x * rsqrtf(total / HEAD_DIM + (float)eps) * (1.f + weight));
        normed[d] = value;
        __syncthreads();
        const float rotated = d < HEAD_DIM / 2 ? -normed[d + HEAD_DIM / 2] : normed[d - HEAD_DIM / 2];
        out[((size_t)head * tokens + t) * HEAD_DIM + d] = to_bf16(value * c + rotated * s);
        __syncthreads();  // partial and normed are read before the next token writes them
    }
}
"""
MAX_GRID_Y = 65535


def kernel_runs(attention: torch.nn.Module, head_dim: int) -> bool:
    """Whether the kernel takes this attention module's norms: bfloat16 weights of `HEAD_DIM` on an sm_80+ GPU
    where NVRTC builds it."""
    weights = (attention.q_norm.weight, attention.k_norm.weight)
    return head_dim == HEAD_DIM and all(w.is_cuda and w.dtype == torch.bfloat16 for w in weights) and \
        nvrtc.ready(weights[0].device.index, KERNEL, "qk_norm_rope", DEFINES, "the model's modules")


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as (tokens, values) with contiguous values (a view of the fused q/k/v output where it can be)."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()


def launch(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor,
           sin: torch.Tensor, eps: float) -> torch.Tensor:
    """The kernel on the current stream (a CUDA graph being captured records it): the query heads `q` and key
    heads `k` of each token (..., tokens, heads * `HEAD_DIM`) normed and rotated by `cos` and `sin` (..., tokens,
    `HEAD_DIM`), as (query heads + key heads, tokens, HEAD_DIM)."""
    q_rows, k_rows = _rows(q), _rows(k)
    tokens, q_heads, k_heads = q_rows.shape[0], q_rows.shape[1] // HEAD_DIM, k_rows.shape[1] // HEAD_DIM
    out = torch.empty(q_heads + k_heads, tokens, HEAD_DIM, dtype=q.dtype, device=q.device)
    kernel = nvrtc.build(q.device.index, KERNEL, "qk_norm_rope", DEFINES)
    kernel(grid=(q_heads + k_heads, min(tokens, MAX_GRID_Y), 1), block=(HEAD_DIM, 1, 1),
           args=[q_rows, k_rows, q_weight.contiguous(), k_weight.contiguous(), cos.contiguous(), sin.contiguous(),
                 float(eps), q_heads, tokens, q_rows.stride(0), k_rows.stride(0), out])
    return out


@torch.library.custom_op("medgemma::qk_norm_rope", mutates_args=())
def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, eps: float) -> torch.Tensor:
    """`launch` as an op the compiled step can hold; check `kernel_runs` first."""
    return launch(q, k, q_weight, k_weight, cos, sin, eps)


@qk_norm_rope.register_fake
def _(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor,
      sin: torch.Tensor, eps: float) -> torch.Tensor:
    tokens = q.numel() // q.shape[-1]
    return q.new_empty((q.shape[-1] + k.shape[-1]) // HEAD_DIM, tokens, HEAD_DIM)
