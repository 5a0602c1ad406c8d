"""First run: no model configured -> the setup page; bad folders are refused inline with the core's message;
good ones are remembered in the settings file and the model loads."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtCore import Qt

from medgemma_desktop.core.settings import SCHEMA_VERSION, load_settings
from medgemma_desktop.core.tiny_checkpoint import TinyCheckpoint
from medgemma_desktop.ui.main_window import MainWindow
from medgemma_desktop.ui.worker import ModelState


def test_first_run_refuses_bad_folders_and_remembers_good_ones(qtbot, tmp_path: Path,
                                                               tiny_checkpoint: TinyCheckpoint) -> None:
    settings_path = tmp_path / "config" / "settings.json"
    window = MainWindow(settings_path)
    qtbot.addWidget(window)
    window.show()
    page = window.first_run
    assert window.pages.currentWidget() is page and not page.error_label.isVisible()
    assert window.host.state is ModelState.NO_MODEL

    page.model_field.set_path(str(tmp_path))
    qtbot.mouseClick(page.use_button, Qt.MouseButton.LeftButton)
    assert page.error_label.isVisible() and "no config.json" in page.error_label.text()
    assert not settings_path.exists()

    page.model_field.set_path(str(tiny_checkpoint.model_dir))
    assert not page.error_label.isVisible()  # editing clears the old complaint
    page.adapter_field.set_path(str(tiny_checkpoint.model_dir))  # a model folder is not an adapter
    qtbot.mouseClick(page.use_button, Qt.MouseButton.LeftButton)
    assert "adapter_config.json" in page.error_label.text()

    page.adapter_field.set_path(str(tiny_checkpoint.adapter_dir))
    qtbot.mouseClick(page.use_button, Qt.MouseButton.LeftButton)
    assert window.pages.currentWidget() is window.workspace
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY, timeout=30_000)
    saved = json.loads(settings_path.read_text())
    assert saved["schema_version"] == SCHEMA_VERSION
    assert saved["model_dir"] == str(tiny_checkpoint.model_dir)
    assert load_settings(settings_path).settings.adapter_dir == str(tiny_checkpoint.adapter_dir)
    window.close()


def test_a_configured_folder_that_went_missing_shows_the_setup_page_with_the_reason(qtbot, tmp_path: Path) -> None:
    settings_path = tmp_path / "settings.json"
    missing = tmp_path / "unplugged-usb-disk" / "medgemma"
    settings_path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "model_dir": str(missing)}))
    window = MainWindow(settings_path)
    qtbot.addWidget(window)
    assert window.pages.currentWidget() is window.first_run
    assert "folder not found" in window.first_run.error_label.text()
    assert window.first_run.model_field.path() == str(missing)
    window.close()
