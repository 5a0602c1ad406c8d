"""Demo mode: the normal window on the tiny random model with the sample CT + MR study, a banner nobody can miss,
its own history file, and a way out to the real model without a restart; and the first-run page's plain-words
check of this computer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication, QDialogButtonBox

from medgemma_desktop.cli import main
from medgemma_desktop.core.demo import BANNER, DEMO_MAX_NEW_TOKENS, SERIES_DESCRIPTION
from medgemma_desktop.core.device import DevicePlan
from medgemma_desktop.core.export import DEMO_NOTICE
from medgemma_desktop.core.model_folder import check_model_folder
from medgemma_desktop.core.prompts import TaskMode
from medgemma_desktop.core.store import DB_FILENAME, ConversationStore
from medgemma_desktop.core.tiny_checkpoint import TinyCheckpoint
from medgemma_desktop.ui.machine_check import judge_machine
from medgemma_desktop.ui.main_window import DEMO_DB_FILENAME, MainWindow
from medgemma_desktop.ui.theme import apply_theme
from medgemma_desktop.ui.worker import ModelState

TIMEOUT_MS = 60_000


def wait_demo_ready(qtbot, window: MainWindow) -> None:
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY and window.viewer.model.rowCount() == 3,
                    timeout=TIMEOUT_MS)


@pytest.fixture
def demo(qtbot, tmp_path: Path) -> Iterator[MainWindow]:
    window = MainWindow(tmp_path / "settings.json", data_folder=tmp_path / "data", demo=True)
    qtbot.addWidget(window)
    window.show()
    wait_demo_ready(qtbot, window)
    window.settings = replace(window.settings, max_new_tokens=8)
    yield window
    window.close()


def rows(window: MainWindow) -> dict[str, int]:
    return {window.viewer.model.picture(row).input.label: row for row in range(window.viewer.model.rowCount())}


def keep_only(window: MainWindow, label: str) -> None:
    """Remove every other waiting picture from the next question, as a user does with Remove."""
    for name, row in sorted(rows(window).items(), key=lambda item: -item[1]):
        if name != label:
            window.viewer.model.remove(row)
    assert list(rows(window)) == [label]


def test_demo_starts_with_the_banner_the_model_and_the_sample_study(demo: MainWindow) -> None:
    assert demo.demo_banner.isVisible() and demo.demo_banner.label.text() == BANNER
    assert "DEMO" in demo.windowTitle()
    assert demo.pages.currentWidget() is demo.workspace
    assert set(rows(demo)) == {"CT_small.dcm", "MR_small.dcm", f"{SERIES_DESCRIPTION} (20 slices)"}
    pictures = [demo.viewer.model.picture(row) for row in rows(demo).values()]
    assert sorted(picture.input.dicom.modality for picture in pictures) == ["CT", "CT", "MR"]
    (series,) = [picture.series for picture in pictures if picture.series is not None]
    assert series.slice_count == 20 and "SYNTHETIC" in series.images[0].metadata["SeriesDescription"]
    assert demo.host.identity.model.folder == "medgemma-tiny"


def test_the_demo_series_scrolls_and_answers_the_ct_series_task(qtbot, ask_and_wait, demo: MainWindow,
                                                                 tmp_path: Path) -> None:
    row = rows(demo)[f"{SERIES_DESCRIPTION} (20 slices)"]
    demo.viewer.strip.setCurrentIndex(demo.viewer.model.index(row))
    assert demo.viewer.view.slice_count == 20
    start = demo.viewer.view.slice
    demo.viewer.canvas.setFocus()
    qtbot.keyClick(demo.viewer.canvas, Qt.Key.Key_PageDown)
    assert demo.viewer.view.slice == start + 1
    keep_only(demo, f"{SERIES_DESCRIPTION} (20 slices)")
    demo.chat.task.set_mode(TaskMode.CT_SERIES)
    demo.chat.task.slices.setValue(4)
    requests = []
    demo.host.generate_requested.connect(requests.append)
    ask_and_wait(demo, "", TIMEOUT_MS)  # the mode's own question
    assert sum(not isinstance(part, str) for part in requests[0].turns[-1].parts) == 4
    assert demo.chat.conversation.last.stats.new_tokens <= DEMO_MAX_NEW_TOKENS
    dialog = demo.open_export()  # a demo export says where it came from
    dialog.path_edit.setText(str(tmp_path / "demo case.md"))
    with qtbot.waitSignal(demo.export_finished, timeout=TIMEOUT_MS) as exported:
        qtbot.mouseClick(dialog.export_button, Qt.MouseButton.LeftButton)
    assert DEMO_NOTICE in exported.args[0].read_text(encoding="utf-8")


def test_demo_answers_stop_early_and_settings_save_without_a_model_folder(qtbot, demo: MainWindow,
                                                                           tmp_path: Path) -> None:
    demo.settings = replace(demo.settings, max_new_tokens=1024)
    assert demo.question_settings().max_new_tokens == DEMO_MAX_NEW_TOKENS
    app = QApplication.instance()
    apply_theme(app, "light", 100)
    base_size = app.font().pointSizeF()
    dialog = demo.open_settings()
    dialog.theme.setCurrentIndex(dialog.theme.findData("dark"))
    dialog.decoding.setCurrentIndex(dialog.decoding.findData(False))
    dialog.max_new_tokens.setValue(32)
    dialog.text_size.setCurrentIndex(dialog.text_size.findData(115))
    qtbot.mouseClick(dialog.buttons.button(QDialogButtonBox.StandardButton.Ok), Qt.MouseButton.LeftButton)
    assert not dialog.error_label.isVisible()
    saved = json.loads((tmp_path / "settings.json").read_text())
    assert (saved["theme"], saved["greedy"], saved["max_new_tokens"], saved["text_size"]) == ("dark", False, 32, 115)
    assert saved["model_dir"] is None and demo.demo and demo.demo_banner.isVisible()
    assert demo.question_settings().max_new_tokens == 32
    assert app.font().pointSizeF() == pytest.approx(base_size * 1.15)  # the text size applies at once
    assert app.palette().color(QPalette.ColorRole.Window).lightness() < 128  # and the theme
    apply_theme(QApplication.instance(), "light")


def test_preparing_the_demo_model_shows_progress(qtbot, tmp_path: Path) -> None:
    window = MainWindow(tmp_path / "settings.json", data_folder=tmp_path / "data", demo=True)
    qtbot.addWidget(window)
    window.show()
    assert window.model_status.text() == "Model: preparing the demo model…"
    assert window.loading.isVisible() and window.loading.bar.maximum() == 0  # a busy bar, moving
    assert "demo model" in window.loading.bar.toolTip()
    wait_demo_ready(qtbot, window)
    assert window.model_status.text().startswith("Model: ready") and not window.loading.isVisible()
    window.close()


def test_a_demo_question_is_answered_and_kept_apart_from_real_history(qtbot, ask_and_wait, demo: MainWindow,
                                                                      tmp_path: Path) -> None:
    demo.viewer.model.remove(rows(demo)[f"{SERIES_DESCRIPTION} (20 slices)"])  # free chat takes no series
    demo.chat.task.set_mode(TaskMode.FREE_CHAT)
    requests = []
    demo.host.generate_requested.connect(requests.append)
    ask_and_wait(demo, "Compare the CT and the MR", TIMEOUT_MS)
    assert sum(not isinstance(part, str) for part in requests[0].turns[-1].parts) == 2  # both sample images
    assert demo.chat.conversation.last.answer
    assert demo.store.path == tmp_path / "data" / DEMO_DB_FILENAME
    demo.close()
    with ConversationStore(tmp_path / "data" / DEMO_DB_FILENAME) as kept:
        assert [c.title for c in kept.list_conversations()] == ["Compare the CT and the MR"]
    with ConversationStore(tmp_path / "data" / DB_FILENAME) as real:
        assert real.list_conversations() == []


def test_leaving_the_demo_for_a_configured_model_without_a_restart(qtbot, ask_and_wait, tiny_settings_path: Path,
                                                                   tiny_checkpoint: TinyCheckpoint,
                                                                   tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ConversationStore(data / DB_FILENAME) as real:
        real.create_conversation("A real case from last week")
    window = MainWindow(tiny_settings_path, data_folder=data, demo=True)
    qtbot.addWidget(window)
    window.show()
    wait_demo_ready(qtbot, window)
    assert window.history.list.count() == 0  # the demo shows only demo history
    loads = []
    window.host.load_requested.connect(loads.append)
    qtbot.mouseClick(window.demo_banner.leave_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY, timeout=TIMEOUT_MS)
    assert not window.demo_banner.isVisible() and "DEMO" not in window.windowTitle()
    assert [request.model_dir for request in loads] == [tiny_checkpoint.model_dir]
    assert window.viewer.model.rowCount() == 0 and window.chat.conversation.exchanges == []
    assert window.history.list.item(0).text() == "A real case from last week"
    window.settings = replace(window.settings, max_new_tokens=4)
    ask_and_wait(window, "A real question", TIMEOUT_MS)
    assert window.store.path == data / DB_FILENAME
    window.close()


def test_try_the_demo_from_the_first_run_page_then_choose_the_real_folders(qtbot, tmp_path: Path,
                                                                           tiny_checkpoint: TinyCheckpoint) -> None:
    settings_path = tmp_path / "settings.json"
    window = MainWindow(settings_path, data_folder=tmp_path / "data")
    qtbot.addWidget(window)
    window.show()
    page = window.first_run
    assert window.pages.currentWidget() is page
    with qtbot.waitSignal(page.machine_checked, timeout=TIMEOUT_MS) as checked:
        pass
    if not torch.cuda.is_available():
        assert checked.args[0].kind == "cpu"
        assert page.machine_label.text().startswith("CPU only") and "minutes" in page.machine_label.text()
    qtbot.mouseClick(page.demo_button, Qt.MouseButton.LeftButton)
    wait_demo_ready(qtbot, window)
    assert window.demo_banner.isVisible()

    qtbot.mouseClick(window.demo_banner.leave_button, Qt.MouseButton.LeftButton)
    assert window.pages.currentWidget() is page  # nothing configured yet: choose the folders first
    assert window.demo  # the demo runs until then
    page.model_field.set_path(str(tiny_checkpoint.model_dir))
    page.adapter_field.set_path(str(tiny_checkpoint.adapter_dir))
    qtbot.mouseClick(page.use_button, Qt.MouseButton.LeftButton)
    assert not window.demo and not window.demo_banner.isVisible()
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY, timeout=TIMEOUT_MS)
    assert json.loads(settings_path.read_text())["model_dir"] == str(tiny_checkpoint.model_dir)
    window.close()


def test_the_machine_check_speaks_plainly(tiny_checkpoint: TinyCheckpoint) -> None:
    model = check_model_folder(tiny_checkpoint.model_dir)
    gpu = DevicePlan("cuda", torch.bfloat16, "test GPU supports bfloat16", gpu_name="Test GPU 8GB")
    usable = judge_machine(gpu, 8 * 2**30, model, 8192)
    assert usable.kind == "gpu" and usable.summary.startswith("GPU found and usable: Test GPU 8GB")
    assert any(name == "total" for name, _ in usable.details)
    short = judge_machine(gpu, 2**20, model, 8192)
    assert short.kind == "low-memory" and "Too little GPU memory" in short.summary
    assert "GiB" in short.summary and any(name.startswith("KV cache") for name, _ in short.details)
    no_folder = judge_machine(gpu, 8 * 2**30, None, 8192)
    assert no_folder.kind == "gpu" and "Choose the model folder" in no_folder.summary
    cpu = judge_machine(DevicePlan("cpu", torch.float32, "CPU mode: no usable NVIDIA GPU"), None, model, 8192)
    assert cpu.kind == "cpu" and "slowly" in cpu.summary and "tokens per second" in cpu.summary


def test_the_command_line_demo_flag_opens_the_demo(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr("medgemma_desktop.ui.app.run_app", lambda argv, **kwargs: calls.append(kwargs) or 0)
    assert main(["--demo"]) == 0
    assert len(calls) == 1
    assert {key: calls[0][key] for key in ("demo", "files", "quit_after_s", "debug")} == {
        "demo": True, "files": [], "quit_after_s": None, "debug": False}
