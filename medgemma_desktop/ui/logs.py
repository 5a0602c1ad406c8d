"""Where the app writes what happened: a rotating log file in the platform log directory, Qt's own messages
routed into `logging`, and a faulthandler file for native crashes (a CUDA driver fault leaves no Python
traceback otherwise)."""

from __future__ import annotations

import faulthandler
import logging
import logging.handlers
from pathlib import Path
from typing import TextIO

from PySide6.QtCore import QMessageLogContext, QtMsgType, qInstallMessageHandler

from medgemma_desktop.core.app_dirs import log_dir

LOG_FILE = "medgemma-desktop.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"
_QT_LEVELS = {
    QtMsgType.QtDebugMsg: logging.DEBUG, QtMsgType.QtInfoMsg: logging.INFO,
    QtMsgType.QtWarningMsg: logging.WARNING, QtMsgType.QtCriticalMsg: logging.ERROR,
    QtMsgType.QtFatalMsg: logging.CRITICAL,
}
_qt_log = logging.getLogger("qt")
_crash_file: TextIO | None = None


def _qt_message(kind: QtMsgType, context: QMessageLogContext, message: str) -> None:
    _qt_log.log(_QT_LEVELS.get(kind, logging.WARNING), "%s (%s)", message, context.category or "default")


def setup_logging(directory: Path | None = None) -> Path:
    """Send logging to `directory`/medgemma-desktop.log (1 MB x 3) and warnings to stderr; return the log path."""
    global _crash_file
    directory = directory or log_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOG_FILE
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=1_000_000, backupCount=3, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(file_handler)
    root.addHandler(console)
    qInstallMessageHandler(_qt_message)
    _crash_file = (directory / "crash.log").open("a", encoding="utf-8")
    faulthandler.enable(_crash_file)
    return path

