"""What the picture on screen shows: which slice, through which window, and the value under the cursor.

DICOM frames are re-rendered from their stored measured values (Hounsfield units for CT) every time, never
from the 8-bit picture, so a narrow window shows detail the default one clipped away. Only the screen changes:
what the model gets is fixed by the task mode (`core.imaging`'s encodings).
"""

from __future__ import annotations

from PySide6.QtGui import QImage

from medgemma_desktop.core.windowing import Window
from medgemma_desktop.ui.pictures import Picture, rgb_to_qimage


class PictureView:
    """One picture's display state: the slice shown and the window it is shown through."""

    def __init__(self, picture: Picture) -> None:
        self.picture = picture
        self.frames = picture.frames
        self.slice = len(self.frames) // 2 if picture.series is not None else 0
        self.window: Window | None = self.default_window

    @property
    def slice_count(self) -> int:
        return len(self.frames)

    @property
    def is_series(self) -> bool:
        return self.picture.series is not None

    @property
    def windowable(self) -> bool:
        """Grayscale DICOM: measured values that a window maps to grey levels."""
        return bool(self.frames) and not self.frames[0][0].is_color

    @property
    def is_ct(self) -> bool:
        return bool(self.frames) and self.frames[0][0].modality == "CT"

    @property
    def default_window(self) -> Window | None:
        return self.frames[0][0].window if self.windowable else None

    def step(self, delta: int) -> bool:
        """Move `delta` slices, stopping at either end; True when the slice changed."""
        target = min(max(self.slice + delta, 0), max(self.slice_count - 1, 0))
        changed = target != self.slice
        self.slice = target
        return changed

    def render(self) -> QImage:
        if not self.frames:
            return self.picture.image
        image, frame = self.frames[self.slice]
        return rgb_to_qimage(image.frame_rgb(frame, self.window))

    def value_at(self, x: int, y: int) -> str | None:
        """The measured value at pixel (x, y) as a reader wants it ("-998 HU"), None outside the picture."""
        if self.frames:
            image, frame = self.frames[self.slice]
            values = image.values[frame]
            if not (0 <= y < values.shape[0] and 0 <= x < values.shape[1]):
                return None
            if image.is_color:
                red, green, blue = (int(v) for v in values[y, x])
                return f"RGB {red}, {green}, {blue}"
            value = float(values[y, x])
            return f"{value:.0f} HU" if image.modality == "CT" else f"value {value:g}"
        pixels = self.picture.input.image
        if not (0 <= x < pixels.width and 0 <= y < pixels.height):
            return None
        red, green, blue = pixels.getpixel((x, y))  # type: ignore[misc]
        return f"RGB {red}, {green}, {blue}"
