"""The conversation's images as a Qt list model, which the next question reads, and the thumbnail strip that
shows it.

Images already sent with an earlier question stay listed (marked "sent") because the conversation's history
still holds them; only images not yet sent can be removed from the next question. One image can be marked
"prior": the older study of a longitudinal comparison, sent first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QAbstractListModel, QEvent, QModelIndex, QPersistentModelIndex, QSize, Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QListView, QWidget

from medgemma_desktop.core.imaging import ImageInput
from medgemma_desktop.ui.pictures import THUMBNAIL_SIZE, Picture

ModelIndex = QModelIndex | QPersistentModelIndex
PICTURE_ROLE = Qt.ItemDataRole.UserRole + 1
LABEL_LINES = 2  # a thumbnail's label wraps onto two lines, then is cut short in the middle (tooltip: all of it)
CELL_MARGIN = 8


@dataclass
class _Entry:
    picture: Picture
    sent: bool = False
    prior: bool = False


class ImageListModel(QAbstractListModel):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._entries: list[_Entry] = []

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008 (Qt's signature)
        return 0 if parent.isValid() else len(self._entries)

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._entries):
            return None
        entry = self._entries[index.row()]
        item = entry.picture.input
        if role == Qt.ItemDataRole.DisplayRole:
            marks = [mark for mark, on in (("prior", entry.prior), ("sent", entry.sent)) if on]
            return f"{item.label} ({', '.join(marks)})" if marks else item.label
        if role == Qt.ItemDataRole.DecorationRole:
            return QPixmap.fromImage(entry.picture.thumbnail)
        if role == Qt.ItemDataRole.ToolTipRole:
            state = "sent with an earlier question" if entry.sent else "goes with the next question"
            return f"{item.source}\n{item.image.width} x {item.image.height} px, {state}"
        if role == PICTURE_ROLE:
            return entry.picture
        return None

    def add(self, pictures: list[Picture], sent: bool = False) -> None:
        """Add pictures for the next question, or (`sent`) ones a reopened conversation already holds."""
        if not pictures:
            return
        start = len(self._entries)
        self.beginInsertRows(QModelIndex(), start, start + len(pictures) - 1)
        self._entries.extend(_Entry(picture, sent) for picture in pictures)
        self.endInsertRows()

    def picture(self, row: int) -> Picture:
        return self._entries[row].picture

    def is_sent(self, row: int) -> bool:
        return self._entries[row].sent

    def is_prior(self, row: int) -> bool:
        return self._entries[row].prior

    def set_prior(self, row: int, prior: bool) -> None:
        """Mark one image as the prior study (unmarking any other), or unmark it."""
        for index, entry in enumerate(self._entries):
            entry.prior = prior and index == row
        self.dataChanged.emit(self.index(0), self.index(len(self._entries) - 1))

    def prior(self) -> Picture | None:
        return next((entry.picture for entry in self._entries if entry.prior), None)

    def remove(self, row: int) -> None:
        """Take a not-yet-sent image off the next question."""
        if self._entries[row].sent:
            raise ValueError("an image already sent stays in the conversation")
        self.beginRemoveRows(QModelIndex(), row, row)
        del self._entries[row]
        self.endRemoveRows()

    def pending_pictures(self) -> list[Picture]:
        """The pictures (and series) the next question carries, in the order they were added."""
        return [entry.picture for entry in self._entries if not entry.sent]

    def pending(self) -> list[ImageInput]:
        return [picture.input for picture in self.pending_pictures()]

    def mark_sent(self, pictures: list[Picture]) -> None:
        """The question just sent carried these pictures; others wait for a later question."""
        for entry in self._entries:
            entry.sent = entry.sent or any(entry.picture is picture for picture in pictures)
        if self._entries:
            self.dataChanged.emit(self.index(0), self.index(len(self._entries) - 1))

    def clear(self) -> None:
        self.beginResetModel()
        self._entries.clear()
        self.endResetModel()


class ThumbnailStrip(QListView):
    """One row of thumbnails, each in a cell of its own: labels wrap onto two lines and are elided past that,
    never drawn over their neighbours (the full label is in the tooltip). The cells follow the text size."""

    def __init__(self, model: ImageListModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Image thumbnails")
        self.setModel(model)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListView.Movement.Static)
        self.setWordWrap(True)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.setUniformItemSizes(True)
        self.setIconSize(QSize(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        self._fit_cells()

    def _fit_cells(self) -> None:
        line = self.fontMetrics().lineSpacing()
        cell = QSize(THUMBNAIL_SIZE + 4 * line, THUMBNAIL_SIZE + LABEL_LINES * line + CELL_MARGIN)
        self.setGridSize(cell)
        scroll = self.horizontalScrollBar().sizeHint().height()
        self.setFixedHeight(cell.height() + scroll + 2 * self.frameWidth() + CELL_MARGIN)

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.FontChange:
            self._fit_cells()
