"""SIGTERM (a desktop session ending, `kill`, a service manager) and Ctrl+C close the window as its close button
does, whenever they come: during start-up too, so the command line installs this before the slow imports.

While the app is only importing (Qt, torch: seconds on a busy machine) nothing exists to close or save, so the
handler ends the process at once with status 0 (`os._exit`: an exception raised into an extension module's
import aborts the interpreter, seen with PySide6 and numpy). From `hold()` on, while the window is being built,
it only records the request, and once the window runs it hands it to a callback that posts the close to Qt's
event loop (qutebrowser's crashsignal does the same): closing inside the handler would run the shutdown in the
middle of whatever Python code the signal interrupted, a window half built or a slot half run. No Qt here: it
is installed before Qt is imported.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TerminationRequest:
    """Remembers SIGTERM/SIGINT; ends the process before `hold()`, runs the `on_request` callback after it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._holding = False
        self._callback: Callable[[], None] | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> Callable[[], None]:
        """Take over SIGTERM and SIGINT; returns a function that puts the previous handlers back."""
        previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}

        def uninstall() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        return uninstall

    def hold(self) -> None:
        """From now on a request is recorded, not acted on at once: things are being built that must close properly."""
        self._holding = True

    def on_request(self, callback: Callable[[], None]) -> None:
        """Run `callback` when termination is requested, at once if it already was."""
        self._callback = callback
        if self.requested:
            callback()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum  # no logging here: the signal may have interrupted a logging call
        if not self._holding:
            os._exit(0)
        if self._callback is not None:
            self._callback()
