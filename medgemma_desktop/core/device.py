"""Which device runs the model and in which compute dtype, with the reason in words.

Gemma 3 overflows float16, so compute is bfloat16 on GPUs that have it (compute capability 8.0 and newer) and
float32 everywhere else, the CPU included. Half precision (fp16) is never chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BF16_MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class DevicePlan:
    device: str  # "cuda" or "cpu"
    dtype: torch.dtype
    reason: str
    gpu_name: str | None = None

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"


def choose_device(force_cpu: bool = False) -> DevicePlan:
    if force_cpu:
        return DevicePlan("cpu", torch.float32, "CPU mode chosen in the settings; float32 compute")
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else "no usable NVIDIA GPU or driver"
        return DevicePlan("cpu", torch.float32, f"CPU mode: {build}; float32 compute (slow)")
    name = torch.cuda.get_device_name(0)
    capability = torch.cuda.get_device_capability(0)
    if capability >= BF16_MIN_CAPABILITY:
        return DevicePlan("cuda", torch.bfloat16, f"{name} (compute capability {capability[0]}.{capability[1]}) "
                                                   "supports bfloat16", gpu_name=name)
    return DevicePlan("cuda", torch.float32, f"{name} (compute capability {capability[0]}.{capability[1]}) lacks "
                                              "bfloat16; float32 compute (Gemma 3 overflows float16)", gpu_name=name)
