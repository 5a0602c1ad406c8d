"""What the picture on screen shows: which slice, through which window, inverted or not, the value under the
cursor, and the texts a radiology viewer prints in the image's corners.

DICOM frames are re-rendered from their stored measured values (Hounsfield units for CT) every time, never
from the 8-bit picture, so a narrow window shows detail the default one clipped away. Only the screen changes:
what the model gets is fixed by the task mode (`core.imaging`'s encodings).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PySide6.QtGui import QImage

from medgemma_desktop.core.dicom import DicomImage
from medgemma_desktop.core.pixel_spacing import Calibration, calibration
from medgemma_desktop.core.windowing import CT_WINDOW_PRESETS, Window
from medgemma_desktop.ui.pictures import Picture, rgb_to_qimage
from medgemma_desktop.ui.window_level import window_text

DEFAULT_PRESET = "File default"
FULL_RANGE_PRESET = "Full range"
# Identifying fields shown top right, and only while the user shows patient data.
PATIENT_CORNER_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate")


class PictureView:
    """One picture's display state: the slice shown, the window it is shown through, inverted or not."""

    def __init__(self, picture: Picture) -> None:
        self.picture = picture
        self.frames = picture.frames
        self.slice = len(self.frames) // 2 if picture.series is not None else 0
        self.window: Window | None = self.default_window
        self.inverted = False

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
    def image(self) -> DicomImage | None:
        """The DICOM instance of the slice shown (None for a plain picture)."""
        return self.frames[self.slice][0] if self.frames else None

    @property
    def default_window(self) -> Window | None:
        return self.frames[0][0].window if self.windowable else None

    @property
    def presets(self) -> list[tuple[str, Window]]:
        """The windows offered for this picture: its own, then the CT presets for CT, else its full range."""
        default = self.default_window
        if default is None:
            return []
        if self.is_ct:
            return [(DEFAULT_PRESET, default), *((name.capitalize(), w) for name, w in CT_WINDOW_PRESETS.items())]
        low = min(float(np.min(image.values)) for image, _ in self.frames)
        high = max(float(np.max(image.values)) for image, _ in self.frames)
        return [(DEFAULT_PRESET, default), (FULL_RANGE_PRESET, Window((low + high) / 2, max(high - low, 1.0)))]

    @property
    def calibration(self) -> Calibration | None:
        return calibration(self.image.metadata) if self.image is not None else None

    def step(self, delta: int) -> bool:
        """Move `delta` slices, stopping at either end; True when the slice changed."""
        target = min(max(self.slice + delta, 0), max(self.slice_count - 1, 0))
        changed = target != self.slice
        self.slice = target
        return changed

    def render(self) -> QImage:
        if not self.frames:
            image = self.picture.image.copy()
        else:
            dicom, frame = self.frames[self.slice]
            image = rgb_to_qimage(dicom.frame_rgb(frame, self.window))
        if self.inverted:
            image.invertPixels()
        return image

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

    def slice_position(self) -> float | None:
        """The shown slice's position along the slice normal in mm (ImagePositionPatient · normal)."""
        image = self.image
        if image is None or image.position is None or image.orientation is None:
            return None
        normal = np.cross(image.orientation[:3], image.orientation[3:])
        return float(np.dot(image.position, normal))

    def corner_texts(self, show_patient: bool) -> dict[str, str]:
        """Series and slice top left, patient top right (only when shown), window bottom left."""
        image = self.image
        if image is None:
            return {"top_left": self.picture.input.label, "bottom_left": "Inverted" if self.inverted else ""}
        metadata: Mapping[str, str] = image.metadata
        series = self.picture.series.description if self.picture.series is not None else ""
        top_left = [" ".join(part for part in (image.modality, series or metadata.get("SeriesDescription", ""))
                             if part)]
        if "SeriesNumber" in metadata:
            top_left.append(f"Series {metadata['SeriesNumber']}")
        if self.slice_count > 1:
            line = f"{'Slice' if self.is_series else 'Frame'} {self.slice + 1}/{self.slice_count}"
            position = self.slice_position()
            top_left.append(line + (f" · Pos {position:.1f} mm" if position is not None else ""))
        top_right = [image.patient[key] for key in PATIENT_CORNER_KEYWORDS
                     if show_patient and image.patient.get(key)]
        bottom_left = [window_text(self.window)] if self.window is not None else []
        if self.inverted:
            bottom_left.append("Inverted")
        return {"top_left": "\n".join(top_left), "top_right": "\n".join(top_right),
                "bottom_left": "\n".join(bottom_left)}
