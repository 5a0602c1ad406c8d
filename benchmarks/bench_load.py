"""Load paths, one fresh process each: time per load stage and peak system RAM (maxrss) of `Engine.load` from
the bf16 shards (quantizing, then saving the 4-bit cache entry) or from the saved 4-bit cache, the fast
decoder's setup (capturing the uncompiled graph), the first answer asked at once (seconds from load to its first
token, decode rate while the compiled step builds in the background), then the background compile (cold or warm
depending on TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR; failing where no C compiler is found) and an answer
with whatever step is then in place.

Usage: python benchmarks/bench_load.py OUT NAME CACHE_DIR [--triton-helpers DIR]  (after bench_decode.py has built
the random full-size checkpoint; DIR: Triton's prebuilt helper, packaging/triton_helper.py, used as the installed
app uses it). Appends one JSON line to OUT/bench_load.json.
"""

from __future__ import annotations

import json
import re
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_decode import ADAPTER, CKPT, CONTEXT, NEW_TOKENS, generate, prompt, wait_for_compiled
from medgemma_desktop.core import triton_helpers
from medgemma_desktop.core.engine import Engine, LoadOptions
from medgemma_desktop.core.quant_cache import QuantizedModelCache


def main() -> None:
    out, name, cache_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    if "--triton-helpers" in sys.argv:
        assert triton_helpers.serve_prebuilt(Path(sys.argv[sys.argv.index("--triton-helpers") + 1]))
    marks: list[tuple[float, int, str]] = []
    start = time.perf_counter()
    engine = Engine.load(CKPT, ADAPTER, LoadOptions(context_limit=CONTEXT), cache=QuantizedModelCache(cache_dir),
                         progress=lambda percent, step: marks.append((time.perf_counter() - start, percent, step)))
    total = time.perf_counter() - start
    loaded_at = time.perf_counter()
    inputs = prompt(engine.plan.dtype, engine.plan.device)
    first = generate(engine, engine.decoder_factory(engine.model), inputs, 64)
    first["first_token_after_load_s"] = round(first.pop("first_token_at") - loaded_at, 3)
    compiled = wait_for_compiled(engine)
    later = generate(engine, engine.decoder_factory(engine.model), inputs, NEW_TOKENS)
    stages: dict[str, float] = {}
    for (at, _, step), (until, _, _) in zip(marks, [*marks[1:], (total, 100, "end")], strict=True):
        stage = re.sub(r" \(\d+/\d+ tensors\)$", "", step)  # a stage's per-tensor progress counts as one stage
        stages[stage] = stages.get(stage, 0.0) + until - at
    decoder_start = next(t for t, _, step in marks if step == "preparing fast decoding")
    record = {"event": "load", "path": name, "from_cache": engine.loaded_from_cache, "total_s": round(total, 1),
              "weights_s": round(decoder_start, 1), "decoder_setup_s": round(total - decoder_start, 1),
              "decoder": engine.decoder_reason, "stages_s": {stage: round(s, 1) for stage, s in stages.items()},
              "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
              "gpu_peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
              "first_answer": {key: first[key] for key in ("decoder", "first_token_after_load_s", "ttft_s",
                                                            "decode_tok_s")},
              "background_compile": compiled,
              "next_answer": {key: later[key] for key in ("decoder", "ttft_s", "decode_tok_s", "peak_alloc_gib")}}
    print(json.dumps(record), flush=True)
    with (out / "bench_load.json").open("a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
