"""`medgemma-desktop ask`: one question, the answer streamed to the terminal (from the local model, or from a
server with --server)."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from medgemma_desktop.cli.backend_options import (
    add_generation_arguments,
    add_model_arguments,
    generation_settings,
    load_backend,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    ask = commands.add_parser("ask", help="ask one question and stream the answer to the terminal")
    ask.add_argument("question")
    add_model_arguments(ask, remote=True)
    ask.add_argument("--image", action="append", default=[], type=Path,
                     help="an image or DICOM file; repeat for several, in order")
    ask.add_argument("--system", help="a system text, prepended to the question (Gemma has no system role)")
    add_generation_arguments(ask)
    ask.add_argument("--show-thinking", action="store_true", help="also print the model's thinking trace")

    ask.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from medgemma_desktop.core.imaging import load_any
    from medgemma_desktop.core.prompts import build_chat

    settings = generation_settings(args)
    images = [load_any(path) for path in args.image]  # bad files fail before the slow model load
    backend = load_backend(args)
    stop = threading.Event()
    generation = backend.generate(build_chat(args.question, [image.image for image in images], system=args.system),
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
          f"{stats.time_to_first_token_s:.2f} s; {stats.decode_tokens_per_s:.1f} tokens/s ({stats.decoder}){peak}; "
          f"answered by {backend.identity.device}", file=sys.stderr)
    return 0
