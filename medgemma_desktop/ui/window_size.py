"""The main window's first size: the size it was designed at, shrunk to the screen it opens on.

At 150 % scaling a 1600 x 1000 screen offers about 1067 x 667 logical pixels; a fixed 1280 x 780 window then
opened past the screen's edge with Send out of reach. The frame and title bar are not part of the size Qt sets,
so some room is left for them.
"""

from __future__ import annotations

from PySide6.QtCore import QSize
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QWidget

DESIGN_SIZE = QSize(1280, 780)
FRAME_ROOM = QSize(16, 48)  # window-manager borders and title bar, in logical pixels


def first_window_size(window: QWidget, wanted: QSize = DESIGN_SIZE) -> QSize:
    """`wanted`, or less where the window's screen has less room (never below what its layout needs)."""
    screen = window.screen() or QGuiApplication.primaryScreen()
    if screen is None:
        return wanted
    room = screen.availableGeometry().size() - FRAME_ROOM
    return wanted.boundedTo(room).expandedTo(window.minimumSizeHint())
