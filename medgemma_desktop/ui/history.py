"""The history sidebar: past conversations (newest first), full-text search with snippets, rename, delete with
Undo, removing patient details, and the store's notices (a history moved aside or salvaged, or kept in memory).

It works directly on the `ConversationStore` (every call is one short transaction) and tells the main window
which conversation to open; the window decides what opening means. Searches run on a background job, so typing
never waits for the database; when the text changed meanwhile, a finished search is dropped (the latest wins).
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from medgemma_desktop.core.store import ConversationStore, SearchHit
from medgemma_desktop.ui.background import BackgroundJobs
from medgemma_desktop.ui.buttons import labelled_button

CONVERSATION_ROLE = Qt.ItemDataRole.UserRole + 1  # the conversation id of a row
MESSAGE_ROLE = Qt.ItemDataRole.UserRole + 2  # the message a search hit points at
SEARCH_DELAY_MS = 200
UNDO_MS = 15_000


def _when(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp)
    return moment.strftime("%H:%M") if moment.date() == datetime.now().date() else moment.strftime("%d %b %Y")


class HistoryPanel(QWidget):
    conversation_chosen = Signal(int)
    new_requested = Signal()
    deleted = Signal(int)  # the conversation just deleted (the window closes it if it is open)
    search_shown = Signal(str)  # the query whose hits the list now shows

    def __init__(self, store: ConversationStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("History")
        self.store = store
        self._current: int | None = None
        self._deleted: int | None = None
        self._filling = False
        self._searches = BackgroundJobs(self)
        self._search_serial = 0  # bumped by every search started: only the latest one's hits are shown

        self.new_button = labelled_button("New conversation", "Start a new conversation (Ctrl+N)")
        self.new_button.clicked.connect(self.new_requested)
        self.search_box = QLineEdit()
        self.search_box.setAccessibleName("Search history")
        self.search_box.setPlaceholderText("Search questions and answers")
        self.search_box.setClearButtonEnabled(True)
        for clear in self.search_box.findChildren(QToolButton):  # the clear button Qt adds
            clear.setAccessibleName("Clear search")
        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self.refresh)
        self.search_box.textChanged.connect(self._search_timer.start)
        self.list = QListWidget()
        self.list.setAccessibleName("Conversations")
        self.list.setWordWrap(True)
        self.list.itemActivated.connect(self._open_item)
        self.list.itemClicked.connect(self._open_item)
        self.list.itemChanged.connect(self._renamed)
        self.list.currentItemChanged.connect(lambda *_: self._update_buttons())
        self.rename_button = labelled_button("Rename", "Rename the selected conversation (F2)")
        self.rename_button.clicked.connect(self.rename_selected)
        self.delete_button = labelled_button("Delete", "Delete the selected conversation (you can undo)")
        self.delete_button.clicked.connect(self.delete_selected)
        self.undo_label = QLabel()
        self.undo_label.setAccessibleName("Deleted conversation")
        self.undo_label.setWordWrap(True)
        self.undo_button = labelled_button("Undo", "Bring the deleted conversation back")
        self.undo_button.clicked.connect(self.undo_delete)
        self.undo_bar = QWidget()
        undo_layout = QHBoxLayout(self.undo_bar)
        undo_layout.setContentsMargins(0, 0, 0, 0)
        undo_layout.addWidget(self.undo_label, 1)
        undo_layout.addWidget(self.undo_button)
        self.undo_bar.hide()
        self._undo_timer = QTimer(self)
        self._undo_timer.setSingleShot(True)
        self._undo_timer.setInterval(UNDO_MS)
        self._undo_timer.timeout.connect(self.undo_bar.hide)
        self.forget_button = labelled_button("Remove patient details…",
                                             "Remove the names, IDs, dates and file paths of DICOM images from the "
                                             "whole history; the images and conversations stay")
        self.forget_button.clicked.connect(self.forget_patient_data)
        self.privacy_label = QLabel()
        self.privacy_label.setAccessibleName("Patient details")
        self.privacy_label.setWordWrap(True)
        self.privacy_label.hide()
        self.notice = QLabel()
        self.notice.setObjectName("errorLabel")
        self.notice.setAccessibleName("History problem")
        self.notice.setWordWrap(True)
        self.notice.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notice.hide()

        actions = QHBoxLayout()
        actions.addWidget(self.rename_button)
        actions.addWidget(self.delete_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.new_button)
        layout.addWidget(self.search_box)
        layout.addWidget(self.list, 1)
        layout.addLayout(actions)
        layout.addWidget(self.undo_bar)
        layout.addWidget(self.forget_button)
        layout.addWidget(self.privacy_label)
        layout.addWidget(self.notice)
        self.refresh()

    # Called by the main window -------------------------------------------------------------------------------

    def set_store(self, store: ConversationStore) -> None:
        """Show another history (demo mode has its own)."""
        self.store = store
        self._current = self._deleted = None
        self.undo_bar.hide()
        self.notice.clear()
        self.notice.hide()
        self.search_box.clear()
        self.refresh()

    def set_current(self, conversation_id: int | None) -> None:
        """Mark the conversation the window shows (None: a new one, not stored yet)."""
        self._current = conversation_id
        self.refresh()

    def refresh(self) -> None:
        """List conversations, or (on a background job) search hits while the search box holds text; then show
        any store notices."""
        self._search_timer.stop()
        self._search_serial += 1
        query = self.search_box.text().strip()
        if query:
            serial, store = self._search_serial, self.store
            self._searches.run(lambda: store.search(query),
                               lambda hits: self._show_hits(serial, query, hits),
                               lambda error: self._show_search_error(serial, query, error))
        else:
            self._refill(self._fill_conversations)
        self.show_notices()

    def _refill(self, fill) -> None:
        self._filling = True
        self.list.clear()
        fill()
        self._filling = False
        self._update_buttons()

    def _show_hits(self, serial: int, query: str, hits: list[SearchHit]) -> None:
        if serial != self._search_serial:
            return  # the text changed while this search ran: a newer one is on its way
        self._refill(lambda: self._fill_hits(query, hits))
        self.search_shown.emit(query)

    def _show_search_error(self, serial: int, query: str, error: Exception) -> None:
        if serial != self._search_serial:
            return
        item = QListWidgetItem(f"Search failed: {error}")
        item.setFlags(Qt.ItemFlag.NoItemFlags)
        self._refill(lambda: self.list.addItem(item))
        self.search_shown.emit(query)

    def wait_for_search(self, msecs: int = -1) -> bool:
        """Wait for a running search (shutdown, tests)."""
        return self._searches.wait(msecs)

    def show_notices(self) -> None:
        """Problems the store met (history moved aside, kept in memory only); they stay until the next store."""
        notices = [str(problem) for problem in self.store.take_notices()]
        if notices:
            text = "\n".join(filter(None, [self.notice.text(), *notices]))
            self.notice.setText(text)
            self.notice.show()

    # Actions -------------------------------------------------------------------------------------------------

    def rename_selected(self) -> None:
        item = self.list.currentItem()
        if item is not None and item.flags() & Qt.ItemFlag.ItemIsEditable:
            item.setText(self.store.conversation(item.data(CONVERSATION_ROLE)).title)
            self.list.editItem(item)

    def delete_selected(self) -> None:
        item = self.list.currentItem()
        if item is None:
            return
        conversation = self.store.conversation(item.data(CONVERSATION_ROLE))
        self.store.delete_conversation(conversation.id)
        self._deleted = conversation.id
        self.undo_label.setText(f"Deleted “{conversation.title or 'Untitled'}”.")
        self.undo_bar.show()
        self._undo_timer.start()
        self.refresh()
        self.deleted.emit(conversation.id)

    def undo_delete(self) -> None:
        if self._deleted is None:
            return
        restored, self._deleted = self._deleted, None
        self.store.restore_conversation(restored)
        self.undo_bar.hide()
        self.refresh()
        self.conversation_chosen.emit(restored)

    def forget_patient_data(self) -> None:
        """After the user confirms, remove identifying DICOM tags and file paths from the whole history."""
        answer = QMessageBox.question(
            self, "Remove patient details",
            "Remove the patient names, IDs, dates, places and original file paths stored with the images of every "
            "conversation?\n\nThe images, questions and answers stay. This cannot be undone.")
        if answer != QMessageBox.StandardButton.Yes:
            return
        cleaned = self.store.forget_patient_data()
        self.privacy_label.setText(f"Patient details removed from {cleaned} image reference(s)." if cleaned
                                   else "The history holds no patient details.")
        self.privacy_label.show()

    # Internals -----------------------------------------------------------------------------------------------

    def _fill_conversations(self) -> None:
        for conversation in self.store.list_conversations():
            title = conversation.title or "Untitled"
            item = QListWidgetItem(title)
            item.setData(CONVERSATION_ROLE, conversation.id)
            item.setToolTip(f"{title}\nLast active {_when(conversation.updated_at)}")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
            self.list.addItem(item)
            if conversation.id == self._current:
                self.list.setCurrentItem(item)

    def _fill_hits(self, query: str, hits: list[SearchHit]) -> None:
        if not hits:
            empty = QListWidgetItem(f"Nothing found for “{query}”.")
            empty.setFlags(Qt.ItemFlag.NoItemFlags)
            self.list.addItem(empty)
            return
        for hit in hits:
            where = "question" if hit.answer_id is None else "answer"
            title = escape(hit.conversation_title or "Untitled")
            label = QLabel(f"<b>{title}</b> <i>({where})</i><br>{hit.snippet_html}")
            label.setWordWrap(True)
            label.setTextFormat(Qt.TextFormat.RichText)
            label.setAccessibleName("Search result")
            label.setContentsMargins(4, 3, 4, 3)
            item = QListWidgetItem()
            item.setData(CONVERSATION_ROLE, hit.conversation_id)
            item.setData(MESSAGE_ROLE, hit.message_id)
            item.setData(Qt.ItemDataRole.AccessibleTextRole, label.text())
            item.setSizeHint(label.sizeHint())
            self.list.addItem(item)
            self.list.setItemWidget(item, label)

    def _open_item(self, item: QListWidgetItem) -> None:
        conversation_id = item.data(CONVERSATION_ROLE)
        if conversation_id is not None and conversation_id != self._current:
            self.conversation_chosen.emit(conversation_id)

    def _renamed(self, item: QListWidgetItem) -> None:
        if self._filling or item.data(CONVERSATION_ROLE) is None or item.data(MESSAGE_ROLE) is not None:
            return
        title = item.text().strip()
        if title:
            self.store.rename_conversation(item.data(CONVERSATION_ROLE), title)
        QTimer.singleShot(0, self.refresh)  # not from inside the item's own signal: refresh deletes the item

    def _update_buttons(self) -> None:
        item = self.list.currentItem()
        on_conversation = item is not None and item.data(CONVERSATION_ROLE) is not None
        self.rename_button.setEnabled(on_conversation and item.data(MESSAGE_ROLE) is None)
        self.delete_button.setEnabled(on_conversation)
