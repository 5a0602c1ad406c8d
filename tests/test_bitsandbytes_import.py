"""bitsandbytes imported without the compiler stack: its import-time `torch.compile` wrappers compile at their
first call instead (`core.bitsandbytes_import`), which took `ask` on the tiny checkpoint from 8-9 s to 6.3-6.7 s
on a 2-core machine."""

from __future__ import annotations

import subprocess
import sys

from medgemma_desktop.core.bitsandbytes_import import _compile_later

CHECK = """
import sys, torch
compile_before = torch.compile
from medgemma_desktop.core.bitsandbytes_import import import_bitsandbytes
bnb = import_bitsandbytes()
assert import_bitsandbytes() is bnb is sys.modules["bitsandbytes"]
assert torch.compile is compile_before, "torch.compile was not put back"
assert "torch._inductor.compile_fx" not in sys.modules, "inductor was imported"
print(bnb.__version__)
"""


def test_importing_bitsandbytes_leaves_inductor_unimported_and_torch_compile_as_it_was() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()


def test_a_deferred_compile_happens_once_at_the_first_call_with_the_same_options() -> None:
    calls: list[tuple] = []

    def compile_now(fn, **options):
        calls.append((fn, options))
        return lambda x: fn(x) * 10

    def op(x: int) -> int:
        return x + 1

    deferred = _compile_later(compile_now, op, dynamic=False)
    assert calls == [] and deferred.__name__ == "op"
    assert deferred(1) == 20 and deferred(2) == 30
    assert calls == [(op, {"dynamic": False})]
    as_decorator = _compile_later(compile_now, dynamic=True)(op)  # @torch.compile(dynamic=True)
    assert as_decorator(0) == 10 and calls[-1] == (op, {"dynamic": True})
