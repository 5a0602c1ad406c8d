"""Which device runs the model: the GPU's capability against the architectures the installed torch carries code for.
The CPU torch of the tests has no GPU, so torch's four CUDA queries report the GPUs named here."""

from __future__ import annotations

import pytest
import torch

from medgemma_desktop.core.device import choose_device, runs_on

CUDA13_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


def test_machine_code_runs_on_its_major_version_and_ptx_on_newer_gpus() -> None:
    assert runs_on((7, 5), CUDA13_ARCHS) and runs_on((8, 9), CUDA13_ARCHS) and runs_on((12, 1), CUDA13_ARCHS)
    assert runs_on((13, 0), CUDA13_ARCHS)  # a future GPU: compute_120's PTX, compiled by the driver
    assert not runs_on((6, 1), CUDA13_ARCHS) and not runs_on((7, 0), CUDA13_ARCHS)
    assert not runs_on((9, 0), ["sm_80", "sm_86"])  # no PTX to fall back on
    assert runs_on((5, 2), [])  # unknown: let torch try


@pytest.mark.parametrize(("gpu", "capability", "device", "dtype", "words"), [
    ("NVIDIA GeForce GTX 1080", (6, 1), "cpu", torch.float32, "older than this torch build supports (oldest sm_75)"),
    ("Tesla T4", (7, 5), "cuda", torch.float32, "lacks bfloat16"),
    ("NVIDIA GeForce RTX 4060", (8, 9), "cuda", torch.bfloat16, "supports bfloat16"),
])
def test_a_gpu_too_old_for_the_build_runs_the_model_on_the_cpu_and_says_why(
        monkeypatch: pytest.MonkeyPatch, gpu: str, capability: tuple[int, int], device: str, dtype: torch.dtype,
        words: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: gpu)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: CUDA13_ARCHS)
    plan = choose_device()
    assert (plan.device, plan.dtype) == (device, dtype)
    assert gpu in plan.reason and words in plan.reason
    assert plan.dtype != torch.float16
