"""The model thread on its own: requests by queued signal, progress and tokens back, Stop and Cancel as
thread-safe events that act within one token (or one loading step)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import Qt

from medgemma_desktop.core.engine import GenerationSettings, LoadOptions
from medgemma_desktop.core.prompts import build_chat
from medgemma_desktop.core.tiny_checkpoint import TinyCheckpoint
from medgemma_desktop.session.recording import AnswerJob
from medgemma_desktop.ui.worker import ModelHost, ModelState

TIMEOUT_MS = 30_000


@pytest.fixture
def host(qtbot) -> Iterator[ModelHost]:
    model_host = ModelHost()
    yield model_host
    model_host.shutdown()


def load(qtbot, host: ModelHost, checkpoint: TinyCheckpoint) -> None:
    with qtbot.waitSignal(host.worker.model_ready, timeout=TIMEOUT_MS):
        host.load(checkpoint.model_dir, checkpoint.adapter_dir, LoadOptions())
    qtbot.waitUntil(lambda: host.state is ModelState.READY)  # the host hears of it through the event loop


def test_load_reports_progress_on_the_ui_thread_and_ends_ready(qtbot, host: ModelHost,
                                                               tiny_checkpoint: TinyCheckpoint) -> None:
    progress: list[tuple[int, str]] = []
    host.worker.loading_progress.connect(lambda percent, step: progress.append((percent, step)))
    states: list[ModelState] = []
    host.state_changed.connect(lambda state, _detail: states.append(state))
    with qtbot.waitSignal(host.worker.model_ready, timeout=TIMEOUT_MS) as ready:
        host.load(tiny_checkpoint.model_dir, tiny_checkpoint.adapter_dir, LoadOptions())
    assert [percent for percent, _ in progress] == sorted(percent for percent, _ in progress)
    assert progress[-1][0] == 100
    assert ready.args[0].adapter_name == tiny_checkpoint.adapter_dir.name
    qtbot.waitUntil(lambda: host.state is ModelState.READY)
    assert states[0] is ModelState.LOADING and all(state is ModelState.LOADING for state in states[:-1])


def test_stop_takes_effect_within_one_token(qtbot, host: ModelHost, tiny_checkpoint: TinyCheckpoint) -> None:
    load(qtbot, host, tiny_checkpoint)
    emitted: list[str] = []

    def stop_at_first_token(text: str) -> None:  # runs on the model thread, as the first token leaves it
        emitted.append(text)
        host.stop()

    host.worker.token.connect(stop_at_first_token, Qt.ConnectionType.DirectConnection)
    with qtbot.waitSignal(host.worker.finished, timeout=TIMEOUT_MS) as finished:
        host.generate(AnswerJob(tuple(build_chat("Say a lot")), GenerationSettings(max_new_tokens=500)))
    assert len(emitted) == 1
    assert finished.args[0].stats.stop_reason == "stopped"
    qtbot.waitUntil(lambda: host.state is ModelState.READY)


def test_cancel_loading_leaves_no_model(qtbot, host: ModelHost, tiny_checkpoint: TinyCheckpoint) -> None:
    def cancel_at_first_step(_percent: int, _step: str) -> None:
        host.stop()

    host.worker.loading_progress.connect(cancel_at_first_step, Qt.ConnectionType.DirectConnection)
    with qtbot.waitSignal(host.worker.failed, timeout=TIMEOUT_MS) as failed:
        host.load(tiny_checkpoint.model_dir, tiny_checkpoint.adapter_dir, LoadOptions())
    assert failed.args[0] == "cancelled"
    qtbot.waitUntil(lambda: host.state is ModelState.NO_MODEL)
    assert host.identity is None


def test_wrong_folder_fails_with_the_core_message(qtbot, host: ModelHost, tmp_path: Path) -> None:
    with qtbot.waitSignal(host.worker.failed, timeout=TIMEOUT_MS) as failed:
        host.load(tmp_path, None, LoadOptions())
    kind, message = failed.args
    assert kind == "model" and "no config.json" in message and str(tmp_path) in message
    qtbot.waitUntil(lambda: host.state is ModelState.ERROR)


def test_generate_without_a_model_fails_readably(qtbot, host: ModelHost) -> None:
    with qtbot.waitSignal(host.worker.failed, timeout=TIMEOUT_MS) as failed:
        host.generate(AnswerJob(tuple(build_chat("Hello", [Image.new("RGB", (32, 32))])),
                                GenerationSettings(max_new_tokens=4)))
    assert failed.args[0] == "model" and "No model is loaded" in failed.args[1]


def test_unexpected_error_in_the_worker_is_reported_and_the_model_stays(qtbot, host: ModelHost, monkeypatch,
                                                                        tiny_checkpoint: TinyCheckpoint) -> None:
    load(qtbot, host, tiny_checkpoint)
    reported: list[BaseException] = []
    monkeypatch.setattr("medgemma_desktop.ui.worker.report_unexpected",
                        lambda exc_type, exc, tb: reported.append(exc))

    def broken_prepare(_turns):
        raise RuntimeError("boom")

    monkeypatch.setattr(host.worker._engine, "prepare", broken_prepare)
    with qtbot.waitSignal(host.worker.failed, timeout=TIMEOUT_MS) as failed:
        host.generate(AnswerJob(tuple(build_chat("Hello")), GenerationSettings(max_new_tokens=4)))
    assert failed.args[0] == "internal" and "RuntimeError: boom" in failed.args[1]
    assert [str(exc) for exc in reported] == ["boom"]
    qtbot.waitUntil(lambda: host.state is ModelState.READY)
    assert host.identity is not None


def test_loading_collects_no_garbage_meanwhile_and_a_reload_frees_the_old_model(
        qtbot, host: ModelHost, tiny_checkpoint: TinyCheckpoint) -> None:
    """Loading defers Python's collections (full ones froze the window for 240-370 ms each) and freezes what it made
    out of later ones; a reload must still free the old model (and with it its memory)."""
    import gc
    import weakref

    collections_during_load: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start" and host.state is ModelState.LOADING:
            collections_during_load.append(info["generation"])

    gc.callbacks.append(count)
    try:
        load(qtbot, host, tiny_checkpoint)
        old_model = weakref.ref(host.worker.engine.model)
        assert gc.isenabled() and gc.get_freeze_count() > 0
        load(qtbot, host, tiny_checkpoint)
    finally:
        gc.callbacks.remove(count)
    assert collections_during_load.count(2) == 1  # the one the old engine's close asked for, none automatic
    assert old_model() is None
