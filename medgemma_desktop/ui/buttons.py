"""Push buttons as the app makes them: a tooltip that says what it does and the name screen readers announce."""

from __future__ import annotations

from PySide6.QtWidgets import QPushButton


def labelled_button(text: str, tip: str) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tip)
    button.setAccessibleName(text)
    return button
