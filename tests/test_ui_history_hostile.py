"""The history sidebar stays responsive while it searches, shows only the latest query's hits, and removes
patient details from the history when the user asks."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QMessageBox

from medgemma_desktop.core.imaging import load_any
from medgemma_desktop.core.store import ConversationStore, WeightsIdentity
from medgemma_desktop.ui.history import HistoryPanel

MODEL = WeightsIdentity("medgemma-tiny", "c" * 64)
SLOW_S = 1.5


@pytest.fixture
def store(tmp_path: Path):
    with ConversationStore(tmp_path / "conversations.sqlite3", save_interval=0) as opened:
        for question in ("Is there a pneumothorax?", "Count the ribs"):
            message = opened.add_question(opened.create_conversation().id, question)
            answer = opened.begin_answer(message.id, MODEL, None, {})
            opened.finish_answer(answer, f"About {question.lower()}", {})
        yield opened


@pytest.fixture
def panel(qtbot, store: ConversationStore) -> HistoryPanel:
    history = HistoryPanel(store)
    qtbot.addWidget(history)
    history.show()
    yield history
    history.wait_for_search()


def slow_search(store: ConversationStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The store's real search behind a slow disk: every query waits SLOW_S first. Returns the queries run."""
    real, queries = store.search, []

    def search(text: str, limit: int = 50):
        queries.append(text)
        time.sleep(SLOW_S)
        return real(text, limit)

    monkeypatch.setattr(store, "search", search)
    return queries


def test_a_slow_search_never_blocks_the_window(qtbot, panel: HistoryPanel, store: ConversationStore,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    slow_search(store, monkeypatch)
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    with qtbot.waitSignal(panel.search_shown, timeout=30_000):
        qtbot.keyClicks(panel.search_box, "pneumo")
    timer.stop()
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert ticks and max(gaps) < SLOW_S / 2, f"the window stalled {max(gaps):.2f} s while searching"
    hit = panel.list.itemWidget(panel.list.item(0)).text()
    assert panel.list.count() == 2 and "<b>pneumothorax</b>" in hit


def test_the_latest_query_wins(qtbot, panel: HistoryPanel, store: ConversationStore,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    queries = slow_search(store, monkeypatch)
    shown: list[str] = []
    panel.search_shown.connect(shown.append)
    panel.search_box.setText("pneumo")
    panel.refresh()  # as the typing pause does
    qtbot.waitUntil(lambda: queries == ["pneumo"], timeout=10_000)  # that search is running
    with qtbot.waitSignal(panel.search_shown, timeout=30_000):
        panel.search_box.setText("ribs")
        panel.refresh()
    panel.wait_for_search()
    qtbot.wait(50)
    assert shown == ["ribs"]  # the pneumothorax hits arrived first and were dropped
    texts = [panel.list.itemWidget(panel.list.item(row)).text() for row in range(panel.list.count())]
    assert texts and all("<b>ribs</b>" in text for text in texts)


def test_remove_patient_details_from_the_history(qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ct = load_any(Path(get_testdata_file("CT_small.dcm")))  # type: ignore[arg-type]
    assert ct.patient["PatientName"]
    with ConversationStore(tmp_path / "h.sqlite3", keep_patient_data=True) as store:  # as older versions kept it
        conversation = store.create_conversation()
        store.add_question(conversation.id, "Findings?", [ct])
        history = HistoryPanel(store)
        qtbot.addWidget(history)
        answers = iter([QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes])
        monkeypatch.setattr(QMessageBox, "question", lambda *args, **kwargs: next(answers))
        history.forget_button.click()  # the user says No: nothing changes
        assert store.messages(conversation.id)[0].images[0].patient["PatientName"] == ct.patient["PatientName"]
        history.forget_button.click()  # ...then Yes
        (image,) = store.messages(conversation.id)[0].images
        assert image.patient == {} and image.source == "" and store.image_png(image.sha256)
        assert history.privacy_label.text() == "Patient details removed from 1 image reference(s)."


def test_the_window_keeps_no_patient_details_by_default(qtbot, tiny_settings_path: Path, tmp_path: Path,
                                                        ask_and_wait) -> None:
    from medgemma_desktop.ui.main_window import MainWindow
    from medgemma_desktop.ui.worker import ModelState

    window = MainWindow(tiny_settings_path, loader=load_any, data_folder=tmp_path / "data")
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY, timeout=60_000)
    assert window.settings.keep_patient_data is False
    window.settings = replace(window.settings, max_new_tokens=4)
    with qtbot.waitSignal(window.viewer.load_finished):
        window.viewer.open_paths([Path(get_testdata_file("CT_small.dcm"))])  # type: ignore[arg-type]
    ask_and_wait(window, "Describe", 60_000)
    (image,) = window.store.messages(window.chat.conversation.id)[0].images
    assert image.patient == {} and image.source == "" and image.label == "CT_small.dcm"
    window.close()
