"""Everyday use as a new user finds it: Tab from the question reaches the buttons, the speed shows while an
answer streams, every answer and code block has a Copy link, the status bar leaves room for its messages,
thumbnail labels never overlap, Settings has a shortcut, and the canvas is named for screen readers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QGuiApplication, QKeySequence

from medgemma_desktop.core.engine import GenerationStats
from medgemma_desktop.core.imaging import load_image
from medgemma_desktop.core.prompts import TaskMode
from medgemma_desktop.session.question import prepare_question
from medgemma_desktop.session.recording import Answer
from medgemma_desktop.ui.copy_links import code_blocks, parse_link, with_copy_links
from medgemma_desktop.ui.main_window import MainWindow
from medgemma_desktop.ui.pictures import render_picture
from medgemma_desktop.ui.settings_dialog import SettingsDialog
from medgemma_desktop.ui.worker import ModelState

TIMEOUT_MS = 60_000
CODE_ANSWER = """Two snippets.

```python
print("left lung")
```

and

~~~json
{"box_2d": [1, 2, 3, 4]}
~~~
"""


@pytest.fixture
def window(ready_window: MainWindow) -> MainWindow:
    return ready_window


def tab_stops(qtbot, window: MainWindow, count: int) -> list[str]:
    """Press Tab `count` times from the question box; the accessible names focus lands on."""
    window.activateWindow()
    window.chat.question.setFocus()
    names = []
    for _ in range(count):
        qtbot.keyClick(QGuiApplication.focusObject(), Qt.Key.Key_Tab)
        names.append(QGuiApplication.focusObject().accessibleName())
    return names


def test_tab_moves_from_the_question_to_the_buttons(qtbot, ask_and_wait, window: MainWindow) -> None:
    qtbot.keyClicks(window.chat.question, "Findings?")
    assert tab_stops(qtbot, window, 1) == ["Send"]
    assert window.chat.question.toPlainText() == "Findings?"  # no tab character went in
    window.settings = replace(window.settings, max_new_tokens=4)
    window.chat.question.clear()
    ask_and_wait(window, "Findings?", TIMEOUT_MS)
    qtbot.keyClicks(window.chat.question, "More?")
    assert tab_stops(qtbot, window, 3) == ["Send", "Regenerate", "Copy answer"]  # Stop is off: nothing to stop


def test_speed_shows_while_the_answer_streams(qtbot, window: MainWindow) -> None:
    window.settings = replace(window.settings, max_new_tokens=400)
    seen: list[str] = []
    qtbot.keyClicks(window.chat.question, "Write a long report")
    qtbot.keyClick(window.chat.question, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: "tokens/s" in window.chat.speed.text(), timeout=TIMEOUT_MS)
    seen.append(window.chat.speed.text())
    assert window.chat.speed.isVisible() and window.host.state is ModelState.GENERATING
    count, rate = seen[0].split(" tokens · ")
    assert int(count.replace(",", "")) >= 2 and float(rate.split()[0]) > 0
    with qtbot.waitSignal(window.answer_finished, timeout=TIMEOUT_MS):
        window.host.stop()
    assert window.chat.speed.text() == ""  # the answer's own figures are under it now
    assert "tokens/s" in window.chat.transcript.toPlainText()


def test_every_answer_and_code_block_has_a_copy_link(qtbot, window: MainWindow) -> None:
    session = window.controller.session
    job = session.begin(prepare_question(TaskMode.FREE_CHAT, [], "Give me code"))
    window.chat.begin_answer(job.index, new_question=True)
    assert "Copy answer" not in window.chat.transcript.toPlainText()  # not while it streams
    session.finish(job, Answer(CODE_ANSWER, "", GenerationStats(new_tokens=30, decode_tokens_per_s=9.0)))
    window.chat.finish()
    shown = window.chat.transcript.toPlainText()
    assert shown.count("Copy code") == 2 and shown.count("Copy answer") == 1
    window.chat.transcript.anchorClicked.emit(QUrl("code:0.1"))
    assert QGuiApplication.clipboard().text() == '{"box_2d": [1, 2, 3, 4]}'
    window.chat.transcript.anchorClicked.emit(QUrl("code:0.0"))
    assert QGuiApplication.clipboard().text() == 'print("left lung")'
    window.chat.transcript.anchorClicked.emit(QUrl("copy:0"))
    assert QGuiApplication.clipboard().text() == CODE_ANSWER


def test_copy_links_find_fenced_blocks_only() -> None:
    assert code_blocks(CODE_ANSWER) == ['print("left lung")', '{"box_2d": [1, 2, 3, 4]}']
    assert code_blocks('Final Answer: ```json[{"box_2d": [1, 2, 3, 4]}]```') == []  # inline, not a block
    assert with_copy_links("plain", 3).endswith("[Copy answer](copy:3)")
    assert parse_link("code:2.1") == ("code", 2, 1) and parse_link("copy:0") == ("copy", 0, 0)
    assert parse_link("edit:0") is None and parse_link("code:x") is None


def test_the_status_bar_leaves_room_for_its_messages(qtbot, window: MainWindow, tmp_path: Path) -> None:
    window.resize(1100, 700)
    message = "Exported to /home/anna/Documents/Description of the chest X-ray from Monday.pdf"
    window.statusBar().showMessage(message)
    qtbot.wait(50)
    permanent = sum(widget.width() for widget in (window.model_status, window.gpu_status))
    room = window.statusBar().width() - permanent
    assert window.fontMetrics().horizontalAdvance(message) < room
    assert len(window.model_status.text()) <= 60 and "cpu" in window.model_status.toolTip().lower()


def test_thumbnail_labels_never_overlap(qtbot, window: MainWindow, tmp_path: Path) -> None:
    pictures = []
    for number in range(3):
        path = tmp_path / f"a very long file name of a chest radiograph, number {number}, exported.png"
        Image.new("RGB", (60, 80), (number * 60, 90, 90)).save(path)
        pictures.append(render_picture(load_image(path)))
    window.viewer.model.add(pictures)
    strip = window.viewer.strip
    qtbot.waitUntil(strip.isVisible)
    rects = [strip.visualRect(window.viewer.model.index(row)) for row in range(3)]
    assert all(not a.intersects(b) for i, a in enumerate(rects) for b in rects[i + 1:])
    assert all(rect.bottom() < strip.viewport().height() for rect in rects)  # the labels are not cut off below
    tooltip = window.viewer.model.data(window.viewer.model.index(0), Qt.ItemDataRole.ToolTipRole)
    assert "number 0, exported.png" in tooltip  # the whole name, where the label is cut short


def test_settings_shortcut_banner_and_canvas_name(qtbot, window: MainWindow) -> None:
    settings = next(action for action in window.findChildren(type(window.export_action))
                    if action.text() == "&Settings…")
    assert settings.shortcut() == QKeySequence("Ctrl+,")
    window.activateWindow()
    qtbot.keyClick(window, Qt.Key.Key_Comma, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: any(dialog.isVisible() for dialog in window.findChildren(SettingsDialog)), timeout=5000)
    for dialog in window.findChildren(SettingsDialog):
        dialog.reject()
    assert window.viewer.canvas.viewport().accessibleName() == "Image"
    assert "button on the right" in window.demo_banner.label.text()
