"""`run_app`: the GUI entry point the command line calls with no arguments."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication

from medgemma_desktop.core.logging_setup import setup_logging, take_last_crash
from medgemma_desktop.core.settings import load_settings
from medgemma_desktop.ui.crash_notice import CrashNotice
from medgemma_desktop.ui.hooks import ErrorReporter, install_hooks
from medgemma_desktop.ui.logs import route_qt_messages
from medgemma_desktop.ui.main_window import MainWindow
from medgemma_desktop.ui.qt_platform import check_platform_libraries
from medgemma_desktop.ui.termination import TerminationRequest
from medgemma_desktop.ui.theme import app_icon, apply_theme

log = logging.getLogger(__name__)
HEARTBEAT_MS = 250


def run_app(argv: Sequence[str] | None = None, settings_path: Path | None = None, log_dir: Path | None = None,
            demo: bool = False, data_folder: Path | None = None, files: Sequence[Path] = (),
            quit_after_s: float | None = None, termination: TerminationRequest | None = None,
            debug: bool = False) -> int:
    """Set up logging and the exception hooks, show the main window (in demo mode with `demo`) with `files`
    opened in the viewer, run the event loop; returns the exit code. `quit_after_s` closes the window after that
    many seconds, as a user would (the frozen-app smoke test uses it). `termination`: the SIGTERM/Ctrl+C handler
    the command line installed before its slow imports (one is installed here otherwise)."""
    uninstall_termination = None
    if termination is None:
        termination = TerminationRequest()
        termination.hold()
        uninstall_termination = termination.install()
    try:
        log_path = setup_logging(log_dir, debug=debug)  # again (the command line did): `log_dir` may differ
        check_platform_libraries()
        termination.hold()
        return _run_window(argv, settings_path, log_dir, demo, data_folder, files, quit_after_s, termination,
                           log_path)
    finally:
        if uninstall_termination is not None:
            uninstall_termination()


def _run_window(argv: Sequence[str] | None, settings_path: Path | None, log_dir: Path | None, demo: bool,
                data_folder: Path | None, files: Sequence[Path], quit_after_s: float | None,
                termination: TerminationRequest, log_path: Path) -> int:
    route_qt_messages()
    app = QApplication.instance() or QApplication(list(argv) if argv is not None else sys.argv)
    assert isinstance(app, QApplication)
    app.setApplicationName("MedGemma Desktop")
    app.setOrganizationName("MedGemma Desktop")
    app.setDesktopFileName("medgemma-desktop")  # lets Wayland desktops match the window to its menu entry
    app.setWindowIcon(app_icon())
    settings = load_settings(settings_path).settings
    apply_theme(app, settings.theme, settings.text_size)
    window = MainWindow(settings_path, data_folder=data_folder, demo=demo)
    reporter = ErrorReporter(lambda: window)
    uninstall_hooks = install_hooks(reporter)
    log.info("window started; log file %s", log_path)
    crash_report = take_last_crash(log_dir)
    if crash_report is not None:
        log.warning("the last run crashed; its report is %s", crash_report)
        window.addToolBar(Qt.ToolBarArea.TopToolBarArea, CrashNotice(crash_report, window))
    window.show()
    if files:
        window.viewer.open_paths(list(files))

    def close_from_signal() -> None:
        assert termination.signum is not None
        log.info("%s received: closing the window", signal.Signals(termination.signum).name)
        window.close()

    # The close runs from the event loop, never inside the signal handler. Python runs a handler only between
    # bytecodes, so a timer wakes the interpreter while Qt's loop waits in C.
    termination.on_request(lambda: QTimer.singleShot(0, close_from_signal))
    heartbeat = QTimer(window)
    heartbeat.timeout.connect(lambda: None)
    heartbeat.start(HEARTBEAT_MS)
    if quit_after_s is not None:
        QTimer.singleShot(int(quit_after_s * 1000), window.close)
    try:
        return app.exec()
    finally:
        window.close()  # also when the loop ended without a close (app.quit): joins the model thread
        uninstall_hooks()
        log.info("window closed")
