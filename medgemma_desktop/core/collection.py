"""Python's automatic garbage collection held off while the process imports torch and transformers and loads the
model, and what those made frozen out of later collections.

Importing and loading make millions of long-lived objects, which set off Python's full collections again and
again, each walking everything made so far, with the GIL held: about a second of a command's start on a 2-core
machine (benchmarks/README.md, run 18), and on the model thread, pauses of 240-370 ms that froze the window. None
of it is garbage; frozen (`gc.freeze`), it stays out of the way of every later collection.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def deferred() -> Iterator[None]:
    """No automatic garbage collection inside; after a success, what was made is frozen out of later collections
    (a failure's remains are left to them). Collection resumes as it was before."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if was_enabled:
            gc.enable()
