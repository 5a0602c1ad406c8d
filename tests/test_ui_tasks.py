"""Task modes through the main window and the real model worker on the tiny checkpoint: the exact turns each
mode sends (captured as the worker receives them), the CT encoding of a series, the mode's image-count error,
localization boxes drawn through the padding and exported, and the token budget refusing a series that does not
fit while offering the slice count that does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QRectF, Qt

from medgemma_desktop.core.dicom import load_dicom_folder
from medgemma_desktop.core.engine import GenerationStats
from medgemma_desktop.core.export import DISCLAIMER
from medgemma_desktop.core.imaging import pad_to_square, volume_image_inputs
from medgemma_desktop.core.prompts import (
    CT_QUESTION,
    ChatTurn,
    TaskMode,
    build_chat,
    build_task_prompt,
    series_instruction,
)
from medgemma_desktop.core.windowing import ct_rgb_slice, sample_slice_indices
from medgemma_desktop.session.question import slices_that_fit
from medgemma_desktop.session.recording import Answer
from medgemma_desktop.ui.main_window import MainWindow
from medgemma_desktop.ui.worker import GenerateRequest, ModelState

TIMEOUT_MS = 30_000


@pytest.fixture
def window(qtbot, tiny_settings_path: Path) -> Iterator[MainWindow]:
    main = MainWindow(tiny_settings_path)
    qtbot.addWidget(main)
    main.settings = replace(main.settings, max_new_tokens=2)  # the structure is what matters, not the answer
    main.show()
    qtbot.waitUntil(lambda: main.host.state is ModelState.READY, timeout=TIMEOUT_MS)
    yield main
    main.close()


@pytest.fixture
def requests(window: MainWindow) -> list[GenerateRequest]:
    captured: list[GenerateRequest] = []
    window.host.generate_requested.connect(captured.append)
    return captured


def picture(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def open_files(qtbot, window: MainWindow, paths: list[Path]) -> None:
    with qtbot.waitSignal(window.viewer.load_finished, timeout=TIMEOUT_MS):
        window.viewer.open_paths(paths)
    assert not window.viewer.error_label.isVisible(), window.viewer.error_label.text()


def send(qtbot, window: MainWindow, question: str) -> None:
    with qtbot.waitSignal(window.answer_finished, timeout=TIMEOUT_MS):
        window.chat.question.setPlainText(question)
        qtbot.mouseClick(window.chat.send_button, Qt.MouseButton.LeftButton)


def assert_same_turns(actual: tuple[ChatTurn, ...] | list[ChatTurn], expected: list[ChatTurn]) -> None:
    """Same roles, same texts, same pixels, in the same order."""
    assert [turn.role for turn in actual] == [turn.role for turn in expected]
    for got, want in zip(actual, expected, strict=True):
        assert len(got.parts) == len(want.parts)
        for part, wanted in zip(got.parts, want.parts, strict=True):
            if isinstance(wanted, Image.Image):
                assert isinstance(part, Image.Image) and part.size == wanted.size
                np.testing.assert_array_equal(np.asarray(part), np.asarray(wanted))
            else:
                assert part == wanted


def test_picture_modes_send_googles_turns(qtbot, window: MainWindow, requests: list[GenerateRequest],
                                         tmp_path: Path) -> None:
    first = picture(tmp_path / "first.png", (64, 48), (200, 10, 10))
    second = picture(tmp_path / "second.png", (48, 64), (10, 200, 10))
    task = window.chat.task
    assert task.mode is TaskMode.FREE_CHAT

    open_files(qtbot, window, [first, second])
    send(qtbot, window, "What differs?")
    a, b = (Image.open(path).convert("RGB") for path in (first, second))
    assert_same_turns(requests[-1].turns, build_chat("What differs?", [a, b]))

    for mode in (TaskMode.DESCRIBE, TaskMode.DOCUMENT_EXTRACTION):
        window.new_conversation()
        task.set_mode(mode)
        assert window.chat.question.placeholderText() == mode.default_question
        open_files(qtbot, window, [first])
        send(qtbot, window, "")  # empty: the mode's default question
        assert_same_turns(requests[-1].turns, build_task_prompt(mode, [a]))
        qtbot.wait(400)  # the recount after the answer: a follow-up needs no image, so no "0 were given"
        assert "given" not in task.budget.text() and task.budget.text().startswith("Input")
        assert mode.title in window.chat.transcript.toPlainText()

    window.new_conversation()
    task.set_mode(TaskMode.LONGITUDINAL_CXR)
    open_files(qtbot, window, [first, second])
    window.viewer.strip.setCurrentIndex(window.viewer.model.index(1))
    qtbot.mouseClick(window.viewer.prior_button, Qt.MouseButton.LeftButton)  # the second file is the older one
    assert "(prior)" in window.viewer.model.data(window.viewer.model.index(1))
    send(qtbot, window, "")
    assert_same_turns(requests[-1].turns, build_task_prompt(TaskMode.LONGITUDINAL_CXR, [b, a]))

    window.new_conversation()
    task.set_mode(TaskMode.LOCALIZATION)
    open_files(qtbot, window, [second])
    send(qtbot, window, "left lung")
    padded, _ = pad_to_square(b)
    assert padded.size == (64, 64)
    assert_same_turns(requests[-1].turns, build_task_prompt(TaskMode.LOCALIZATION, [padded], "left lung"))


def test_a_mode_refuses_the_wrong_number_of_images_with_the_cores_line(qtbot, window: MainWindow,
                                                                       requests: list[GenerateRequest],
                                                                       tmp_path: Path) -> None:
    window.chat.task.set_mode(TaskMode.LONGITUDINAL_CXR)
    open_files(qtbot, window, [picture(tmp_path / "only.png", (32, 32), (90, 90, 90))])
    window.chat.question.setPlainText("Compare")
    qtbot.mouseClick(window.chat.send_button, Qt.MouseButton.LeftButton)
    with pytest.raises(Exception) as expected:
        TaskMode.LONGITUDINAL_CXR.check_image_count(1)
    # Said once, in the task bar above the question (not again in the chat's notice)
    assert window.chat.task.budget.text() == str(expected.value) and not window.chat.notice.isVisible()
    assert requests == [] and window.chat.conversation.exchanges == []
    assert window.chat.question.toPlainText() == "Compare"  # kept, to fix and send again
    window.controller.update_budget()
    assert window.chat.task.budget.text() == str(expected.value)  # said before sending too


def test_ct_series_sends_three_window_slices_then_the_question_and_follow_ups_keep_them(
        qtbot, window: MainWindow, requests: list[GenerateRequest], tmp_path: Path, ct_series) -> None:
    ct_series(tmp_path / "ct", [0, 50, 100, 150, 200])
    open_files(qtbot, window, [tmp_path / "ct"])
    task = window.chat.task
    assert task.mode is TaskMode.CT_SERIES and task.slices.isVisible()  # switched on opening a CT series
    assert task.slice_count == 5 and task.slices.maximum() == 5  # the series' own count, not 85
    task.slices.setValue(3)
    send(qtbot, window, "")

    (series,) = load_dicom_folder(tmp_path / "ct")
    volume = series.volume()
    indices = sample_slice_indices(5, 3)
    slices = [Image.fromarray(ct_rgb_slice(volume[index])) for index in indices]
    expected = build_task_prompt(TaskMode.CT_SERIES, slices)
    assert_same_turns(requests[-1].turns, expected)
    parts = requests[-1].turns[-1].parts
    assert parts[0] == series_instruction("CT") and parts[2] == "SLICE 1" and parts[-2] == "SLICE 3"
    assert parts[-1] == CT_QUESTION  # the question last (medgemma#76)
    assert_same_turns(requests[-1].turns, build_task_prompt(
        TaskMode.CT_SERIES, [item.image for item in volume_image_inputs(series, max_slices=3)]))
    assert "3 slices attached" in window.chat.transcript.toPlainText()

    answer = window.chat.conversation.last.answer.strip()  # type: ignore[union-attr]
    send(qtbot, window, "Is there a fracture?")
    history = [expected[-1], ChatTurn("assistant", (answer,))]
    assert_same_turns(requests[-1].turns, build_chat("Is there a fracture?", history=history))


def test_mri_series_sends_the_volume_normalised_slices(qtbot, window: MainWindow, requests: list[GenerateRequest],
                                                       tmp_path: Path, mr_series) -> None:
    folder = mr_series(tmp_path / "mr")
    open_files(qtbot, window, [folder])
    assert window.chat.task.mode is TaskMode.MRI_SERIES
    send(qtbot, window, "")
    (series,) = load_dicom_folder(folder)
    slices = [item.image for item in volume_image_inputs(series)]
    assert_same_turns(requests[-1].turns, build_task_prompt(TaskMode.MRI_SERIES, slices))


def test_a_localization_answer_draws_its_boxes_through_the_padding(qtbot, window: MainWindow,
                                                                   tmp_path: Path) -> None:
    window.chat.task.set_mode(TaskMode.LOCALIZATION)
    open_files(qtbot, window, [picture(tmp_path / "cxr.png", (240, 320), (60, 60, 60))])
    window.host.generate_requested.disconnect(window.host.worker.generate)  # the tiny model writes noise
    window.chat.question.setPlainText("left lung")
    qtbot.mouseClick(window.chat.send_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.host.state is ModelState.GENERATING, timeout=TIMEOUT_MS)
    exchange = window.chat.conversation.last
    assert exchange is not None and exchange.padding is not None and exchange.padding.left == 40

    text = 'Reasoning.\nFinal Answer: ```json[{"box_2d": [100, 200, 500, 600], "label": "left lung"}]```'
    window.host.worker.finished.emit(Answer(text, "", GenerationStats(stop_reason="end")))

    overlay = window.viewer.canvas.boxes
    qtbot.waitUntil(lambda: bool(overlay.rects))  # the window hears the worker through a queued connection
    [rect] = overlay.rects
    # side 320, so 0..1000 is 0..320 px; the picture sits 40 px in from the left of the padded square
    assert rect.mapRectToScene(rect.rect()) == QRectF(200 * 0.32 - 40, 100 * 0.32, 400 * 0.32, 400 * 0.32)
    assert rect.toolTip() == "left lung" and overlay.isVisible()
    assert window.viewer.boxes_button.isVisible() and window.viewer.export_boxes_button.isVisible()
    qtbot.mouseClick(window.viewer.boxes_button, Qt.MouseButton.LeftButton)
    assert not overlay.isVisible()

    out = tmp_path / "boxes.json"
    window.viewer.export_boxes(out)
    exported = json.loads(out.read_text(encoding="utf-8"))
    assert exported["disclaimer"] == DISCLAIMER
    assert exported["boxes"][0]["pixels"] == {"left": 24, "top": 32, "right": 152, "bottom": 160}
    assert exported["image"] == {"width": 240, "height": 320}


def test_the_token_budget_refuses_a_series_that_does_not_fit_and_offers_what_does(
        qtbot, window: MainWindow, requests: list[GenerateRequest], tmp_path: Path, ct_series) -> None:
    window.settings = replace(window.settings, context_limit=900, max_new_tokens=100)
    ct_series(tmp_path / "ct", [0] * 40)
    open_files(qtbot, window, [tmp_path / "ct"])
    counter = window.controller.counter
    assert counter is not None and counter.tokens_per_image == 16  # the tiny checkpoint's, from the worker
    fit = slices_that_fit(replace(counter, context_limit=900), CT_QUESTION, "CT", max_new_tokens=100)
    assert 0 < fit < 40
    task = window.chat.task
    qtbot.waitUntil(lambda: task.fit_button.isVisible(), timeout=TIMEOUT_MS)  # recounted after a short pause
    assert "limit of 900" in task.budget.text() and task.fit_button.text() == f"Use {fit} slices"

    qtbot.mouseClick(window.chat.send_button, Qt.MouseButton.LeftButton)
    assert requests == [] and "A CT series of" in task.budget.text()

    qtbot.mouseClick(task.fit_button, Qt.MouseButton.LeftButton)
    assert task.slice_count == fit
    window.controller.update_budget()
    assert not task.fit_button.isVisible() and "limit 900" in task.budget.text()
    send(qtbot, window, "")
    assert len(requests[-1].turns[-1].images) == fit
    assert window.chat.conversation.last.stats.prompt_tokens <= 900 - 100  # type: ignore[union-attr]
