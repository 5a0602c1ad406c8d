"""`run_app`: the GUI entry point the command line calls with no arguments."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from medgemma_desktop.core.settings import load_settings
from medgemma_desktop.ui.hooks import ErrorReporter, install_hooks
from medgemma_desktop.ui.logs import setup_logging
from medgemma_desktop.ui.main_window import MainWindow
from medgemma_desktop.ui.theme import app_icon, apply_theme

log = logging.getLogger(__name__)


def run_app(argv: Sequence[str] | None = None, settings_path: Path | None = None, log_dir: Path | None = None,
            demo: bool = False, data_folder: Path | None = None, files: Sequence[Path] = (),
            quit_after_s: float | None = None) -> int:
    """Set up logging and the exception hooks, show the main window (in demo mode with `demo`) with `files`
    opened in the viewer, run the event loop; returns the exit code. `quit_after_s` closes the window after that
    many seconds, as a user would (the frozen-app smoke test uses it)."""
    log_path = setup_logging(log_dir)
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
    uninstall = install_hooks(reporter)
    log.info("started; log file %s", log_path)
    window.show()
    if files:
        window.viewer.open_paths(list(files))
    # SIGTERM / Ctrl+C close the window like the close button: the model thread is stopped and joined. Python only
    # runs signal handlers between bytecodes, so a timer wakes the interpreter while Qt's loop waits.
    previous = {signum: signal.signal(signum, lambda *_: window.close()) for signum in (signal.SIGTERM, signal.SIGINT)}
    heartbeat = QTimer(window)
    heartbeat.timeout.connect(lambda: None)
    heartbeat.start(250)
    if quit_after_s is not None:
        QTimer.singleShot(int(quit_after_s * 1000), window.close)
    try:
        return app.exec()
    finally:
        window.close()  # also when the loop ended without a close (app.quit): joins the model thread
        uninstall()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
