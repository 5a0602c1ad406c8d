"""`run_app`, the entry point the command line calls: it sets up logging, shows the window, runs the event loop
and returns once the app quits, with the model thread joined."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from medgemma_desktop.ui.app import run_app
from medgemma_desktop.ui.main_window import MainWindow


def test_run_app_shows_the_window_and_exits_cleanly(qapp: QApplication, tmp_path: Path) -> None:
    seen: list[str] = []

    def look_and_quit() -> None:
        windows = [w for w in qapp.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        seen.extend(w.pages.currentWidget().accessibleName() for w in windows)
        for window in windows:
            window.close()  # the last window closing ends the event loop

    root = logging.getLogger()
    handlers = list(root.handlers)
    QTimer.singleShot(200, look_and_quit)
    try:
        assert run_app([], settings_path=tmp_path / "settings.json", log_dir=tmp_path / "logs") == 0
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
    assert seen == ["Model setup"]
    assert "started; log file" in (tmp_path / "logs" / "medgemma-desktop.log").read_text()
