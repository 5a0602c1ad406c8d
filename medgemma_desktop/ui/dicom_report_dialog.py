"""File > Save as DICOM report…: the conversation on screen, its answers about DICOM images as structured reports
(and presentation states for boxes) in a folder, optionally with de-identified copies of the images. It reads the
session's exchanges, not the history: the history keeps the images' files and UIDs only by the user's choice.

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

from medgemma_desktop.core.dicom_export import (
    ReportRequest,
    answer_to_report,
    image_inputs,
    write_reports,
    written_summary,
)
from medgemma_desktop.core.dicom_report import WrittenReport
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.session.conversation import Exchange, Session
from medgemma_desktop.ui.background import BackgroundJobs
from medgemma_desktop.ui.folder_field import FolderField
from medgemma_desktop.ui.hooks import report_unexpected

DEIDENTIFY_TEXT = "De-identify: copy the images without patient data (DICOM PS3.15 Annex E basic profile)"
NOTE = ("One report per question about DICOM images, in the images' study, referring to every image asked about; "
        "boxes also as a presentation state PACS viewers draw. The question and answer are copied as written: "
        "keep names out of them before sharing a de-identified report.")


class DicomReportDialog(QDialog):
    saved = Signal(str)  # the summary line, after the files are written

    def __init__(self, requests: list[ReportRequest], folder: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Save as DICOM report")
        self.setAccessibleName("Save as DICOM report")
        self._requests = requests
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
        requests, deidentify = self._requests, self.deidentify.isChecked()
        self.save_button.setEnabled(False)
        self.error_label.hide()
        self.jobs.run(lambda: write_reports(requests, folder, deidentify=deidentify),
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


def report_request(number: int, exchange: Exchange) -> ReportRequest:
    """What the window knows of one exchange, as a report to write (its images as they came in, with their files
    and UIDs while the question was asked in this window or the history kept patient details)."""
    if exchange.model is None or not exchange.answer:
        return UserFacingError(f"question {number} has no answer to report")
    question = exchange.question or exchange.mode.default_question
    report = answer_to_report(question, exchange.answer, exchange.mode.value, exchange.model, exchange.adapter,
                              complete=not exchange.error)
    return report, image_inputs(exchange.images)


def open_dicom_report_dialog(window: QMainWindow, session: Session) -> DicomReportDialog | None:
    """What File > Save as DICOM report… does in the main window, for the conversation on screen."""
    if not session.exchanges:
        window.statusBar().showMessage("Ask a question about DICOM images first: there is no answer to save.",
                                       10_000)
        return None
    requests = [report_request(number, exchange) for number, exchange in enumerate(session.exchanges, start=1)]
    dialog = DicomReportDialog(requests, Path.home(), window)
    dialog.saved.connect(lambda text: window.statusBar().showMessage(text, 30_000))
    dialog.finished.connect(dialog.deleteLater)
    dialog.open()
    return dialog
