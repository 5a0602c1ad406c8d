"""`medgemma-desktop bench`: the decode benchmark of a source checkout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medgemma_desktop.core.errors import UserFacingError


def add_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="decode speed and memory: the model card's recipe against this app on "
                                              "a full-size random model (source checkout and a CUDA GPU; --smoke: "
                                              "tiny model on the CPU)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="[OUT_DIR] [--smoke] [--no-recipe]")
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import subprocess

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_decode.py"
    if not script.is_file():
        raise UserFacingError("the benchmarks are not installed with the app", path=script,
                              fix="Run `medgemma-desktop bench` from a source checkout of MedGemma Desktop.")
    return subprocess.call([sys.executable, str(script), *args.bench_args])
