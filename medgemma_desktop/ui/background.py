"""Short background jobs (decode a picture, read a folder) with results delivered on the UI thread.

The idea of Anki's `QueryOp`: run a plain function on a worker pool, then call `on_success` or `on_failure`
back on the UI thread. The relay object lives on the UI thread, so Qt queues its signal across threads; it
is parented to the jobs object, so a result that arrives after the owner is gone is dropped, not delivered
to a deleted widget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThreadPool, Signal, Slot


class _Relay(QObject):
    done = Signal(bool, object)  # succeeded, result or exception

    def __init__(self, parent: QObject, on_success: Callable[[Any], None],
                 on_failure: Callable[[Exception], None]) -> None:
        super().__init__(parent)
        self._on_success = on_success
        self._on_failure = on_failure
        self.done.connect(self._deliver)

    @Slot(bool, object)
    def _deliver(self, succeeded: bool, value: object) -> None:
        try:
            if succeeded:
                self._on_success(value)
            else:
                self._on_failure(value)  # type: ignore[arg-type]
        finally:
            self.deleteLater()


class BackgroundJobs(QObject):
    """One worker at a time, so that files dropped together open in order."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)

    def run(self, job: Callable[[], Any], on_success: Callable[[Any], None],
            on_failure: Callable[[Exception], None]) -> None:
        relay = _Relay(self, on_success, on_failure)

        def work() -> None:
            try:
                result = job()
            except Exception as exc:  # handed to on_failure, which decides what the user sees
                relay.done.emit(False, exc)
            else:
                relay.done.emit(True, result)

        self._pool.start(work)

    def wait(self, msecs: int = -1) -> bool:
        """Wait for running jobs (shutdown, tests)."""
        return self._pool.waitForDone(msecs)
