"""What this computer can do with MedGemma, in plain words, for the first-run page: a usable GPU, a GPU with
too little free memory (with the memory plan), or the CPU only (slow, with an estimate).

The facts come from the doctor's report and the device choice; when a model folder is chosen, its config feeds
the memory plan and `vram_plan.judge`. `check_machine` touches CUDA, so it runs on a background job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from medgemma_desktop.core.device import DevicePlan, choose_device
from medgemma_desktop.core.doctor import system_report
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.model_folder import ModelFolder, check_adapter_folder, check_model_folder
from medgemma_desktop.core.vram_plan import GIB, judge, plan_vram

# A rough CPU speed for a 4B NF4 model in float32: decoding is bound by memory bandwidth and bitsandbytes'
# dequantizing, about a token per second on a desktop; the prompt (256 tokens per image) runs a few times faster.
CPU_TOKENS_PER_S = 1.0
CPU_PROMPT_TOKENS_PER_S = 8.0
TYPICAL_ANSWER_TOKENS = 300
IMAGE_PROMPT_TOKENS = 300


@dataclass(frozen=True)
class MachineVerdict:
    kind: str  # "gpu" (usable), "low-memory" (GPU with too little free memory), "cpu" (no usable GPU)
    summary: str  # one or two plain sentences
    details: tuple[tuple[str, str], ...] = ()  # the memory plan and the system report


def cpu_estimate(cores: int | None) -> str:
    scale = min(max((cores or 4) / 8, 0.5), 2.0)  # more cores help, but not in proportion
    first = IMAGE_PROMPT_TOKENS / (CPU_PROMPT_TOKENS_PER_S * scale)
    answer = TYPICAL_ANSWER_TOKENS / (CPU_TOKENS_PER_S * scale)
    return (f"Rough estimate for this computer ({cores or '?'} CPU cores): about {first / 60:.0f} minute(s) before "
            f"the first word of an answer about one image, then about {CPU_TOKENS_PER_S * scale:.1f} tokens per "
            f"second (a {TYPICAL_ANSWER_TOKENS}-token answer in about {answer / 60:.0f} minutes).")


def judge_machine(plan: DevicePlan, free_bytes: int | None, model: ModelFolder | None, context_limit: int,
                  adapter_bytes: int = 0) -> MachineVerdict:
    """The plain-words verdict from the device plan, the free GPU memory and (if chosen) the model folder."""
    if not plan.is_cuda:
        return MachineVerdict("cpu", f"CPU only: {plan.reason}. MedGemma works, but slowly. "
                                     f"{cpu_estimate(os.cpu_count())}")
    free = free_bytes or 0
    if model is None:
        return MachineVerdict("gpu", f"GPU found: {plan.gpu_name}, {free / GIB:.1f} GiB free. Choose the model "
                                     "folder below to check that MedGemma fits.")
    dtype_bytes = 2 if plan.dtype_name == "bfloat16" else 4
    vram = plan_vram(model.config, context_limit, 1, dtype_bytes, adapter_bytes=adapter_bytes)
    rows = (*((name, f"{size / GIB:.2f} GiB") for name, size in vram.rows()),
            ("total", f"{vram.total / GIB:.2f} GiB"), ("free on the GPU", f"{free / GIB:.2f} GiB"))
    verdict = judge(vram, free, model.config, 1, dtype_bytes)
    if verdict.fits:
        return MachineVerdict("gpu", f"GPU found and usable: {plan.gpu_name}. {verdict.message}", rows)
    return MachineVerdict("low-memory", f"Too little GPU memory on {plan.gpu_name}. {verdict.message}", rows)


def check_machine(model_dir: str, adapter_dir: str, context_limit: int, force_cpu: bool) -> MachineVerdict:
    """Gather the facts (off the UI thread) and judge them; a folder that fails its checks is simply not planned."""
    import torch

    plan = choose_device(force_cpu)
    free = torch.cuda.mem_get_info(0)[0] if plan.is_cuda else None
    model, adapter_bytes = None, 0
    try:
        if model_dir:
            model = check_model_folder(model_dir, read_tokenizer=False)  # the plan needs only its shapes
            if adapter_dir:
                adapter_bytes = check_adapter_folder(adapter_dir, model).weights.stat().st_size
    except UserFacingError:
        pass  # the page shows the folder's own error when the user confirms it
    verdict = judge_machine(plan, free, model, context_limit, adapter_bytes)
    return MachineVerdict(verdict.kind, verdict.summary, verdict.details + tuple(system_report()))
