"""Conversions between PIL images (what the model reads) and QImages (what the screen shows).

Only QImage is used here, never QPixmap: QImage may be built off the UI thread, so the background loader can
do the conversion and the thumbnail of a large picture without blocking the window.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image
from PySide6.QtCore import QBuffer, QIODevice, Qt
from PySide6.QtGui import QImage

from medgemma_desktop.core.dicom import DicomImage, DicomSeries
from medgemma_desktop.core.imaging import ImageInput
from medgemma_desktop.session.inputs import InputItem

THUMBNAIL_SIZE = 96


@dataclass(frozen=True)
class Picture:
    """An input with its screen renderings. For a DICOM series shown as one item, `input` is its middle slice
    (through the default window) and `series` holds every slice; the viewer re-renders from their values."""

    input: ImageInput
    image: QImage
    thumbnail: QImage
    series: DicomSeries | None = None

    @property
    def frames(self) -> tuple[tuple[DicomImage, int], ...]:
        """The (image, frame) pairs the viewer can scroll through, in slice order; () for a plain picture."""
        if self.series is not None:
            return series_frames(self.series)
        if self.input.dicom is not None:
            return tuple((self.input.dicom, frame) for frame in range(self.input.dicom.frame_count))
        return ()


def series_frames(series: DicomSeries) -> tuple[tuple[DicomImage, int], ...]:
    """Every frame of every image of a series, in slice order (as `DicomSeries.volume` stacks them)."""
    return tuple((image, frame) for image in series.images for frame in range(image.frame_count))


def to_qimage(image: Image.Image) -> QImage:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    data = rgb.tobytes()
    # .copy(): the QImage must own its pixels, not borrow the bytes object's buffer.
    return QImage(data, rgb.width, rgb.height, 3 * rgb.width, QImage.Format.Format_RGB888).copy()


def rgb_to_qimage(pixels: npt.NDArray[np.uint8]) -> QImage:
    """An HxWx3 uint8 array (a rendered DICOM frame) as a QImage that owns its pixels."""
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    return QImage(pixels.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()


def render_picture(item: ImageInput, series: DicomSeries | None = None) -> Picture:
    image = to_qimage(item.image)
    thumbnail = image.scaled(THUMBNAIL_SIZE, THUMBNAIL_SIZE, Qt.AspectRatioMode.KeepAspectRatio,
                             Qt.TransformationMode.SmoothTransformation)
    return Picture(item, image, thumbnail, series)


def render_item(item: InputItem) -> Picture:
    """An opened item (a picture, or a series shown by its middle slice) with its screen renderings."""
    return render_picture(item.input, item.series)


def clipboard_input(image: QImage, number: int) -> ImageInput:
    """A pasted picture as an `ImageInput`, hashed by its PNG bytes so that it is stored like a file."""
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    png = bytes(buffer.data().data())
    converted = image.convertToFormat(QImage.Format.Format_RGB888)
    pil = Image.frombuffer("RGB", (converted.width(), converted.height()), bytes(converted.constBits()),
                           "raw", "RGB", converted.bytesPerLine(), 1).copy()
    label = f"pasted image {number}"
    return ImageInput(image=pil, source=Path(label), sha256=hashlib.sha256(png).hexdigest(), label=label,
                      metadata={"width": str(pil.width), "height": str(pil.height)})
