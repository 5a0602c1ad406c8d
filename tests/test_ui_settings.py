"""Settings: the versioned JSON file (tolerant of missing and damaged files), the Settings dialog, the
theme, and the GPU readings the status bar shows."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication

from medgemma_desktop.core.gpu import GpuMemory, GpuMonitor
from medgemma_desktop.core.settings import SCHEMA_VERSION, Settings, load_settings, save_settings
from medgemma_desktop.core.tiny_checkpoint import TinyCheckpoint
from medgemma_desktop.ui.settings_dialog import SettingsDialog
from medgemma_desktop.ui.status import gpu_text
from medgemma_desktop.ui.theme import apply_theme, dark_palette


def test_settings_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "settings.json"
    settings = Settings(model_dir="/models/medgemma", adapter_dir=None, max_new_tokens=512, greedy=False,
                        temperature=0.4, context_limit=4096, theme="dark", force_cpu=True,
                        attached_adapter_dirs=("/adapters/cxr", "/adapters/ct"))
    save_settings(settings, path)
    loaded = load_settings(path)
    assert loaded.settings == settings and loaded.notice is None
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert [p.name for p in path.parent.iterdir()] == ["settings.json"]  # no temp file left behind


def test_missing_file_gives_defaults_silently(tmp_path: Path) -> None:
    loaded = load_settings(tmp_path / "none.json")
    assert loaded.settings == Settings() and loaded.notice is None


def test_corrupt_file_gives_defaults_and_a_notice(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text('{"schema_version": 1, "model_dir": ')
    loaded = load_settings(path)
    assert loaded.settings == Settings()
    assert "could not be read" in loaded.notice and str(path) in loaded.notice


def test_invalid_fields_are_dropped_and_named(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "model_dir": "/m", "max_new_tokens": "lots",
                                "theme": "purple", "greedy": False, "unknown": 1, "attached_adapter_dirs": [3]}))
    loaded = load_settings(path)
    assert loaded.settings == Settings(model_dir="/m", greedy=False)
    assert loaded.notice == "Ignored invalid settings: attached_adapter_dirs, max_new_tokens, theme."


def test_settings_dialog_edits_and_validates_folders(qtbot, tiny_checkpoint: TinyCheckpoint, tmp_path: Path) -> None:
    dialog = SettingsDialog(Settings(model_dir=str(tiny_checkpoint.model_dir)))
    qtbot.addWidget(dialog)
    assert not dialog.temperature.isEnabled()  # greedy: temperature does not apply
    dialog.decoding.setCurrentIndex(1)
    assert dialog.temperature.isEnabled()
    dialog.temperature.setValue(0.3)
    dialog.max_new_tokens.setValue(256)
    dialog.theme.setCurrentIndex(dialog.theme.findData("dark"))
    dialog.adapter_field.set_path(str(tmp_path))
    dialog.accept()
    assert dialog.result() != dialog.DialogCode.Accepted
    assert "no adapter_config.json" in dialog.error_label.text()
    dialog.adapter_field.set_path(str(tiny_checkpoint.adapter_dir))
    dialog.accept()
    assert dialog.result() == dialog.DialogCode.Accepted
    assert dialog.settings() == Settings(model_dir=str(tiny_checkpoint.model_dir),
                                         adapter_dir=str(tiny_checkpoint.adapter_dir), max_new_tokens=256,
                                         greedy=False, temperature=0.3, theme="dark")


def test_dark_theme_sets_a_dark_palette(qapp: QApplication) -> None:
    apply_theme(qapp, "dark")
    assert qapp.palette().color(QPalette.ColorRole.Window) == dark_palette().color(QPalette.ColorRole.Window)
    apply_theme(qapp, "light")
    assert qapp.palette().color(QPalette.ColorRole.Window).lightness() > 128


def test_gpu_readings_on_a_machine_without_a_gpu() -> None:
    monitor = GpuMonitor()
    assert monitor.read() is None  # the test machines run torch on the CPU and have no NVIDIA driver
    monitor.close()


def test_gpu_text_shows_device_and_app_share() -> None:
    reading = GpuMemory("NVIDIA RTX 4070", used_bytes=3 * 2**30, total_bytes=12 * 2**30,
                        app_reserved_bytes=int(2.5 * 2**30), source="nvml")
    assert gpu_text(reading) == "NVIDIA RTX 4070 · VRAM 3.0 / 12.0 GiB · this app 2.5 GiB"
