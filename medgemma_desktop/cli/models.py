"""`medgemma-desktop models`: check model and adapter folders; list or clear the saved 4-bit models."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="check model and adapter folders; list or clear the 4-bit cache")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    check = model_commands.add_parser("check", help="validate a base model folder (and adapters) without loading")
    check.add_argument("model", type=Path)
    check.add_argument("--adapter", action="append", default=[], type=Path)
    check.add_argument("--context", type=int, default=8192, help="context length for the memory plan")
    check.add_argument("--images", type=int, default=1, help="images per question for the memory plan")
    model_commands.add_parser("cache", help="list the saved 4-bit models")
    model_commands.add_parser("clear-cache", help="delete the saved 4-bit models")

    models.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from medgemma_desktop.core.app_dirs import cache_dir
    from medgemma_desktop.core.device import choose_device
    from medgemma_desktop.core.lora_coverage import lora_coverage
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
        note = lora_coverage(adapter.path).language_only_note()
        if note:
            print(f"{'on vLLM':>36}: {note}")
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
