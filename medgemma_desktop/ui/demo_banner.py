"""The demo-mode banner: black on yellow above everything, whatever the theme, so nobody mistakes the tiny
random model's output for MedGemma's. Its button leads out of the demo to the real model."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget

from medgemma_desktop.core.demo import BANNER

STYLE = """
QFrame#demoBanner { background: #ffd600; border: 2px solid #000000; }
QFrame#demoBanner QLabel { color: #000000; font-weight: bold; }
"""


class DemoBanner(QFrame):
    leave_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("demoBanner")
        self.setStyleSheet(STYLE)
        self.setAccessibleName("Demo mode")
        self.label = QLabel(BANNER)
        self.label.setWordWrap(True)
        self.label.setAccessibleName("Demo mode warning")
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.leave_button = QPushButton("Use the real model…")
        self.leave_button.setAccessibleName("Leave the demo and use the real model")
        self.leave_button.setToolTip("Load the MedGemma folders from the settings, or choose them")
        self.leave_button.clicked.connect(self.leave_requested)
        layout = QHBoxLayout(self)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.leave_button)
