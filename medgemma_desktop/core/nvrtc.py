"""The step's CUDA C kernels, built at run time by NVRTC for the GPU at hand, and the bfloat16 helpers they share.

NVRTC ships with PyTorch's CUDA libraries (`torch.cuda._compile_kernel`), so no C compiler is needed on the user's
machine. Build on the thread that loaded the model: loading the compiled module needs a current CUDA context, which
a fresh thread does not have (tried on the H200, benchmarks/README.md run 16).
"""

from __future__ import annotations

import logging
from functools import cache

import torch

log = logging.getLogger(__name__)

BFLOAT16 = r"""
typedef unsigned short bf16_t;

__device__ __forceinline__ float bf16_value(bf16_t v) { return __uint_as_float(((unsigned)v) << 16); }
__device__ __forceinline__ bf16_t to_bf16(float f) {  // round to nearest even, as torch rounds
    unsigned u = __float_as_uint(f);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}
__device__ __forceinline__ float round_bf16(float f) { return bf16_value(to_bf16(f)); }
"""
MIN_MAJOR = 8  # sm_80 and later: bfloat16 throughout


def supported(device_index: int) -> bool:
    """Whether the kernels can run on this GPU at all (its architecture; NVRTC may still fail to build them)."""
    return torch.cuda.get_device_capability(device_index)[0] >= MIN_MAJOR


@cache
def build(device_index: int, source: str, name: str, defines: tuple[str, ...] = ()):
    """Kernel `name` of `source` (after the `BFLOAT16` helpers) compiled for one GPU with `defines` (NAME=value);
    raises where NVRTC cannot build it."""
    with torch.cuda.device(device_index):
        major, minor = torch.cuda.get_device_capability(device_index)
        return torch.cuda._compile_kernel(BFLOAT16 + source, name, compute_capability=f"{major}{minor}",
                                          nvcc_options=[*(f"-D{d}" for d in defines), "-std=c++17"])


@cache
def ready(device_index: int, source: str, name: str, defines: tuple[str, ...], instead: str) -> bool:
    """Whether kernel `name` runs on this GPU: built now, once (at load, not inside a graph being captured). False
    on an older GPU, and with a warning naming what runs `instead` where NVRTC cannot build it (or the driver is
    too old for its output)."""
    if not supported(device_index):
        return False
    try:
        build(device_index, source, name, defines)
    except Exception as exc:
        log.warning("%s kernel unavailable, using %s (%s)", name, instead, exc)
        return False
    return True
