"""Settings of another schema version: an older file is migrated step by step (never reset to defaults: the model
folder survives), a failing step rolls back to what still checks, and a newer version's file is kept aside
untouched with a one-line notice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medgemma_desktop.core import settings as settings_module
from medgemma_desktop.core.settings import (
    SCHEMA_VERSION,
    Settings,
    kept_aside_path,
    load_settings,
    migrate,
    save_settings,
)


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_a_hand_written_file_without_a_version_keeps_its_model_folder(tmp_path: Path) -> None:
    path = write(tmp_path / "settings.json", {"model_dir": "/opt/medgemma", "adapter_dir": "/opt/lora",
                                              "theme": "dark"})
    loaded = load_settings(path)
    assert loaded.settings == Settings(model_dir="/opt/medgemma", adapter_dir="/opt/lora", theme="dark")
    assert loaded.notice is None
    save_settings(loaded.settings, path)  # the next save writes the current version
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_migrators_run_in_order_one_step_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A schema 2 that renamed model_dir to model_folder and a schema 3 that renamed it back: each step needs the
    one before it, so only the right order gives the folder back."""
    steps: list[int] = []

    def rename_model_folder(data: dict[str, Any]) -> dict[str, Any]:  # 1 -> 2
        steps.append(1)
        data["model_folder"] = data.pop("model_dir")
        return data

    def back_to_model_dir(data: dict[str, Any]) -> dict[str, Any]:  # 2 -> 3
        steps.append(2)
        data["model_dir"] = data.pop("model_folder")
        return data

    monkeypatch.setattr(settings_module, "SCHEMA_VERSION", 3)
    monkeypatch.setitem(settings_module.MIGRATORS, 1, rename_model_folder)
    monkeypatch.setitem(settings_module.MIGRATORS, 2, back_to_model_dir)
    original = {"schema_version": 1, "model_dir": "/models/mg", "greedy": False, "max_new_tokens": 300}
    path = write(tmp_path / "settings.json", original)
    loaded = load_settings(path)
    assert steps == [1, 2]
    assert loaded.settings == Settings(model_dir="/models/mg", greedy=False, max_new_tokens=300)
    assert loaded.notice is None
    assert json.loads(path.read_text()) == original  # loading never writes


def test_a_failing_migration_rolls_back_and_keeps_what_still_checks(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_step(data: dict[str, Any]) -> dict[str, Any]:
        data["model_dir"] = None  # a half-done step must not leak into the result
        raise KeyError("colour")

    monkeypatch.setattr(settings_module, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(settings_module.MIGRATORS, 1, broken_step)
    path = write(tmp_path / "settings.json", {"schema_version": 1, "model_dir": "/models/mg", "theme": "light"})
    loaded = load_settings(path)
    assert loaded.settings == Settings(model_dir="/models/mg", theme="light")
    assert "migrating from schema version 1 failed (KeyError" in loaded.notice and "\n" not in loaded.notice


def test_migrate_refuses_a_version_that_is_not_a_number() -> None:
    with pytest.raises(ValueError, match="not a version number"):
        migrate({"schema_version": "1"})
    assert migrate({"schema_version": SCHEMA_VERSION, "theme": "dark"}) == {"schema_version": SCHEMA_VERSION,
                                                                            "theme": "dark"}


def test_a_newer_versions_file_is_kept_aside_and_its_known_settings_used(tmp_path: Path) -> None:
    newer = {"schema_version": SCHEMA_VERSION + 1, "model_dir": "/models/mg", "theme": "dark",
             "feature_of_the_future": {"on": True}}
    path = write(tmp_path / "settings.json", newer)
    loaded = load_settings(path)
    aside = kept_aside_path(path, SCHEMA_VERSION + 1)
    assert loaded.settings == Settings(model_dir="/models/mg", theme="dark")
    assert loaded.notice is not None and "newer version" in loaded.notice and aside.name in loaded.notice
    assert "\n" not in loaded.notice
    save_settings(loaded.settings, path)  # this version saves over settings.json ...
    assert json.loads(aside.read_text()) == newer  # ... the newer version's file is untouched beside it
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert load_settings(path).notice is None  # said once: the file is this version's now


@pytest.mark.parametrize("temperature", [0, -1.0, "NaN", "Infinity"])
def test_a_hand_edited_temperature_that_sampling_refuses_is_dropped(tmp_path: Path, temperature: Any) -> None:
    """Sampling refuses a temperature of 0 or one that is not finite: such a file keeps its other fields and the
    default temperature, with a notice naming it."""
    path = tmp_path / "settings.json"
    value = float(temperature) if isinstance(temperature, str) else temperature
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "model_dir": "/opt/medgemma",
                                "temperature": value}), encoding="utf-8")
    loaded = load_settings(path)
    assert loaded.settings == Settings(model_dir="/opt/medgemma")
    assert loaded.notice is not None and "temperature" in loaded.notice
