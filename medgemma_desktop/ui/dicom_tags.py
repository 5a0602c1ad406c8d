"""A collapsible panel of the key DICOM tags of the picture on screen.

Identifying tags (`DicomImage.patient`) are listed only while "Show patient data" is ticked, and only in the
table's cells: never in tooltips, accessible descriptions or log lines, so that a screenshot of the default view,
a screen reader's summary or the log file carry no patient data.
"""

from __future__ import annotations

from collections.abc import Mapping

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QToolButton, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget


class DicomTagsPanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("DICOM tags")
        self._metadata: Mapping[str, str] = {}
        self._patient: Mapping[str, str] = {}

        self.toggle = QToolButton()
        self.toggle.setText("DICOM tags")
        self.toggle.setAccessibleName("Show DICOM tags")
        self.toggle.setToolTip("Show or hide the image's DICOM tags")
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.toggled.connect(self._set_expanded)
        self.show_patient = QCheckBox("Show patient data")
        self.show_patient.setAccessibleName("Show patient data")
        self.show_patient.setToolTip("List identifying tags (names, IDs, dates, places). Off by default.")
        self.show_patient.toggled.connect(self._fill)
        self.table = QTreeWidget()
        self.table.setAccessibleName("DICOM tag values")
        self.table.setHeaderLabels(["Tag", "Value"])
        self.table.setRootIsDecorated(False)
        self.table.header().setAccessibleName("DICOM tag columns")
        self.table.setMaximumHeight(160)

        header = QHBoxLayout()
        header.setContentsMargins(0, 0, 0, 0)
        header.addWidget(self.toggle)
        header.addStretch(1)
        header.addWidget(self.show_patient)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(header)
        layout.addWidget(self.table)
        self._set_expanded(False)

    def show_tags(self, metadata: Mapping[str, str], patient: Mapping[str, str]) -> None:
        """Show a new picture's tags; the patient data stays hidden until the user ticks the box again."""
        self._metadata, self._patient = metadata, patient
        self.show_patient.setChecked(False)
        self._fill()

    def _fill(self) -> None:
        self.table.clear()
        rows = list(self._metadata.items())
        if self.show_patient.isChecked():
            rows += list(self._patient.items())
        self.table.addTopLevelItems([QTreeWidgetItem([keyword, value]) for keyword, value in rows])
        self.table.resizeColumnToContents(0)

    def _set_expanded(self, expanded: bool) -> None:
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.table.setVisible(expanded)
        self.show_patient.setVisible(expanded)
