"""One token's query and key heads normed and rotated in one CUDA kernel built at run time by NVRTC (`core.nvrtc`).

Gemma 3 norms each query and key head (RMS norm with its own weight) and then applies the rotary embedding, which
pairs value d with value d +- half a head. Inductor cannot fuse a reduction with a consumer that reads across the
reduced values, so the compiled step ran four small kernels per layer for this (query norm, key norm, and the two
rotations, one with the key's cache write): at one token each is mostly launch and latency. Here one block per head
does the head's norm and rotation, rounding where transformers rounds (the norm's output to bfloat16; the rotation
in float32, rounded once, as inductor computes it).

Where the kernel does not run (no NVRTC, the CPU, another head size or dtype) the step calls the model's own
modules: `kernel_runs` says which.
"""

from __future__ import annotations

import logging
from functools import cache

import torch

from medgemma_desktop.core import nvrtc

log = logging.getLogger(__name__)

HEAD_DIM = 256  # one thread per value of a head: Gemma 3 4B's head size
DEFINES = (f"HEAD_DIM={HEAD_DIM}",)

KERNEL = r"""
// Block h < q_heads: query head h; else key head h - q_heads. Thread d: value d. out holds the query heads, then the
// key heads, (heads, HEAD_DIM).
extern "C" __global__ void __launch_bounds__(HEAD_DIM) qk_norm_rope(
        const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ q_weight,
        const bf16_t* __restrict__ k_weight, const bf16_t* __restrict__ cos, const bf16_t* __restrict__ sin,
        double eps, int q_heads, bf16_t* __restrict__ out) {
    __shared__ float partial[HEAD_DIM / 32];
    __shared__ float normed[HEAD_DIM];
    const int head = blockIdx.x, d = threadIdx.x;
    const bool is_query = head < q_heads;
    const float x = bf16_value(is_query ? q[head * HEAD_DIM + d] : k[(head - q_heads) * HEAD_DIM + d]);
    const float weight = bf16_value(is_query ? q_weight[d] : k_weight[d]);
    const float c = bf16_value(cos[d]), s = bf16_value(sin[d]);
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
    out[head * HEAD_DIM + d] = to_bf16(value * c + rotated * s);
}
"""


@cache
def _ready(device_index: int) -> bool:
    """Build the kernel now, once per GPU: at load, not inside a graph being captured."""
    if not nvrtc.supported(device_index):
        return False
    try:
        nvrtc.build(device_index, KERNEL, "qk_norm_rope", DEFINES)
    except Exception as exc:  # no NVRTC, or a driver too old for its output: the model's modules it is
        log.warning("query/key norm kernel unavailable, using the model's modules (%s)", exc)
        return False
    return True


def kernel_runs(attention: torch.nn.Module, head_dim: int) -> bool:
    """Whether the kernel takes this attention module's norms: bfloat16 weights of `HEAD_DIM` on an sm_80+ GPU
    where NVRTC builds it."""
    weights = (attention.q_norm.weight, attention.k_norm.weight)
    return head_dim == HEAD_DIM and all(w.is_cuda and w.dtype == torch.bfloat16 for w in weights) and \
        _ready(weights[0].device.index)


def launch(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor,
           sin: torch.Tensor, eps: float) -> torch.Tensor:
    """The kernel on the current stream (a CUDA graph being captured records it): one token's query heads `q`
    and key heads `k` (head-major, `HEAD_DIM` each) normed and rotated, as (query heads + key heads, HEAD_DIM)."""
    q_heads, k_heads = q.numel() // HEAD_DIM, k.numel() // HEAD_DIM
    out = torch.empty(q_heads + k_heads, HEAD_DIM, dtype=q.dtype, device=q.device)
    kernel = nvrtc.build(q.device.index, KERNEL, "qk_norm_rope", DEFINES)
    kernel(grid=(q_heads + k_heads, 1, 1), block=(HEAD_DIM, 1, 1),
           args=[q.contiguous(), k.contiguous(), q_weight.contiguous(), k_weight.contiguous(), cos.contiguous(),
                 sin.contiguous(), float(eps), q_heads, out])
    return out


@torch.library.custom_op("medgemma::qk_norm_rope", mutates_args=())
def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, eps: float) -> torch.Tensor:
    """`launch` as an op the compiled step can hold; check `kernel_runs` first."""
    return launch(q, k, q_weight, k_weight, cos, sin, eps)


@qk_norm_rope.register_fake
def _(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor,
      sin: torch.Tensor, eps: float) -> torch.Tensor:
    return q.new_empty((q.numel() + k.numel()) // HEAD_DIM, HEAD_DIM)
