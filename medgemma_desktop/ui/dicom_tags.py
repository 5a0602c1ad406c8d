"""A collapsible, searchable list of every DICOM tag of the picture on screen, sequences as branches.

The list is read from the file's header (no pixels) when the file is still there, else it shows the tags the
app kept. Patient data is listed only while "Show patient data" is ticked: what PS3.15 Annex E's basic profile
removes or replaces (names, IDs, dates, places, UIDs, free text) and private tags, except the app's descriptive
tags; and only in the table's cells, never in tooltips, accessible descriptions or log lines, so that a
screenshot of the default view, a screen reader's summary or the log file carry no patient data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLineEdit,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QTreeWidgetItemIterator,
    QVBoxLayout,
    QWidget,
)

from medgemma_desktop.core.deidentify import is_identifying
from medgemma_desktop.core.dicom import DESCRIPTIVE_KEYWORDS
from medgemma_desktop.core.dicom_sources import read_header

MAX_VALUE_CHARS = 200
MAX_VALUE_COLUMN = 360  # pixels: a long value is elided rather than pushing the Tag column away


def hidden_until_asked(element: DataElement) -> bool:
    return is_identifying(element.tag) and element.keyword not in DESCRIPTIVE_KEYWORDS


def _value_text(element: DataElement) -> str:
    if element.VR == "SQ":
        return f"{len(element.value)} item(s)"
    if element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return f"({element.VR}, {len(element.value or b'')} bytes)"
    text = str(element.value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def _tag_text(element: DataElement) -> str:
    return f"({element.tag.group:04X},{element.tag.element:04X})"


class DicomTagsPanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("DICOM tags")
        self._metadata: Mapping[str, str] = {}
        self._patient: Mapping[str, str] = {}
        self._header: Dataset | None = None
        self._source: Path | None = None

        self.toggle = QToolButton()
        self.toggle.setText("DICOM tags")
        self.toggle.setAccessibleName("Show DICOM tags")
        self.toggle.setToolTip("Show or hide all of the image's DICOM tags (T on the image)")
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.toggled.connect(self._set_expanded)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search tags")
        self.search.setAccessibleName("Search DICOM tags")
        self.search.textChanged.connect(self._filter)
        self.show_patient = QCheckBox("Show patient data")
        self.show_patient.setAccessibleName("Show patient data")
        self.show_patient.setToolTip("List identifying tags (names, IDs, dates, places, UIDs). Off by default.")
        self.show_patient.toggled.connect(self._fill)
        self.table = QTreeWidget()
        self.table.setAccessibleName("DICOM tag values")
        self.table.setHeaderLabels(["Name", "Value", "Tag"])
        self.table.header().setAccessibleName("DICOM tag columns")
        self.table.setMaximumHeight(200)

        header = QHBoxLayout()
        header.setContentsMargins(0, 0, 0, 0)
        header.addWidget(self.toggle, 0, Qt.AlignmentFlag.AlignLeft)
        header.addWidget(self.search, 1)
        header.addWidget(self.show_patient)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(header)
        layout.addWidget(self.table)
        self._set_expanded(False)

    def show_tags(self, metadata: Mapping[str, str], patient: Mapping[str, str], source: Path | None = None) -> None:
        """Show a new picture's tags; the patient data stays hidden until the user ticks the box again."""
        self._metadata, self._patient = metadata, patient
        if source != self._source:
            self._source, self._header = source, None
        self.show_patient.setChecked(False)
        self._fill()

    def _fill(self) -> None:
        self.table.clear()
        if not self.table.isHidden() and self._header is None and self._source is not None:
            self._header = read_header(self._source)  # read only once the list is looked at
        if self._header is not None:
            self.table.addTopLevelItems(self._items(self._header))
        else:
            rows = list(self._metadata.items())
            if self.show_patient.isChecked():
                rows += list(self._patient.items())
            self.table.addTopLevelItems([QTreeWidgetItem([keyword, value]) for keyword, value in rows])
        self.table.resizeColumnToContents(0)
        self.table.resizeColumnToContents(1)
        self.table.setColumnWidth(1, min(self.table.columnWidth(1), MAX_VALUE_COLUMN))
        self._filter(self.search.text())

    def _items(self, dataset: Dataset) -> list[QTreeWidgetItem]:
        shown = self.show_patient.isChecked()
        items = []
        for element in dataset:
            if not shown and hidden_until_asked(element):
                continue
            item = QTreeWidgetItem([element.keyword or element.name, _value_text(element), _tag_text(element)])
            if element.VR == "SQ":
                for number, child in enumerate(element.value, start=1):
                    branch = QTreeWidgetItem([f"Item {number}", "", ""])
                    branch.addChildren(self._items(child))
                    item.addChild(branch)
            items.append(item)
        return items

    def _filter(self, text: str) -> None:
        """Show the rows whose name, value or tag contain `text` (any case), with the branches leading to them."""
        needle = text.strip().lower()
        iterator = QTreeWidgetItemIterator(self.table)
        every: list[QTreeWidgetItem] = []
        while iterator.value():
            every.append(iterator.value())
            iterator += 1
        for item in every:
            item.setHidden(bool(needle))
        for item in every:
            if needle and any(needle in item.text(column).lower() for column in range(3)):
                for node in self._with_parents(item):
                    node.setHidden(False)

    @staticmethod
    def _with_parents(item: QTreeWidgetItem) -> Iterable[QTreeWidgetItem]:
        node: QTreeWidgetItem | None = item
        while node is not None:
            yield node
            node = node.parent()

    def rows(self) -> dict[str, str]:
        """Name -> value of the visible top-level rows (what a reader sees)."""
        return {item.text(0): item.text(1) for index in range(self.table.topLevelItemCount())
                if not (item := self.table.topLevelItem(index)).isHidden()}

    def _set_expanded(self, expanded: bool) -> None:
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.table.setVisible(expanded)
        self.search.setVisible(expanded)
        self.show_patient.setVisible(expanded)
        if expanded:
            self._fill()
