"""The history files the window has open: the real one and the demo's, each opened once and kept open until the
window closes (an answer still streaming into one may finish after a switch)."""

from __future__ import annotations

from pathlib import Path

from medgemma_desktop.core.store import ConversationStore


class HistoryFiles:
    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._open: dict[Path, ConversationStore] = {}

    def open(self, filename: str, keep_patient_data: bool = False) -> ConversationStore:
        """`keep_patient_data`: the user's choice (Settings.keep_patient_data) for a file opened now."""
        path = self._folder / filename
        if path not in self._open:
            self._open[path] = ConversationStore(path, keep_patient_data=keep_patient_data)
        return self._open[path]

    def keep_patient_data(self, keep: bool) -> None:
        """Apply the user's choice to every open file."""
        for store in self._open.values():
            store.keep_patient_data = keep

    def close(self) -> None:
        """Deleting is final once the window (and its Undo) is gone."""
        for store in self._open.values():
            store.purge_deleted()
            store.close()
