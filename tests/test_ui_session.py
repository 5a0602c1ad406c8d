"""The window as views over the session, through the real worker on the tiny checkpoint: a reopened conversation
goes on in its own mode and sends the turns the original would (token ids and pixels compared), a localization
answer's boxes are drawn again on reopen, the window and `ask` agree at the context limit, and slices opened one
by one (without suffixes) become one series."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from pypdf import PdfReader
from PySide6.QtCore import QRectF, Qt

from medgemma_desktop.cli import main as cli_main
from medgemma_desktop.core.engine import Engine, GenerationSettings
from medgemma_desktop.core.prompts import ChatTurn, TaskMode
from medgemma_desktop.core.settings import Settings, save_settings
from medgemma_desktop.core.store import DB_FILENAME, ConversationStore
from medgemma_desktop.session.conversation import Session
from medgemma_desktop.session.inputs import open_inputs
from medgemma_desktop.session.question import prepare_question
from medgemma_desktop.ui.export_dialog import write_pdf
from medgemma_desktop.ui.main_window import MainWindow
from medgemma_desktop.ui.worker import GenerateRequest, ModelState

TIMEOUT_MS = 60_000


def open_window(qtbot, settings_path: Path, data: Path) -> tuple[MainWindow, list[GenerateRequest]]:
    window = MainWindow(settings_path, data_folder=data)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY, timeout=TIMEOUT_MS)
    requests: list[GenerateRequest] = []
    window.host.generate_requested.connect(requests.append)
    return window, requests


def send(qtbot, window: MainWindow, text: str) -> None:
    with qtbot.waitSignal(window.answer_finished, timeout=TIMEOUT_MS):
        window.chat.question.setPlainText(text)
        qtbot.mouseClick(window.chat.send_button, Qt.MouseButton.LeftButton)


def reopen(qtbot, window: MainWindow, conversation_id: int) -> None:
    window.new_conversation()
    with qtbot.waitSignal(window.conversation_opened, timeout=TIMEOUT_MS):
        window.controller.open_conversation(conversation_id)


def assert_same_model_inputs(engine: Engine, got: Sequence[ChatTurn], want: Sequence[ChatTurn]) -> None:
    a, b = engine.prepare(got), engine.prepare(want)
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_a_reopened_ct_series_goes_on_in_its_mode_with_the_same_turns(qtbot, tiny_settings_path: Path,
                                                                      tiny_engine: Engine, tmp_path: Path,
                                                                      ct_slices) -> None:
    ct_slices(tmp_path / "ct", [2.5 * i for i in range(5)], offsets=[0, 40, 80, 120, 160])
    window, requests = open_window(qtbot, tiny_settings_path, tmp_path / "data")
    window.settings = replace(window.settings, max_new_tokens=3)
    with qtbot.waitSignal(window.viewer.load_finished):
        window.viewer.open_paths([tmp_path / "ct"])
    assert window.chat.task.mode is TaskMode.CT_SERIES
    window.chat.task.slices.setValue(3)
    send(qtbot, window, "")
    send(qtbot, window, "Is there a fracture?")
    conversation_id = window.controller.session.id
    expected_next = window.controller.session.preview(TaskMode.CT_SERIES, 0, "Any bleed?")

    window.chat.task.set_mode(TaskMode.FREE_CHAT)
    reopen(qtbot, window, conversation_id)
    assert window.chat.task.mode is TaskMode.CT_SERIES  # restored, so going on is not free chat
    send(qtbot, window, "Any bleed?")  # continued: what the original conversation would have sent
    assert_same_model_inputs(tiny_engine, requests[-1].turns, expected_next)

    reopen(qtbot, window, conversation_id)
    with qtbot.waitSignal(window.answer_finished, timeout=TIMEOUT_MS):
        qtbot.mouseClick(window.chat.regenerate_button, Qt.MouseButton.LeftButton)
    assert_same_model_inputs(tiny_engine, requests[-1].turns, expected_next)  # regenerated: the same turns
    assert not requests[-1].job.settings.sampling.greedy
    assert len(requests[-1].turns[0].images) == 3  # the series' slices, as the model saw them first
    window.close()


def test_a_reopened_localization_answer_draws_its_boxes_and_regenerates_the_same_turns(
        qtbot, tiny_settings_path: Path, tiny_engine: Engine, tmp_path: Path, scripted_backend) -> None:
    data = tmp_path / "data"
    data.mkdir()
    picture = tmp_path / "cxr.png"
    Image.new("RGB", (240, 320), (60, 60, 60)).save(picture)
    with ConversationStore(data / DB_FILENAME) as store:
        session = Session(scripted_backend(), store, settings=GenerationSettings(max_new_tokens=3))
        job = session.begin(prepare_question(TaskMode.LOCALIZATION, open_inputs([picture]), "left lung"))
        session.run(job)
        conversation_id = session.id
    window, requests = open_window(qtbot, tiny_settings_path, data)
    window.settings = replace(window.settings, max_new_tokens=3)
    reopen(qtbot, window, conversation_id)
    assert window.chat.task.mode is TaskMode.LOCALIZATION
    [rect] = window.viewer.canvas.boxes.rects
    # drawn on the original picture: side 320, so 0..1000 is 0..320 px, the picture 40 px in from the left
    assert rect.mapRectToScene(rect.rect()) == QRectF(200 * 0.32 - 40, 100 * 0.32, 400 * 0.32, 400 * 0.32)
    assert window.viewer.current_picture().input.image.size == (240, 320)
    pdf = write_pdf(window.store, conversation_id, tmp_path / "boxes.pdf", include_patient_data=False)
    text = " ".join(" ".join(page.extract_text() for page in PdfReader(pdf).pages).split())  # pypdf: tabs between words
    assert "Boxes" in text and "left lung" in text and "box_2d" in text  # the stored boxes, in the PDF export
    with qtbot.waitSignal(window.answer_finished, timeout=TIMEOUT_MS):
        qtbot.mouseClick(window.chat.regenerate_button, Qt.MouseButton.LeftButton)
    assert_same_model_inputs(tiny_engine, requests[-1].turns, job.turns)
    window.close()


def test_the_window_and_ask_agree_at_the_context_limit(qtbot, tiny_checkpoint, tiny_engine: Engine,
                                                       tmp_path: Path, capsys) -> None:
    picture = tmp_path / "photo.png"
    Image.new("RGB", (50, 40), (90, 30, 30)).save(picture)
    prompt = Session(tiny_engine).budget(TaskMode.DESCRIBE, 1, "").prompt_tokens
    limit = prompt + 4
    ask = ["ask", "--model", str(tiny_checkpoint.model_dir), "--adapter", str(tiny_checkpoint.adapter_dir),
           "--image", str(picture), "--task", "describe", "--context-limit", str(limit), "--no-history"]
    assert cli_main([*ask, "--max-new-tokens", "4"]) == 0  # prompt + 4 == limit: fits
    assert cli_main([*ask, "--max-new-tokens", "5"]) == 2
    refusal = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"context limit of {limit}" in refusal

    settings_path = tmp_path / "settings.json"
    save_settings(Settings(model_dir=str(tiny_checkpoint.model_dir), adapter_dir=str(tiny_checkpoint.adapter_dir),
                           max_new_tokens=4, context_limit=limit), settings_path)
    window, requests = open_window(qtbot, settings_path, tmp_path / "data")
    window.chat.task.set_mode(TaskMode.DESCRIBE)
    for max_new_tokens, accepted in ((4, True), (5, False)):
        window.new_conversation()
        window.settings = replace(window.settings, max_new_tokens=max_new_tokens)
        with qtbot.waitSignal(window.viewer.load_finished):
            window.viewer.open_paths([picture])
        sent = len(requests)
        if accepted:
            send(qtbot, window, "")
            assert len(requests) == sent + 1 and requests[-1].job.record is not None
        else:
            window.chat.question.setPlainText("")
            qtbot.mouseClick(window.chat.send_button, Qt.MouseButton.LeftButton)
            assert len(requests) == sent and f"context limit of {limit}" in window.chat.task.budget.text()
            assert refusal.endswith(window.chat.task.budget.text())  # the same words as `ask`
    window.close()


def test_slices_opened_one_by_one_become_one_series(qtbot, viewer, tmp_path: Path, ct_slices) -> None:
    ct_slices(tmp_path / "ct", [2.5 * i for i in range(20)])
    slices = []
    for file in sorted((tmp_path / "ct").iterdir()):
        slices.append(file.with_suffix(""))  # as on CDs and PACS exports
        file.rename(slices[-1])
    with qtbot.waitSignal(viewer.load_finished, timeout=TIMEOUT_MS):
        viewer.open_paths(slices)
    assert viewer.model.rowCount() == 1 and not viewer.error_label.isVisible()
    picture = viewer.model.picture(0)
    assert picture.series is not None and picture.series.slice_count == 20
    assert "(20 slices)" in picture.input.label


def test_file_open_shows_files_without_a_suffix_and_open_folder_is_in_the_menu(qtbot, tiny_settings_path: Path,
                                                                              tmp_path: Path) -> None:
    from PySide6.QtWidgets import QMenu

    from medgemma_desktop.ui.viewer import OPEN_FILTER

    assert OPEN_FILTER.split(";;")[0].endswith("(*)")  # the default filter hides no DICOM file without a suffix
    window = MainWindow(tiny_settings_path, data_folder=tmp_path / "data")
    qtbot.addWidget(window)
    actions = {action.text(): action for menu in window.menuBar().findChildren(QMenu) for action in menu.actions()}
    assert "Open &folder…" in actions and actions["Open &folder…"].shortcut().toString() == "Ctrl+Shift+O"
    window.close()
