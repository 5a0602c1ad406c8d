"""Command line: the window by default; `ask`, `doctor` and `bench` for terminals and scripts.

Bad input exits with status 2 and one line naming the file and the fix; it never prints a traceback.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from medgemma_desktop import __version__
from medgemma_desktop.core.errors import UserFacingError

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medgemma-desktop",
                                     description="MedGemma 1.5 4B on your own GPU, offline. Research use only.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command")

    ask = commands.add_parser("ask", help="ask one question and stream the answer to the terminal")
    ask.add_argument("question")
    ask.add_argument("--model", required=True, type=Path, help="the google/medgemma-1.5-4b-it folder")
    ask.add_argument("--adapter", type=Path, help="a LoRA adapter folder (omit to run the base model)")
    ask.add_argument("--image", action="append", default=[], type=Path,
                     help="an image or DICOM file; repeat for several, in order")
    ask.add_argument("--system", help="a system text, prepended to the question (Gemma has no system role)")
    ask.add_argument("--max-new-tokens", type=int, default=1024)
    mode = ask.add_mutually_exclusive_group()
    mode.add_argument("--greedy", dest="sample", action="store_false", help="greedy decoding (default)")
    mode.add_argument("--sample", dest="sample", action="store_true", help="sample with --temperature")
    ask.add_argument("--temperature", type=float, default=0.7)
    ask.add_argument("--seed", type=int, help="random seed for --sample")
    ask.add_argument("--context-limit", type=int, default=8192)
    ask.add_argument("--no-double-quant", dest="double_quant", action="store_false")
    ask.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    ask.add_argument("--show-thinking", action="store_true", help="also print the model's thinking trace")

    commands.add_parser("doctor", help="report on this machine and run the whole pipeline on a tiny test model")
    return parser


def _ask(args: argparse.Namespace) -> int:
    from medgemma_desktop.core.decoding import SamplingSettings
    from medgemma_desktop.core.engine import Engine, GenerationSettings, LoadOptions
    from medgemma_desktop.core.imaging import load_image
    from medgemma_desktop.core.prompts import build_chat

    if args.max_new_tokens < 1:
        raise UserFacingError("--max-new-tokens must be at least 1")
    images = [load_image(path) for path in args.image]  # bad files fail before the slow model load
    engine = Engine.load(args.model, args.adapter, LoadOptions(double_quant=args.double_quant, force_cpu=args.cpu,
                                                               context_limit=args.context_limit),
                         progress=lambda percent, step: print(f"[{percent:3d}%] {step}", file=sys.stderr))
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        sampling=SamplingSettings(greedy=not args.sample, temperature=args.temperature, seed=args.seed),
    )
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


def _doctor() -> int:
    from medgemma_desktop.core.doctor import check_pipeline, system_report

    for key, value in system_report():
        print(f"{key:>16}: {value}")
    print()
    ok = True
    for step in check_pipeline():
        print(f"  {'ok  ' if step.ok else 'FAIL'} {step.name}: {step.detail}")
        ok = ok and step.ok
    print("\nAll steps passed." if ok else "\nA step failed: see the line marked FAIL.")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "ask":
            return _ask(args)
        if args.command == "doctor":
            return _doctor()
        from medgemma_desktop.ui.app import run_app

        return run_app(sys.argv[:1])
    except UserFacingError as exc:
        print(f"medgemma-desktop: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
