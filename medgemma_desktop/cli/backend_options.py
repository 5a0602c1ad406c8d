"""The options that say what answers (a local model folder or a server) and how it generates, shared by `ask`,
`batch` and `serve`, and the backend they describe."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from medgemma_desktop.core import collection
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.settings import API_KEY_VARIABLE

if TYPE_CHECKING:  # imported when used: `--help` and `--version` stay fast (no torch)
    from medgemma_desktop.core.engine import Engine, GenerationSettings
    from medgemma_desktop.core.remote import RemoteBackend


def add_model_arguments(parser: argparse.ArgumentParser, *, remote: bool) -> None:
    """--model/--adapter and how to load them; with `remote`, --server as the alternative to a local model."""
    parser.add_argument("--model", type=Path, required=not remote,
                        help="the google/medgemma-1.5-4b-it folder" + (" (or use --server)" if remote else ""))
    parser.add_argument("--adapter", type=Path, help="a LoRA adapter folder (omit to run the base model)")
    parser.add_argument("--context-limit", type=int, default=8192)
    parser.add_argument("--no-double-quant", dest="double_quant", action="store_false")
    parser.add_argument("--no-cache", dest="use_cache", action="store_false",
                        help="quantize from the original weights instead of reading the saved 4-bit model")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    if remote:
        parser.add_argument("--server", metavar="URL",
                            help="answer on an OpenAI-compatible server (medgemma-desktop serve, vLLM) instead of a "
                                 "local model, e.g. http://127.0.0.1:8080")
        parser.add_argument("--server-model", metavar="NAME",
                            help="which of the server's models (default: its only one)")
        add_api_key_argument(parser, "the server's API key")


def add_api_key_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE),
                        help=f"{what} (default: ${API_KEY_VARIABLE})")


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    mode = parser.add_mutually_exclusive_group()
    # Both write `sample`; argparse takes the default from the first, so it is set here, not left to store_false.
    mode.add_argument("--greedy", dest="sample", action="store_false", default=False,
                      help="greedy decoding (default)")
    mode.add_argument("--sample", dest="sample", action="store_true", help="sample with --temperature")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, help="random seed for --sample")


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    from medgemma_desktop.core.decoding import SamplingSettings
    from medgemma_desktop.core.engine import GenerationSettings

    if args.max_new_tokens < 1:
        raise UserFacingError("--max-new-tokens must be at least 1")
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        sampling=SamplingSettings(greedy=not args.sample, temperature=args.temperature, seed=args.seed),
    )


def load_backend(args: argparse.Namespace, one_answer: bool = False) -> Engine | RemoteBackend:
    """The server named by --server, or the local model, loaded with progress on stderr (`one_answer`: no
    compiled decode step, which would pay off only from a second answer on)."""
    from medgemma_desktop.core.remote import RemoteBackend

    if getattr(args, "server", None):
        if args.model is not None:
            raise UserFacingError("--model and --server both say what answers; give one of them")
        return RemoteBackend(args.server, api_key=args.api_key, model=args.server_model)
    if args.model is None:
        raise UserFacingError("no model to answer with", fix="Give --model DIR (the MedGemma folder) or --server URL.")
    return load_engine(args, one_answer)


def load_engine(args: argparse.Namespace, one_answer: bool = False) -> Engine:
    from medgemma_desktop.core.app_dirs import cache_dir
    from medgemma_desktop.core.engine import Engine, LoadOptions
    from medgemma_desktop.core.fingerprint import FingerprintCache
    from medgemma_desktop.core.quant_cache import QuantizedModelCache

    options = LoadOptions(double_quant=args.double_quant, force_cpu=args.cpu, context_limit=args.context_limit,
                          compile_step=not one_answer)
    with collection.deferred():
        return Engine.load(args.model, args.adapter, options,
                           progress=lambda percent, step: print(f"[{percent:3d}%] {step}", file=sys.stderr),
                           cache=QuantizedModelCache(cache_dir() / "nf4") if args.use_cache else None,
                           fingerprints=FingerprintCache(cache_dir() / "digests.json"))
