"""Which device runs the model and in which compute dtype, with the reason in words.

Gemma 3 overflows float16, so compute is bfloat16 on GPUs that have it (compute capability 8.0 and newer) and
float32 everywhere else, the CPU included. Half precision (fp16) is never chosen. A GPU older than every
architecture this torch build carries code for (CUDA 13 builds start at sm_75) would fail at the first kernel
("no kernel image is available"), so the CPU runs the model instead, with the reason.
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
    if not runs_on(capability, torch.cuda.get_arch_list()):
        oldest = min((arch for arch in torch.cuda.get_arch_list() if arch.startswith("sm_")), default="none",
                     key=lambda arch: int(arch.removeprefix("sm_")))
        return DevicePlan("cpu", torch.float32, f"CPU mode: {name} (compute capability {capability[0]}."
                                                 f"{capability[1]}) is older than this torch build supports (oldest "
                                                 f"{oldest}); float32 compute (slow)")
    if capability >= BF16_MIN_CAPABILITY:
        return DevicePlan("cuda", torch.bfloat16, f"{name} (compute capability {capability[0]}.{capability[1]}) "
                                                   "supports bfloat16", gpu_name=name)
    return DevicePlan("cuda", torch.float32, f"{name} (compute capability {capability[0]}.{capability[1]}) lacks "
                                              "bfloat16; float32 compute (Gemma 3 overflows float16)", gpu_name=name)


def runs_on(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether code built for `arch_list` (torch's `sm_XY` machine code and `compute_XY` PTX) runs on a GPU of this
    capability: machine code of the same major version and an equal or lower minor one, or PTX of an equal or
    lower version (the driver compiles it). An empty list (unknown) counts as runnable."""
    if not arch_list:
        return True
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit():
            continue
        major, minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and major == capability[0] and minor <= capability[1]:
            return True
        if kind == "compute" and (major, minor) <= capability:
            return True
    return False
