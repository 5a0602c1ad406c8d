"""Window/level for DICOM pictures: the presets for the picture's modality in a combo box, and right-drag
adjustment.

A right-drag works the way PACS viewers do: horizontal movement changes the width (contrast), vertical movement
the level (brightness), both in steps proportional to the width the drag started from, so that the lung window
and the brain window respond alike. Windows wider than `WHOLE_NUMBER_WIDTH` are kept and shown in whole numbers
(as Weasis and OHIF show "W 400 L 40"); narrow ones (PET, normalised MR) keep three significant digits.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QWidget

from medgemma_desktop.core.windowing import Window

DRAG_STEPS = 256  # pixels of drag that change the level (or width) by one whole starting width
MIN_WIDTH = 1.0
WHOLE_NUMBER_WIDTH = 20.0


def _rounded(value: float, width: float) -> float:
    return float(round(value)) if width >= WHOLE_NUMBER_WIDTH else float(f"{value:.3g}")


def dragged_window(start: Window, dx: float, dy: float) -> Window:
    """The window after dragging (dx, dy) pixels from `start`: right widens, down raises the level."""
    step = max(start.width, MIN_WIDTH) / DRAG_STEPS
    width = max(start.width + dx * step, MIN_WIDTH)
    return Window(_rounded(start.center + dy * step, width), _rounded(width, width))


def window_text(window: Window) -> str:
    """ "W 400 L 40", the way viewers print it."""
    return f"W {_rounded(window.width, window.width):g} L {_rounded(window.center, window.width):g}"


class WindowPresetBox(QComboBox):
    """The window presets for the picture on screen, numbered as their keys (1 = the file's own window).

    A window set by dragging matches no preset: the box then shows "Custom" (its placeholder) until a preset
    is chosen again.
    """

    window_chosen = Signal(object)  # Window

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Window preset")
        self.setToolTip("Window/level for DICOM images (display only; the model gets Google's encoding).\n"
                        "Keys 1-9 on the image pick a preset; right-drag: left/right changes the width, "
                        "up/down the level.")
        self.setPlaceholderText("Custom")
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)  # no clipped labels
        self.activated.connect(self._on_activated)

    def reset(self, presets: Sequence[tuple[str, Window]]) -> None:
        """Offer a new picture's presets, showing the first (its own window) as chosen."""
        self.clear()
        for number, (name, window) in enumerate(presets, start=1):
            self.addItem(f"{number} {name}: {window_text(window)}", window)
        self.setCurrentIndex(0)
        self.setMinimumWidth(self.sizeHint().width())  # a crowded tool row must not clip the labels

    def choose(self, index: int) -> None:
        """Pick preset `index` (0-based) as if the user had, when there is one."""
        if 0 <= index < self.count():
            self.setCurrentIndex(index)
            self._on_activated(index)

    def show_window(self, window: Window) -> None:
        """Select the preset that matches `window`, or none ("Custom"); emits nothing."""
        self.setCurrentIndex(next((index for index in range(self.count()) if self.itemData(index) == window), -1))

    def _on_activated(self, index: int) -> None:
        self.window_chosen.emit(self.itemData(index))
