"""Where every command writes what happened: a rotating log file in the platform log folder, and a faulthandler
file for native crashes (a CUDA driver fault leaves no Python traceback otherwise). Qt-free, so `ask`, `doctor`
and `models` log like the window; the window adds Qt's own messages (ui/logs.py) and reads the crash file at
start (`take_last_crash`).

What goes into the log: what the app did (loading, failures, shutdown), never a question, an answer, argv or a
DICOM tag, so a log can be attached to a bug report without exposing patient data.
"""

from __future__ import annotations

import faulthandler
import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import TextIO

from medgemma_desktop.core.app_dirs import log_dir

LOG_FILE = "medgemma-desktop.log"
CRASH_FILE = "crash.log"
LAST_CRASH_FILE = "crash-last-run.log"  # the crash already reported to the user, kept for "Show log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(threadName)s %(name)s: %(message)s"
CONSOLE_FORMAT = "medgemma-desktop: %(levelname)s: %(message)s"
APP_LOGGER = "medgemma_desktop"

_handlers: list[logging.Handler] = []
_root_level_before: int | None = None
_faulthandler_was_enabled = False
_crash_file: TextIO | None = None


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (a test's capture, a redirected stream), not to the
    stream that was current at setup."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def setup_logging(directory: Path | None = None, debug: bool = False) -> Path:
    """Send logging to `directory`/medgemma-desktop.log (1 MB x 3, INFO; `debug`: the app's DEBUG too) and
    warnings (`debug`: everything logged) to stderr; write native crash tracebacks to crash.log. Calling it again
    replaces what the last call installed. Returns the log file's path."""
    global _crash_file, _root_level_before, _faulthandler_was_enabled
    teardown_logging()
    directory = directory or log_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOG_FILE
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=1_000_000, backupCount=3, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    console = _StderrHandler()
    console.setLevel(logging.DEBUG if debug else logging.WARNING)
    console.setFormatter(logging.Formatter(LOG_FORMAT if debug else CONSOLE_FORMAT))
    root = logging.getLogger()
    _root_level_before = root.level
    root.setLevel(logging.INFO)  # other libraries' DEBUG (PIL's chunk reads, urllib3) would drown the app's
    logging.getLogger(APP_LOGGER).setLevel(logging.DEBUG if debug else logging.NOTSET)
    for handler in (file_handler, console):
        root.addHandler(handler)
        _handlers.append(handler)
    _faulthandler_was_enabled = faulthandler.is_enabled()
    _crash_file = (directory / CRASH_FILE).open("a", encoding="utf-8")
    faulthandler.enable(_crash_file)
    return path


def teardown_logging() -> None:
    """Remove what `setup_logging` installed (tests, and a second setup); faulthandler goes back to stderr if it
    wrote there before."""
    global _crash_file, _root_level_before
    root = logging.getLogger()
    if _root_level_before is not None:
        root.setLevel(_root_level_before)
        _root_level_before = None
    while _handlers:
        handler = _handlers.pop()
        root.removeHandler(handler)
        handler.close()
    logging.getLogger(APP_LOGGER).setLevel(logging.NOTSET)
    if _crash_file is not None:
        if _faulthandler_was_enabled:
            faulthandler.enable(sys.__stderr__)
        else:
            faulthandler.disable()
        _crash_file.close()
        _crash_file = None


def take_last_crash(directory: Path | None = None) -> Path | None:
    """If a run crashed since the last call (crash.log is not empty), move its report to crash-last-run.log, so
    it is reported once, and return that path; None after clean runs. This process's own crash reports go to a
    fresh crash.log."""
    directory = directory or log_dir()
    crash = directory / CRASH_FILE
    try:
        if crash.stat().st_size == 0:
            return None
    except FileNotFoundError:
        return None
    last = directory / LAST_CRASH_FILE
    os.replace(crash, last)
    if _crash_file is not None and Path(_crash_file.name) == crash:
        _reopen_crash_file(crash)
    return last


def _reopen_crash_file(crash: Path) -> None:
    global _crash_file
    assert _crash_file is not None
    previous = _crash_file
    _crash_file = crash.open("a", encoding="utf-8")
    faulthandler.enable(_crash_file)
    previous.close()
