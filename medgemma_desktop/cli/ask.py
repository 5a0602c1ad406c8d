"""`medgemma-desktop ask`: one question, the answer streamed to the terminal."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    ask = commands.add_parser("ask", help="ask one question and stream the answer to the terminal")
    ask.add_argument("question")
    ask.add_argument("--model", required=True, type=Path, help="the google/medgemma-1.5-4b-it folder")
    ask.add_argument("--adapter", type=Path, help="a LoRA adapter folder (omit to run the base model)")
    ask.add_argument("--image", action="append", default=[], type=Path,
                     help="an image or DICOM file; repeat for several, in order")
    ask.add_argument("--system", help="a system text, prepended to the question (Gemma has no system role)")
    ask.add_argument("--max-new-tokens", type=int, default=1024)
    mode = ask.add_mutually_exclusive_group()
    # Both write `sample`; argparse takes the default from the first, so it is set here, not left to store_false.
    mode.add_argument("--greedy", dest="sample", action="store_false", default=False,
                      help="greedy decoding (default)")
    mode.add_argument("--sample", dest="sample", action="store_true", help="sample with --temperature")
    ask.add_argument("--temperature", type=float, default=0.7)
    ask.add_argument("--seed", type=int, help="random seed for --sample")
    ask.add_argument("--context-limit", type=int, default=8192)
    ask.add_argument("--no-double-quant", dest="double_quant", action="store_false")
    ask.add_argument("--no-cache", dest="use_cache", action="store_false",
                     help="quantize from the original weights instead of reading the saved 4-bit model")
    ask.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    ask.add_argument("--show-thinking", action="store_true", help="also print the model's thinking trace")

    ask.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from medgemma_desktop.core.app_dirs import cache_dir
    from medgemma_desktop.core.decoding import SamplingSettings
    from medgemma_desktop.core.engine import Engine, GenerationSettings, LoadOptions
    from medgemma_desktop.core.fingerprint import FingerprintCache
    from medgemma_desktop.core.imaging import load_any
    from medgemma_desktop.core.prompts import build_chat, check_user_text
    from medgemma_desktop.core.quant_cache import QuantizedModelCache

    # Bad options, text and files fail before the slow model load.
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        sampling=SamplingSettings(greedy=not args.sample, temperature=args.temperature, seed=args.seed),
    )
    check_user_text(args.question)
    check_user_text(args.system or "", "the system text")
    images = [load_any(path) for path in args.image]
    # One answer, then exit: a compiled step would only be ready for a next answer (fast_decode.choose_decoder).
    options = LoadOptions(double_quant=args.double_quant, force_cpu=args.cpu, context_limit=args.context_limit,
                          compile_step=False)
    engine = Engine.load(args.model, args.adapter, options,
                         progress=lambda percent, step: print(f"[{percent:3d}%] {step}", file=sys.stderr),
                         cache=QuantizedModelCache(cache_dir() / "nf4") if args.use_cache else None,
                         fingerprints=FingerprintCache(cache_dir() / "digests.json"))
    stop = threading.Event()
    generation = engine.generate(build_chat(args.question, [image.image for image in images], system=args.system),
                                 settings, stop)
    try:
        for chunk in generation:
            if chunk.thinking and not args.show_thinking:
                continue
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stop.set()
    stats = generation.stats
    print()
    peak = f", peak GPU memory {stats.peak_memory_bytes / 2**30:.2f} GiB" if stats.peak_memory_bytes else ""
    print(f"-- {stats.prompt_tokens} prompt + {stats.new_tokens} new tokens; time to first token "
          f"{stats.time_to_first_token_s:.2f} s; {stats.decode_tokens_per_s:.1f} tokens/s ({stats.decoder}){peak}",
          file=sys.stderr)
    return 0
