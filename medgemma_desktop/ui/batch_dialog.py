"""File > Batch…: one question over many images, DICOM files and series, with a progress bar, the rows as they are
written, Cancel (after the item being answered) and "Open results". The work is `session.batch.run_batch` on a
thread of its own; the results file is the same as `medgemma-desktop batch` writes (and continues)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QObject, QThread, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from medgemma_desktop.core.engine import GenerationSettings
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.prompts import TaskMode
from medgemma_desktop.session.backend import Backend
from medgemma_desktop.session.batch import AUTO, BatchSummary, BatchTask, batch_units, run_batch, unit_finished
from medgemma_desktop.session.batch_results import ResultsFile, Row
from medgemma_desktop.ui.worker import ModelHost

COLUMNS = ("input", "label", "answer", "error")


class BatchRunner(QObject):
    """Runs one batch on its thread; signals reach the dialog queued."""

    opened = Signal(int)  # rows the unit just read will add
    row_written = Signal(object)  # Row
    done = Signal(object)  # BatchSummary
    failed = Signal(str)

    def __init__(self, backend: Backend, units: Sequence[Path], task: BatchTask, out: Path,
                 stop: threading.Event) -> None:
        super().__init__()
        self._backend, self._units, self._task, self._out, self._stop = backend, units, task, out, stop

    @Slot()
    def run(self) -> None:
        try:
            with ResultsFile.open(self._out, include_patient=self._task.include_patient) as results:
                summary = run_batch(self._units, self._backend, self._task, results, self._stop,
                                    on_opened=lambda unit, rows: self.opened.emit(rows), on_row=self.row_written.emit)
        except UserFacingError as exc:
            self.failed.emit(str(exc))
            return
        self.done.emit(summary)


def open_batch_dialog(window: QMainWindow, host: ModelHost, settings: GenerationSettings) -> BatchDialog | None:
    """What File > Batch… does in the main window: the dialog on the loaded model, or one line saying why not."""
    backend = host.idle_backend
    if backend is None:
        window.statusBar().showMessage("Load the model, and let the answer being written finish, before a batch.",
                                       10_000)
        return None
    dialog = BatchDialog(backend, settings, window)
    dialog.finished.connect(dialog.deleteLater)
    dialog.open()
    return dialog


class BatchDialog(QDialog):
    """Choose inputs, a task and a results file; Start runs the batch with `backend` (the window must not
    generate meanwhile: the dialog is modal)."""

    def __init__(self, backend: Backend, settings: GenerationSettings, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Batch")
        self.setModal(True)
        self.resize(820, 560)
        self._backend, self._settings = backend, settings
        self._thread: QThread | None = None
        self._runner: BatchRunner | None = None
        self._stop = threading.Event()
        self.summary: BatchSummary | None = None

        self.inputs = QListWidget()
        add_files, add_folder = QPushButton("Add files…"), QPushButton("Add folder…")
        add_files.clicked.connect(self._choose_files)
        add_folder.clicked.connect(self._choose_folder)
        self.task = QComboBox()
        self.task.addItem("Auto: a series in its series mode, an image described", AUTO)
        for mode in TaskMode:
            if mode.accepts(1):
                self.task.addItem(mode.title, mode.value)
        self.question = QLineEdit()
        self.question.setPlaceholderText("the task's own question")
        self.out = QLineEdit()
        self.out.setPlaceholderText("results.jsonl or results.csv (an existing file is continued)")
        choose_out = QPushButton("Choose…")
        choose_out.clicked.connect(self._choose_out)
        self.include_patient = QCheckBox("Include patient data (DICOM identifying tags)")
        self.progress = QProgressBar()
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([name.title() for name in COLUMNS])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.start_button, self.cancel_button = QPushButton("Start"), QPushButton("Cancel")
        self.open_button, close_button = QPushButton("Open results"), QPushButton("Close")
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.open_button.clicked.connect(self.open_results)
        close_button.clicked.connect(self.close)
        self.cancel_button.setEnabled(False)
        self.open_button.setEnabled(False)

        form = QFormLayout()
        input_buttons = QHBoxLayout()
        input_buttons.addWidget(add_files)
        input_buttons.addWidget(add_folder)
        form.addRow("Inputs", self.inputs)
        form.addRow("", input_buttons)
        form.addRow("Task", self.task)
        form.addRow("Question", self.question)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out)
        out_row.addWidget(choose_out)
        form.addRow("Results", out_row)
        form.addRow("", self.include_patient)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.cancel_button, self.open_button):
            buttons.addWidget(button)
        buttons.addStretch()
        buttons.addWidget(close_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.table, stretch=1)
        layout.addLayout(buttons)

    # Choosing ------------------------------------------------------------------------------------------------

    def add_inputs(self, paths: Sequence[Path | str]) -> None:
        for path in paths:
            self.inputs.addItem(str(path))

    def _choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Images and DICOM files")
        self.add_inputs(files)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "A folder of images, series or studies")
        if folder:
            self.add_inputs([folder])

    def _choose_out(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Results file", "results.csv",
                                              "CSV (*.csv);;JSON lines (*.jsonl)")
        if path:
            self.out.setText(path)

    # Running -------------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        paths = [Path(self.inputs.item(row).text()) for row in range(self.inputs.count())]
        out = Path(self.out.text().strip()) if self.out.text().strip() else None
        if not paths or out is None:
            self._show_problem("Add inputs and choose a results file first.")
            return
        try:
            units = batch_units(paths)
            with ResultsFile.open(out, include_patient=self.include_patient.isChecked()) as results:
                done = results.done
        except (UserFacingError, OSError) as exc:
            self._show_problem(str(exc))
            return
        remaining = [unit for unit in units if not unit_finished(unit, done)]
        task = BatchTask(self.task.currentData(), self.question.text().strip(), self._settings,
                         self.include_patient.isChecked())
        self._stop.clear()
        self.summary = None
        self.progress.setRange(0, max(len(remaining), 1))
        self.progress.setValue(0 if remaining else 1)
        self.table.setRowCount(0)
        self._thread = QThread(self)
        self._thread.setObjectName("batch")
        self._runner = BatchRunner(self._backend, remaining, task, out, self._stop)
        self._runner.moveToThread(self._thread)
        self._thread.started.connect(self._runner.run)
        self._runner.opened.connect(self._opened)
        self._runner.row_written.connect(self._add_row)
        self._runner.done.connect(self._done)
        self._runner.failed.connect(self._failed)
        self._set_running(True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop after the item being answered; the file keeps every finished row."""
        self._stop.set()
        self.cancel_button.setEnabled(False)

    def open_results(self) -> None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(self.out.text().strip()))

    @Slot(int)
    def _opened(self, rows: int) -> None:
        self.progress.setMaximum(self.progress.maximum() + rows - 1)

    @Slot(object)
    def _add_row(self, row: Row) -> None:
        index = self.table.rowCount()
        self.table.insertRow(index)
        for column, name in enumerate(COLUMNS):
            self.table.setItem(index, column, QTableWidgetItem(str(row.get(name) or "")))
        self.progress.setValue(self.progress.value() + 1)

    @Slot(object)
    def _done(self, summary: BatchSummary) -> None:
        self.summary = summary
        self._end()
        if not summary.stopped:
            self.progress.setValue(self.progress.maximum())

    @Slot(str)
    def _failed(self, message: str) -> None:
        self._end()
        self._show_problem(message)

    def _end(self) -> None:
        if self._thread is not None:
            self._thread.quit()
            self._thread.wait()
            self._thread = None
        self._runner = None
        self._set_running(False)
        self.open_button.setEnabled(True)

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _show_problem(self, message: str) -> None:
        self.progress.setFormat(message)
        self.progress.setTextVisible(True)

    def closeEvent(self, event) -> None:
        if self._thread is not None:  # the item being answered ends first, as Cancel does
            self._stop.set()
            self._thread.quit()
            self._thread.wait()
            self._thread = None
        super().closeEvent(event)
