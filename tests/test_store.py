"""The conversation store: what the user keeps, finds, switches between and never loses."""

from __future__ import annotations

import dataclasses
import io
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import medgemma_desktop
from medgemma_desktop.core.imaging import ImageInput, load_image
from medgemma_desktop.core.store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    AnswerStatus,
    ConversationStore,
    StoreProblem,
    WeightsIdentity,
)

MODEL = WeightsIdentity("medgemma-1.5-4b-it", "a" * 64)
ADAPTER = WeightsIdentity("cxr-lora", "b" * 64)
SETTINGS = {"max_new_tokens": 512, "temperature": 0.0}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "conversations.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[ConversationStore]:
    with ConversationStore(db_path, save_interval=0) as opened:
        yield opened


def picture(folder: Path, name: str, color: str, size: tuple[int, int] = (16, 12)) -> ImageInput:
    path = folder / name
    Image.new("RGB", size, color).save(path)
    return load_image(path)


def raw(path: Path, sql: str, *args: object) -> list[tuple]:
    """Read the file with a separate connection: proves what is committed, not what the store remembers."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, args).fetchall()


def answered(store: ConversationStore, conversation_id: int, question: str, answer: str) -> int:
    message = store.add_question(conversation_id, question, task_mode="describe")
    answer_id = store.begin_answer(message.id, MODEL, ADAPTER, SETTINGS)
    store.finish_answer(answer_id, answer, {"tokens_per_second": 12.5})
    return message.id


# -- opening and migrations -------------------------------------------------------------------------------------


def test_new_database_is_ours_in_wal_mode_at_the_latest_schema(store: ConversationStore, db_path: Path) -> None:
    assert db_path.is_file() and not store.in_memory and store.take_notices() == []
    assert raw(db_path, "PRAGMA application_id") == [(APPLICATION_ID,)]
    assert raw(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.parametrize("kind", ["zero-byte file", "sqlite without tables"])
def test_version_0_database_is_migrated(db_path: Path, kind: str) -> None:
    db_path.parent.mkdir(parents=True)
    if kind == "zero-byte file":
        db_path.touch()
    else:
        with sqlite3.connect(db_path) as conn:
            conn.execute("PRAGMA user_version = 0")
            conn.execute("VACUUM")  # writes a valid header
    with ConversationStore(db_path) as store:
        assert store.take_notices() == [] and not store.in_memory
        store.create_conversation("migrated")
    assert raw(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert raw(db_path, "PRAGMA application_id") == [(APPLICATION_ID,)]
    with ConversationStore(db_path) as reopened:  # migrations do not run twice
        assert [c.title for c in reopened.list_conversations()] == ["migrated"]


# -- questions, images, answers ---------------------------------------------------------------------------------


def test_question_is_committed_before_any_answer(store: ConversationStore, db_path: Path) -> None:
    conversation = store.create_conversation()
    store.add_question(conversation.id, "Is there a pneumothorax?", task_mode="describe")
    assert raw(db_path, "SELECT question, task_mode FROM messages") == [("Is there a pneumothorax?", "describe")]
    assert store.conversation(conversation.id).title == "Is there a pneumothorax?"  # titled by the first question


def test_image_is_stored_once_by_hash_and_survives_moving_the_file(store: ConversationStore, db_path: Path,
                                                                   tmp_path: Path) -> None:
    image = picture(tmp_path, "chest.png", "gray")
    conversation = store.create_conversation()
    store.add_question(conversation.id, "first", [image])
    store.add_question(conversation.id, "second", [image, picture(tmp_path, "other.png", "white")])
    assert raw(db_path, "SELECT count(*) FROM images") == [(2,)]
    image.source.rename(tmp_path / "moved.png")
    first, second = store.messages(conversation.id)
    assert [i.sha256 for i in second.images] == [image.sha256, second.images[1].sha256]
    assert first.images[0].label == "chest.png" and (first.images[0].width, first.images[0].height) == (16, 12)
    stored = Image.open(io.BytesIO(store.image_png(image.sha256)))
    assert stored.convert("RGB").tobytes() == image.image.tobytes()


def test_patient_tags_are_kept_apart_from_metadata(store: ConversationStore, tmp_path: Path) -> None:
    image = dataclasses.replace(picture(tmp_path, "ct.png", "black"), metadata={"modality": "CT"},
                                patient={"PatientName": "Doe^Jane"})
    conversation = store.create_conversation()
    store.keep_patient_data = True  # the user chose to keep them
    stored = store.add_question(conversation.id, "q", [image]).images[0]
    assert stored.metadata == {"modality": "CT"} and stored.patient == {"PatientName": "Doe^Jane"}
    assert stored.source == str(image.source)


def test_answer_round_trip_with_identity_settings_stats_and_boxes(store: ConversationStore) -> None:
    conversation = store.create_conversation()
    message = store.add_question(conversation.id, "Where is the nodule?", task_mode="localize")
    answer_id = store.begin_answer(message.id, MODEL, ADAPTER, SETTINGS)
    store.update_answer(answer_id, "partial")
    assert store.message(message.id).answer.status is AnswerStatus.STREAMING
    boxes = [{"box_2d": [100, 200, 300, 400], "label": "nodule"}]
    store.finish_answer(answer_id, "final", {"time_to_first_token_s": 0.4}, AnswerStatus.DONE, boxes=boxes)
    store.update_answer(answer_id, "a token still queued")  # late: ignored
    answer = store.message(message.id).answer
    assert (answer.text, answer.status, answer.model, answer.adapter) == ("final", AnswerStatus.DONE, MODEL, ADAPTER)
    assert answer.settings == SETTINGS and answer.stats == {"time_to_first_token_s": 0.4} and answer.boxes == boxes
    assert answer.question == "Where is the nodule?" and answer.finished_at is not None


def test_answer_without_adapter(store: ConversationStore) -> None:
    message = store.add_question(store.create_conversation().id, "q")
    answer_id = store.begin_answer(message.id, MODEL, None, {})
    store.finish_answer(answer_id, "a", {}, AnswerStatus.STOPPED)
    assert store.message(message.id).answer.adapter is None
    assert store.message(message.id).answer.status is AnswerStatus.STOPPED


def test_update_answer_writes_at_most_once_per_interval(db_path: Path) -> None:
    with ConversationStore(db_path, save_interval=3600) as store:
        message = store.add_question(store.create_conversation().id, "q")
        answer_id = store.begin_answer(message.id, MODEL, None, {})
        store.update_answer(answer_id, "one")
        store.update_answer(answer_id, "one two")
        assert raw(db_path, "SELECT text FROM answers") == [("",)]  # not written yet...
        assert store.message(message.id).answer.text == "one two"  # ...but shown
    assert raw(db_path, "SELECT text FROM answers") == [("one two",)]  # close() writes it


def test_answer_left_streaming_is_interrupted_on_reopen(db_path: Path) -> None:
    store = ConversationStore(db_path, save_interval=0)
    message = store.add_question(store.create_conversation().id, "q")
    answer_id = store.begin_answer(message.id, MODEL, None, {})
    store.update_answer(answer_id, "cut off mid")
    store.close()
    with ConversationStore(db_path) as reopened:
        answer = reopened.message(message.id).answer
        assert (answer.status, answer.text) == (AnswerStatus.INTERRUPTED, "cut off mid")


def test_regenerate_keeps_alternatives_and_switches_between_them(store: ConversationStore) -> None:
    message = store.add_question(store.create_conversation().id, "q")
    first = store.begin_answer(message.id, MODEL, None, {"temperature": 0.0})
    store.finish_answer(first, "first answer", {})
    second = store.begin_answer(message.id, MODEL, ADAPTER, {"temperature": 0.7})
    store.finish_answer(second, "second answer", {})
    assert [v.text for v in store.variants(message.id)] == ["first answer", "second answer"]
    assert store.message(message.id).answer.id == second
    store.select_variant(message.id, first)
    assert store.message(message.id).answer.text == "first answer"
    other = store.add_question(message.conversation_id, "other")
    with pytest.raises(KeyError):
        store.select_variant(other.id, first)
    assert store.message(message.id).answer.id == first


def test_edited_question_is_resent_and_old_answers_keep_their_wording(store: ConversationStore) -> None:
    message = store.add_question(store.create_conversation().id, "Is the heart enlarged?")
    old = store.begin_answer(message.id, MODEL, None, {})
    store.finish_answer(old, "No.", {})
    edited = store.edit_question(message.id, "Is there cardiomegaly?")
    assert edited.question == "Is there cardiomegaly?" and edited.edited_at is not None
    new = store.begin_answer(message.id, MODEL, None, {})
    store.finish_answer(new, "Mild cardiomegaly.", {})
    variants = store.variants(message.id)
    assert [v.question for v in variants] == ["Is the heart enlarged?", "Is there cardiomegaly?"]
    assert [h.answer_id for h in store.search("cardiomegaly")] != []
    assert [h for h in store.search("enlarged") if h.answer_id is None] == []  # the index follows the edit


# -- conversations: list, rename, delete, search ------------------------------------------------------------------


def test_list_is_newest_activity_first_and_rename(store: ConversationStore) -> None:
    older = store.create_conversation("older")
    newer = store.create_conversation("newer")
    assert [c.id for c in store.list_conversations()] == [newer.id, older.id]
    answered(store, older.id, "q", "a")
    assert [c.id for c in store.list_conversations()] == [older.id, newer.id]
    store.rename_conversation(newer.id, "  renamed  ")
    assert store.conversation(newer.id).title == "renamed"
    answered(store, newer.id, "a question that does not become the title", "a")
    assert store.conversation(newer.id).title == "renamed"


def test_delete_can_be_undone_and_purge_erases(store: ConversationStore, db_path: Path, tmp_path: Path) -> None:
    shared, own = picture(tmp_path, "shared.png", "red"), picture(tmp_path, "own.png", "blue")
    kept = store.create_conversation("kept")
    store.add_question(kept.id, "shared image", [shared])
    gone = store.create_conversation("gone")
    answered(store, gone.id, "xylophone question", "xylophone answer")
    store.add_question(gone.id, "images", [shared, own])

    store.delete_conversation(gone.id)
    assert [c.id for c in store.list_conversations()] == [kept.id]
    assert store.search("xylophone") == []
    assert store.conversation(gone.id).deleted_at is not None
    store.restore_conversation(gone.id)
    assert {c.id for c in store.list_conversations()} == {kept.id, gone.id}
    assert len(store.search("xylophone")) == 2

    store.delete_conversation(gone.id)
    assert gone.id in {c.id for c in store.list_conversations(include_deleted=True)}
    assert store.purge_deleted() == 1
    assert [c.id for c in store.list_conversations(include_deleted=True)] == [kept.id]
    assert raw(db_path, "SELECT sha256 FROM images") == [(shared.sha256,)]
    assert raw(db_path, "SELECT count(*) FROM answers") == [(0,)]
    with pytest.raises(KeyError):
        store.image_png(own.sha256)


def test_search_finds_words_in_questions_and_answers(store: ConversationStore) -> None:
    conversation = store.create_conversation("Chest film")
    message_id = answered(store, conversation.id, "Is there a pleural effusion?", "Small left <effusion> noted.")
    hits = store.search("effusion")
    assert {(h.message_id, h.answer_id is None) for h in hits} == {(message_id, True), (message_id, False)}
    assert hits[0].conversation_title == "Chest film"
    answer_hit = next(h for h in hits if h.answer_id is not None)
    assert answer_hit.snippet_html == "Small left &lt;<b>effusion</b>&gt; noted."
    assert len(store.search("effus")) == 2  # the last word is a prefix: search as you type
    assert len(store.search("left noted")) == 1  # every word, any order
    assert store.search("pneumothorax") == [] and store.search("  ") == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_search_never_fails_on_user_text(store: ConversationStore, text: str) -> None:
    store.search(text)


def test_store_is_usable_from_two_threads(store: ConversationStore) -> None:
    """The model worker streams an answer while the UI thread lists and searches."""
    message = store.add_question(store.create_conversation().id, "q")
    answer_id = store.begin_answer(message.id, MODEL, None, {})
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            for index in range(200):
                store.update_answer(answer_id, "word " * index)
            store.finish_answer(answer_id, "done", {})
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    worker = threading.Thread(target=stream)
    worker.start()
    while worker.is_alive():
        store.list_conversations()
        store.search("word")
        store.messages(message.conversation_id)
    worker.join()
    assert errors == [] and store.message(message.id).answer.text == "done"


# -- crashes and bad files -----------------------------------------------------------------------------------------


def test_killed_mid_answer_loses_nothing_committed(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    import_path = [str(Path(medgemma_desktop.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(import_path)}
    child = subprocess.Popen([sys.executable, str(Path(__file__).with_name("store_crash_child.py")), str(db_path)],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "committed"
        saved = 0
        while saved < 400:
            saved = int(child.stdout.readline())
        child.kill()  # SIGKILL: no cleanup, no close()
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode != 0

    with ConversationStore(db_path) as store:
        assert store.take_notices() == [] and not store.in_memory
        (conversation,) = store.list_conversations()
        first, second = store.messages(conversation.id)
        assert (first.question, first.answer.text, first.answer.status) == ("first question", "first answer",
                                                                             AnswerStatus.DONE)
        assert second.question == "second question" and second.answer.status is AnswerStatus.INTERRUPTED
        text = second.answer.text
        assert len(text) >= saved  # everything reported as saved is there...
        assert text == "".join(f"token{i} " for i in range(text.count(" ")))  # ...and nothing torn
    assert raw(db_path, "PRAGMA integrity_check") == [("ok",)]


def moved_aside(db_path: Path) -> list[Path]:
    return sorted(p for p in db_path.parent.iterdir() if ".moved-aside-" in p.name)


def test_corrupt_file_is_moved_aside_and_a_fresh_history_started(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    garbage = os.urandom(8192)
    db_path.write_bytes(garbage)
    with ConversationStore(db_path) as store:
        (notice,) = store.take_notices()
        assert isinstance(notice, StoreProblem) and "moved-aside" in str(notice)
        assert not store.in_memory and store.list_conversations() == []
        store.create_conversation("fresh")
    (kept,) = moved_aside(db_path)
    assert kept.read_bytes() == garbage  # never deleted
    assert raw(db_path, "SELECT title FROM conversations") == [("fresh",)]


@pytest.mark.parametrize("kind", ["another app's tables", "another application_id"])
def test_foreign_database_is_moved_aside(db_path: Path, kind: str) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        if kind == "another app's tables":
            conn.execute("CREATE TABLE bookmarks (url TEXT)")
            conn.execute("INSERT INTO bookmarks VALUES ('https://example.org')")
        else:
            conn.execute("PRAGMA application_id = 1234")
    conn.close()
    with ConversationStore(db_path) as store:
        assert len(store.take_notices()) == 1 and not store.in_memory
        store.create_conversation("ours")
    (kept,) = moved_aside(db_path)
    if kind == "another app's tables":
        assert raw(kept, "SELECT url FROM bookmarks") == [("https://example.org",)]
    assert raw(db_path, "PRAGMA application_id") == [(APPLICATION_ID,)]


def test_history_from_a_newer_version_is_left_alone(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = db_path.read_bytes()
    with ConversationStore(db_path) as store:
        assert store.in_memory and "newer version" in str(store.take_notices()[0])
        store.create_conversation("in memory")
    assert db_path.read_bytes() == before and moved_aside(db_path) == []


def test_unwritable_location_falls_back_to_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    with ConversationStore(blocker / "conversations.sqlite3") as store:
        assert store.in_memory
        (notice,) = store.take_notices()
        assert "in memory" in str(notice)
        answered(store, store.create_conversation().id, "still works", "yes")
        assert len(store.search("works")) == 1


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_history_stays_visible_in_memory(db_path: Path) -> None:
    with ConversationStore(db_path) as store:
        answered(store, store.create_conversation("old").id, "q", "a")
    db_path.chmod(0o444)
    db_path.parent.chmod(0o555)
    try:
        with ConversationStore(db_path) as store:
            assert store.in_memory and len(store.take_notices()) == 1
            assert [c.title for c in store.list_conversations()] == ["old"]
            store.create_conversation("new")
    finally:
        db_path.parent.chmod(0o755)


def test_disk_full_mid_session_keeps_everything_in_memory(store: ConversationStore, db_path: Path,
                                                          tmp_path: Path) -> None:
    conversation = store.create_conversation("before")
    answered(store, conversation.id, "saved question", "saved answer")
    # Let the file grow no further: the next large write fails with SQLITE_FULL, as on a full disk.
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    noise = Image.frombytes("RGB", (256, 256), os.urandom(256 * 256 * 3))
    noise.save(tmp_path / "noise.png")
    message = store.add_question(conversation.id, "after the disk filled", [load_image(tmp_path / "noise.png")])
    assert store.in_memory
    (notice,) = store.take_notices()
    assert "cannot be saved to disk" in str(notice)
    assert [m.question for m in store.messages(conversation.id)] == ["saved question", "after the disk filled"]
    assert store.message(message.id).images[0].width == 256
    assert raw(db_path, "SELECT count(*) FROM messages") == [(1,)]  # the file still holds what it held
