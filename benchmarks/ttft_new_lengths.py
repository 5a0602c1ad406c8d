"""Time to first token for prompts of a length the process has not seen yet, as every new question is, against the
same prompt again (what bench_decode.py's repeated runs measure). One image and 40-90 text tokens, full-size
random model. (Run 18 compared PyTorch's default attention backends with cuDNN's left out this way: cuDNN builds
a plan per new shape; the prompt's pass now leaves it out, `static_step.PROMPT_ATTENTION`.)

Usage: python benchmarks/ttft_new_lengths.py OUT (CUDA). Writes OUT/ttft_new_lengths.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")  # the first token does not use the compiled step


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_decode import ADAPTER, CKPT, CONTEXT, build, generate, prompt
from medgemma_desktop.core.engine import Engine, LoadOptions

LENGTHS = (43, 47, 53, 59, 61, 67, 71, 73, 79, 83)


def main() -> None:
    out = Path(sys.argv[1])
    build(out)
    engine = Engine.load(CKPT, ADAPTER, LoadOptions(context_limit=CONTEXT))
    factory = engine.decoder_factory
    generate(engine, factory(engine.model), prompt(engine.plan.dtype, "cuda"), 2)  # warm at the bench's length
    result: dict = {"decoder": engine.decoder_reason}
    first, again = [], []
    for text_tokens in LENGTHS:
        inputs = prompt(engine.plan.dtype, "cuda", text_tokens=text_tokens)
        first.append(generate(engine, factory(engine.model), inputs, 2)["ttft_s"])
        again.append(generate(engine, factory(engine.model), inputs, 2)["ttft_s"])
    result |= {"new_length_s": first, "same_length_again_s": again,
               "median_new_s": sorted(first)[len(first) // 2], "median_again_s": sorted(again)[len(again) // 2]}
    print(json.dumps(result, indent=1))
    (out / "ttft_new_lengths.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
