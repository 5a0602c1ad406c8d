"""Where the peak GPU memory of answering goes, recipe against app, on the full-size random model.

For each: memory allocated after loading and the model's own tensors in it, then one answer's first token (the
recipe's `generate`, the app's prefill) under the allocator's history; the history is replayed to find the
moment of the peak, and the blocks live then that the answer allocated are grouped by the first Python frame
outside torch that allocated them. For the app also what building the fast path keeps allocated, by frame.

Usage: python benchmarks/profile_memory.py OUT (needs CUDA and bitsandbytes). Writes OUT/profile_memory.json.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")  # the prompt's memory does not depend on compiling the step

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_decode import ADAPTER, CKPT, CONTEXT, build, generate, load_recipe, prompt, recipe_generate
from medgemma_desktop.core.decoding import EagerDecoder
from medgemma_desktop.core.engine import Engine, LoadOptions

MIB = 2**20


def _frame(block: dict) -> str:
    frames = [f for f in block.get("frames", []) if "/torch/" not in f["filename"] and f["filename"].endswith(".py")]
    return " < ".join(f"{Path(f['filename']).name}:{f['line']} {f['name']}" for f in frames[:3]) or "?"


def _replay(trace: list[dict]) -> tuple[int, list[dict], list[dict]]:
    """The allocator history replayed: (peak bytes, blocks live at the peak, blocks live at the end)."""
    live: dict[int, dict] = {}
    current = peak = 0
    at_peak: list[dict] = []
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            current += event["size"]
            if current > peak:
                peak, at_peak = current, list(live.values())
        elif event["action"] == "free_requested" and event["addr"] in live:
            current -= live.pop(event["addr"])["size"]
    return peak, at_peak, list(live.values())


def _by_frame(blocks: list[dict]) -> list:
    sizes: Counter[str] = Counter()
    for block in blocks:
        sizes[_frame(block)] += block["size"]
    return [(name, round(size / MIB, 2)) for name, size in sizes.most_common(12)]


def traced(fn: Callable[[], object]) -> tuple[int, list[dict], list[dict]]:
    torch.cuda.synchronize()
    torch.cuda.memory._record_memory_history(max_entries=2_000_000)
    fn()
    torch.cuda.synchronize()
    trace = torch.cuda.memory._snapshot()["device_traces"][0]
    torch.cuda.memory._record_memory_history(enabled=None)
    return _replay(trace)


def peak_breakdown(fn: Callable[[], object]) -> dict:
    """Allocated before, the peak during `fn` above it, and what was live at the peak, by allocating frame."""
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    peak, at_peak, _ = traced(fn)
    return {"allocated_before_mib": round(before / MIB, 1),
            "peak_above_before_mib": round((torch.cuda.max_memory_allocated() - before) / MIB, 1),
            "traced_peak_mib": round(peak / MIB, 1), "live_at_peak_mib": _by_frame(at_peak)}


def model_storage_mib(model: torch.nn.Module) -> float:
    """Bytes of the model's own tensors on the GPU (parameters, buffers, 4-bit scales), each storage once."""
    tensors = list(model.parameters()) + list(model.buffers())
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        if state is not None:
            tensors += [state.absmax, state.code] + ([state.state2.absmax, state.state2.code] if state.nested else [])
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t.is_cuda}
    return round(sum(storages.values()) / MIB, 1)


def profile_recipe() -> dict:
    model = load_recipe()
    recipe_prompt = prompt(torch.float16, "cuda")
    recipe_generate(model, recipe_prompt, 2)
    return {"model_storage_mib": model_storage_mib(model),
            **peak_breakdown(lambda: recipe_generate(model, recipe_prompt, 1))}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    build(out)
    result: dict = {"recipe": profile_recipe()}
    gc.collect()
    torch.cuda.empty_cache()
    engine = Engine.load(CKPT, ADAPTER, LoadOptions(context_limit=CONTEXT))
    app_prompt = prompt(engine.plan.dtype, "cuda")
    engine.decoder_factory = EagerDecoder  # the fast path built again under the tracer
    gc.collect()
    torch.cuda.empty_cache()
    result["app_without_fast_path"] = {"allocated_mib": round(torch.cuda.memory_allocated() / MIB, 1),
                                       "model_storage_mib": model_storage_mib(engine.model)}
    _, _, kept = traced(engine.prepare_decoder)
    result["fast_path_keeps_mib"] = _by_frame(kept)
    factory = engine.decoder_factory
    generate(engine, factory(engine.model), app_prompt, 2)
    result["app"] = {"model_storage_mib": model_storage_mib(engine.model),
                     "static_kv_cache_mib": round(factory.runner.state.cache_bytes / MIB, 1),
                     **peak_breakdown(lambda: generate(engine, factory(engine.model), app_prompt, 1))}
    print(json.dumps(result, indent=1))
    (out / "profile_memory.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
