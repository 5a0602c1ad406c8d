"""The boxes of an anatomy-localization answer, drawn as labelled rectangles over the picture they belong to.

The model saw the picture padded to square; `FoundBoxes` keeps that padding, so its rectangles land on the
original picture's pixels (`core.boxes.box_to_pixels`), which are the coordinates of the viewer's pixmap item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import QRectF
from PySide6.QtGui import QBrush, QColor, QPen
from PySide6.QtWidgets import QGraphicsItem, QGraphicsItemGroup, QGraphicsRectItem, QGraphicsSimpleTextItem

from medgemma_desktop.core.boxes import Box, PixelBox, box_to_pixels, boxes_to_json
from medgemma_desktop.core.export import DISCLAIMER
from medgemma_desktop.core.imaging import PaddingInfo

BOX_COLOUR = QColor(255, 196, 0)


@dataclass(frozen=True)
class FoundBoxes:
    """Boxes parsed from one answer, with what is needed to place them on the original picture."""

    boxes: tuple[Box, ...]
    image_size: tuple[int, int]  # width, height of the original picture
    padding: PaddingInfo | None

    def pixel_boxes(self) -> list[PixelBox]:
        return [box_to_pixels(box, self.image_size, self.padding) for box in self.boxes]

    def to_json(self) -> str:
        return boxes_to_json(self.boxes, self.image_size, self.padding, disclaimer=DISCLAIMER)


class BoxOverlay(QGraphicsItemGroup):
    """Child of the picture's pixmap item, so that its coordinates are the picture's pixels."""

    def __init__(self, parent: QGraphicsItem | None = None) -> None:
        super().__init__(parent)
        self.setZValue(1)
        self.rects: list[QGraphicsRectItem] = []

    def set_boxes(self, boxes: Sequence[PixelBox]) -> None:
        for item in self.childItems():
            self.removeFromGroup(item)
            if item.scene() is not None:
                item.scene().removeItem(item)
        self.rects = []
        pen = QPen(BOX_COLOUR, 2)
        pen.setCosmetic(True)  # two screen pixels wide at any zoom
        for box in boxes:
            rect = QGraphicsRectItem(QRectF(box.left, box.top, box.right - box.left, box.bottom - box.top))
            rect.setPen(pen)
            rect.setToolTip(box.label)
            self.addToGroup(rect)
            self.rects.append(rect)
            if box.label:
                label = QGraphicsSimpleTextItem(box.label)
                font = label.font()
                font.setBold(True)
                label.setFont(font)
                label.setBrush(QBrush(BOX_COLOUR))
                label.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)  # readable at any zoom
                label.setPos(box.left, box.top)
                self.addToGroup(label)
