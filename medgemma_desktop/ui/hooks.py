"""One place for exceptions nobody caught: `sys.excepthook`, `threading.excepthook` and the model worker all
call `report_unexpected`, which logs the traceback and shows the error dialog on the UI thread (the hook may
run on any thread; a queued signal carries it over)."""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Callable
from types import TracebackType

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtWidgets import QWidget

from medgemma_desktop.ui.error_dialog import ErrorDialog

log = logging.getLogger(__name__)
_reporter: ErrorReporter | None = None


class ErrorReporter(QObject):
    """Lives on the UI thread; shows one non-modal dialog per unexpected error."""

    unexpected = Signal(str, str)  # summary, details

    def __init__(self, parent_widget: Callable[[], QWidget | None]) -> None:
        super().__init__()
        self._parent_widget = parent_widget
        self.dialogs: list[ErrorDialog] = []
        self.unexpected.connect(self._show)

    @Slot(str, str)
    def _show(self, summary: str, details: str) -> None:
        dialog = ErrorDialog(summary, details, self._parent_widget())
        dialog.finished.connect(lambda _result: self.dialogs.remove(dialog))
        self.dialogs.append(dialog)
        dialog.show()


def report_unexpected(exc_type: type[BaseException], exc: BaseException,
                      tb: TracebackType | None) -> None:
    log.error("Unexpected error", exc_info=(exc_type, exc, tb))
    if _reporter is not None:
        details = "".join(traceback.format_exception(exc_type, exc, tb))
        _reporter.unexpected.emit(f"{exc_type.__name__}: {exc}", details)


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    report_unexpected(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)


def install_hooks(reporter: ErrorReporter) -> Callable[[], None]:
    """Route uncaught exceptions to the log and `reporter`; returns a function that puts the old hooks back."""
    global _reporter
    previous = (sys.excepthook, threading.excepthook, _reporter)
    _reporter = reporter
    sys.excepthook = report_unexpected
    threading.excepthook = _thread_hook

    def uninstall() -> None:
        global _reporter
        sys.excepthook, threading.excepthook, _reporter = previous

    return uninstall
