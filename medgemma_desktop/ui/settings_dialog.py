"""The Settings dialog: edits a copy of `Settings` and refuses folders the core's checks reject.

With no folders chosen there is nothing to check: the demo (or a user still waiting for the weights) can change
the theme, text size, decoding and limits without naming a model folder. "Answers from" chooses between this
computer's model and an OpenAI-compatible server (`medgemma-desktop serve`, vLLM) at a URL."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlsplit

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from medgemma_desktop.core.settings import API_KEY_VARIABLE, THEMES, Settings
from medgemma_desktop.ui.folder_field import FolderField, folders_problem
from medgemma_desktop.ui.theme import TEXT_SIZES


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setAccessibleName("Settings")
        self._original = settings
        self.model_field = FolderField("Model folder", "Choose the google/medgemma-1.5-4b-it folder")
        self.model_field.set_path(settings.model_dir)
        self.adapter_field = FolderField("Adapter folder", "Choose the LoRA adapter folder")
        self.adapter_field.set_path(settings.adapter_dir)
        self.source = QComboBox()
        self.source.setAccessibleName("Answers from")
        self.source.addItem("This computer's model", False)
        self.source.addItem("A server (OpenAI-compatible)", True)
        self.source.setCurrentIndex(1 if settings.server_url else 0)
        self.server_url = QLineEdit(settings.server_url or "")
        self.server_url.setAccessibleName("Server address")
        self.server_url.setPlaceholderText("http://127.0.0.1:8080")
        self.server_model = QLineEdit(settings.server_model or "")
        self.server_model.setAccessibleName("Server model")
        self.server_model.setPlaceholderText("its only model")
        self.server_key = QLineEdit(settings.server_api_key or "")
        self.server_key.setAccessibleName("Server API key")
        self.server_key.setEchoMode(QLineEdit.EchoMode.Password)
        self.server_key.setPlaceholderText(f"none, or ${API_KEY_VARIABLE}")
        self.source.currentIndexChanged.connect(self._update_source)
        self.max_new_tokens = QSpinBox()
        self.max_new_tokens.setAccessibleName("Max new tokens")
        self.max_new_tokens.setRange(1, 8192)
        self.max_new_tokens.setValue(settings.max_new_tokens)
        self.decoding = QComboBox()
        self.decoding.setAccessibleName("Decoding")
        self.decoding.addItem("Greedy (as Google's notebooks)", True)
        self.decoding.addItem("Sampling", False)
        self.decoding.setCurrentIndex(0 if settings.greedy else 1)
        self.temperature = QDoubleSpinBox()
        self.temperature.setAccessibleName("Temperature")
        self.temperature.setRange(0.05, 2.0)
        self.temperature.setSingleStep(0.05)
        self.temperature.setValue(settings.temperature)
        self.decoding.currentIndexChanged.connect(self._update_temperature)
        self.context_limit = QSpinBox()
        self.context_limit.setAccessibleName("Context limit")
        self.context_limit.setRange(512, 131072)
        self.context_limit.setSingleStep(1024)
        self.context_limit.setValue(settings.context_limit)
        self.theme = QComboBox()
        self.theme.setAccessibleName("Theme")
        for theme in THEMES:
            self.theme.addItem(theme.capitalize(), theme)
        self.theme.setCurrentIndex(THEMES.index(settings.theme))
        self.text_size = QComboBox()
        self.text_size.setAccessibleName("Text size")
        for percent in TEXT_SIZES:
            self.text_size.addItem(f"{percent} %", percent)
        closest = min(TEXT_SIZES, key=lambda percent: abs(percent - settings.text_size))
        self.text_size.setCurrentIndex(TEXT_SIZES.index(closest))
        self.force_cpu = QCheckBox("Run on the CPU even when a GPU is available (slow)")
        self.force_cpu.setAccessibleName("Force CPU")
        self.force_cpu.setChecked(settings.force_cpu)
        self.keep_patient_data = QCheckBox("Keep patient details of DICOM images (names, IDs, dates, file paths) "
                                           "in the history")
        self.keep_patient_data.setAccessibleName("Keep patient details")
        self.keep_patient_data.setChecked(settings.keep_patient_data)
        self.error_label = QLabel()
        self.error_label.setObjectName("errorLabel")
        self.error_label.setAccessibleName("Settings error")
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.hide()

        form = QFormLayout()
        form.addRow("Answers from:", self.source)
        form.addRow("Server address:", self.server_url)
        form.addRow("Server model:", self.server_model)
        form.addRow("Server API key:", self.server_key)
        form.addRow("Model folder:", self.model_field)
        form.addRow("Adapter folder:", self.adapter_field)
        form.addRow("Max new tokens:", self.max_new_tokens)
        form.addRow("Decoding:", self.decoding)
        form.addRow("Temperature:", self.temperature)
        form.addRow("Context limit (tokens):", self.context_limit)
        form.addRow("Theme:", self.theme)
        form.addRow("Text size:", self.text_size)
        form.addRow("", self.force_cpu)
        form.addRow("", self.keep_patient_data)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error_label)
        layout.addWidget(self.buttons)
        self._update_temperature()
        self._update_source()

    def _update_source(self) -> None:
        on_server = bool(self.source.currentData())
        for field in (self.server_url, self.server_model, self.server_key):
            field.setEnabled(on_server)

    def _update_temperature(self) -> None:
        self.temperature.setEnabled(not self.decoding.currentData())

    def settings(self) -> Settings:
        on_server = bool(self.source.currentData())
        return replace(
            self._original,
            server_url=(self.server_url.text().strip() or None) if on_server else None,
            server_model=self.server_model.text().strip() or None, server_api_key=self.server_key.text() or None,
            model_dir=self.model_field.path() or None, adapter_dir=self.adapter_field.path() or None,
            max_new_tokens=self.max_new_tokens.value(), greedy=bool(self.decoding.currentData()),
            temperature=round(self.temperature.value(), 2), context_limit=self.context_limit.value(),
            theme=self.theme.currentData(), text_size=self.text_size.currentData(),
            force_cpu=self.force_cpu.isChecked(), keep_patient_data=self.keep_patient_data.isChecked(),
        )

    def accept(self) -> None:
        model_dir, adapter_dir = self.model_field.path(), self.adapter_field.path()
        problem = folders_problem(model_dir, adapter_dir) if model_dir or adapter_dir else None
        if self.source.currentData():
            url = urlsplit(self.server_url.text().strip())
            if url.scheme not in ("http", "https") or not url.netloc:
                problem = "Give the server's address as http://HOST:PORT (for example http://127.0.0.1:8080)."
        if problem:
            self.error_label.setText(problem)
            self.error_label.show()
            return
        super().accept()
