"""The main window driving the real model worker on the tiny checkpoint: images in, tokens out, Stop,
Regenerate, errors, the status bar, shutdown mid-answer and responsiveness of the event loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QAccessible, QDragEnterEvent, QDropEvent, QGuiApplication
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractSpinBox,
    QComboBox,
    QGraphicsView,
    QLineEdit,
    QMenuBar,
    QPlainTextEdit,
    QTextEdit,
    QWidget,
)

from medgemma_desktop.core.engine import LoadOptions
from medgemma_desktop.core.errors import InputFileError
from medgemma_desktop.core.export import DISCLAIMER
from medgemma_desktop.core.imaging import load_image
from medgemma_desktop.session.recording import Answer
from medgemma_desktop.ui.chat import FLUSH_INTERVAL_MS
from medgemma_desktop.ui.main_window import MainWindow
from medgemma_desktop.ui.viewer import ImageCanvas
from medgemma_desktop.ui.worker import ModelState

LOAD_TIMEOUT_MS = 30_000
ANSWER_TIMEOUT_MS = 30_000


def run_queue_wait() -> float:
    """Seconds this thread has spent ready to run but waiting for a CPU that other processes held (Linux
    schedstat; 0 where the kernel does not report it, so every gap then counts in full)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class GapMeter:
    """The longest time the event loop went without serving a 10 ms timer: what a user feels as lag. Time the OS
    made the UI thread wait for a CPU (a busy machine: other processes on every core) is taken out of each gap,
    because no code of this app causes it; everything else counts: the UI thread computing, sleeping, blocked on
    I/O or waiting for the model thread's GIL."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.longest_os_wait = 0.0
        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._tick)
        self.start()

    def _tick(self) -> None:
        now, waited = time.perf_counter(), run_queue_wait()
        os_wait = waited - self._waited
        self.max_gap = max(self.max_gap, now - self._last - os_wait)
        self.longest_os_wait = max(self.longest_os_wait, os_wait)
        self._last, self._waited = now, waited

    def start(self) -> None:
        self.max_gap = self.longest_os_wait = 0.0
        self._last, self._waited = time.perf_counter(), run_queue_wait()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def assert_responsive(self, while_doing: str) -> None:
        assert self.max_gap < 0.1, (f"event loop blocked {self.max_gap * 1000:.0f} ms while {while_doing} (not "
                                    f"counting up to {self.longest_os_wait * 1000:.0f} ms the OS held the thread)")


def wait_ready(qtbot, window: MainWindow) -> None:
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY, timeout=LOAD_TIMEOUT_MS)


@pytest.fixture
def window(qtbot, tiny_settings_path: Path) -> Iterator[MainWindow]:
    main = MainWindow(tiny_settings_path)
    qtbot.addWidget(main)
    main.show()
    wait_ready(qtbot, main)
    yield main
    main.close()


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "chest.png"
    Image.new("RGB", (320, 240), (90, 90, 90)).save(path)
    return path


def drop(canvas: ImageCanvas, paths: list[Path]) -> None:
    """The canvas's drag handlers as a drag from a file manager calls them (offscreen Qt has no drag source)."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path)) for path in paths])
    buttons, modifiers = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    enter = QDragEnterEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, buttons, modifiers)
    canvas.dragEnterEvent(enter)
    assert enter.isAccepted()
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, buttons, modifiers)
    canvas.dropEvent(event)
    assert event.isAccepted()


def ask(qtbot, window: MainWindow, question: str) -> None:
    qtbot.keyClicks(window.chat.question, question)
    qtbot.keyClick(window.chat.question, Qt.Key.Key_Return)


def test_drop_image_ask_and_tokens_stream_into_the_pane(qtbot, window: MainWindow, picture: Path) -> None:
    window.settings = replace(window.settings, max_new_tokens=40)
    with qtbot.waitSignal(window.viewer.load_finished):
        drop(window.viewer.canvas, [picture])
    assert window.viewer.model.pending()[0].source == picture
    assert window.viewer.canvas.scene().sceneRect().size().toSize().width() == 320

    tokens: list[str] = []
    window.host.worker.token.connect(tokens.append)
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS) as finished:
        ask(qtbot, window, "Describe the image")
    answer: Answer = finished.args[0]
    assert tokens and "".join(tokens).strip() == answer.text
    assert answer.stats.prompt_tokens > 256 // 8  # the image placeholder tokens were part of the prompt
    transcript = window.chat.transcript.toPlainText()
    assert "Describe the image" in transcript and "1 image attached" in transcript
    assert answer.text.splitlines()[0].strip() in transcript
    assert "tokens/s" in transcript and "first token" in transcript
    assert window.chat.question.toPlainText() == ""
    assert window.viewer.model.pending() == []  # the image went with that question
    QGuiApplication.clipboard().clear()
    qtbot.mouseClick(window.chat.copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == answer.text


def test_tokens_are_coalesced_into_a_few_repaints_per_second(qtbot, window: MainWindow) -> None:
    renders: list[float] = []
    tokens: list[str] = []
    window.chat.transcript.textChanged.connect(lambda: renders.append(time.perf_counter()))
    window.host.worker.token.connect(tokens.append)
    started = time.perf_counter()
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS):
        ask(qtbot, window, "Write a long report")
        qtbot.waitUntil(lambda: len(tokens) >= 150, timeout=ANSWER_TIMEOUT_MS)
        window.host.stop()
    elapsed = time.perf_counter() - started
    assert len(tokens) >= 150
    # What a user sees: the transcript repaints at most once per flush interval (plus begin and finish), however
    # fast tokens come. (How many tokens share a repaint depends on the token rate, which a busy machine slows.)
    assert len(renders) <= elapsed / (FLUSH_INTERVAL_MS / 1000) + 4
    assert len(renders) < len(tokens)


def test_stop_mid_answer_keeps_the_partial_answer(qtbot, window: MainWindow) -> None:
    tokens: list[str] = []
    window.host.worker.token.connect(tokens.append)
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS) as finished:
        ask(qtbot, window, "Tell me everything")
        qtbot.waitUntil(lambda: len(tokens) >= 5, timeout=ANSWER_TIMEOUT_MS)
        assert window.chat.stop_button.isEnabled()
        qtbot.keyClick(window.chat.question, Qt.Key.Key_Escape)
    answer: Answer = finished.args[0]
    assert answer.stats.stop_reason == "stopped"
    assert answer.stats.new_tokens < 2000
    assert "stopped" in window.chat.transcript.toPlainText()
    assert window.host.state is ModelState.READY
    assert window.chat.send_button.isEnabled() and not window.chat.stop_button.isEnabled()


def test_regenerate_asks_the_same_turns_again_sampled_with_a_recorded_seed(qtbot, window: MainWindow) -> None:
    window.settings = replace(window.settings, max_new_tokens=30)
    requests = []
    window.host.generate_requested.connect(requests.append)
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS) as first:
        ask(qtbot, window, "What do you see?")
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS) as second:
        qtbot.mouseClick(window.chat.regenerate_button, Qt.MouseButton.LeftButton)
    assert requests[0].turns == requests[1].turns
    assert len(window.chat.conversation.exchanges) == 1
    # Greedy decoding would repeat the answer: regenerate samples, with its seed said and kept
    assert requests[0].job.settings.sampling.greedy and not requests[1].job.settings.sampling.greedy
    seed = requests[1].job.settings.sampling.seed
    assert second.args[0].settings.sampling.seed == seed and f"seed {seed}" in window.statusBar().currentMessage()
    (message,) = window.store.messages(window.chat.conversation.id)
    assert [v.settings["sampling"]["seed"] for v in message.variants] == [None, seed]
    assert second.args[0].text != first.args[0].text
    assert window.chat.transcript.toPlainText().count("What do you see?") == 1


def test_corrupt_image_shows_an_error_and_the_app_stays_usable(qtbot, window: MainWindow, tmp_path: Path,
                                                             picture: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture at all")
    with qtbot.waitSignal(window.viewer.load_finished):
        window.viewer.open_paths([broken])
    assert window.viewer.error_label.isVisible()
    with pytest.raises(InputFileError) as expected:
        load_image(broken)
    assert window.viewer.error_label.text() == str(expected.value)  # the core's one line, naming the file
    assert window.viewer.model.rowCount() == 0
    with qtbot.waitSignal(window.viewer.load_finished):
        window.viewer.open_paths([picture])
    assert window.viewer.model.rowCount() == 1 and not window.viewer.error_label.isVisible()


def test_answer_failure_is_shown_in_the_window(qtbot, window: MainWindow) -> None:
    window.settings = replace(window.settings, max_new_tokens=5)
    window.host.worker._engine.options = LoadOptions(context_limit=8)
    with qtbot.waitSignal(window.host.worker.failed, timeout=ANSWER_TIMEOUT_MS) as failed:
        ask(qtbot, window, "This question is longer than eight tokens of context")
    assert failed.args[0] == "context"
    qtbot.waitUntil(window.chat.notice.isVisible)
    assert "context limit" in window.chat.notice.text() and window.chat.notice.isVisible()
    assert window.host.state is ModelState.READY and window.chat.send_button.isEnabled()


def test_status_bar_in_cpu_mode_polls_only_while_visible(qtbot, window: MainWindow) -> None:
    assert window.gpu_status.text().startswith("CPU mode")
    assert window.model_status.text() == "Model: ready · medgemma-tiny + lora-r8-tiny"  # short: messages fit
    assert "float32" in window.model_status.toolTip() and "NF4" in window.model_status.toolTip()
    assert "vision active" in window.model_status.toolTip()
    assert window.gpu_status.timer.isActive()
    window.hide()
    assert not window.gpu_status.timer.isActive()
    window.show()
    assert window.gpu_status.timer.isActive()


def test_disclaimer_is_visible(window: MainWindow) -> None:
    assert window.disclaimer.isVisible() and window.disclaimer.text() == DISCLAIMER


def test_ui_thread_stays_responsive_while_loading_and_generating(qtbot, tiny_settings_path: Path) -> None:
    main = MainWindow(tiny_settings_path)
    qtbot.addWidget(main)
    main.show()
    meter = GapMeter()  # from the first paint: the load starts after it
    wait_ready(qtbot, main)
    meter.stop()
    meter.assert_responsive("loading")
    tokens: list[str] = []
    main.host.worker.token.connect(tokens.append)
    meter.start()
    with qtbot.waitSignal(main.answer_finished, timeout=ANSWER_TIMEOUT_MS):
        main.controller.ask("Stream for a while")
        qtbot.waitUntil(lambda: len(tokens) >= 200, timeout=ANSWER_TIMEOUT_MS)
        main.host.stop()
    meter.stop()
    main.close()
    meter.assert_responsive("generating")


def test_closing_during_generation_stops_and_joins_the_thread(qtbot, window: MainWindow) -> None:
    tokens: list[str] = []
    window.host.worker.token.connect(tokens.append)
    ask(qtbot, window, "A very long answer please")
    qtbot.waitUntil(lambda: len(tokens) >= 3, timeout=ANSWER_TIMEOUT_MS)
    started = time.perf_counter()
    window.close()
    assert time.perf_counter() - started < 5
    assert not window.host._thread.isRunning()


def test_closing_during_loading_cancels_and_joins_the_thread(qtbot, tiny_settings_path: Path) -> None:
    main = MainWindow(tiny_settings_path)
    qtbot.addWidget(main)
    main.show()
    qtbot.waitUntil(lambda: main.host.state is ModelState.LOADING, timeout=2000)
    main.close()
    assert not main.host._thread.isRunning()


def _qt_internal(widget: QWidget) -> bool:
    """Parts Qt builds inside a composite control (a combo box's popup list, the menu bar's overflow button)."""
    parent = widget.parentWidget()
    while parent is not None:
        if isinstance(parent, (QComboBox, QAbstractSpinBox, QMenuBar)):
            return True
        parent = parent.parentWidget()
    return False


def test_every_control_has_an_accessible_name(qtbot, window: MainWindow) -> None:
    settings = window.open_settings()
    about = window.show_about()
    controls = (QAbstractButton, QLineEdit, QPlainTextEdit, QTextEdit, QComboBox, QAbstractSpinBox,
                QAbstractItemView, QGraphicsView)
    checked, unnamed = 0, []
    for root in (window, settings, about, window.first_run):
        for widget in root.findChildren(QWidget):
            if isinstance(widget, controls) and not _qt_internal(widget):
                checked += 1
                if not QAccessible.queryAccessibleInterface(widget).text(QAccessible.Text.Name).strip():
                    unnamed.append(f"{type(widget).__name__} in {type(widget.parentWidget()).__name__}")
    settings.reject()
    about.reject()
    assert checked > 25
    assert unnamed == [], unnamed


def test_the_thinking_trace_is_folded_until_asked_for(window: MainWindow) -> None:
    from PySide6.QtCore import QUrl

    from medgemma_desktop.core.engine import GenerationStats
    from medgemma_desktop.core.prompts import TaskMode
    from medgemma_desktop.session.question import prepare_question

    session = window.controller.session
    job = session.begin(prepare_question(TaskMode.FREE_CHAT, [], "Is there an effusion?"))
    window.chat.begin_answer(job.index, new_question=True)
    session.finish(job, Answer("No effusion.", "look at the costophrenic angles", GenerationStats(new_tokens=3)))
    window.chat.finish()
    transcript = window.chat.transcript
    assert "No effusion." in transcript.toPlainText()
    assert "costophrenic" not in transcript.toPlainText()
    assert "Show the model's thinking" in transcript.toPlainText()
    transcript.anchorClicked.emit(QUrl("thinking:0"))
    assert "costophrenic" in transcript.toPlainText() and "Hide the model's thinking" in transcript.toPlainText()


def test_the_first_load_starts_after_the_first_paint_or_without_one(qtbot, tiny_settings_path: Path) -> None:
    """Loading waits for the window's first paint (it competed with it for the GIL); a window that is never
    painted still loads."""
    shown = MainWindow(tiny_settings_path)
    qtbot.addWidget(shown)
    painted_while_idle: list[bool] = []
    shown.paintEvent = lambda event: (painted_while_idle.append(shown.host.state is ModelState.NO_MODEL),
                                      MainWindow.paintEvent(shown, event))
    shown.show()
    wait_ready(qtbot, shown)
    assert painted_while_idle[0] is True
    shown.close()
    hidden = MainWindow(tiny_settings_path)
    qtbot.addWidget(hidden)
    assert hidden.host.state is ModelState.NO_MODEL
    wait_ready(qtbot, hidden)
    hidden.close()
