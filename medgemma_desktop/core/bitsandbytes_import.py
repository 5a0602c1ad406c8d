"""Importing bitsandbytes without the compiler it would load at import.

bitsandbytes wraps four of its portable PyTorch ops in `torch.compile` when it is imported, and creating those
wrappers imports inductor: 1.5-2 s with the GIL held, at the start of every load and of every `ask`, although on a
GPU those ops never run (bitsandbytes' CUDA kernels do) and a one-answer command compiles nothing.
`import_bitsandbytes` imports it with `torch.compile` deferred for those wrappers: each compiles at its first call
instead. torch.compile traces at the first call anyway, and bitsandbytes falls back to the plain op when a
compiled one fails, so nothing changes but when inductor is imported.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from types import ModuleType

import torch

_lock = threading.Lock()


def import_bitsandbytes() -> ModuleType:
    """bitsandbytes, imported (the first time) with its import-time `torch.compile` calls deferred."""
    with _lock:
        if "bitsandbytes" not in sys.modules:
            compile_now = torch.compile
            torch.compile = functools.partial(_compile_later, compile_now)
            try:
                import bitsandbytes  # noqa: F401
            finally:
                torch.compile = compile_now
    return sys.modules["bitsandbytes"]


def _compile_later(compile_now: Callable, fn: Callable | None = None, **options) -> Callable:
    """`torch.compile(fn, **options)` as a function that calls `compile_now` at its first call."""
    if fn is None:  # used as @torch.compile(**options)
        return lambda inner: _compile_later(compile_now, inner, **options)
    compiled: list[Callable] = []

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if not compiled:
            compiled.append(compile_now(fn, **options))
        return compiled[0](*args, **kwargs)

    return call
