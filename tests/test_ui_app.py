"""`run_app`, the entry point the command line calls: it sets up logging, shows the window, runs the event loop
and returns once the app quits, with the model thread joined."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image
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


def test_run_app_opens_files_and_quits_after_the_given_time(qapp: QApplication, tmp_path: Path) -> None:
    picture = tmp_path / "film.png"
    Image.new("L", (64, 48), 90).save(picture)
    items: list[int] = []

    def look() -> None:
        items.extend(w.viewer.model.rowCount() for w in qapp.topLevelWidgets()
                     if isinstance(w, MainWindow) and w.isVisible())

    root = logging.getLogger()
    handlers = list(root.handlers)
    QTimer.singleShot(1500, look)
    try:
        assert run_app([], settings_path=tmp_path / "settings.json", log_dir=tmp_path / "logs", files=[picture],
                       quit_after_s=2.0) == 0
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
    assert items == [1]


def test_the_app_closes_cleanly_on_sigterm(tmp_path: Path) -> None:
    """As a desktop session or the installer's smoke test stops it: SIGTERM closes the window like the close
    button (model thread joined) and the process exits with status 0."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)}
    app = subprocess.Popen([sys.executable, "-m", "medgemma_desktop"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    time.sleep(8)
    assert app.poll() is None, app.stderr.read() if app.stderr else ""
    app.send_signal(signal.SIGTERM)
    _, err = app.communicate(timeout=60)
    assert app.returncode == 0, err
    assert "Traceback" not in err
