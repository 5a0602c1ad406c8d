"""The user's settings: a typed, versioned JSON file in the platform config directory.

A missing or damaged file never stops the app: it falls back to defaults and says why in a one-line notice,
so a bad edit or a half-written file costs the user a setting, not the app. A file of an older schema version
is brought up to date by ordered migrators, one version step each (napari's settings migrations); a file
written by a newer version is copied aside untouched before this version may save over it, and what this
version understands of it is used. Either way the model folder survives. Window geometry is not kept here (Qt's
QSettings is better at that).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from medgemma_desktop.core.app_dirs import config_dir

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
UNVERSIONED = 0  # a file without schema_version: written by hand (an administrator pre-setting the model folder)
THEMES = ("system", "light", "dark")
SERVER_FIELDS = ("server_url", "server_model", "server_api_key")  # what says which server answers
API_KEY_VARIABLE = "MEDGEMMA_DESKTOP_API_KEY"  # a server's key, kept out of the process list and the shell history
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
    keep_patient_data: bool = False  # store DICOM images' identifying tags and file paths in the history
    server_url: str | None = None  # answer on this OpenAI-compatible server instead of the local model
    server_model: str | None = None  # which of the server's models (None: its only one)
    server_api_key: str | None = field(default=None, repr=False)  # None: $MEDGEMMA_DESKTOP_API_KEY; never logged

    @property
    def has_model(self) -> bool:
        """Something answers: a local model folder or a server."""
        return bool(self.model_dir or self.server_url)

    def api_key(self) -> str | None:
        """The server's key: the one saved in settings, else the environment's (never logged)."""
        return self.server_api_key or os.environ.get(API_KEY_VARIABLE)


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
        if item.name in ("model_dir", "adapter_dir", "server_url", "server_model", "server_api_key"):
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
            # the one float is the sampling temperature: finite and above 0, as sampling accepts it
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf
        else:
            ok = value in THEMES
        if ok:
            kept[item.name] = float(value) if isinstance(default, float) else value
        else:
            dropped.append(item.name)
    return replace(defaults, **kept), dropped


Migrator = Callable[[dict[str, Any]], dict[str, Any]]


def _from_unversioned(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1's fields, written without a version: nothing to rename."""
    return data


# MIGRATORS[n] turns a version-n file into a version n+1 file; they run in order. When a field is renamed or its
# meaning changes, bump SCHEMA_VERSION and add the step here (with a test reading a file of the old version).
MIGRATORS: dict[int, Migrator] = {UNVERSIONED: _from_unversioned}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring `data` from its schema version to SCHEMA_VERSION, one step at a time. A step that fails or is missing
    raises ValueError; `data` itself is never changed (the caller keeps the original to fall back on)."""
    version = data.get("schema_version", UNVERSIONED)
    if not isinstance(version, int) or isinstance(version, bool) or version < UNVERSIONED:
        raise ValueError(f"schema version {version!r} is not a version number")
    migrated = copy.deepcopy(data)
    while version < SCHEMA_VERSION:
        step = MIGRATORS.get(version)
        if step is None:
            raise ValueError(f"no migration from schema version {version}")
        try:
            migrated = step(migrated)
        except Exception as exc:
            raise ValueError(f"migrating from schema version {version} failed ({type(exc).__name__}: {exc})") from exc
        version += 1
        migrated["schema_version"] = version
    return migrated


def kept_aside_path(path: Path, version: int) -> Path:
    """Where a newer version's settings file is copied before this version saves over it."""
    return path.with_name(f"{path.stem}.schema-{version}{path.suffix}")


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
    notices: list[str] = []
    version = data.get("schema_version", UNVERSIONED)
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        aside = kept_aside_path(path, version)
        try:
            shutil.copy2(path, aside)
        except OSError as exc:
            notices.append(f"Settings file {path} is from a newer version (schema {version}) and could not be "
                           f"copied aside ({type(exc).__name__}); the settings this version knows are used.")
        else:
            notices.append(f"Settings file {path} is from a newer version (schema {version}); kept it as "
                           f"{aside.name} and used the settings this version knows.")
    elif version != SCHEMA_VERSION:
        try:
            data = migrate(data)
            log.info("settings migrated from schema version %r to %d", version, SCHEMA_VERSION)
        except ValueError as exc:  # roll back: keep every field that still checks, say so
            notices.append(f"Settings file {path}: {exc}; kept the settings that still apply.")
    settings, dropped = _checked(data)
    if dropped:
        notices.append(f"Ignored invalid settings: {', '.join(dropped)}.")
    return LoadedSettings(settings, " ".join(notices) or None)


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
