"""Where the prompt's time (time to first token) goes, on the full-size random model (memory: profile_memory.py).

Prefill (one image + 40 text tokens): wall time and peak memory of transformers' prefill and the app's at
three chunk sizes (`PROMPT_CHUNK_TOKENS` and `VISION_CHUNK_PATCHES` alike), and of their vision parts, run in
turn; a text-only prompt; one prefill under the profiler (GPU kernel time and count against the wall, the top
host-side ops); host time per module class (forward hooks); the vision tower replayed as a CUDA graph.

Usage: python benchmarks/profile_prefill.py OUT (needs CUDA and bitsandbytes). Writes OUT/profile_prefill.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")  # the step is captured uncompiled: this looks at the prefill

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_decode import ADAPTER, CKPT, CONTEXT, IMAGE_IDS, build, prompt
from medgemma_desktop.core import prompt_pass
from medgemma_desktop.core.decoding import EagerDecoder
from medgemma_desktop.core.engine import Engine, LoadOptions

MIB = 2**20
DEFAULT_CHUNKS = prompt_pass.PROMPT_CHUNK_TOKENS, prompt_pass.VISION_CHUNK_PATCHES


def median_s(fn: Callable[[], object], runs: int = 7) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return round(sorted(times)[runs // 2], 4)


def chunked(fn: Callable[[], object], tokens: int) -> Callable[[], object]:
    def run() -> object:
        prompt_pass.PROMPT_CHUNK_TOKENS = prompt_pass.VISION_CHUNK_PATCHES = tokens
        try:
            return fn()
        finally:
            prompt_pass.PROMPT_CHUNK_TOKENS, prompt_pass.VISION_CHUNK_PATCHES = DEFAULT_CHUNKS

    return run


def alternating(variants: dict[str, Callable[[], object]], rounds: int = 9) -> dict:
    """Median wall time and the peak allocated above the start of each variant, run in turn round by round."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, float] = {}
    for fn in variants.values():
        fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            peaks[name] = (torch.cuda.max_memory_allocated() - before) / MIB
    return {name: {"median_s": round(sorted(values)[rounds // 2], 4), "peak_above_mib": round(peaks[name], 1)}
            for name, values in times.items()}


def host_time_by_module(model: torch.nn.Module, fn: Callable[[], object]) -> list:
    """Inclusive host (Python + launch) time per module class over one call, without syncs."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    starts: dict[int, list[float]] = defaultdict(list)

    def before(module, args):
        starts[id(module)].append(time.perf_counter())

    def after(module, args, output):
        entry = totals[type(module).__name__]
        entry[0] += 1
        entry[1] += time.perf_counter() - starts[id(module)].pop()

    handles = [hook for module in model.modules()
               for hook in (module.register_forward_pre_hook(before), module.register_forward_hook(after))]
    try:
        fn()
        torch.cuda.synchronize()
    finally:
        for handle in handles:
            handle.remove()
    rows = sorted(totals.items(), key=lambda item: -item[1][1])
    return [(name, count, round(seconds * 1e3, 2)) for name, (count, seconds) in rows[:25]]


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    build(out)
    engine = Engine.load(CKPT, ADAPTER, LoadOptions(context_limit=CONTEXT))
    result: dict = {"decoder": engine.decoder_reason}
    model, factory = engine.model, engine.decoder_factory
    core = model.get_base_model().model
    inputs = prompt(engine.plan.dtype, "cuda")
    text_only = dict(inputs)
    del text_only["pixel_values"]
    text_only["input_ids"] = torch.where(inputs["input_ids"] == IMAGE_IDS["image_token_index"], 1000,
                                         inputs["input_ids"])
    text_only["token_type_ids"] = torch.zeros_like(inputs["token_type_ids"])

    def prefill(batch: dict = inputs) -> None:
        decoder = factory(model)
        decoder.prefill(batch)
        decoder.release()

    def vision() -> torch.Tensor:
        return core.get_image_features(inputs["pixel_values"], return_dict=True).pooler_output

    def eager_prefill() -> None:
        EagerDecoder(model).prefill(inputs)

    with torch.inference_mode():
        result["alternating"] = alternating({
            "transformers_prefill": eager_prefill, "transformers_vision": vision,
            **{f"fast_prefill_chunk_{n}": chunked(prefill, n) for n in (1024, 2048, 4096)},
            **{f"fast_vision_chunk_{n}": chunked(lambda: prompt_pass.image_features(
                factory.runner.state.multimodal, inputs["pixel_values"]), n) for n in (1024, 2048, 4096)}})
        result["wall_s"] = {"prefill_text_only": median_s(lambda: prefill(text_only))}
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            prefill()
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        result["profiled_prefill"] = {
            "kernels": len(kernels), "kernel_time_ms": round(sum(e.device_time for e in kernels) / 1e3, 2),
            "host_ops": sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU),
            "top_host_ops": [(a.key[:60], a.count, round(a.self_cpu_time_total / 1e3, 2))
                             for a in sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)[:25]],
            "top_kernels": [(a.key[:90], a.count, round(a.self_device_time_total / 1e3, 2))
                            for a in sorted(prof.key_averages(), key=lambda a: -a.self_device_time_total)[:15]]}
        result["host_ms_by_module"] = host_time_by_module(model, prefill)

        eager_features = vision().clone()
        pixels = inputs["pixel_values"].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                core.get_image_features(pixels, return_dict=True)
        torch.cuda.current_stream().wait_stream(side)
        before = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            features = core.get_image_features(pixels, return_dict=True).pooler_output
        result["vision_graph"] = {
            "replay_s": median_s(graph.replay),
            "max_abs_diff_vs_eager": float((features.float() - eager_features.float()).abs().max()),
            "feature_abs_max": float(eager_features.float().abs().max()),
            "allocated_delta_mib": (torch.cuda.memory_allocated() - before[0]) / MIB,
            "reserved_delta_mib": (torch.cuda.memory_reserved() - before[1]) / MIB}
    print(json.dumps(result, indent=1))
    (out / "profile_prefill.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
