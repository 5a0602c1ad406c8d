"""The page shown while no usable model is configured: what to get, where to point the app, and why a folder
was refused (the core's one-line error, inline)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFormLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from medgemma_desktop.ui.folder_field import FolderField, folders_problem

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

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Model setup")
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
        for field in (self.model_field, self.adapter_field):
            field.changed.connect(lambda: self.show_error(""))

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
        inner.addWidget(self.use_button, 0, Qt.AlignmentFlag.AlignRight)
        inner.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(column, 1, Qt.AlignmentFlag.AlignHCenter)

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
