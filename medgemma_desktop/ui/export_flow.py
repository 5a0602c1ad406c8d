"""Exporting the open conversation from the window: the dialog, then the writing on a background job, with the
outcome in the status bar."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QStatusBar, QWidget

from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.store import ConversationStore
from medgemma_desktop.ui.background import BackgroundJobs
from medgemma_desktop.ui.export_dialog import ExportDialog, write_export
from medgemma_desktop.ui.hooks import report_unexpected


class ExportFlow(QObject):
    finished = Signal(Path)
    failed = Signal(str)

    def __init__(self, jobs: BackgroundJobs, status: QStatusBar, parent: QWidget) -> None:
        super().__init__(parent)
        self._jobs, self._status, self._parent = jobs, status, parent

    def open(self, store: ConversationStore, conversation_id: int | None, demo: bool = False) -> ExportDialog | None:
        """`demo`: the conversation is the demo model's (every export says so)."""
        if conversation_id is None:
            self._status.showMessage("Ask a question or open a conversation first: there is nothing to export.",
                                     10_000)
            return None
        dialog = ExportDialog(store.conversation(conversation_id).title, Path.home(), self._parent, demo=demo)
        dialog.accepted.connect(lambda: self._export(store, conversation_id, dialog))
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        return dialog

    def _export(self, store: ConversationStore, conversation_id: int, dialog: ExportDialog) -> None:
        choice = dialog.choice()
        self._status.showMessage(f"Exporting to {choice.path}…")
        self._jobs.run(lambda: write_export(store, conversation_id, choice), self._exported, self._failed)

    def _exported(self, path: Path) -> None:
        self._status.showMessage(f"Exported to {path}", 20_000)
        self.finished.emit(path)

    def _failed(self, exc: Exception) -> None:
        if not isinstance(exc, UserFacingError):
            report_unexpected(type(exc), exc, exc.__traceback__)
        self._status.showMessage(f"Export failed: {exc}", 30_000)
        self.failed.emit(str(exc))
