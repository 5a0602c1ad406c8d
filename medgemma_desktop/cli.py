"""Command line: the window by default (`--demo`: on the demo model); `ask`, `doctor` and `bench` for terminals
and scripts.

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
    parser.add_argument("--demo", action="store_true",
                        help="open the window on a tiny demo model and a sample CT + MR study (answers mean nothing)")
    parser.add_argument("--open", nargs="*", type=Path, default=[], metavar="FILE",
                        help="images, DICOM files or folders to open in the window")
    parser.add_argument("--quit-after", type=float, metavar="SECONDS",
                        help="close the window after SECONDS, as the close button does (for smoke tests)")
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

    commands.add_parser("doctor", help="report on this machine and run the whole pipeline on a tiny test model")

    models = commands.add_parser("models", help="check model and adapter folders; list or clear the 4-bit cache")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    check = model_commands.add_parser("check", help="validate a base model folder (and adapters) without loading")
    check.add_argument("model", type=Path)
    check.add_argument("--adapter", action="append", default=[], type=Path)
    check.add_argument("--context", type=int, default=8192, help="context length for the memory plan")
    check.add_argument("--images", type=int, default=1, help="images per question for the memory plan")
    model_commands.add_parser("cache", help="list the saved 4-bit models")
    model_commands.add_parser("clear-cache", help="delete the saved 4-bit models")

    bench = commands.add_parser("bench", help="decode speed and memory: the model card's recipe against this app on "
                                              "a full-size random model (source checkout and a CUDA GPU; --smoke: "
                                              "tiny model on the CPU)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="[OUT_DIR] [--smoke] [--no-recipe]")
    return parser


def _bench(args: argparse.Namespace) -> int:
    import subprocess

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_decode.py"
    if not script.is_file():
        raise UserFacingError("the benchmarks are not installed with the app", path=script,
                              fix="Run `medgemma-desktop bench` from a source checkout of MedGemma Desktop.")
    return subprocess.call([sys.executable, str(script), *args.bench_args])


def _models(args: argparse.Namespace) -> int:
    from medgemma_desktop.core.app_dirs import cache_dir
    from medgemma_desktop.core.device import choose_device
    from medgemma_desktop.core.model_folder import (
        check_adapter_folder,
        check_model_folder,
        describe_adapter,
        describe_model,
    )
    from medgemma_desktop.core.quant_cache import QuantizedModelCache
    from medgemma_desktop.core.vram_plan import GIB, judge, plan_vram

    cache = QuantizedModelCache(cache_dir() / "nf4")
    if args.models_command == "cache":
        entries = cache.entries()
        for entry in entries:
            print(f"{entry.key}  {entry.model_name}  {entry.size_bytes / 1e9:.2f} GB  {entry.path}")
        print(f"{len(entries)} saved 4-bit model(s) in {cache.root}")
        return 0
    if args.models_command == "clear-cache":
        print(f"removed {cache.clear()} saved 4-bit model(s) from {cache.root}")
        return 0
    model = check_model_folder(args.model)
    for key, value in describe_model(model):
        print(f"{key:>36}: {value}")
    adapter_bytes = 0
    for path in args.adapter:
        adapter = check_adapter_folder(path, model)
        adapter_bytes += adapter.weights.stat().st_size
        print()
        for key, value in describe_adapter(adapter):
            print(f"{key:>36}: {value}")
    plan = choose_device()
    dtype_bytes = 2 if plan.dtype_name == "bfloat16" else 4
    vram = plan_vram(model.config, args.context, args.images, dtype_bytes, adapter_bytes=adapter_bytes)
    print(f"\nMemory plan ({plan.device}, {plan.dtype_name}):")
    for name, size in vram.rows():
        print(f"{name:>36}: {size / GIB:.2f} GiB")
    print(f"{'total':>36}: {vram.total / GIB:.2f} GiB")
    if plan.is_cuda:
        import torch

        print(judge(vram, torch.cuda.mem_get_info(0)[0], model.config, args.images, dtype_bytes).message)
    else:
        print(plan.reason)
    return 0


def _ask(args: argparse.Namespace) -> int:
    from medgemma_desktop.core.app_dirs import cache_dir
    from medgemma_desktop.core.decoding import SamplingSettings
    from medgemma_desktop.core.engine import Engine, GenerationSettings, LoadOptions
    from medgemma_desktop.core.fingerprint import FingerprintCache
    from medgemma_desktop.core.imaging import load_any
    from medgemma_desktop.core.prompts import build_chat
    from medgemma_desktop.core.quant_cache import QuantizedModelCache

    if args.max_new_tokens < 1:
        raise UserFacingError("--max-new-tokens must be at least 1")
    images = [load_any(path) for path in args.image]  # bad files fail before the slow model load
    options = LoadOptions(double_quant=args.double_quant, force_cpu=args.cpu, context_limit=args.context_limit)
    engine = Engine.load(args.model, args.adapter, options,
                         progress=lambda percent, step: print(f"[{percent:3d}%] {step}", file=sys.stderr),
                         cache=QuantizedModelCache(cache_dir() / "nf4") if args.use_cache else None,
                         fingerprints=FingerprintCache(cache_dir() / "digests.json"))
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
        if args.command == "models":
            return _models(args)
        if args.command == "bench":
            return _bench(args)
        from medgemma_desktop.ui.app import run_app

        return run_app(sys.argv[:1], demo=args.demo, files=args.open, quit_after_s=args.quit_after)
    except UserFacingError as exc:
        print(f"medgemma-desktop: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
