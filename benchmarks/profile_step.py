"""Where the compiled decode step's time goes: CUDA kernels of ten steps (the compiled step run directly, not
replayed as a graph, so the profiler sees each kernel), grouped by name, with the app's resident memory.

Usage: python benchmarks/profile_step.py OUT (needs CUDA and bitsandbytes; builds the full-size random model as
bench_decode.py does). Writes OUT/profile_step.json.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_decode import ADAPTER, CKPT, CONTEXT, GIB, build, prompt
from medgemma_desktop.core.engine import Engine, LoadOptions
from medgemma_desktop.core.fast_decode import FastDecoder

STEPS = 10


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    build(out)
    engine = Engine.load(CKPT, ADAPTER, LoadOptions(context_limit=CONTEXT))
    runner = engine.decoder_factory.runner
    memory = {"allocated_after_load_gib": torch.cuda.memory_allocated() / GIB,
              "static_cache_gib": runner.state.cache_bytes / GIB}
    compiled = runner.adopt_compiled(wait=True)  # the app's own compiled step (cached by an earlier run)
    with torch.inference_mode():
        FastDecoder(runner).prefill(prompt(engine.plan.dtype, "cuda"))
        for _ in range(5):
            runner.step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(STEPS):
                runner.step()
            torch.cuda.synchronize()
    kernels: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name][0] += 1
            kernels[event.name][1] += event.device_time
    rows = sorted(kernels.items(), key=lambda item: -item[1][1])
    summary = {"memory": memory, "compiled": compiled, "compile_s": runner.compile_s,
               "kernels_per_step": sum(count for count, _ in kernels.values()) / STEPS,
               "kernel_time_per_step_ms": sum(us for _, us in kernels.values()) / STEPS / 1e3,
               "top": [(name[:120], count / STEPS, round(us / STEPS, 1)) for name, (count, us) in rows[:40]]}
    print(json.dumps(summary, indent=1))
    (out / "profile_step.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
