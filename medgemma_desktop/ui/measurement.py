"""A distance measured on the picture: a line between two pixel positions with its length beside it.

Like `box_overlay`, a child of the picture's pixmap item, so it is drawn in the picture's pixels and follows
zoom, pan, rotation and flips; the label ignores those transformations so it stays upright and readable.
"""

from __future__ import annotations

from PySide6.QtCore import QLineF, QPointF
from PySide6.QtGui import QBrush, QColor, QPen
from PySide6.QtWidgets import QGraphicsItem, QGraphicsItemGroup, QGraphicsLineItem, QGraphicsSimpleTextItem

LINE_COLOUR = QColor(0, 220, 255)


class MeasurementOverlay(QGraphicsItemGroup):
    def __init__(self, parent: QGraphicsItem | None = None) -> None:
        super().__init__(parent)
        self.setZValue(2)
        pen = QPen(LINE_COLOUR, 2)
        pen.setCosmetic(True)  # two screen pixels wide at any zoom
        self.line = QGraphicsLineItem()
        self.line.setPen(pen)
        self.label = QGraphicsSimpleTextItem()
        font = self.label.font()
        font.setBold(True)
        self.label.setFont(font)
        self.label.setBrush(QBrush(LINE_COLOUR))
        self.label.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
        self.addToGroup(self.line)
        self.addToGroup(self.label)
        self.clear()

    @property
    def text(self) -> str:
        return self.label.text() if self.isVisible() else ""

    def show_line(self, start: QPointF, end: QPointF, text: str) -> None:
        self.line.setLine(QLineF(start, end))
        self.label.setText(text)
        self.label.setPos(end)
        self.setVisible(True)

    def clear(self) -> None:
        self.setVisible(False)
        self.label.setText("")
