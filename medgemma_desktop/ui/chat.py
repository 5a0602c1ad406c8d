"""The chat pane: the transcript rendered as Markdown, the question box and the answer controls.

Tokens are not painted one by one: they go into a buffer that a timer flushes a few times a second, so a fast
model cannot flood the event loop with repaints of a growing Markdown document.
"""

from __future__ import annotations

from PySide6.QtCore import QMimeData, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QKeyEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from medgemma_desktop.core.engine import GenerationStats
from medgemma_desktop.core.imaging import ImageInput, PaddingInfo
from medgemma_desktop.core.prompts import ChatTurn, TaskMode
from medgemma_desktop.ui.conversation import Conversation, Exchange
from medgemma_desktop.ui.task_bar import TaskBar
from medgemma_desktop.ui.task_inputs import SERIES_MODES
from medgemma_desktop.ui.worker import Answer

FLUSH_INTERVAL_MS = 120
FREE_PLACEHOLDER = "Ask about the images… (Enter sends, Shift+Enter for a new line)"


def stats_line(stats: GenerationStats) -> str:
    parts = [f"first token {stats.time_to_first_token_s:.2f} s"]
    if stats.decode_tokens_per_s:
        parts.append(f"{stats.decode_tokens_per_s:.1f} tokens/s")
    parts.append(f"{stats.prompt_tokens:,} prompt + {stats.new_tokens:,} new tokens")
    if stats.peak_memory_bytes:
        parts.append(f"peak {stats.peak_memory_bytes / 2**30:.1f} GiB")
    if stats.stop_reason == "stopped":
        parts.append("stopped")
    elif stats.stop_reason == "length":
        parts.append("hit the token limit")
    return " · ".join(parts)


def exchange_markdown(exchange: Exchange) -> str:
    images = len(exchange.images)
    noun = "slice" if exchange.mode in SERIES_MODES else "image"
    attached = f"\n\n*{images} {noun}{'s' if images != 1 else ''} attached*" if images else ""
    mode = f"*{exchange.mode.title}* · " if exchange.mode is not TaskMode.FREE_CHAT else ""
    answer = exchange.answer
    lines = [f"**You**\n\n{mode}{exchange.shown_question}{attached}", "**MedGemma**"]
    if answer:
        lines.append(answer)
    elif not exchange.error and exchange.stats is None:
        lines.append("*…*")
    if exchange.error:
        lines.append(f"**Error:** {exchange.error}")
    if exchange.stats is not None:
        lines.append(f"*{stats_line(exchange.stats)}*")
    return "\n\n".join(lines)


class QuestionEdit(QPlainTextEdit):
    """Enter sends, Shift+Enter starts a new line; a pasted picture goes to the viewer, not into the text."""

    submitted = Signal()
    image_pasted = Signal(QMimeData)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)

    def canInsertFromMimeData(self, source: QMimeData) -> bool:
        return source.hasImage() or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source: QMimeData) -> None:
        if source.hasImage() and not source.hasText():
            self.image_pasted.emit(source)
        else:
            super().insertFromMimeData(source)


def _button(text: str, tip: str) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tip)
    button.setAccessibleName(text)
    return button


class ChatPane(QWidget):
    """Shows the conversation and collects questions; the main window sends the turns it builds."""

    question_submitted = Signal(str)
    stop_clicked = Signal()
    regenerate_clicked = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Chat")
        self.conversation = Conversation()
        self._buffer: list[str] = []
        self._can_send = False

        self.transcript = QTextBrowser()
        self.transcript.setAccessibleName("Conversation")
        self.transcript.setOpenExternalLinks(False)
        self.transcript.setOpenLinks(False)
        self.notice = QLabel()
        self.notice.setObjectName("errorLabel")
        self.notice.setAccessibleName("Chat message")
        self.notice.setWordWrap(True)
        self.notice.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notice.hide()
        self.question = QuestionEdit()
        self.question.setAccessibleName("Question")
        self.question.setMaximumHeight(110)
        self.question.submitted.connect(self.submit)
        self.task = TaskBar()
        self.task.mode_changed.connect(self._show_mode)

        self.send_button = _button("Send", "Send the question (Enter)")
        self.stop_button = _button("Stop", "Stop the answer (Esc)")
        self.regenerate_button = _button("Regenerate", "Ask the last question again (Ctrl+R)")
        self.copy_button = _button("Copy answer", "Copy the last answer as Markdown (Ctrl+Shift+C)")
        self.send_button.clicked.connect(self.submit)
        self.stop_button.clicked.connect(self.stop_clicked)
        self.regenerate_button.clicked.connect(self.regenerate_clicked)
        self.copy_button.clicked.connect(self.copy_answer)
        buttons = QHBoxLayout()
        for button in (self.send_button, self.stop_button, self.regenerate_button, self.copy_button):
            buttons.addWidget(button)
        buttons.addStretch(1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.transcript, 1)
        layout.addWidget(self.notice)
        layout.addWidget(self.task)
        layout.addWidget(self.question)
        layout.addLayout(buttons)

        self._flush_timer = QTimer(self)
        self._flush_timer.setInterval(FLUSH_INTERVAL_MS)
        self._flush_timer.timeout.connect(self._flush)
        self.set_busy(False, can_send=False)
        self._show_mode(self.task.mode)

    # Called by the main window -------------------------------------------------------------------------------

    def set_busy(self, generating: bool, can_send: bool) -> None:
        last = self.conversation.last
        self._can_send = can_send and not generating
        self.send_button.setEnabled(self._can_send)
        self.stop_button.setEnabled(generating)
        self.regenerate_button.setEnabled(self._can_send and last is not None)
        self.copy_button.setEnabled(not generating and last is not None and bool(last.answer))

    def begin(self, question: str, images: list[ImageInput], mode: TaskMode = TaskMode.FREE_CHAT, *,
              padding: PaddingInfo | None = None, target: ImageInput | None = None) -> list[ChatTurn]:
        """Record a new question and return the turns to send (built by `Conversation.turns_for`); the question
        box is emptied only now, so that a question refused before sending is still there to fix."""
        self.show_notice("")
        turns = self.conversation.ask(question, images, mode, padding=padding, target=target)
        self.question.clear()
        self._render()
        return turns

    def begin_regenerate(self) -> list[ChatTurn]:
        self.show_notice("")
        turns = self.conversation.retry_last()
        self._render()
        return turns

    def append_token(self, text: str) -> None:
        self._buffer.append(text)
        if not self._flush_timer.isActive():
            self._flush_timer.start()

    def finish(self, answer: Answer) -> None:
        self._flush_timer.stop()
        self._buffer.clear()
        exchange = self.conversation.last
        if exchange is not None:
            exchange.answer, exchange.thinking, exchange.stats = answer.text, answer.thinking, answer.stats
        self._render()

    def fail(self, message: str) -> None:
        """The answer in progress failed: keep what streamed, say why."""
        self._flush()
        self._flush_timer.stop()
        if self.conversation.last is not None and self.conversation.last.stats is None:
            self.conversation.last.error = message
            self._render()
        self.show_notice(message)

    def show_notice(self, message: str) -> None:
        self.notice.setText(message)
        self.notice.setVisible(bool(message))

    def clear(self) -> None:
        self._flush_timer.stop()
        self._buffer.clear()
        self.conversation.clear()
        self.show_notice("")
        self._render()

    def copy_answer(self) -> None:
        last = self.conversation.last
        if last is not None and last.answer:
            QGuiApplication.clipboard().setText(last.answer)

    def submit(self) -> None:
        """An empty question asks the mode's default question (shown as the placeholder)."""
        text = self.question.toPlainText().strip()
        if (text or self.task.mode.default_question) and self._can_send:
            self.question_submitted.emit(text)

    def _show_mode(self, mode: TaskMode) -> None:
        self.question.setPlaceholderText(mode.default_question or FREE_PLACEHOLDER)

    # Rendering -----------------------------------------------------------------------------------------------

    def _flush(self) -> None:
        if not self._buffer:
            self._flush_timer.stop()
            return
        exchange = self.conversation.last
        if exchange is not None:
            exchange.answer += "".join(self._buffer)
        self._buffer.clear()
        self._render()

    def _render(self) -> None:
        bar = self.transcript.verticalScrollBar()
        at_bottom = bar.value() >= bar.maximum() - 4
        blocks = [exchange_markdown(exchange) for exchange in self.conversation.exchanges]
        self.transcript.setMarkdown("\n\n---\n\n".join(blocks))
        if at_bottom:
            bar.setValue(bar.maximum())
