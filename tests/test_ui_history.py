"""Conversations that last: the real worker on the tiny checkpoint records every question and answer in the
store, and the window lists, searches, renames, deletes (with Undo), reopens, continues, edits, regenerates
(keeping variants) and exports them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pypdf import PdfReader
from PySide6.QtCore import Qt, QUrl

from medgemma_desktop.core.export import DISCLAIMER
from medgemma_desktop.core.imaging import load_any
from medgemma_desktop.core.store import DB_FILENAME, AnswerStatus, ConversationStore
from medgemma_desktop.ui.main_window import MainWindow
from medgemma_desktop.ui.worker import ModelState

TIMEOUT_MS = 30_000
CT = Path(get_testdata_file("CT_small.dcm"))
PATIENT_NAME = "CompressedSamples^CT1"


def open_window(qtbot, settings_path: Path, data: Path) -> MainWindow:
    window = MainWindow(settings_path, loader=load_any, data_folder=data)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY, timeout=TIMEOUT_MS)
    return window


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def window(qtbot, tiny_settings_path: Path, data: Path) -> Iterator[MainWindow]:
    main = open_window(qtbot, tiny_settings_path, data)
    main.settings = replace(main.settings, max_new_tokens=12)
    yield main
    main.close()


def add_ct(qtbot, window: MainWindow) -> None:
    with qtbot.waitSignal(window.viewer.load_finished):
        window.viewer.open_paths([CT])


def listed(window: MainWindow) -> list[str]:
    return [window.history.list.item(row).text() for row in range(window.history.list.count())]


def click_link(window: MainWindow, link: str) -> None:
    """What clicking a link in the transcript delivers."""
    window.chat.transcript.anchorClicked.emit(QUrl(link))


def test_the_question_and_its_images_are_stored_before_the_first_token(qtbot, ask_and_wait, window: MainWindow) -> None:
    add_ct(qtbot, window)
    seen_at_first_token: list[list[str]] = []

    def look(_text: str) -> None:  # runs on the model thread as the first token leaves it
        if not seen_at_first_token:
            messages = window.store.messages(window.chat.conversation.id)
            seen_at_first_token.append([m.question for m in messages] + [i.label for m in messages for i in m.images])

    window.host.worker.token.connect(look, Qt.ConnectionType.DirectConnection)
    ask_and_wait(window, "Describe the slice", TIMEOUT_MS)
    assert seen_at_first_token == [["Describe the slice", "CT_small.dcm"]]
    (message,) = window.store.messages(window.chat.conversation.id)
    answer = message.answer
    assert answer is not None and answer.status is AnswerStatus.DONE
    assert answer.text.strip() == window.chat.conversation.last.answer
    assert answer.model.folder == "medgemma-tiny" and answer.adapter.folder == "lora-r8-tiny"
    assert answer.settings["max_new_tokens"] == 12 and answer.stats["new_tokens"] > 0
    assert listed(window) == ["Describe the slice"]


def test_answers_are_shown_after_reopening_and_the_conversation_continues(qtbot, ask_and_wait, tiny_settings_path: Path,
                                                                          data: Path) -> None:
    first = open_window(qtbot, tiny_settings_path, data)
    first.settings = replace(first.settings, max_new_tokens=12)
    add_ct(qtbot, first)
    ask_and_wait(first, "What organ is shown?", TIMEOUT_MS)
    answer = first.chat.conversation.last.answer
    first.close()

    again = open_window(qtbot, tiny_settings_path, data)
    again.settings = replace(again.settings, max_new_tokens=6)
    assert listed(again) == ["What organ is shown?"] and again.chat.conversation.exchanges == []
    with qtbot.waitSignal(again.conversation_opened):
        qtbot.mouseClick(again.history.list.viewport(), Qt.MouseButton.LeftButton,
                         pos=again.history.list.visualItemRect(again.history.list.item(0)).center())
    transcript = again.chat.transcript.toPlainText()
    assert "What organ is shown?" in transcript and answer.splitlines()[0].strip() in transcript
    assert again.viewer.model.rowCount() == 1 and again.viewer.model.is_sent(0)
    assert again.viewer.model.pending() == []
    requests = []
    again.host.generate_requested.connect(requests.append)
    ask_and_wait(again, "And the next slice?", TIMEOUT_MS)
    history_turn = requests[0].turns[0]
    assert history_turn.role == "user" and "What organ is shown?" in history_turn.parts
    assert any(not isinstance(part, str) for part in history_turn.parts)  # the stored image went back in
    assert [m.question for m in again.store.messages(again.chat.conversation.id)] == [
        "What organ is shown?", "And the next slice?"]
    again.close()


def test_search_finds_a_past_question_with_a_snippet(qtbot, ask_and_wait, window: MainWindow) -> None:
    ask_and_wait(window, "Is there a pneumothorax?", TIMEOUT_MS)
    window.new_conversation()
    ask_and_wait(window, "Count the ribs", TIMEOUT_MS)
    assert listed(window) == ["Count the ribs", "Is there a pneumothorax?"]  # newest first
    qtbot.keyClicks(window.history.search_box, "pneumo")
    qtbot.waitUntil(lambda: window.history.list.count() == 1 and window.history.list.itemWidget(
        window.history.list.item(0)) is not None)
    hit = window.history.list.itemWidget(window.history.list.item(0)).text()
    assert "<b>pneumothorax</b>" in hit and "(question)" in hit
    with qtbot.waitSignal(window.conversation_opened):
        window.history.list.itemClicked.emit(window.history.list.item(0))
    assert window.chat.conversation.exchanges[0].question == "Is there a pneumothorax?"
    window.history.search_box.clear()
    qtbot.waitUntil(lambda: window.history.list.count() == 2)


def test_rename(qtbot, ask_and_wait, window: MainWindow) -> None:
    ask_and_wait(window, "First question", TIMEOUT_MS)
    history = window.history
    history.list.setCurrentRow(0)
    qtbot.mouseClick(history.rename_button, Qt.MouseButton.LeftButton)
    history.list.item(0).setText("Case 12, follow-up")  # what the inline editor commits
    qtbot.waitUntil(lambda: listed(window) == ["Case 12, follow-up"])
    assert window.store.conversation(window.chat.conversation.id).title == "Case 12, follow-up"


def test_delete_with_undo_then_delete_for_good(qtbot, ask_and_wait, window: MainWindow) -> None:
    ask_and_wait(window, "Keep me", TIMEOUT_MS)
    conversation_id = window.chat.conversation.id
    history = window.history
    history.list.setCurrentRow(0)
    qtbot.mouseClick(history.delete_button, Qt.MouseButton.LeftButton)
    assert listed(window) == [] and window.chat.conversation.exchanges == []
    assert history.undo_bar.isVisible() and "Keep me" in history.undo_label.text()
    with qtbot.waitSignal(window.conversation_opened):
        qtbot.mouseClick(history.undo_button, Qt.MouseButton.LeftButton)
    assert listed(window) == ["Keep me"] and window.chat.conversation.id == conversation_id
    assert not history.undo_bar.isVisible()

    history.list.setCurrentRow(0)
    qtbot.mouseClick(history.delete_button, Qt.MouseButton.LeftButton)
    path = window.store.path
    window.close()
    with ConversationStore(path) as store:
        assert store.list_conversations(include_deleted=True) == []  # purged when the window closed


def test_edit_a_past_question_and_resend(qtbot, ask_and_wait, window: MainWindow) -> None:
    ask_and_wait(window, "Where is the lesion?", TIMEOUT_MS)
    ask_and_wait(window, "How big is it?", TIMEOUT_MS)
    requests = []
    window.host.generate_requested.connect(requests.append)
    click_link(window, "edit:0")
    assert window.chat.question.toPlainText() == "Where is the lesion?" and window.chat.edit_bar.isVisible()
    window.chat.question.selectAll()
    with qtbot.waitSignal(window.answer_finished, timeout=TIMEOUT_MS):
        qtbot.keyClicks(window.chat.question, "Where exactly is the lesion?")
        qtbot.keyClick(window.chat.question, Qt.Key.Key_Return)
    (request,) = requests
    assert request.turns[-1].parts[-1] == "Where exactly is the lesion?"
    assert all("How big is it?" not in turn.parts for turn in request.turns)  # only the history before it
    first, second = window.store.messages(window.chat.conversation.id)
    assert first.question == "Where exactly is the lesion?" and first.edited_at is not None
    assert [v.question for v in first.variants] == ["Where is the lesion?", "Where exactly is the lesion?"]
    assert second.question == "How big is it?" and len(second.variants) == 1
    transcript = window.chat.transcript.toPlainText()
    assert "Where exactly is the lesion?" in transcript and "2/2" in transcript
    assert not window.chat.edit_bar.isVisible()


def test_regenerate_keeps_both_answers_and_switching_shows_each(qtbot, ask_and_wait, window: MainWindow) -> None:
    window.settings = replace(window.settings, max_new_tokens=4)
    ask_and_wait(window, "Describe it", TIMEOUT_MS)
    short = window.chat.conversation.last.answer
    window.settings = replace(window.settings, max_new_tokens=16)
    with qtbot.waitSignal(window.answer_finished, timeout=TIMEOUT_MS):
        qtbot.mouseClick(window.chat.regenerate_button, Qt.MouseButton.LeftButton)
    long = window.chat.conversation.last.answer
    assert long != short
    (message,) = window.store.messages(window.chat.conversation.id)
    assert len(message.variants) == 2 and message.answer.id == message.variants[1].id
    assert "2/2" in window.chat.transcript.toPlainText()

    click_link(window, "prev:0")
    assert window.chat.conversation.last.answer == short and "1/2" in window.chat.transcript.toPlainText()
    assert window.store.message(message.id).answer.id == message.variants[0].id  # the choice is stored
    click_link(window, "next:0")
    assert window.chat.conversation.last.answer == long and "2/2" in window.chat.transcript.toPlainText()


def pdf_text(path: Path) -> str:
    text = "".join(page.extract_text() or "" for page in PdfReader(path).pages)
    for ligature, letters in {"ﬁ": "fi", "ﬂ": "fl", "ﬀ": "ff", "ﬃ": "ffi", "ﬄ": "ffl"}.items():
        text = text.replace(ligature, letters)
    return re.sub(r"\s+", "", text)


def export(qtbot, window: MainWindow, path: Path, fmt: str, patient_data: bool) -> Path:
    dialog = window.open_export()
    assert dialog is not None and not dialog.patient_data.isChecked()  # off unless the user ticks it
    dialog.format.setCurrentIndex(dialog.format.findData(fmt))
    dialog.path_edit.setText(str(path))
    dialog.patient_data.setChecked(patient_data)
    with qtbot.waitSignal(window.export_finished, timeout=TIMEOUT_MS) as done:
        qtbot.mouseClick(dialog.export_button, Qt.MouseButton.LeftButton)
    return done.args[0]


def test_export_markdown_json_and_pdf(qtbot, ask_and_wait, window: MainWindow, tmp_path: Path) -> None:
    settings = window.open_settings()  # the history keeps patient details only when the user chooses to
    settings.keep_patient_data.setChecked(True)
    settings.accept()
    add_ct(qtbot, window)
    ask_and_wait(window, "Findings?", TIMEOUT_MS)
    sha256 = window.store.messages(window.chat.conversation.id)[0].answer.model.sha256

    record = json.loads(export(qtbot, window, tmp_path / "case.json", "json", False).read_text(encoding="utf-8"))
    assert record["disclaimer"] == DISCLAIMER and record["includes_patient_data"] is False
    assert record["models"] == [{"model": {"folder": "medgemma-tiny", "sha256": sha256},
                                 "adapter": {"folder": "lora-r8-tiny", "sha256": record["models"][0]["adapter"]
                                             ["sha256"]}}]
    assert PATIENT_NAME not in json.dumps(record) and "patient" not in record["messages"][0]["images"][0]
    with_phi = json.loads(export(qtbot, window, tmp_path / "phi.json", "json", True).read_text(encoding="utf-8"))
    assert with_phi["messages"][0]["images"][0]["patient"]["PatientName"] == PATIENT_NAME

    markdown = export(qtbot, window, tmp_path / "case.md", "markdown", False).read_text(encoding="utf-8")
    assert DISCLAIMER in markdown and sha256 in markdown and "Findings?" in markdown
    assert PATIENT_NAME not in markdown
    assert (tmp_path / "case_images").is_dir()

    plain = pdf_text(export(qtbot, window, tmp_path / "case.pdf", "pdf", False))
    assert re.sub(r"\s+", "", DISCLAIMER) in plain and sha256 in plain and "medgemma-tiny" in plain
    assert PATIENT_NAME not in plain
    assert PATIENT_NAME in pdf_text(export(qtbot, window, tmp_path / "phi.pdf", "pdf", True))
    assert len(PdfReader(tmp_path / "case.pdf").pages[0].images) == 1  # the CT slice is in the PDF


def test_store_notices_are_shown_in_the_window(qtbot, ask_and_wait, tiny_settings_path: Path, data: Path) -> None:
    data.mkdir(parents=True)
    (data / DB_FILENAME).write_bytes(b"this is not a database" * 100)
    window = open_window(qtbot, tiny_settings_path, data)
    window.settings = replace(window.settings, max_new_tokens=6)
    assert window.history.notice.isVisible()
    assert "moved-aside" in window.history.notice.text() or "kept as" in window.history.notice.text()
    ask_and_wait(window, "Still saved?", TIMEOUT_MS)
    assert listed(window) == ["Still saved?"]
    window.close()
