"""File > Save as DICOM report…: the open conversation's answers about DICOM images as structured reports (and
presentation states for boxes) in a folder, optionally with de-identified copies of the images.

Writing runs on a background job (de-identifying a CT series copies every slice); a failure stays in the
dialog as one line, a success closes it and says what was written.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QMainWindow,
    QVBoxLayout,
    QWidget,
)

from medgemma_desktop.core.dicom_export import write_conversation_reports, written_summary
from medgemma_desktop.core.dicom_report import WrittenReport
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.store import ConversationStore
from medgemma_desktop.ui.background import BackgroundJobs
from medgemma_desktop.ui.folder_field import FolderField
from medgemma_desktop.ui.hooks import report_unexpected

DEIDENTIFY_TEXT = "De-identify: copy the images without patient data (DICOM PS3.15 Annex E basic profile)"
NOTE = ("One report per question about DICOM images, in the images' study, referring to every image asked about; "
        "boxes also as a presentation state PACS viewers draw. The question and answer are copied as written: "
        "keep names out of them before sharing a de-identified report.")


class DicomReportDialog(QDialog):
    saved = Signal(str)  # the summary line, after the files are written

    def __init__(self, store: ConversationStore, conversation_id: int, folder: Path,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Save as DICOM report")
        self.setAccessibleName("Save as DICOM report")
        self._store, self._conversation_id = store, conversation_id
        self.jobs = BackgroundJobs(self)
        self.folder = FolderField("Report folder", "Choose the folder for the DICOM report")
        self.folder.set_path(str(folder))
        self.deidentify = QCheckBox(DEIDENTIFY_TEXT)
        self.deidentify.setAccessibleName(DEIDENTIFY_TEXT)
        note = QLabel(NOTE)
        note.setWordWrap(True)
        self.error_label = QLabel()
        self.error_label.setObjectName("errorLabel")
        self.error_label.setWordWrap(True)
        self.error_label.setAccessibleName("DICOM report error")
        self.error_label.hide()
        form = QFormLayout()
        form.addRow("Folder:", self.folder)
        form.addRow("", self.deidentify)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.save_button = self.buttons.addButton("Save", QDialogButtonBox.ButtonRole.AcceptRole)
        self.save_button.setAccessibleName("Save DICOM report")
        self.buttons.accepted.connect(self.save)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(self.error_label)
        layout.addWidget(self.buttons)

    def save(self) -> None:
        folder = Path(self.folder.path()).expanduser()
        if not self.folder.path():
            self._failed(UserFacingError("no folder chosen", fix="Choose a folder for the report."))
            return
        store, conversation_id, deidentify = self._store, self._conversation_id, self.deidentify.isChecked()
        self.save_button.setEnabled(False)
        self.error_label.hide()
        self.jobs.run(lambda: write_conversation_reports(store, conversation_id, folder, deidentify=deidentify),
                      lambda result: self._written(folder, *result), self._failed)

    def _written(self, folder: Path, written: list[WrittenReport], left_out: list[str]) -> None:
        self.saved.emit(written_summary(folder, written, left_out))
        self.accept()

    def _failed(self, exc: Exception) -> None:
        if not isinstance(exc, UserFacingError):
            report_unexpected(type(exc), exc, exc.__traceback__)
        self.save_button.setEnabled(True)
        self.error_label.setText(str(exc))
        self.error_label.show()


def open_dicom_report_dialog(window: QMainWindow, store: ConversationStore,
                             conversation_id: int | None) -> DicomReportDialog | None:
    """What File > Save as DICOM report… does in the main window."""
    if conversation_id is None:
        window.statusBar().showMessage("Ask a question about DICOM images first: there is no answer to save.",
                                       10_000)
        return None
    dialog = DicomReportDialog(store, conversation_id, Path.home(), window)
    dialog.saved.connect(lambda text: window.statusBar().showMessage(text, 30_000))
    dialog.finished.connect(dialog.deleteLater)
    dialog.open()
    return dialog
