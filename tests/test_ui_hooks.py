"""Unexpected errors: logged with a traceback to the rotating log file and shown in a dialog with
"Copy details", from the UI thread and from other threads; Qt's own messages go into the log too."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import qWarning
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QWidget

from medgemma_desktop.core.logging_setup import setup_logging, teardown_logging
from medgemma_desktop.ui.hooks import ErrorReporter, install_hooks
from medgemma_desktop.ui.logs import route_qt_messages


@pytest.fixture
def reporter(qtbot) -> Iterator[ErrorReporter]:
    parent = QWidget()
    qtbot.addWidget(parent)
    error_reporter = ErrorReporter(lambda: parent)
    uninstall = install_hooks(error_reporter)
    yield error_reporter
    uninstall()
    for dialog in list(error_reporter.dialogs):
        dialog.reject()


def raise_and_hook(exc: Exception) -> None:
    try:
        raise exc
    except Exception:
        sys.excepthook(*sys.exc_info())


def test_uncaught_error_is_logged_and_shown_with_copy_details(qtbot, reporter: ErrorReporter, caplog) -> None:
    with caplog.at_level(logging.ERROR):
        raise_and_hook(ValueError("bad value"))
    qtbot.waitUntil(lambda: len(reporter.dialogs) == 1)
    dialog = reporter.dialogs[0]
    assert "ValueError: bad value" in dialog.summary.text()
    assert "Traceback" in dialog.details.toPlainText() and "raise_and_hook" in dialog.details.toPlainText()
    assert caplog.records[-1].exc_info[0] is ValueError
    dialog.copy_button.click()
    assert QGuiApplication.clipboard().text() == dialog.details.toPlainText()
    dialog.reject()
    assert reporter.dialogs == []


def test_error_in_another_thread_reaches_the_dialog_on_the_ui_thread(qtbot, reporter: ErrorReporter) -> None:
    def fail() -> None:
        raise RuntimeError("in a thread")

    thread = threading.Thread(target=fail)
    thread.start()
    thread.join()
    qtbot.waitUntil(lambda: len(reporter.dialogs) == 1)
    assert "RuntimeError: in a thread" in reporter.dialogs[0].summary.text()


def test_log_file_receives_tracebacks_and_qt_messages(tmp_path: Path) -> None:
    try:
        log_path = setup_logging(tmp_path / "logs")
        route_qt_messages()
        try:
            raise KeyError("missing")
        except KeyError:
            logging.getLogger("test").exception("it broke")
        qWarning("a Qt warning for the log")
        for handler in logging.getLogger().handlers:
            handler.flush()
        text = log_path.read_text()
        assert "it broke" in text and "KeyError: 'missing'" in text
        assert "a Qt warning for the log" in text and " qt: " in text
        assert (tmp_path / "logs" / "crash.log").exists()
    finally:
        teardown_logging()
