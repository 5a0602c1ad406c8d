"""A folder path with a Browse button, and the one check both the first-run page and Settings run on the pair
of folders (the core's own checks, so the window and the engine agree on what a good folder is)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.model_folder import check_adapter_folder, check_model_folder


def folders_problem(model_dir: str, adapter_dir: str, read_tokenizer: bool = True) -> str | None:
    """The one-line reason the folders cannot be used, or None when they can (`read_tokenizer=False` where a load
    follows, which checks the tokenizer it builds: parsing Gemma's takes 0.5-1 s)."""
    if not model_dir:
        return "Choose the google/medgemma-1.5-4b-it model folder."
    try:
        model = check_model_folder(model_dir, read_tokenizer)
        if adapter_dir:
            check_adapter_folder(adapter_dir, model)
    except UserFacingError as exc:
        return str(exc)
    return None


class FolderField(QWidget):
    changed = Signal()

    def __init__(self, name: str, dialog_title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._dialog_title = dialog_title
        self.edit = QLineEdit()
        self.edit.setAccessibleName(name)
        self.edit.textChanged.connect(self.changed)
        self.browse_button = QPushButton("Browse…")
        self.browse_button.setAccessibleName(f"Browse for {name.lower()}")
        self.browse_button.clicked.connect(self.browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.browse_button)

    def path(self) -> str:
        return self.edit.text().strip()

    def set_path(self, path: str | None) -> None:
        self.edit.setText(path or "")

    def browse(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, self._dialog_title, self.path() or str(Path.home()))
        if chosen:
            self.set_path(chosen)
