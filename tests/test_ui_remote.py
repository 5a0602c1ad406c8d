"""The window answering on a server: Settings name a `medgemma-desktop serve` on loopback (real HTTP), the real
model worker connects through `RemoteBackend`, and the answer about a picture equals the local engine's; the
status bar names the server, the history records it, and a server that is down is one line in the window."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import Qt

from medgemma_desktop.core.engine import GenerationSettings
from medgemma_desktop.core.settings import Settings, load_settings, save_settings
from medgemma_desktop.server.app import ServerOptions, create_app
from medgemma_desktop.session.recording import Answer
from medgemma_desktop.ui.main_window import MainWindow
from medgemma_desktop.ui.settings_dialog import SettingsDialog
from medgemma_desktop.ui.worker import ModelState

API_KEY = "window-test-key"
TIMEOUT_MS = 60_000


@pytest.fixture
def served(tiny_engine, live_server) -> str:
    return live_server(create_app(tiny_engine, ServerOptions(model_id="medgemma-tiny", api_key=API_KEY)))


def open_window(qtbot, tmp_path: Path, settings: Settings) -> MainWindow:
    path = tmp_path / "settings.json"
    save_settings(settings, path)
    window = MainWindow(path, data_folder=tmp_path / "data")
    qtbot.addWidget(window)
    window.show()
    return window


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but never listening: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_the_window_answers_a_picture_on_the_server_as_the_local_engine_does(qtbot, tmp_path: Path, served,
                                                                            tiny_engine) -> None:
    window = open_window(qtbot, tmp_path, Settings(server_url=served, server_api_key=API_KEY, max_new_tokens=8))
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY, timeout=TIMEOUT_MS)
    status = window.model_status.text()
    assert f"server {served}" in status, status
    assert window.host.identity is not None and window.host.identity.model == tiny_engine.identity.model

    picture = tmp_path / "chest.png"
    Image.new("RGB", (320, 240), (90, 140, 200)).save(picture)
    with qtbot.waitSignal(window.viewer.load_finished):
        window.viewer.open_paths([picture])
    qtbot.keyClicks(window.chat.question, "Describe the image")
    budget = window.chat.task.budget  # counted on the UI thread without the server's tokenizer: says so
    qtbot.waitUntil(lambda: budget.text().startswith("Input about ") and budget.text().endswith("(estimated)"))
    with qtbot.waitSignal(window.answer_finished, timeout=TIMEOUT_MS) as finished:
        qtbot.keyClick(window.chat.question, Qt.Key.Key_Return)
    answer: Answer = finished.args[0]
    assert answer.stats.prompt_tokens > 256 // 8  # the picture's placeholder tokens reached the server

    turns = window.controller.session.turns_for(0)
    assert len(turns[-1].images) == 1
    local = tiny_engine.generate(turns, GenerationSettings(max_new_tokens=8))
    assert answer.text == "".join(chunk.text for chunk in local).strip() != ""

    (message,) = window.store.messages(window.controller.session.id)
    (variant,) = window.store.variants(message.id)
    assert variant.settings["device"].startswith(f"server {served}")
    assert variant.model == tiny_engine.identity.model
    window.close()


def test_a_server_that_is_down_is_one_line_in_the_window(qtbot, tmp_path: Path, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    window = open_window(qtbot, tmp_path, Settings(server_url=url))
    qtbot.waitUntil(lambda: window.host.state is ModelState.ERROR, timeout=TIMEOUT_MS)
    notice = window.chat.notice.text()
    assert "\n" not in notice and "Traceback" not in notice
    assert url in notice and "cannot connect" in notice and "Start it" in notice
    assert window.pages.currentWidget() is window.workspace  # no model folder needed: the server answers
    window.close()


def test_the_settings_dialog_chooses_a_server_and_keeps_the_key_out_of_repr(qtbot, tmp_path: Path) -> None:
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    assert not dialog.server_url.isEnabled()
    dialog.source.setCurrentIndex(1)
    assert dialog.server_url.isEnabled()
    dialog.server_url.setText("not a url")
    dialog.accept()
    assert dialog.result() == 0 and "http://HOST:PORT" in dialog.error_label.text()
    dialog.server_url.setText("http://127.0.0.1:8080")
    dialog.server_key.setText("secret-key")
    dialog.accept()
    chosen = dialog.settings()
    assert (chosen.server_url, chosen.api_key()) == ("http://127.0.0.1:8080", "secret-key")
    assert "secret-key" not in repr(chosen)
    save_settings(chosen, tmp_path / "s.json")
    if os.name == "posix":  # the saved key is readable by the user's account only
        assert (tmp_path / "s.json").stat().st_mode & 0o077 == 0
    assert load_settings(tmp_path / "s.json").settings == chosen
    dialog.source.setCurrentIndex(0)
    assert dialog.settings().server_url is None
