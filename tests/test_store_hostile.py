"""The history against a damaged file, a model stuck in a loop, and patient data the user did not choose to keep."""

from __future__ import annotations

import dataclasses
import re
import time
from html import unescape
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from medgemma_desktop.core.imaging import ImageInput, load_image
from medgemma_desktop.core.store import ConversationStore, StoreProblem, WeightsIdentity
from medgemma_desktop.core.store_search import SNIPPET_AFTER, SNIPPET_BEFORE, snippet_html

MODEL = WeightsIdentity("medgemma-1.5-4b-it", "a" * 64)
PAGE = 4096


def _history(path: Path, conversations: int) -> None:
    with ConversationStore(path, save_interval=0) as store:
        for number in range(conversations):
            conversation = store.create_conversation(f"Case {number}")
            message = store.add_question(conversation.id, f"Question {number}: is the heart enlarged?")
            answer = store.begin_answer(message.id, MODEL, None, {"max_new_tokens": 64})
            store.finish_answer(answer, f"Answer {number}: " + "the cardiac silhouette is normal. " * 12, {})


def test_a_history_with_damaged_pages_is_salvaged_with_one_notice(tmp_path: Path) -> None:
    path = tmp_path / "conversations.sqlite3"
    _history(path, 300)
    pages = path.stat().st_size // PAGE
    with path.open("r+b") as handle:  # scribble over three pages in the middle of the file
        for page in (pages // 3, pages // 2, 2 * pages // 3):
            handle.seek(page * PAGE)
            handle.write(bytes(range(256)) * (PAGE // 256))
    with ConversationStore(path) as store:
        notices = store.take_notices()
        assert len(notices) == 1 and isinstance(notices[0], StoreProblem)
        notice = str(notices[0])
        assert "damaged" in notice and "kept as conversations.sqlite3.moved-aside-" in notice and "\n" not in notice
        listed = store.list_conversations()
        assert 200 <= len(listed) < 300 or "could not be saved" in notice
        for conversation in listed:  # every conversation left opens: no error one by one
            for message in store.messages(conversation.id):
                assert message.question.startswith("Question")
        assert store.search("cardiac")  # the search index was rebuilt from what was kept
        store.create_conversation("after the repair")
    assert len(list(tmp_path.glob("conversations.sqlite3.moved-aside-*"))) == 1
    with ConversationStore(path) as reopened:  # the salvaged file is sound: no notice the second time
        assert reopened.take_notices() == []
        assert reopened.list_conversations()[0].title == "after the repair"


def test_a_sound_history_opens_without_a_notice(tmp_path: Path) -> None:
    path = tmp_path / "conversations.sqlite3"
    _history(path, 3)
    with ConversationStore(path) as store:
        assert store.take_notices() == [] and len(store.list_conversations()) == 3


def test_search_on_a_long_repetitive_answer_is_fast_and_shows_a_short_snippet(tmp_path: Path) -> None:
    with ConversationStore(tmp_path / "h.sqlite3", save_interval=0) as store:
        conversation = store.create_conversation("Loop")
        message = store.add_question(conversation.id, "What is shown?")
        answer = store.begin_answer(message.id, MODEL, None, {})
        store.finish_answer(answer, "The the lung lung is clear. " * 20_000, {})  # a model stuck in a loop
        started = time.perf_counter()
        hits = store.search("the lung")
        elapsed = time.perf_counter() - started
    assert elapsed < 3.0, f"search took {elapsed:.1f} s"  # FTS5's snippet() took minutes here
    (hit,) = hits
    assert "<b>lung</b>" in hit.snippet_html and len(hit.snippet_html) < 400


def test_search_snippets_find_words_without_their_accents(tmp_path: Path) -> None:
    with ConversationStore(tmp_path / "h.sqlite3", save_interval=0) as store:
        conversation = store.create_conversation()
        store.add_question(conversation.id, "Épanchement pleural à droite ?")
        (hit,) = store.search("epanchement")
    assert hit.snippet_html.startswith("<b>Épanchement</b> pleural")


def _dicom_like(tmp_path: Path) -> ImageInput:
    """A picture from a folder named after the patient, carrying identifying tags as a DICOM input does (the
    file's own name is its label, shown in the conversation, and stays)."""
    folder = tmp_path / "Doe_Jane_MRN-55501"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), "gray").save(folder / "ct.png")
    return dataclasses.replace(load_image(folder / "ct.png"), metadata={"Modality": "CT"},
                               patient={"PatientName": "Doe^Jane", "PatientID": "MRN-55501"})


def test_patient_data_is_not_kept_unless_the_user_chooses(tmp_path: Path) -> None:
    image = _dicom_like(tmp_path)
    with ConversationStore(tmp_path / "h.sqlite3") as store:
        conversation = store.create_conversation()
        stored = store.add_question(conversation.id, "Findings?", [image]).images[0]
        assert stored.patient == {} and stored.source == "" and stored.metadata == {"Modality": "CT"}
        store.keep_patient_data = True
        kept = store.add_question(conversation.id, "And now?", [image]).images[0]
        assert kept.patient["PatientID"] == "MRN-55501" and kept.source.endswith("Doe_Jane_MRN-55501/ct.png")


def test_forget_patient_data_removes_what_older_versions_stored_and_keeps_the_images(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    image = _dicom_like(tmp_path)
    with ConversationStore(path, keep_patient_data=True) as older:  # as versions before the choice stored
        conversation = older.create_conversation()
        older.add_question(conversation.id, "Findings?", [image])
        older.add_question(conversation.id, "Compare?", [image])
    with ConversationStore(path) as store:
        assert store.forget_patient_data() == 2
        for message in store.messages(conversation.id):
            assert message.images[0].patient == {} and message.images[0].source == ""
            assert store.image_png(message.images[0].sha256)  # the pixels stay
        assert store.forget_patient_data() == 0
    on_disk = b"".join(file.read_bytes() for file in tmp_path.glob("h.sqlite3*"))
    assert b"MRN-55501" not in on_disk and b"Doe^Jane" not in on_disk and b"Doe_Jane" not in on_disk


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(text=st.text(max_size=300), query=st.text(max_size=30))
def test_snippets_are_escaped_short_and_balanced_for_any_text(text: str, query: str) -> None:
    html = snippet_html(text, query)
    assert html.count("<b>") == html.count("</b>")
    assert "<" not in html.replace("<b>", "").replace("</b>", "")
    shown = unescape(html.replace("<b>", "").replace("</b>", ""))
    longest_word = max((len(word) for word in re.findall(r"\w+", text)), default=0)
    assert len(shown) <= SNIPPET_BEFORE + SNIPPET_AFTER + 2 * 30 + longest_word + 2  # context, widening, ellipses
