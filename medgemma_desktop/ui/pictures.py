"""Conversions between PIL images (what the model reads) and QImages (what the screen shows).

Only QImage is used here, never QPixmap: QImage may be built off the UI thread, so the background loader can
do the conversion and the thumbnail of a large picture without blocking the window.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QBuffer, QIODevice, Qt
from PySide6.QtGui import QImage

from medgemma_desktop.core.imaging import ImageInput

THUMBNAIL_SIZE = 96


@dataclass(frozen=True)
class Picture:
    """An input with its screen renderings. A later window/level control re-renders `image` from `input`."""

    input: ImageInput
    image: QImage
    thumbnail: QImage


def to_qimage(image: Image.Image) -> QImage:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    data = rgb.tobytes()
    # .copy(): the QImage must own its pixels, not borrow the bytes object's buffer.
    return QImage(data, rgb.width, rgb.height, 3 * rgb.width, QImage.Format.Format_RGB888).copy()


def render_picture(item: ImageInput) -> Picture:
    image = to_qimage(item.image)
    thumbnail = image.scaled(THUMBNAIL_SIZE, THUMBNAIL_SIZE, Qt.AspectRatioMode.KeepAspectRatio,
                             Qt.TransformationMode.SmoothTransformation)
    return Picture(item, image, thumbnail)


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
