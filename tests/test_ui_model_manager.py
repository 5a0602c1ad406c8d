"""The model manager on the real worker: it checks good and bad folders (core reports, hashes with progress),
shows the memory plan, lists and clears the saved 4-bit models, and switches adapters without reloading, with
the next answer recording the adapter that produced it; and model loading shows progress and can be cancelled."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QAccessible
from PySide6.QtWidgets import QAbstractButton, QAbstractItemView, QLineEdit, QWidget
from safetensors.torch import load_file, save_file

from medgemma_desktop.core.fingerprint import FingerprintCache
from medgemma_desktop.core.settings import load_settings, save_settings
from medgemma_desktop.core.tiny_checkpoint import TinyCheckpoint
from medgemma_desktop.ui.main_window import MainWindow
from medgemma_desktop.ui.model_manager import ADAPTER_ROLE, ModelManagerDialog
from medgemma_desktop.ui.worker import ModelState

TIMEOUT_MS = 30_000


@pytest.fixture
def window(ready_window: MainWindow) -> MainWindow:
    ready_window.settings = replace(ready_window.settings, max_new_tokens=4)
    return ready_window


@pytest.fixture
def second_adapter(tiny_checkpoint: TinyCheckpoint, tmp_path: Path) -> Path:
    folder = Path(shutil.copytree(tiny_checkpoint.adapter_dir, tmp_path / "lora-second"))
    weights = folder / "adapter_model.safetensors"
    save_file({k: (v * -3 if "lora_B" in k else v) for k, v in load_file(weights).items()}, weights)
    return folder


def check(qtbot, dialog: ModelManagerDialog, button: QAbstractButton) -> None:
    """Click a Check button and wait for the background check to end, passed or failed."""
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert dialog.checking
    qtbot.waitUntil(lambda: not dialog.checking, timeout=TIMEOUT_MS)


def adapter_rows(dialog: ModelManagerDialog) -> list[str]:
    return [dialog.adapters.item(row).text() for row in range(dialog.adapters.count())]


def select_adapter(dialog: ModelManagerDialog, name: str) -> None:
    for row in range(dialog.adapters.count()):
        if dialog.adapters.item(row).data(ADAPTER_ROLE) == name:
            dialog.adapters.setCurrentRow(row)
            return
    raise AssertionError(f"no adapter {name!r} listed")


def test_checks_good_and_bad_folders(qtbot, window: MainWindow, tmp_path: Path,
                                     tiny_checkpoint: TinyCheckpoint) -> None:
    dialog = window.open_model_manager()
    assert dialog.model_field.path() == str(tiny_checkpoint.model_dir)
    dialog.model_field.set_path(str(tmp_path))
    check(qtbot, dialog, dialog.check_model_button)
    assert dialog.model_error.isVisible() and "no config.json" in dialog.model_error.text()
    assert "\n" not in dialog.model_error.text()  # the core's one line
    base_box = dialog.model_field.parentWidget()
    assert base_box.isAncestorOf(dialog.model_error)  # shown beside its field, not at the dialog's bottom
    below_field = dialog.model_error.mapTo(dialog, dialog.model_error.rect().topLeft()).y() - \
        dialog.model_field.mapTo(dialog, dialog.model_field.rect().bottomLeft()).y()
    assert 0 <= below_field < 3 * dialog.fontMetrics().lineSpacing()

    fresh_digests = FingerprintCache(tmp_path / "digests.json")  # nothing remembered: the hash is computed
    dialog._host.fingerprints = fresh_digests
    progress: list[int] = []
    dialog.progress_bar.valueChanged.connect(progress.append)
    dialog.model_field.set_path(str(tiny_checkpoint.model_dir))
    check(qtbot, dialog, dialog.check_model_button)
    assert not dialog.model_error.isVisible()
    report = dialog.model_report.text()
    assert "architecture" in report and "Gemma3ForConditionalGeneration" in report
    assert window.host.identity.model.sha256 in report  # the same hash the engine records with answers
    assert progress and progress[-1] == 100 and (tmp_path / "digests.json").is_file()
    assert base_box.isAncestorOf(dialog.progress_bar)
    memory = dialog.memory_label.text()
    assert "KV cache" in memory or memory.startswith("CPU only")
    assert dialog.load_model_button.isEnabled()

    dialog.adapter_field.set_path(str(tiny_checkpoint.model_dir))  # a model folder is not an adapter
    check(qtbot, dialog, dialog.add_adapter_button)
    assert "adapter_config.json" in dialog.adapter_error.text() and dialog.adapter_error.isVisible()
    assert dialog.adapter_field.parentWidget().isAncestorOf(dialog.adapter_error)
    assert dialog.adapter_field.parentWidget().isAncestorOf(dialog.progress_bar)  # moved to the running check
    assert not dialog.model_error.isVisible()
    dialog.reject()


def test_lists_and_clears_the_saved_4bit_models(qtbot, window: MainWindow) -> None:
    assert window.host.cache.entries(), "loading the tiny model saved its 4-bit copy"
    dialog = window.open_model_manager()
    assert dialog.cache_list.count() == len(window.host.cache.entries())
    assert "medgemma-tiny" in dialog.cache_list.item(0).text()
    with qtbot.waitSignal(dialog.cache_cleared, timeout=TIMEOUT_MS) as cleared:
        qtbot.mouseClick(dialog.clear_cache_button, Qt.MouseButton.LeftButton)
    assert cleared.args[0] >= 1 and window.host.cache.entries() == []
    assert dialog.cache_list.count() == 1 and "No saved 4-bit models" in dialog.cache_list.item(0).text()
    assert not dialog.clear_cache_button.isEnabled()
    dialog.reject()


def ask(qtbot, window: MainWindow, question: str):
    with qtbot.waitSignal(window.answer_finished, timeout=TIMEOUT_MS) as finished:
        qtbot.keyClicks(window.chat.question, question)
        qtbot.keyClick(window.chat.question, Qt.Key.Key_Return)
    return window.store.messages(window.chat.conversation.id)[-1].answer, finished.args[0]


def test_adapters_switch_without_reloading_and_answers_record_which(qtbot, window: MainWindow, second_adapter: Path,
                                                                    tiny_settings_path: Path) -> None:
    loads = []
    window.host.load_requested.connect(loads.append)
    dialog = window.open_model_manager()
    assert adapter_rows(dialog)[0].startswith("lora-r8-tiny") and "active" in adapter_rows(dialog)[0]

    dialog.adapter_field.set_path(str(second_adapter))
    with qtbot.waitSignal(window.host.worker.model_ready, timeout=TIMEOUT_MS):
        check(qtbot, dialog, dialog.add_adapter_button)
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY)
    assert window.host.identity.adapter_name == "lora-second"
    assert any(row.startswith("lora-second") and "active" in row for row in adapter_rows(dialog))
    # The window saves the settings on the UI thread after the worker's signal: wait for the file, not the signal.
    qtbot.waitUntil(lambda: load_settings(tiny_settings_path).settings.adapter_dir == str(second_adapter),
                    timeout=TIMEOUT_MS)
    saved = load_settings(tiny_settings_path).settings
    assert {Path(path).name for path in saved.attached_adapter_dirs} == {"lora-r8-tiny", "lora-second"}
    stored, answer = ask(qtbot, window, "Which adapter answers?")
    assert stored.adapter.folder == "lora-second" and answer.identity.adapter_name == "lora-second"

    select_adapter(dialog, "")
    with qtbot.waitSignal(window.host.worker.model_ready, timeout=TIMEOUT_MS):
        qtbot.mouseClick(dialog.use_adapter_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY)
    stored, _ = ask(qtbot, window, "And now?")
    assert stored.adapter is None and stored.model.folder == "medgemma-tiny"
    qtbot.waitUntil(lambda: load_settings(tiny_settings_path).settings.adapter_dir is None, timeout=TIMEOUT_MS)

    select_adapter(dialog, "lora-r8-tiny")
    with qtbot.waitSignal(window.host.worker.model_ready, timeout=TIMEOUT_MS):
        qtbot.mouseClick(dialog.use_adapter_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY)
    stored, _ = ask(qtbot, window, "And the first one?")
    assert stored.adapter.folder == "lora-r8-tiny"
    assert loads == []  # the base model was never reloaded
    dialog.reject()


def test_the_next_start_attaches_the_added_adapters_and_names_a_gone_one(
        qtbot, tiny_checkpoint: TinyCheckpoint, tiny_settings_path: Path, second_adapter: Path, tmp_path: Path) -> None:
    gone = tmp_path / "lora-moved-away"
    settings = load_settings(tiny_settings_path).settings
    save_settings(replace(settings, adapter_dir=str(second_adapter), attached_adapter_dirs=(
        str(tiny_checkpoint.adapter_dir), str(second_adapter), str(gone))), tiny_settings_path)
    main = MainWindow(tiny_settings_path, data_folder=tmp_path / "data")
    qtbot.addWidget(main)
    main.show()
    qtbot.waitUntil(lambda: main.host.state is ModelState.READY, timeout=TIMEOUT_MS)
    assert sorted(main.host.adapters) == ["lora-r8-tiny", "lora-second"]
    assert main.host.identity.adapter_name == "lora-second"
    qtbot.waitUntil(main.chat.notice.isVisible)
    assert "lora-moved-away" in main.chat.notice.text() and "model manager" in main.chat.notice.text()
    saved = load_settings(tiny_settings_path).settings  # the gone folder is forgotten, the others kept
    assert {Path(path).name for path in saved.attached_adapter_dirs} == {"lora-r8-tiny", "lora-second"}
    main.close()


def test_loading_shows_progress_and_can_be_cancelled(qtbot, tiny_settings_path: Path, tmp_path: Path) -> None:
    window = MainWindow(tiny_settings_path, data_folder=tmp_path / "data")
    qtbot.addWidget(window)
    window.show()  # loading starts once the window has painted
    qtbot.waitUntil(lambda: window.host.state is ModelState.LOADING and window.loading.isVisible(), timeout=2000)
    qtbot.mouseClick(window.loading.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.host.state is ModelState.NO_MODEL, timeout=TIMEOUT_MS)
    assert not window.loading.isVisible() and "cancelled" in window.chat.notice.text()

    values: list[int] = []
    window.loading.bar.valueChanged.connect(values.append)
    qtbot.keyClick(window, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)  # File > Load model
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY, timeout=TIMEOUT_MS)
    assert values == sorted(values) and values[-1] == 100 and not window.loading.isVisible()
    window.close()


def test_new_controls_have_accessible_names(qtbot, window: MainWindow) -> None:
    ask(qtbot, window, "Something to export")
    dialogs = [window.open_model_manager(), window.open_export()]
    unnamed = []
    for root in (window, *dialogs):
        for widget in root.findChildren(QWidget):
            control = isinstance(widget, (QAbstractButton, QLineEdit, QAbstractItemView)) and widget.isVisibleTo(root)
            if control and not QAccessible.queryAccessibleInterface(widget).text(QAccessible.Text.Name).strip():
                unnamed.append(f"{type(widget).__name__} in {type(widget.parentWidget()).__name__}")
    for dialog in dialogs:
        dialog.reject()
    assert unnamed == [], unnamed
