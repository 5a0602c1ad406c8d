"""Export a conversation to Markdown, JSON or PDF, with patient data left out unless the user ticks the box.

Markdown and JSON come straight from `core.export`; PDF is the core's HTML export (written to a temporary
folder with its images) rendered by Qt's own QTextDocument into a QPdfWriter, so no browser engine is needed.
`write_export` runs on a background job: a long conversation with a CT series takes a moment to write.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QMarginsF, QUrl
from PySide6.QtGui import QImage, QPageLayout, QPageSize, QPdfWriter, QTextDocument
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from medgemma_desktop.core.export import ExportError, export_file_name, export_html, export_json, export_markdown
from medgemma_desktop.core.store import ConversationStore

FORMATS = {"markdown": ("Markdown (.md)", ".md"), "json": ("JSON, everything (.json)", ".json"),
           "pdf": ("PDF (.pdf)", ".pdf")}
PAGE_MARGIN_MM = 15
PATIENT_DATA_TEXT = "Include patient data (DICOM identifying tags)"


@dataclass(frozen=True)
class ExportChoice:
    path: Path
    format: str  # a key of FORMATS
    include_patient_data: bool
    demo: bool = False  # asked in demo mode: every format says so


def pdf_document(html: Path, writer: QPdfWriter) -> QTextDocument:
    """The HTML export laid out on the writer's pages. Each image is handed to the document under the name the
    HTML uses (QTextDocument read none of the relative files and drew a 16x16 broken-image icon for each). It is
    laid out here on the printer's page width: left to `print_`, tables with long words (hashes) ran off the
    right edge."""
    document = QTextDocument()
    for image in (html.parent / f"{html.stem}_images").glob("*.png"):
        document.addResource(QTextDocument.ResourceType.ImageResource, QUrl(f"{image.parent.name}/{image.name}"),
                             QImage(str(image)))
    document.documentLayout().setPaintDevice(writer)
    document.setPageSize(writer.pageLayout().paintRectPixels(writer.resolution()).size().toSizeF())
    document.setHtml(html.read_text(encoding="utf-8"))
    return document


def write_pdf(store: ConversationStore, conversation_id: int, path: Path, include_patient_data: bool,
              demo: bool = False) -> Path:
    with tempfile.TemporaryDirectory(prefix="medgemma-export-") as scratch:
        html = export_html(store, conversation_id, Path(scratch) / "conversation.html",
                           include_patient_data=include_patient_data, demo=demo)
        writer = QPdfWriter(str(path))
        writer.setPageSize(QPageSize(QPageSize.PageSizeId.A4))
        writer.setPageMargins(QMarginsF(*(PAGE_MARGIN_MM,) * 4), QPageLayout.Unit.Millimeter)
        writer.setTitle(store.conversation(conversation_id).title or "Conversation")
        writer.setCreator("MedGemma Desktop")
        pdf_document(html, writer).print_(writer)
        del writer  # the file is complete once the writer is gone
    if not path.is_file() or path.stat().st_size == 0:
        raise ExportError("the PDF could not be written", path=path, fix="Choose another folder.")
    return path


def write_export(store: ConversationStore, conversation_id: int, choice: ExportChoice) -> Path:
    """Write the export the user chose; raises `ExportError` with a one-line reason."""
    if choice.format == "markdown":
        return export_markdown(store, conversation_id, choice.path, include_patient_data=choice.include_patient_data,
                               demo=choice.demo)
    if choice.format == "json":
        return export_json(store, conversation_id, choice.path, include_patient_data=choice.include_patient_data,
                           demo=choice.demo)
    return write_pdf(store, conversation_id, choice.path, choice.include_patient_data, choice.demo)


class ExportDialog(QDialog):
    def __init__(self, title: str, folder: Path, parent: QWidget | None = None, demo: bool = False) -> None:
        super().__init__(parent)
        self.demo = demo
        self.setWindowTitle("Export conversation")
        self.setAccessibleName("Export conversation")
        self.format = QComboBox()
        self.format.setAccessibleName("Export format")
        for key, (label, _suffix) in FORMATS.items():
            self.format.addItem(label, key)
        self.path_edit = QLineEdit(str(folder / f"{export_file_name(title)}.md"))
        self.path_edit.setAccessibleName("Export file")
        self.browse_button = QPushButton("Browse…")
        self.browse_button.setAccessibleName("Browse for the export file")
        self.browse_button.clicked.connect(self.browse)
        self.patient_data = QCheckBox(PATIENT_DATA_TEXT)
        self.patient_data.setAccessibleName(PATIENT_DATA_TEXT)
        self.patient_data.setChecked(False)
        self.patient_data.setToolTip("Off: names, IDs, dates of birth and original file paths are left out.")
        note = QLabel("Images are written beside Markdown and JSON exports, in a folder named after the file."
                      + ("\nDemo mode: the export is marked as the demo's." if demo else ""))
        note.setWordWrap(True)
        self.format.currentIndexChanged.connect(self._match_suffix)

        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit, 1)
        path_row.addWidget(self.browse_button)
        form = QFormLayout()
        form.addRow("Format:", self.format)
        form.addRow("File:", path_row)
        form.addRow("", self.patient_data)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.export_button = self.buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        self.export_button.setAccessibleName("Export")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(self.buttons)

    def choice(self) -> ExportChoice:
        return ExportChoice(Path(self.path_edit.text().strip()).expanduser(), self.format.currentData(),
                            self.patient_data.isChecked(), self.demo)

    def browse(self) -> None:
        label, suffix = FORMATS[self.format.currentData()]
        chosen, _ = QFileDialog.getSaveFileName(self, "Export conversation", self.path_edit.text(),
                                                f"{label.split(' (')[0]} (*{suffix})")
        if chosen:
            self.path_edit.setText(chosen)
            self._match_suffix()

    def _match_suffix(self) -> None:
        suffix = FORMATS[self.format.currentData()][1]
        path = Path(self.path_edit.text().strip() or "conversation")
        self.path_edit.setText(str(path.with_suffix(suffix)))
