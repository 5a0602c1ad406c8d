"""What this machine can do, and proof that the whole pipeline runs on it.

`medgemma-desktop doctor` and the first-run page use this: a system report (torch, CUDA, GPU memory,
bitsandbytes, the compute dtype and why), then the real pipeline end to end on the tiny generated checkpoint:
4-bit load, LoRA attach, an image + text prompt, a streamed greedy answer.
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from medgemma_desktop import __version__
from medgemma_desktop.core.bitsandbytes_import import import_bitsandbytes
from medgemma_desktop.core.device import choose_device


@dataclass(frozen=True)
class StepResult:
    name: str
    ok: bool
    detail: str


def system_report() -> list[tuple[str, str]]:
    import torch

    rows = [
        ("MedGemma Desktop", __version__),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Python", platform.python_version()),
        ("torch", f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none, CPU-only build'})"),
    ]
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(0)
        rows += [
            ("GPU", torch.cuda.get_device_name(0)),
            ("GPU memory", f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB"),
            ("CUDA driver", _driver_version()),
        ]
    else:
        rows.append(("GPU", "none usable by torch"))
    try:
        bitsandbytes = import_bitsandbytes()
        backend = "CUDA" if torch.cuda.is_available() else "CPU"
        rows.append(("bitsandbytes", f"{bitsandbytes.__version__} ({backend} backend)"))
    except Exception as exc:  # a broken native library raises all sorts of errors at import
        rows.append(("bitsandbytes", f"not usable: {type(exc).__name__}: {exc}"))
    plan = choose_device()
    rows.append(("Compute", f"{plan.device}, {plan.dtype_name}: {plan.reason}"))
    return rows


def _driver_version() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return str(pynvml.nvmlSystemGetDriverVersion())
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML missing or refusing is not fatal for a report
        return f"unknown (NVML: {type(exc).__name__})"


def check_pipeline(workdir: Path | None = None) -> Iterator[StepResult]:
    """Run the real pipeline on the tiny checkpoint; stops at the first failing step."""
    with tempfile.TemporaryDirectory(prefix="medgemma-doctor-") as scratch:
        root = Path(workdir) if workdir else Path(scratch)
        state: dict = {}
        for name, step in _STEPS:
            try:
                detail = step(root, state)
            except Exception as exc:  # every failure is reported as a failed step, never a traceback
                yield StepResult(name, False, f"{type(exc).__name__}: {exc}")
                return
            yield StepResult(name, True, detail)


def _write_checkpoint(root: Path, state: dict) -> str:
    from medgemma_desktop.core.tiny_checkpoint import write_tiny_checkpoint

    state["checkpoint"] = write_tiny_checkpoint(root)
    return str(state["checkpoint"].model_dir)


def _load_4bit(root: Path, state: dict) -> str:
    import bitsandbytes as bnb

    from medgemma_desktop.core.engine import Engine

    checkpoint = state["checkpoint"]
    engine = Engine.load(checkpoint.model_dir, checkpoint.adapter_dir)
    quantized = sum(isinstance(m, bnb.nn.Linear4bit) for m in engine.model.modules())
    if quantized == 0:
        raise RuntimeError("no layer was quantized to 4-bit")
    state["engine"] = engine
    if not engine.vision_active:
        raise RuntimeError("the vision tower's output does not change with the image")
    return (f"{quantized} linear layers in NF4 on {engine.plan.device} ({engine.plan.dtype_name} compute); "
            f"vision active; {engine.decoder_reason}")


def _check_adapter(root: Path, state: dict) -> str:
    engine = state["engine"]
    lora = [name for name, _ in engine.model.named_modules() if name.endswith("lora_A")]
    if not lora:
        raise RuntimeError("the adapter attached no LoRA layers")
    return f"{len(lora)} LoRA layers (rank {engine.adapter.rank})"


def _answer(root: Path, state: dict) -> str:
    from PIL import Image

    from medgemma_desktop.core.engine import GenerationSettings
    from medgemma_desktop.core.prompts import build_chat

    engine = state["engine"]
    image = Image.new("RGB", (96, 80), (40, 40, 40))
    generation = engine.generate(build_chat("Describe this image.", [image]), GenerationSettings(max_new_tokens=12))
    chunks = sum(1 for _ in generation)
    if not generation.text:
        raise RuntimeError("the model produced no text")
    stats = generation.stats
    return (f"{stats.new_tokens} tokens in {chunks} streamed chunks, {stats.prompt_tokens} prompt tokens "
            f"incl. the image ({stats.decoder} decoder)")


_STEPS: list[tuple[str, Callable[[Path, dict], str]]] = [
    ("write the tiny test checkpoint", _write_checkpoint),
    ("load it in 4-bit NF4", _load_4bit),
    ("attach the rank-8 LoRA adapter", _check_adapter),
    ("answer an image + text question, streamed", _answer),
]
