"""Light, dark or follow-the-system colours, the text size, and the app's small style sheet (error text, the
disclaimer).

Qt's colour-scheme hint only works where the platform theme supports it, so an explicit light or dark choice
also sets Fusion's palette directly: the user's choice then holds on every platform. Every text colour set here
meets WCAG AA (4.5:1) on the background it is drawn on; the style sheet's colours come from the theme in use,
since one red cannot be readable on both a light and a dark window.
"""

from __future__ import annotations

from importlib import resources

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont, QIcon, QPalette
from PySide6.QtWidgets import QApplication

from medgemma_desktop.core.settings import Theme

_SCHEMES = {"light": Qt.ColorScheme.Light, "dark": Qt.ColorScheme.Dark, "system": Qt.ColorScheme.Unknown}
_Role = QPalette.ColorRole
_DARK = {
    _Role.Window: "#2b2b2b", _Role.WindowText: "#e8e8e8", _Role.Base: "#1e1e1e", _Role.AlternateBase: "#2f2f2f",
    _Role.Text: "#e8e8e8", _Role.Button: "#353535", _Role.ButtonText: "#e8e8e8", _Role.ToolTipBase: "#353535",
    _Role.ToolTipText: "#e8e8e8", _Role.Highlight: "#2f6db5", _Role.HighlightedText: "#ffffff",
    _Role.Link: "#7ab4f5", _Role.LinkVisited: "#c39af5", _Role.PlaceholderText: "#a0a0a0",
    _Role.BrightText: "#ff6b6b",
}
# Fusion's own light palette, except where its text falls below 4.5:1: white on its highlight blue (3.7:1),
# half-transparent black placeholders (4.0:1) and magenta visited links (3.1:1).
_LIGHT = {_Role.Highlight: "#2a6db0", _Role.PlaceholderText: "#6b6b6b", _Role.LinkVisited: "#a1148c"}
# The style sheet's text colours, by how the window looks: error text and the research-use disclaimer.
TEXT_COLOURS = {"light": {"error": "#b71c1c", "disclaimer": "#8a4b00"},
                "dark": {"error": "#ff8a80", "disclaimer": "#ffb74d"}}
TEXT_SIZES = (75, 90, 100, 115, 130, 150, 175, 200)  # percent of the platform's text size
_BASE_SIZE = "medgemmaBasePointSize"  # the platform's font size, kept on the app before the first change


def _resources():
    return resources.files("medgemma_desktop") / "resources"


def app_icon() -> QIcon:
    return QIcon(str(_resources() / "icon.svg"))


def dark_palette() -> QPalette:
    palette = QPalette()
    for role, colour in _DARK.items():
        palette.setColor(role, QColor(colour))
    for role in (_Role.Text, _Role.ButtonText, _Role.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#777777"))
    return palette


def light_palette(standard: QPalette) -> QPalette:
    palette = QPalette(standard)
    for role, colour in _LIGHT.items():
        for group in (QPalette.ColorGroup.Active, QPalette.ColorGroup.Inactive):
            palette.setColor(group, role, QColor(colour))
    return palette


def style_sheet(palette: QPalette) -> str:
    """The app's style sheet with the text colours for a window drawn in `palette`."""
    shade = "dark" if palette.color(_Role.Window).lightness() < 128 else "light"
    text = (_resources() / "style.qss").read_text(encoding="utf-8")
    for name, colour in TEXT_COLOURS[shade].items():
        text = text.replace(f"@{name}@", colour)
    return text


def apply_text_size(app: QApplication, percent: int) -> None:
    """Scale the app's text to `percent` of the platform's size (independent of the screen's scaling)."""
    percent = min(max(percent, TEXT_SIZES[0]), TEXT_SIZES[-1])
    base = app.property(_BASE_SIZE)
    if base is None:
        base = app.font().pointSizeF()
        app.setProperty(_BASE_SIZE, base)
    font = QFont(app.font())
    font.setPointSizeF(base * percent / 100)
    app.setFont(font)


def apply_theme(app: QApplication, theme: Theme, text_size: int = 100) -> None:
    app.setStyle("Fusion")  # the one built-in style that follows the palette on every platform
    app.styleHints().setColorScheme(_SCHEMES[theme])
    style = app.style()
    if theme == "dark":
        app.setPalette(dark_palette())
    elif theme == "light":
        app.setPalette(light_palette(style.standardPalette()))
    else:
        app.setPalette(QPalette())
    apply_text_size(app, text_size)
    app.setStyleSheet(style_sheet(app.palette()))
