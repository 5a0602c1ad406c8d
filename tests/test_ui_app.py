"""`run_app`, the entry point the command line calls: it sets up logging, shows the window, runs the event loop
and returns once the app quits, with the model thread joined."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication

from medgemma_desktop import __version__
from medgemma_desktop.core.logging_setup import CRASH_FILE, LAST_CRASH_FILE, LOG_FILE, teardown_logging
from medgemma_desktop.ui.app import run_app
from medgemma_desktop.ui.crash_notice import CrashNotice
from medgemma_desktop.ui.main_window import MainWindow


def test_run_app_shows_the_window_and_exits_cleanly(qapp: QApplication, tmp_path: Path) -> None:
    seen: list[str] = []

    def look_and_quit() -> None:
        windows = [w for w in qapp.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        seen.extend(w.pages.currentWidget().accessibleName() for w in windows)
        for window in windows:
            window.close()  # the last window closing ends the event loop

    QTimer.singleShot(200, look_and_quit)
    try:
        assert run_app([], settings_path=tmp_path / "settings.json", log_dir=tmp_path / "logs") == 0
    finally:
        teardown_logging()
    assert seen == ["Model setup"]
    assert "window started; log file" in (tmp_path / "logs" / "medgemma-desktop.log").read_text()


def test_run_app_opens_files_and_quits_after_the_given_time(qapp: QApplication, tmp_path: Path) -> None:
    picture = tmp_path / "film.png"
    Image.new("L", (64, 48), 90).save(picture)
    items: list[int] = []

    def look() -> None:
        items.extend(w.viewer.model.rowCount() for w in qapp.topLevelWidgets()
                     if isinstance(w, MainWindow) and w.isVisible())

    QTimer.singleShot(1500, look)
    try:
        assert run_app([], settings_path=tmp_path / "settings.json", log_dir=tmp_path / "logs", files=[picture],
                       quit_after_s=2.0) == 0
    finally:
        teardown_logging()
    assert items == [1]


def test_the_window_says_once_that_the_last_run_crashed(qtbot, qapp: QApplication, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / CRASH_FILE).write_text("Fatal Python error: Segmentation fault\n\nCurrent thread 0x7f (most recent "
                                   "call first):\n  File \"engine.py\", line 12 in generate\n")
    seen: list[tuple[str, str]] = []

    def look_show_dismiss() -> None:
        window = next(w for w in qapp.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible())
        notices = window.findChildren(CrashNotice)
        assert len(notices) == 1 and notices[0].isVisible()
        notice = notices[0]
        qtbot.mouseClick(notice.widgetForAction(notice.show_action), Qt.MouseButton.LeftButton)
        assert notice.dialog is not None and notice.dialog.isVisible()
        seen.append((notice.label.text(), notice.dialog.text.toPlainText()))
        notice.dialog.reject()
        qtbot.mouseClick(notice.widgetForAction(notice.dismiss_action), Qt.MouseButton.LeftButton)
        assert not notice.isVisible()
        window.close()

    def windows_with_a_notice() -> None:
        windows = [w for w in qapp.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        seen.append(("second run", str(sum(len(w.findChildren(CrashNotice)) for w in windows))))
        for window in windows:
            window.close()

    try:
        QTimer.singleShot(300, look_show_dismiss)
        assert run_app([], settings_path=tmp_path / "settings.json", log_dir=logs, data_folder=tmp_path) == 0
        QTimer.singleShot(300, windows_with_a_notice)
        assert run_app([], settings_path=tmp_path / "settings.json", log_dir=logs, data_folder=tmp_path) == 0
    finally:
        teardown_logging()
    (label, report), second = seen
    assert "last run" in label and "crash" in label and "\n" not in label
    assert "Segmentation fault" in report and "engine.py" in report
    assert second == ("second run", "0")  # shown once: the report was moved aside
    assert (logs / LAST_CRASH_FILE).read_text().startswith("Fatal Python error")


def test_sigterm_with_a_dialog_open_closes_the_window_from_the_event_loop(qapp: QApplication, tmp_path: Path) -> None:
    """The handler only posts the close: the window closes on the next pass of the event loop, also while one of
    its dialogs is open, and run_app returns 0."""
    seen: list[str] = []

    def open_a_dialog_and_terminate() -> None:
        window = next(w for w in qapp.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible())
        dialog = window.open_settings()
        seen.append(f"dialog open: {dialog.isVisible()}")
        os.kill(os.getpid(), signal.SIGTERM)  # run_app's own handler takes it (installed while the loop runs)
        seen.append(f"window still open right after the signal: {window.isVisible()}")

    QTimer.singleShot(500, open_a_dialog_and_terminate)
    try:
        assert run_app([], settings_path=tmp_path / "settings.json", log_dir=tmp_path / "logs",
                       data_folder=tmp_path) == 0
    finally:
        teardown_logging()
    assert seen == ["dialog open: True", "window still open right after the signal: True"]
    log = (tmp_path / "logs" / LOG_FILE).read_text(encoding="utf-8")
    assert "SIGTERM received: closing the window" in log and "window closed" in log
    assert [w for w in qapp.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()] == []


def start_demo(home: Path) -> tuple[subprocess.Popen[str], Path]:
    """The real `medgemma-desktop --demo` on Qt's offscreen platform, with its own folders; returns the process
    and its log file."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(home),
           **{name: str(home / name.lower()) for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME")}}
    app = subprocess.Popen([sys.executable, "-m", "medgemma_desktop", "--demo"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    return app, home / "xdg_state_home" / "MedGemma Desktop" / "log" / LOG_FILE


def wait_for_line(app: subprocess.Popen[str], log_file: Path, line: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not (log_file.is_file() and line in log_file.read_text(encoding="utf-8")):
        assert app.poll() is None, f"the app ended early: {app.communicate()[1]}"
        assert time.monotonic() < deadline, f"no {line!r} in the log after {timeout_s} s"
        time.sleep(0.05)


# Moments after start: (a log line to wait for, then seconds more). The first is the earliest a handler can exist
# (the command line's first log line comes right after it is installed): Python is still importing Qt and torch.
MOMENTS = {
    "while importing": (f"medgemma-desktop {__version__}: window", 0.0),
    "while importing, later": (f"medgemma-desktop {__version__}: window", 1.5),
    "the window just built": ("window started", 0.0),
    "while the demo model is prepared": ("window started", 2.0),
    "with the model loaded": ("loading medgemma-tiny", 4.0),
}


@pytest.mark.parametrize(("signal_name", "moment"), [("SIGTERM", name) for name in MOMENTS]
                         + [("SIGINT", "the window just built")])
def test_a_stop_signal_at_any_moment_after_start_exits_cleanly(tmp_path: Path, signal_name: str, moment: str) -> None:
    """As a desktop session, `kill` or Ctrl+C stops it: status 0, and once the window exists it closes like the
    close button (model thread joined, stores closed, the log's last line written); nothing crashes."""
    app, log_file = start_demo(tmp_path)
    try:
        line, delay_s = MOMENTS[moment]
        wait_for_line(app, log_file, line)
        time.sleep(delay_s)
        app.send_signal(getattr(signal, signal_name))
        _, err = app.communicate(timeout=240)
    finally:
        if app.poll() is None:
            app.kill()
    assert app.returncode == 0, err
    assert "Traceback" not in err and "QThread: Destroyed" not in err
    text = log_file.read_text(encoding="utf-8")
    if "window started" in text:  # the window existed: it was closed properly, not dropped
        assert "received: closing the window" in text and "window closed" in text
        assert text.rstrip().endswith("exit status 0")
    crash = log_file.with_name(CRASH_FILE)
    assert not crash.exists() or crash.read_text() == ""
