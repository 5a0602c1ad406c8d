"""Light, dark or follow-the-system colours, and the app's small style sheet (error text, the disclaimer).

Qt's colour-scheme hint only works where the platform theme supports it, so an explicit light or dark choice
also sets Fusion's palette directly: the user's choice then holds on every platform.
"""

from __future__ import annotations

from importlib import resources

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QIcon, QPalette
from PySide6.QtWidgets import QApplication

from medgemma_desktop.core.settings import Theme

_SCHEMES = {"light": Qt.ColorScheme.Light, "dark": Qt.ColorScheme.Dark, "system": Qt.ColorScheme.Unknown}
_DARK = {
    QPalette.ColorRole.Window: "#2b2b2b", QPalette.ColorRole.WindowText: "#e8e8e8",
    QPalette.ColorRole.Base: "#1e1e1e", QPalette.ColorRole.AlternateBase: "#2f2f2f",
    QPalette.ColorRole.Text: "#e8e8e8", QPalette.ColorRole.Button: "#353535",
    QPalette.ColorRole.ButtonText: "#e8e8e8", QPalette.ColorRole.ToolTipBase: "#353535",
    QPalette.ColorRole.ToolTipText: "#e8e8e8", QPalette.ColorRole.Highlight: "#2f6db5",
    QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.Link: "#7ab4f5",
    QPalette.ColorRole.PlaceholderText: "#8a8a8a", QPalette.ColorRole.BrightText: "#ff6b6b",
}


def _resources():
    return resources.files("medgemma_desktop") / "resources"


def app_icon() -> QIcon:
    return QIcon(str(_resources() / "icon.svg"))


def dark_palette() -> QPalette:
    palette = QPalette()
    for role, colour in _DARK.items():
        palette.setColor(role, QColor(colour))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#777777"))
    return palette


def apply_theme(app: QApplication, theme: Theme) -> None:
    app.setStyle("Fusion")  # the one built-in style that follows the palette on every platform
    app.styleHints().setColorScheme(_SCHEMES[theme])
    style = app.style()
    if theme == "dark":
        app.setPalette(dark_palette())
    elif theme == "light":
        app.setPalette(style.standardPalette())
    else:
        app.setPalette(QPalette())
    app.setStyleSheet((_resources() / "style.qss").read_text(encoding="utf-8"))
