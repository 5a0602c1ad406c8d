"""The step's CUDA C kernels, built at run time by NVRTC for the GPU at hand, and the bfloat16 helpers they share.

NVRTC ships with PyTorch's CUDA libraries (`torch.cuda._compile_kernel`), so no C compiler is needed on the user's
machine. Build on the thread that loaded the model: loading the compiled module needs a current CUDA context, which
a fresh thread does not have (tried on the H200, benchmarks/README.md run 16).
"""

from __future__ import annotations

import ctypes
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


class Kernel:
    """A kernel NVRTC built, launched on the current stream with `kernel(grid, block, args)` (tensors passed as
    their data pointers, ints as C ints, floats as doubles).

    PyTorch's own launcher opens the CUDA driver library again and converts each argument through ctypes casts
    on every call, ~0.1 ms of host time per launch on an H200's host (benchmarks/README.md, run 18): the prompt's
    pass launches our kernels ~570 times, so this one keeps the driver's launch function and goes straight to
    it."""

    def __init__(self, compiled: object, device_index: int) -> None:
        self._compiled = compiled  # keeps its module loaded
        self._function = compiled.func
        self._device_index = device_index
        self._launch = _launch_function()  # here, so that a driver without it fails the build check

    def __call__(self, grid: tuple[int, int, int], block: tuple[int, int, int], args: list) -> None:
        values = [ctypes.c_void_p(arg.data_ptr()) if isinstance(arg, torch.Tensor) else
                  ctypes.c_int(arg) if isinstance(arg, int) else ctypes.c_double(arg) for arg in args]
        pointers = (ctypes.c_void_p * len(values))(*map(ctypes.addressof, values))
        stream = torch._C._cuda_getCurrentRawStream(self._device_index)
        result = self._launch(self._function, *grid, *block, 0, ctypes.c_void_p(stream), pointers, None)
        if result:
            raise RuntimeError(f"CUDA error {result} launching a kernel")


@cache
def _launch_function():
    """The CUDA driver's cuLaunchKernel, looked up once."""
    return torch.cuda._utils._get_gpu_runtime_library().cuLaunchKernel


@cache
def build(device_index: int, source: str, name: str, defines: tuple[str, ...] = ()) -> Kernel:
    """Kernel `name` of `source` (after the `BFLOAT16` helpers) compiled for one GPU with `defines` (NAME=value);
    raises where NVRTC cannot build it."""
    with torch.cuda.device(device_index):
        major, minor = torch.cuda.get_device_capability(device_index)
        return Kernel(torch.cuda._compile_kernel(BFLOAT16 + source, name, compute_capability=f"{major}{minor}",
                                                 nvcc_options=[*(f"-D{d}" for d in defines), "-std=c++17"]),
                      device_index)


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
