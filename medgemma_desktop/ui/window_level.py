"""Window/level for DICOM pictures: the standard CT presets in a combo box, and right-drag adjustment.

A right-drag works the way PACS viewers do: horizontal movement changes the width (contrast), vertical movement
the level (brightness), both in steps proportional to the width the drag started from, so that the lung window
and the brain window respond alike.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QWidget

from medgemma_desktop.core.windowing import CT_WINDOW_PRESETS, Window

DEFAULT_TEXT = "File default"
DRAG_STEPS = 256  # pixels of drag that change the level (or width) by one whole starting width
MIN_WIDTH = 1.0


def dragged_window(start: Window, dx: float, dy: float) -> Window:
    """The window after dragging (dx, dy) pixels from `start`: right widens, down raises the level."""
    step = max(start.width, MIN_WIDTH) / DRAG_STEPS
    return Window(start.center + dy * step, max(start.width + dx * step, MIN_WIDTH))


def window_text(window: Window) -> str:
    return f"L {window.center:g} · W {window.width:g}"


class WindowPresetBox(QComboBox):
    """The window presets for the picture on screen: the file's own window, and for CT the standard presets.

    A window set by dragging matches no preset: the box then shows "Custom" (its placeholder) until a preset
    is chosen again.
    """

    window_chosen = Signal(object)  # Window

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Window preset")
        self.setToolTip("Window/level for DICOM images (display only; the model gets Google's encoding).\n"
                        "Right-drag on the image: left/right changes the width, up/down the level.")
        self.setPlaceholderText("Custom")
        self.activated.connect(self._on_activated)

    def reset(self, default: Window, ct: bool) -> None:
        """Offer the presets for a new picture, showing its default window as chosen."""
        self.clear()
        self.addItem(DEFAULT_TEXT, default)
        if ct:
            for name, window in CT_WINDOW_PRESETS.items():
                self.addItem(f"{name.capitalize()} ({window_text(window)})", window)
        self.setCurrentIndex(0)

    def show_window(self, window: Window) -> None:
        """Select the preset that matches `window`, or none ("Custom"); emits nothing."""
        self.setCurrentIndex(next((index for index in range(self.count()) if self.itemData(index) == window), -1))

    def _on_activated(self, index: int) -> None:
        self.window_chosen.emit(self.itemData(index))
