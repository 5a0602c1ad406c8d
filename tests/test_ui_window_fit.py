"""At 150 % scaling (QT_FONT_DPI=144) on a 1600 x 1000 screen the first window fits the screen with Send on it.

Qt's platform and scaling are fixed per process, so the outer test runs the inner one in a child process whose
offscreen screen is 1600 x 1000 (Qt's offscreen plugin reads the screen from a JSON file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, QRect

from medgemma_desktop.ui.main_window import MainWindow

CHILD = "MEDGEMMA_SCREEN_TEST"


def test_the_first_window_fits_a_1600x1000_screen_at_150_percent(tmp_path: Path) -> None:
    screen = {"screens": [{"name": "laptop", "x": 0, "y": 0, "width": 1600, "height": 1000, "logicalDpi": 96,
                           "logicalBaseDpi": 96, "dpr": 1}]}
    config = tmp_path / "screen.json"
    config.write_text(json.dumps(screen))
    env = {**os.environ, "QT_QPA_PLATFORM": f"offscreen:configfile={config}", "QT_FONT_DPI": "144", CHILD: "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            f"{__file__}::test_window_inside_the_screen"], env=env, capture_output=True,
                           text=True, timeout=600, check=False)
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
    assert "1 passed" in child.stdout


@pytest.mark.skipif(CHILD not in os.environ, reason="runs in the child process of the test above")
def test_window_inside_the_screen(qtbot, qapp, tiny_settings_path: Path, tmp_path: Path) -> None:
    available = qapp.primaryScreen().availableGeometry()
    assert available.width() < 1280  # 1600 px at 150 %: the design size would not fit
    window = MainWindow(tiny_settings_path, data_folder=tmp_path / "data")
    qtbot.addWidget(window)
    window.show()
    assert window.pages.currentWidget() is window.workspace
    assert available.contains(window.frameGeometry())
    for button in (window.chat.send_button, window.chat.stop_button, window.chat.copy_button):
        top_left = button.mapToGlobal(QPoint(0, 0))
        assert button.isVisible() and available.contains(QRect(top_left, button.size())), button.text()
    window.close()
