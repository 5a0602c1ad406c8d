"""The chat pane: the transcript rendered as Markdown, the question box and the answer controls.

Tokens are not painted one by one: they go into a buffer that a timer flushes a few times a second, so a fast
model cannot flood the event loop with repaints of a growing Markdown document.

Stored questions carry an "Edit" link and answers with several variants a "‹ 2/3 ›" switcher, as links in the
transcript (keyboard users reach them with Tab, or use the Chat menu); the main window acts on what they ask.
Every finished answer and each code block in it has a Copy link (`copy_links`). While an answer streams, the
speed so far is shown beside the buttons; the engine's own figures replace it when the answer ends.
"""

from __future__ import annotations

from itertools import pairwise

from PySide6.QtCore import QElapsedTimer, QEvent, QMimeData, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QGuiApplication, QKeyEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from medgemma_desktop.core.engine import GenerationStats
from medgemma_desktop.core.prompts import TaskMode
from medgemma_desktop.session.conversation import Exchange, Session
from medgemma_desktop.session.question import SERIES_MODES
from medgemma_desktop.ui.buttons import labelled_button
from medgemma_desktop.ui.copy_links import code_blocks, parse_link, with_copy_links
from medgemma_desktop.ui.task_bar import TaskBar

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


def exchange_markdown(exchange: Exchange, index: int | None = None, streaming: bool = False) -> str:
    """The exchange as Markdown; with its `index`, a stored one also gets its Edit link and variant switcher, and
    an answer no longer `streaming` its Copy links."""
    images = len(exchange.images)
    noun = "slice" if exchange.mode in SERIES_MODES else "image"
    attached = f"\n\n*{images} {noun}{'s' if images != 1 else ''} attached*" if images else ""
    mode = f"*{exchange.mode.title}* · " if exchange.mode is not TaskMode.FREE_CHAT else ""
    answer = exchange.answer
    edit, heading = "", "**MedGemma**"
    if index is not None and exchange.message_id is not None:
        edit = f"\n\n[Edit](edit:{index})"
        if len(exchange.answer_ids) > 1 and exchange.answer_id in exchange.answer_ids:
            shown = exchange.answer_ids.index(exchange.answer_id) + 1
            heading += f" [‹](prev:{index}) {shown}/{len(exchange.answer_ids)} [›](next:{index})"
    lines = [f"**You**\n\n{mode}{exchange.shown_question}{attached}{edit}", heading]
    if exchange.thinking and index is not None:  # MedGemma's thinking trace: folded unless asked for
        if exchange.show_thinking:
            trace = "\n".join(f"> {line}" for line in exchange.thinking.splitlines())
            lines.append(f"[Hide the model's thinking](thinking:{index})\n\n{trace}")
        else:
            lines.append(f"[Show the model's thinking](thinking:{index})")
    if answer:
        lines.append(with_copy_links(answer, index) if index is not None and not streaming else answer)
    elif not exchange.error and exchange.stats is None:
        lines.append("*…*")
    if exchange.error:
        lines.append(f"**Error:** {exchange.error}")
    if exchange.stats is not None:
        lines.append(f"*{stats_line(exchange.stats)}*")
    return "\n\n".join(lines)


class QuestionEdit(QPlainTextEdit):
    """Enter sends, Shift+Enter starts a new line, Tab moves on to the buttons; a pasted picture goes to the
    viewer, not into the text."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTabChangesFocus(True)

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


class ChatPane(QWidget):
    """Shows a session's conversation and collects questions; the send controller asks the session."""

    question_submitted = Signal(str)
    edit_submitted = Signal(int, str)  # exchange index, the new wording: edit that question and resend it
    variant_requested = Signal(int, int)  # exchange index, step (-1 older, +1 newer answer variant)
    stop_clicked = Signal()
    regenerate_clicked = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Chat")
        self.conversation = Session()  # the send controller hands over the session it asks
        self._buffer: list[str] = []
        self._can_send = False
        self._answering: int | None = None  # the exchange tokens go to
        self.editing: int | None = None  # the exchange whose question the box is editing

        self.transcript = QTextBrowser()
        self.transcript.setAccessibleName("Conversation")
        self.transcript.setOpenExternalLinks(False)
        self.transcript.setOpenLinks(False)
        self.transcript.anchorClicked.connect(self._on_link)
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
        self.edit_label = QLabel()
        self.edit_label.setAccessibleName("Editing")
        self.cancel_edit_button = labelled_button("Cancel edit", "Keep the question as it was")
        self.cancel_edit_button.clicked.connect(self.cancel_edit)
        self.edit_bar = QWidget()
        edit_layout = QHBoxLayout(self.edit_bar)
        edit_layout.setContentsMargins(0, 0, 0, 0)
        edit_layout.addWidget(self.edit_label, 1)
        edit_layout.addWidget(self.cancel_edit_button)
        self.edit_bar.hide()

        self.send_button = labelled_button("Send", "Send the question (Enter)")
        self.stop_button = labelled_button("Stop", "Stop the answer (Esc)")
        self.regenerate_button = labelled_button("Regenerate", "Ask the last question again (Ctrl+R)")
        self.copy_button = labelled_button("Copy answer", "Copy the last answer as Markdown (Ctrl+Shift+C)")
        self.send_button.clicked.connect(self.submit)
        self.stop_button.clicked.connect(self.stop_clicked)
        self.regenerate_button.clicked.connect(self.regenerate_clicked)
        self.copy_button.clicked.connect(self.copy_answer)
        self.speed = QLabel()
        self.speed.setAccessibleName("Answer speed")
        self.speed.setToolTip("Tokens so far and their speed; the final figures appear under the answer")
        self._streamed = 0  # text pieces (about one per token) of the answer streaming now
        self._since_first = QElapsedTimer()
        buttons = QHBoxLayout()
        for button in (self.send_button, self.stop_button, self.regenerate_button, self.copy_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.speed)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.transcript, 1)
        layout.addWidget(self.notice)
        layout.addWidget(self.task)
        layout.addWidget(self.edit_bar)
        layout.addWidget(self.question)
        layout.addLayout(buttons)
        # Tab from the question goes to the buttons (the first enabled one), not into the text.
        chain = (self.question, self.send_button, self.stop_button, self.regenerate_button, self.copy_button)
        for first, second in pairwise(chain):
            QWidget.setTabOrder(first, second)

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

    def begin_answer(self, index: int, new_question: bool) -> None:
        """Tokens now go to exchange `index`; the question box is emptied only for a new question, so that a
        question refused before sending is still there to fix."""
        self.show_notice("")
        self._answering = index
        if new_question:
            self.question.clear()
        self._render()

    def show_session(self, session: Session) -> None:
        """Show another conversation (a new one, or a stored one reopened, ready to continue)."""
        self.clear()
        self.conversation = session
        self._render()

    def start_edit(self, index: int) -> None:
        """Put a past question into the box; sending resends it, reworded, as a new answer to that question."""
        if not 0 <= index < len(self.conversation.exchanges):
            return
        self.editing = index
        self.question.setPlainText(self.conversation.exchanges[index].question)
        self.edit_label.setText(f"Editing question {index + 1}: sending asks it again with the new wording.")
        self.edit_bar.show()
        self.question.setFocus()

    def cancel_edit(self) -> None:
        if self.editing is not None:
            self.editing = None
            self.edit_bar.hide()
            self.question.clear()

    def refresh(self) -> None:
        """Draw the transcript again after an exchange changed (another answer variant shown)."""
        self._render()

    def append_token(self, text: str) -> None:
        if self._streamed == 0:
            self._since_first.start()
        self._streamed += 1
        self._buffer.append(text)
        if not self._flush_timer.isActive():
            self._flush_timer.start()

    def finish(self) -> None:
        """The session holds the finished answer: draw it whole."""
        self._reset_speed()
        self._flush_timer.stop()
        self._buffer.clear()
        self._answering = None
        self._render()

    def fail(self, message: str) -> None:
        """The answer in progress failed: keep what streamed, say why (the session marked the exchange)."""
        self._flush()
        self._flush_timer.stop()
        self._reset_speed()
        self._answering = None
        self._render()
        self.show_notice(message)

    def show_notice(self, message: str) -> None:
        self.notice.setText(message)
        self.notice.setVisible(bool(message))

    def clear(self) -> None:
        self._flush_timer.stop()
        self._reset_speed()
        self._buffer.clear()
        self._answering = None
        self.cancel_edit()
        self.show_notice("")
        self._render()

    def copy_answer(self) -> None:
        last = self.conversation.last
        if last is not None and last.answer:
            QGuiApplication.clipboard().setText(last.answer)

    def submit(self) -> None:
        """An empty question asks the mode's default question (shown as the placeholder)."""
        text = self.question.toPlainText().strip()
        if not (text or self.task.mode.default_question) or not self._can_send:
            return
        editing = self.editing
        if editing is None:
            self.question_submitted.emit(text)  # the question leaves the box once it is accepted (`begin_answer`)
        elif text:
            self.cancel_edit()
            self.question.clear()
            self.edit_submitted.emit(editing, text)

    def copy_link(self, link: tuple[str, int, int]) -> None:
        """Copy an answer, or one code block of it, from its Copy link."""
        action, index, block = link
        if not 0 <= index < len(self.conversation.exchanges):
            return
        answer = self.conversation.exchanges[index].answer
        if action == "copy":
            QGuiApplication.clipboard().setText(answer)
        elif block < len(blocks := code_blocks(answer)):
            QGuiApplication.clipboard().setText(blocks[block])

    def _on_link(self, url: QUrl) -> None:
        copy = parse_link(url.toString())
        if copy is not None:
            self.copy_link(copy)
            return
        action, _, index = url.toString().partition(":")
        if not index.isdigit():
            return
        if action == "edit":
            self.start_edit(int(index))
        elif action in ("prev", "next"):
            self.variant_requested.emit(int(index), -1 if action == "prev" else 1)
        elif action == "thinking":
            exchange = self.conversation.exchanges[int(index)]
            exchange.show_thinking = not exchange.show_thinking
            self._render()

    def changeEvent(self, event: QEvent) -> None:
        """Qt's Markdown reader colours links with the palette of the moment: draw again in the new theme's."""
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange:
            self._render()

    def _show_mode(self, mode: TaskMode) -> None:
        self.question.setPlaceholderText(mode.default_question or FREE_PLACEHOLDER)

    # Rendering -----------------------------------------------------------------------------------------------

    def _flush(self) -> None:
        if not self._buffer:
            self._flush_timer.stop()
            return
        exchange = self._target()
        if exchange is not None:
            exchange.answer += "".join(self._buffer)
        self._buffer.clear()
        self._show_speed()
        self._render()

    def _show_speed(self) -> None:
        seconds = self._since_first.elapsed() / 1000 if self._since_first.isValid() else 0.0
        rate = f" · {(self._streamed - 1) / seconds:.1f} tokens/s" if self._streamed > 1 and seconds > 0 else ""
        self.speed.setText(f"{self._streamed:,} tokens{rate}")

    def _reset_speed(self) -> None:
        self._streamed = 0
        self._since_first.invalidate()
        self.speed.clear()

    def _target(self) -> Exchange | None:
        if self._answering is not None and self._answering < len(self.conversation.exchanges):
            return self.conversation.exchanges[self._answering]
        return self.conversation.last

    def _render(self) -> None:
        bar = self.transcript.verticalScrollBar()
        at_bottom = bar.value() >= bar.maximum() - 4
        blocks = [exchange_markdown(exchange, index, streaming=index == self._answering)
                  for index, exchange in enumerate(self.conversation.exchanges)]
        self.transcript.setMarkdown("\n\n---\n\n".join(blocks))
        if at_bottom:
            bar.setValue(bar.maximum())
