"""The property every fuzz test checks, for any reader of untrusted input (a picture, a DICOM file, an API
request): within a time bound, it returns a result or raises the app's own one-line refusal (`UserFacingError`, or
the server's `ApiError`); any other exception, a message over several lines, or a hang fails the case.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from hypothesis import HealthCheck, settings

from medgemma_desktop.core.errors import UserFacingError

T = TypeVar("T")

# Every case must end well within this on a loaded 2-core machine (typical cases take milliseconds).
CASE_TIME_LIMIT_S = 20.0

# Fixed, reproducible budgets: the same cases on every run and machine, no example database, no deadline
# flakiness (the time bound is `answers_or_refuses`'s own, far above any honest case).
FUZZ_SETTINGS = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.function_scoped_fixture])


def answers_or_refuses(call: Callable[[], T], within_s: float = CASE_TIME_LIMIT_S,
                       refusal: type[Exception] = UserFacingError) -> T | Exception:
    """Run `call` on a helper thread: its result, or the `refusal` it raised (checked to be one line).
    Anything else it raises is re-raised here, and a call still running after `within_s` fails the case."""
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the test thread
            outcome.append((False, exc))

    started = time.perf_counter()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(within_s)
    assert outcome, f"the reader did not finish within {within_s:g} s"
    succeeded, value = outcome[0]
    if succeeded:
        return value  # type: ignore[return-value]
    if isinstance(value, refusal):
        message = str(value)
        assert message and "\n" not in message and "\r" not in message, f"not one line: {message!r}"
        assert "Traceback" not in message
        return value
    elapsed = time.perf_counter() - started
    raise AssertionError(f"raised {type(value).__name__} after {elapsed:.2f} s instead of a {refusal.__name__}: "
                         f"{value}") from value  # type: ignore[misc]
