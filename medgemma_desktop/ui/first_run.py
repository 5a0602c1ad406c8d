"""The page shown while no usable model is configured: what to get, where to point the app, why a folder was
refused (the core's one-line error, inline), what this computer can do (checked on a background job), and a way
to try the whole app on the demo model before the weights arrive."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QFormLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from medgemma_desktop.ui.background import BackgroundJobs
from medgemma_desktop.ui.folder_field import FolderField, folders_problem
from medgemma_desktop.ui.hooks import report_unexpected
from medgemma_desktop.ui.machine_check import MachineVerdict, check_machine

CHECK_DELAY_MS = 300

EXPLANATION = """<h2>Set up MedGemma</h2>
<p>This app runs Google's <b>MedGemma 1.5 4B</b> on this computer. It ships no model weights: you need</p>
<ol>
<li>the <b>google/medgemma-1.5-4b-it</b> folder from Hugging Face (accept the Health AI Developer Foundations
terms there first): config.json, the model-*.safetensors files, the tokenizer and processor files;</li>
<li>optionally a <b>LoRA adapter folder</b> made for it: adapter_config.json and adapter_model.safetensors.</li>
</ol>
<p>Copy both folders to this computer, then choose them below. Nothing is downloaded and no data leaves the
machine.</p>"""


class FirstRunPage(QWidget):
    folders_chosen = Signal(str, str)  # model_dir, adapter_dir ("" for none)
    demo_requested = Signal()
    machine_checked = Signal(object)  # MachineVerdict

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Model setup")
        self.context_limit = 8192  # the window keeps these equal to the settings, for the memory plan
        self.force_cpu = False
        self.jobs = BackgroundJobs(self)
        intro = QLabel(EXPLANATION)
        intro.setWordWrap(True)
        intro.setTextFormat(Qt.TextFormat.RichText)
        intro.setAccessibleName("Setup instructions")
        self.model_field = FolderField("Model folder", "Choose the google/medgemma-1.5-4b-it folder")
        self.adapter_field = FolderField("Adapter folder", "Choose the LoRA adapter folder")
        self.error_label = QLabel()
        self.error_label.setObjectName("errorLabel")
        self.error_label.setAccessibleName("Setup error")
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.hide()
        self.use_button = QPushButton("Use these folders")
        self.use_button.setAccessibleName("Use these folders")
        self.use_button.setDefault(True)
        self.use_button.clicked.connect(self.confirm)
        self.demo_button = QPushButton("Try the demo")
        self.demo_button.setAccessibleName("Try the demo")
        self.demo_button.setToolTip("The whole app on a tiny model with random weights and a sample CT and MR study")
        self.demo_button.clicked.connect(self.demo_requested)
        self.machine_label = QLabel("Checking this computer…")
        self.machine_label.setAccessibleName("This computer")
        self.machine_label.setWordWrap(True)
        self.machine_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.machine_details = QLabel()
        self.machine_details.setAccessibleName("Machine details")
        self.machine_details.setWordWrap(True)
        self.machine_details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._check_timer = QTimer(self)
        self._check_timer.setSingleShot(True)
        self._check_timer.setInterval(CHECK_DELAY_MS)
        self._check_timer.timeout.connect(self.check_machine)
        for field in (self.model_field, self.adapter_field):
            field.changed.connect(lambda: self.show_error(""))
            field.changed.connect(self._check_timer.start)

        form = QFormLayout()
        form.addRow("Model folder:", self.model_field)
        form.addRow("Adapter folder:", self.adapter_field)
        column = QWidget()
        column.setMinimumWidth(640)
        column.setMaximumWidth(760)
        inner = QVBoxLayout(column)
        inner.addWidget(intro)
        inner.addLayout(form)
        inner.addWidget(self.error_label)
        buttons = QHBoxLayout()
        buttons.addWidget(self.demo_button)
        buttons.addStretch(1)
        buttons.addWidget(self.use_button)
        inner.addLayout(buttons)
        inner.addWidget(QLabel("<h3>This computer</h3>"))
        inner.addWidget(self.machine_label)
        inner.addWidget(self.machine_details)
        inner.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(column, 1, Qt.AlignmentFlag.AlignHCenter)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._check_timer.start()

    def check_machine(self) -> None:
        """Judge this computer for the chosen folders, off the UI thread (it asks CUDA for free memory); only while
        the page is shown (showing it checks), so a window that goes straight to loading does not import beside it."""
        if not self.isVisible():
            return
        model_dir, adapter_dir = self.model_field.path(), self.adapter_field.path()
        context_limit, force_cpu = self.context_limit, self.force_cpu
        self.jobs.run(lambda: check_machine(model_dir, adapter_dir, context_limit, force_cpu),
                      self._show_machine, self._machine_failed)

    def _show_machine(self, verdict: MachineVerdict) -> None:
        self.machine_label.setText(verdict.summary)
        self.machine_label.setObjectName("errorLabel" if verdict.kind == "low-memory" else "")
        self.machine_label.style().unpolish(self.machine_label)
        self.machine_label.style().polish(self.machine_label)
        self.machine_details.setText("<br>".join(f"{name}: {value}" for name, value in verdict.details))
        self.machine_checked.emit(verdict)

    def _machine_failed(self, exc: Exception) -> None:
        report_unexpected(type(exc), exc, exc.__traceback__)
        self.machine_label.setText(f"This computer could not be checked: {type(exc).__name__}: {exc}")

    def set_folders(self, model_dir: str | None, adapter_dir: str | None) -> None:
        self.model_field.set_path(model_dir)
        self.adapter_field.set_path(adapter_dir)

    def show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))

    def confirm(self) -> None:
        model_dir, adapter_dir = self.model_field.path(), self.adapter_field.path()
        problem = folders_problem(model_dir, adapter_dir)
        if problem:
            self.show_error(problem)
            return
        self.show_error("")
        self.folders_chosen.emit(model_dir, adapter_dir)
