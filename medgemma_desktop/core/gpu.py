"""GPU memory readings for the status bar: NVML for the whole device, torch for this process's own share.

NVML sees every process on the GPU (what the user needs to know when another app holds memory); torch's
`mem_get_info` is the fallback where NVML is missing (no driver library, some WSL setups). Readings never raise:
a status bar must not break the app.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuMemory:
    name: str
    used_bytes: int
    total_bytes: int
    app_reserved_bytes: int  # what this process's torch allocator holds
    source: str  # "nvml" or "torch"


class GpuMonitor:
    """Reads device 0; initialises NVML once and remembers when it is unavailable."""

    def __init__(self) -> None:
        self._nvml = None
        self._nvml_handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml_handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception as exc:  # pynvml raises NVMLError subclasses, ImportError or OSError without a driver
            log.debug("NVML unavailable: %s", exc)

    def read(self) -> GpuMemory | None:
        """Current readings, or None when there is no usable NVIDIA GPU."""
        reserved = _app_reserved()
        if self._nvml is not None:
            try:
                info = self._nvml.nvmlDeviceGetMemoryInfo(self._nvml_handle)
                name = self._nvml.nvmlDeviceGetName(self._nvml_handle)
                name = name.decode() if isinstance(name, bytes) else name
                return GpuMemory(name, int(info.used), int(info.total), reserved, "nvml")
            except Exception as exc:
                log.debug("NVML reading failed: %s", exc)
        if not torch.cuda.is_available():
            return None
        try:
            free, total = torch.cuda.mem_get_info(0)
            return GpuMemory(torch.cuda.get_device_name(0), total - free, total, reserved, "torch")
        except RuntimeError as exc:
            log.debug("torch CUDA reading failed: %s", exc)
            return None

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("NVML shutdown failed: %s", exc)
            self._nvml = None


def _app_reserved() -> int:
    # Not initialising CUDA just to learn that this process holds nothing on it.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.memory_reserved(0))
    return 0
