"""Light, dark or follow-the-system colours: Fusion style plus Qt's colour-scheme hint, and the app's small
style sheet (error text, the disclaimer) from the package resources."""

from __future__ import annotations

from importlib import resources

from PySide6.QtCore import Qt
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from medgemma_desktop.core.settings import Theme

_SCHEMES = {"light": Qt.ColorScheme.Light, "dark": Qt.ColorScheme.Dark, "system": Qt.ColorScheme.Unknown}


def resource_path(name: str) -> str:
    return str(resources.files("medgemma_desktop") / "resources" / name)


def app_icon() -> QIcon:
    return QIcon(resource_path("icon.svg"))


def apply_theme(app: QApplication, theme: Theme) -> None:
    app.setStyle("Fusion")  # the one built-in style that follows the colour scheme on every platform
    app.styleHints().setColorScheme(_SCHEMES[theme])
    app.setStyleSheet((resources.files("medgemma_desktop") / "resources" / "style.qss").read_text(encoding="utf-8"))
