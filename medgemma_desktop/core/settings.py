"""The user's settings: a typed, versioned JSON file in the platform config directory.

A missing or damaged file never stops the app: it falls back to defaults and says why in a one-line notice,
so a bad edit or a half-written file costs the user a setting, not the app. Window geometry is not kept here
(Qt's QSettings is better at that).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from medgemma_desktop.core.app_dirs import config_dir

SCHEMA_VERSION = 1
THEMES = ("system", "light", "dark")
Theme = Literal["system", "light", "dark"]


@dataclass(frozen=True)
class Settings:
    model_dir: str | None = None
    adapter_dir: str | None = None  # the active adapter; None: the base model alone
    attached_adapter_dirs: tuple[str, ...] = ()  # every adapter added in the model manager, attached at each load
    max_new_tokens: int = 1024
    greedy: bool = True  # Google's notebooks decode MedGemma greedily
    temperature: float = 0.7
    context_limit: int = 8192
    theme: Theme = "system"
    text_size: int = 100  # percent of the platform's text size
    force_cpu: bool = False

    @property
    def has_model(self) -> bool:
        return bool(self.model_dir)


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    notice: str | None = None  # why defaults were used, for the status bar


def default_settings_path() -> Path:
    return config_dir() / "settings.json"


def _checked(data: dict[str, Any]) -> tuple[Settings, list[str]]:
    """Keep each known field whose type fits; report the ones dropped."""
    defaults = Settings()
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for item in fields(Settings):
        if item.name not in data:
            continue
        value, default = data[item.name], getattr(defaults, item.name)
        if item.name in ("model_dir", "adapter_dir"):
            ok = value is None or isinstance(value, str)
        elif item.name == "attached_adapter_dirs":
            ok = isinstance(value, list) and all(isinstance(entry, str) for entry in value)
            if ok:
                value = tuple(value)
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
        else:
            ok = value in THEMES
        if ok:
            kept[item.name] = float(value) if isinstance(default, float) else value
        else:
            dropped.append(item.name)
    return replace(defaults, **kept), dropped


def load_settings(path: Path | None = None) -> LoadedSettings:
    path = path or default_settings_path()
    if not path.exists():
        return LoadedSettings(Settings())
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return LoadedSettings(Settings(), f"Settings file {path} could not be read ({type(exc).__name__}); "
                                          "using defaults.")
    if not isinstance(data, dict):
        return LoadedSettings(Settings(), f"Settings file {path} is not a JSON object; using defaults.")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        return LoadedSettings(Settings(), f"Settings file {path} has schema version {version!r}, this app reads "
                                          f"{SCHEMA_VERSION}; using defaults.")
    settings, dropped = _checked(data)
    notice = f"Ignored invalid settings: {', '.join(dropped)}." if dropped else None
    return LoadedSettings(settings, notice)


def save_settings(settings: Settings, path: Path | None = None) -> None:
    """Write atomically (temp file + rename) so a crash mid-write cannot leave a half file."""
    path = path or default_settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"schema_version": SCHEMA_VERSION, **asdict(settings)}
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".settings-", suffix=".json")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(payload, out, indent=2)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
