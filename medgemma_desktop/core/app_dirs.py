"""Where the app keeps its files: the platform's config, data, cache and log folders (platformdirs)."""

from __future__ import annotations

from pathlib import Path

import platformdirs

APP_NAME = "MedGemma Desktop"
_DIRS = platformdirs.PlatformDirs(APP_NAME, appauthor=False)


def config_dir() -> Path:
    return Path(_DIRS.user_config_dir)


def data_dir() -> Path:
    return Path(_DIRS.user_data_dir)


def cache_dir() -> Path:
    return Path(_DIRS.user_cache_dir)


def log_dir() -> Path:
    return Path(_DIRS.user_log_dir)
