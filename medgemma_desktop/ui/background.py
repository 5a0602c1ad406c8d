"""Short background jobs (decode a picture, read a folder) with results delivered on the UI thread.

The idea of Anki's `QueryOp`: run a plain function on a worker pool, then call `on_success` or `on_failure`
back on the UI thread. The relay object lives on the UI thread, so Qt queues its signal across threads; it
is parented to the jobs object, so a result that arrives after the owner is gone is dropped, not delivered
to a deleted widget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot


class _Job(QRunnable):
    """Runs `job` on a pool thread and hands the outcome to the relay. Kept alive by `BackgroundJobs` (not by
    the pool) until the outcome is delivered."""

    def __init__(self, job: Callable[[], Any], relay: _Relay) -> None:
        super().__init__()
        self.setAutoDelete(False)
        self._job = job
        self.relay = relay

    def run(self) -> None:
        try:
            result = self._job()
        except Exception as exc:  # handed to on_failure, which decides what the user sees
            self.relay.done.emit(False, exc)
        else:
            self.relay.done.emit(True, result)


class _Relay(QObject):
    done = Signal(bool, object)  # succeeded, result or exception

    def __init__(self, parent: BackgroundJobs, on_success: Callable[[Any], None],
                 on_failure: Callable[[Exception], None]) -> None:
        super().__init__(parent)
        self._on_success = on_success
        self._on_failure = on_failure
        self.done.connect(self._deliver)

    @Slot(bool, object)
    def _deliver(self, succeeded: bool, value: object) -> None:
        jobs = self.parent()
        assert isinstance(jobs, BackgroundJobs)
        jobs.forget(self)
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
        self._running: dict[_Relay, _Job] = {}

    def run(self, job: Callable[[], Any], on_success: Callable[[Any], None],
            on_failure: Callable[[Exception], None]) -> None:
        relay = _Relay(self, on_success, on_failure)
        runnable = _Job(job, relay)
        self._running[relay] = runnable
        self._pool.start(runnable)

    def forget(self, relay: _Relay) -> None:
        self._running.pop(relay, None)

    def wait(self, msecs: int = -1) -> bool:
        """Wait for running jobs (shutdown, tests)."""
        return self._pool.waitForDone(msecs)
