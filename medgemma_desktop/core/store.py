"""The conversation history: one SQLite database the store owns, so nothing a user asked or was answered is lost.

Questions are committed before generation starts and the growing answer is saved every `save_interval` seconds,
so a crash or a kill leaves at most that much text unsaved; an answer still 'streaming' when the database is
next opened was cut off and becomes 'interrupted'. Images are kept once per content hash (`ImageInput.sha256`,
the hash of the file the user dropped) as PNG blobs of the pixels the model saw, so moving or deleting the
original file does not break history and no DICOM header (which holds patient data) is copied into a blob.

A database that is not ours or is unreadable is renamed aside, never deleted; one that SQLite's quick check finds
damaged at open is salvaged (every row that still reads, into a new file) and the damaged file kept aside; a disk
that is full or read-only turns the store into an in-memory one. Each leaves a `StoreProblem` in `take_notices()`
for the window to show. Identifying DICOM tags and original file paths are kept only when `keep_patient_data`
is set (the user's choice); `forget_patient_data` removes what was kept.

The schema and migrations live in `store_schema`, the records handed out in `store_records`, salvage and
fallbacks in `store_repair`, snippets in `store_search`.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from medgemma_desktop.core.app_dirs import data_dir
from medgemma_desktop.core.fingerprint import WeightsIdentity
from medgemma_desktop.core.imaging import ImageInput
from medgemma_desktop.core.store_records import (
    AnswerStatus,
    AnswerVariant,
    Conversation,
    Message,
    MessageImage,
    SearchHit,
    StoreProblem,
)
from medgemma_desktop.core.store_repair import (
    is_disk_error,
    is_unreadable,
    move_aside,
    quick_check,
    read_only,
    salvage,
)
from medgemma_desktop.core.store_schema import APPLICATION_ID, SCHEMA_VERSION, Unusable, check_ours, connect, prepare
from medgemma_desktop.core.store_search import fts_query, snippet_html

__all__ = ["APPLICATION_ID", "DB_FILENAME", "SCHEMA_VERSION", "AnswerStatus", "AnswerVariant", "Conversation",
           "ConversationStore", "Message", "MessageImage", "SearchHit", "StoreProblem", "WeightsIdentity",
           "default_store_path"]

DB_FILENAME = "conversations.sqlite3"
DEFAULT_SAVE_INTERVAL = 1.0  # seconds between saves of a growing answer

T = TypeVar("T")


def default_store_path() -> Path:
    return data_dir() / DB_FILENAME


def _png(image_input: ImageInput) -> bytes:
    buffer = io.BytesIO()
    image_input.image.save(buffer, format="PNG", compress_level=1)  # fast: this may run on the UI thread
    return buffer.getvalue()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class ConversationStore:
    """Owns the history database. Safe to call from the UI thread and the model worker thread.

    One connection (`check_same_thread=False`) shared under a lock, rather than one per thread: an in-memory
    fallback database exists only inside its one connection, and every call is a short transaction, so the
    lock is never held for long.
    """

    def __init__(self, path: Path | str | None = None, *, save_interval: float = DEFAULT_SAVE_INTERVAL,
                 keep_patient_data: bool = False) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.save_interval = save_interval
        self.keep_patient_data = keep_patient_data  # the user's choice (Settings.keep_patient_data)
        self._lock = threading.RLock()
        self._notices: list[StoreProblem] = []
        self._pending: dict[int, str] = {}  # answer id -> newest text not yet written
        self._saved_at: dict[int, float] = {}  # answer id -> time.monotonic() of its last write
        self.in_memory = False
        self._conn = self._open()

    # -- opening ------------------------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            return self._memory(read_only(self.path), f"cannot open it ({exc})")
        try:
            check_ours(conn)
            problem = quick_check(conn)
            if problem is not None:
                return self._salvaged(conn, problem)
            prepare(conn, on_disk=True)
            return conn
        except Unusable as exc:
            conn.close()
            if not exc.move_aside:
                return self._memory(None, exc.reason)
            return self._fresh_after_moving_aside(exc.reason)
        except sqlite3.Error as exc:
            conn.close()
            if is_unreadable(exc):
                return self._fresh_after_moving_aside(f"it is damaged or not a database ({exc})")
            return self._memory(read_only(self.path), f"cannot write to it ({exc})")

    def _salvaged(self, damaged: sqlite3.Connection, problem: str) -> sqlite3.Connection:
        """Copy what still reads into a new file, keep the damaged one aside, and say so once."""
        rescue = self.path.with_name(self.path.name + ".salvaged")
        try:
            saved = salvage(damaged, rescue)
            damaged.close()
            moved = move_aside(self.path)
            rescue.replace(self.path)
        except (OSError, sqlite3.Error) as exc:
            damaged.close()
            rescue.unlink(missing_ok=True)
            return self._fresh_after_moving_aside(f"it is damaged ({problem}) and could not be salvaged ({exc})")
        self._notices.append(StoreProblem(
            f"the conversation history file was damaged (SQLite's check found: {problem[:200]}); {saved.summary()}",
            path=self.path, fix=f"The damaged file was kept as {moved.name}."))
        conn = connect(self.path)
        prepare(conn, on_disk=True)
        return conn

    def _fresh_after_moving_aside(self, reason: str) -> sqlite3.Connection:
        try:
            moved = move_aside(self.path)
        except OSError as exc:
            return self._memory(None, f"{reason}, and it cannot be renamed ({exc})")
        self._notices.append(StoreProblem(
            f"the conversation history could not be used: {reason}", path=self.path,
            fix=f"It was kept as {moved.name} and a new, empty history was started."))
        conn = connect(self.path)
        try:
            prepare(conn, on_disk=True)
            return conn
        except sqlite3.Error as exc:
            conn.close()
            return self._memory(None, f"cannot write a new one ({exc})")

    def _memory(self, source: sqlite3.Connection | None, reason: str) -> sqlite3.Connection:
        """Switch to an in-memory database, copying what `source` holds so history stays visible."""
        conn = connect(":memory:")
        if source is not None:
            try:
                source.backup(conn)
            except sqlite3.Error:
                conn.close()
                conn = connect(":memory:")
            source.close()
        prepare(conn, on_disk=False)
        self.in_memory = True
        self._notices.append(StoreProblem(
            f"the conversation history cannot be saved to disk: {reason}", path=self.path,
            fix="Conversations are kept in memory until the app closes; free disk space or make the folder "
                "writable, then restart."))
        return conn

    # -- plumbing -----------------------------------------------------------------------------------------------

    def take_notices(self) -> list[StoreProblem]:
        """Problems met since the last call, for the window to show once each."""
        with self._lock:
            notices, self._notices = self._notices, []
            return notices

    def close(self) -> None:
        """Write any unsaved answer text and close; an answer still streaming shows as interrupted next time."""
        with self._lock:
            for answer_id in list(self._pending):
                self._save_text(answer_id)
            self._conn.close()

    def __enter__(self) -> ConversationStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one transaction; if the disk refuses it, move to memory (keeping what is there) and
        run it again."""
        with self._lock:
            try:
                return self._transaction(work)
            except sqlite3.Error as exc:
                if self.in_memory or not is_disk_error(exc):
                    raise
                self._conn = self._memory(self._conn, f"writing failed ({exc})")
                return self._transaction(work)

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    # -- conversations ------------------------------------------------------------------------------------------

    def create_conversation(self, title: str = "") -> Conversation:
        """An empty title is replaced by the start of the first question."""
        now = time.time()

        def work(conn: sqlite3.Connection) -> int:
            return conn.execute("INSERT INTO conversations (title, created_at, updated_at) VALUES (?, ?, ?)",
                                (title.strip(), now, now)).lastrowid

        return self.conversation(self._write(work))

    def conversation(self, conversation_id: int) -> Conversation:
        with self._reading() as conn:
            row = conn.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise KeyError(f"no conversation {conversation_id}")
        return Conversation(row["id"], row["title"], row["created_at"], row["updated_at"], row["deleted_at"])

    def list_conversations(self, *, include_deleted: bool = False) -> list[Conversation]:
        """Most recently active first."""
        where = "" if include_deleted else "WHERE deleted_at IS NULL"
        with self._reading() as conn:
            rows = conn.execute(f"SELECT * FROM conversations {where} ORDER BY updated_at DESC, id DESC").fetchall()
        return [Conversation(r["id"], r["title"], r["created_at"], r["updated_at"], r["deleted_at"]) for r in rows]

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        self._write(lambda c: c.execute("UPDATE conversations SET title = ? WHERE id = ?",
                                        (title.strip(), conversation_id)))

    def delete_conversation(self, conversation_id: int) -> None:
        """Hide it from lists and search; `restore_conversation` undoes, `purge_deleted` makes it final."""
        self._write(lambda c: c.execute("UPDATE conversations SET deleted_at = ? WHERE id = ?",
                                        (time.time(), conversation_id)))

    def restore_conversation(self, conversation_id: int) -> None:
        self._write(lambda c: c.execute("UPDATE conversations SET deleted_at = NULL WHERE id = ?",
                                        (conversation_id,)))

    def purge_deleted(self) -> int:
        """Erase deleted conversations and the images nothing else uses; returns how many were erased."""

        def work(conn: sqlite3.Connection) -> int:
            erased = conn.execute("DELETE FROM conversations WHERE deleted_at IS NOT NULL").rowcount
            conn.execute("DELETE FROM images WHERE sha256 NOT IN (SELECT sha256 FROM message_images)")
            return erased

        return self._write(work)

    # -- questions ----------------------------------------------------------------------------------------------

    def add_question(self, conversation_id: int, question: str, images: Sequence[ImageInput] = (),
                     task_mode: str = "") -> Message:
        """Commit a question and its images; call before generation starts so a crash cannot lose it. The images'
        identifying tags and source paths are stored only while `keep_patient_data` is set."""
        now = time.time()
        keep = self.keep_patient_data
        with self._reading() as conn:
            known = {row[0] for row in conn.execute(
                f"SELECT sha256 FROM images WHERE sha256 IN ({','.join('?' * len(images))})",
                [image.sha256 for image in images])}
        # Encode outside the transaction and only images not stored yet: each is kept once.
        blobs = {image.sha256: _png(image) for image in images if image.sha256 not in known}

        def work(conn: sqlite3.Connection) -> int:
            message_id = conn.execute(
                "INSERT INTO messages (conversation_id, question, task_mode, created_at) VALUES (?, ?, ?, ?)",
                (conversation_id, question, task_mode, now)).lastrowid
            for position, image in enumerate(images):
                if image.sha256 in blobs:
                    conn.execute("INSERT OR IGNORE INTO images (sha256, png, width, height) VALUES (?, ?, ?, ?)",
                                 (image.sha256, blobs[image.sha256], image.image.width, image.image.height))
                conn.execute(
                    "INSERT INTO message_images (message_id, position, sha256, label, metadata, patient, source) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (message_id, position, image.sha256, image.label, _json(dict(image.metadata)),
                     _json(dict(image.patient) if keep else {}), str(image.source) if keep else ""))
            conn.execute("UPDATE conversations SET updated_at = ?, "
                         "title = CASE title WHEN '' THEN ? ELSE title END WHERE id = ?",
                         (now, _title_from(question), conversation_id))
            return message_id

        return self.message(self._write(work))

    def edit_question(self, message_id: int, question: str) -> Message:
        """Change a past question; its earlier answers keep the text they answered. Resend with `begin_answer`."""
        self._write(lambda c: c.execute("UPDATE messages SET question = ?, edited_at = ? WHERE id = ?",
                                        (question, time.time(), message_id)))
        return self.message(message_id)

    def message(self, message_id: int) -> Message:
        with self._reading() as conn:
            row = conn.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise KeyError(f"no message {message_id}")
            return self._message_from(conn, row)

    def messages(self, conversation_id: int) -> list[Message]:
        """The conversation's questions, oldest first, each with its images and answer variants."""
        with self._reading() as conn:
            rows = conn.execute("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id",
                                (conversation_id,)).fetchall()
            return [self._message_from(conn, row) for row in rows]

    def _message_from(self, conn: sqlite3.Connection, row: sqlite3.Row) -> Message:
        images = tuple(
            MessageImage(r["sha256"], r["label"], r["width"], r["height"], json.loads(r["metadata"]),
                         json.loads(r["patient"]), r["source"])
            for r in conn.execute("SELECT mi.*, i.width, i.height FROM message_images mi "
                                  "JOIN images i USING (sha256) WHERE message_id = ? ORDER BY position", (row["id"],)))
        variants = tuple(self._variant_from(r) for r in
                         conn.execute("SELECT * FROM answers WHERE message_id = ? ORDER BY id", (row["id"],)))
        return Message(row["id"], row["conversation_id"], row["question"], row["task_mode"], row["created_at"],
                       row["edited_at"], images, variants, row["active_answer_id"])

    def image_png(self, sha256: str) -> bytes:
        """The stored pixels of an image, as PNG."""
        with self._reading() as conn:
            row = conn.execute("SELECT png FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            raise KeyError(f"no image {sha256}")
        return bytes(row[0])

    # -- answers ------------------------------------------------------------------------------------------------

    def begin_answer(self, message_id: int, model: WeightsIdentity, adapter: WeightsIdentity | None,
                     settings: Mapping[str, Any]) -> int:
        """Start a new answer variant (the active one) for the message's current question; returns its id."""
        now = time.time()

        def work(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT conversation_id, question FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise KeyError(f"no message {message_id}")
            answer_id = conn.execute(
                "INSERT INTO answers (message_id, question, text, status, model_folder, model_sha256, "
                "adapter_folder, adapter_sha256, settings, stats, started_at, updated_at) "
                "VALUES (?, ?, '', ?, ?, ?, ?, ?, ?, '{}', ?, ?)",
                (message_id, row["question"], AnswerStatus.STREAMING.value, model.folder, model.sha256,
                 adapter.folder if adapter else None, adapter.sha256 if adapter else None,
                 _json(dict(settings)), now, now)).lastrowid
            conn.execute("UPDATE messages SET active_answer_id = ? WHERE id = ?", (answer_id, message_id))
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, row["conversation_id"]))
            return answer_id

        answer_id = self._write(work)
        with self._lock:
            self._saved_at[answer_id] = time.monotonic()
        return answer_id

    def update_answer(self, answer_id: int, text: str) -> None:
        """Record the answer so far (the whole text, not a delta). Cheap to call per token: it writes at most
        once per `save_interval` seconds and otherwise only remembers the text. A late call after
        `finish_answer` (a token still queued) is ignored."""
        with self._lock:
            if answer_id not in self._saved_at:
                return
            self._pending[answer_id] = text
            if time.monotonic() - self._saved_at[answer_id] >= self.save_interval:
                self._save_text(answer_id)

    def _save_text(self, answer_id: int) -> None:
        text = self._pending[answer_id]
        self._write(lambda c: c.execute("UPDATE answers SET text = ?, updated_at = ? WHERE id = ?",
                                        (text, time.time(), answer_id)))
        del self._pending[answer_id]
        self._saved_at[answer_id] = time.monotonic()

    def finish_answer(self, answer_id: int, text: str, stats: Mapping[str, Any],
                      status: AnswerStatus = AnswerStatus.DONE, boxes: Any = None) -> None:
        """Store the final text, the generation stats (time to first token, tokens/s, peak VRAM), how it ended
        and, for localization answers, the parsed boxes."""
        now = time.time()

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE answers SET text = ?, stats = ?, status = ?, boxes = ?, updated_at = ?, "
                         "finished_at = ? WHERE id = ?",
                         (text, _json(dict(stats)), AnswerStatus(status).value,
                          None if boxes is None else _json(boxes), now, now, answer_id))

        with self._lock:
            self._write(work)
            self._pending.pop(answer_id, None)
            self._saved_at.pop(answer_id, None)

    def variants(self, message_id: int) -> list[AnswerVariant]:
        """Every answer generated for the message, oldest first."""
        return list(self.message(message_id).variants)

    def select_variant(self, message_id: int, answer_id: int) -> None:
        """Make one of the message's answers the one shown (and sent as history)."""

        def work(conn: sqlite3.Connection) -> None:
            if conn.execute("UPDATE messages SET active_answer_id = ? WHERE id = ? AND EXISTS "
                            "(SELECT 1 FROM answers WHERE id = ? AND message_id = ?)",
                            (answer_id, message_id, answer_id, message_id)).rowcount != 1:
                raise KeyError(f"answer {answer_id} is not an answer of message {message_id}")

        self._write(work)

    def _variant_from(self, row: sqlite3.Row) -> AnswerVariant:
        adapter = WeightsIdentity(row["adapter_folder"], row["adapter_sha256"]) if row["adapter_folder"] else None
        return AnswerVariant(
            id=row["id"], message_id=row["message_id"], question=row["question"],
            text=self._pending.get(row["id"], row["text"]), status=AnswerStatus(row["status"]),
            model=WeightsIdentity(row["model_folder"], row["model_sha256"]), adapter=adapter,
            settings=json.loads(row["settings"]), stats=json.loads(row["stats"]),
            boxes=None if row["boxes"] is None else json.loads(row["boxes"]),
            started_at=row["started_at"], updated_at=row["updated_at"], finished_at=row["finished_at"])

    # -- search -------------------------------------------------------------------------------------------------

    def search(self, text: str, limit: int = 50) -> list[SearchHit]:
        """Questions and answers of conversations not deleted that contain every word (the last as a prefix),
        best match first."""
        query = fts_query(text)
        if not query:
            return []
        sql = """
            SELECT m.conversation_id, c.title, m.id AS message_id, NULL AS answer_id, m.question AS text,
                   questions_fts.rank AS rank
            FROM questions_fts JOIN messages m ON m.id = questions_fts.rowid
                 JOIN conversations c ON c.id = m.conversation_id
            WHERE questions_fts MATCH ? AND c.deleted_at IS NULL
            UNION ALL
            SELECT m.conversation_id, c.title, m.id, a.id, a.text, answers_fts.rank
            FROM answers_fts JOIN answers a ON a.id = answers_fts.rowid
                 JOIN messages m ON m.id = a.message_id JOIN conversations c ON c.id = m.conversation_id
            WHERE answers_fts MATCH ? AND c.deleted_at IS NULL
            ORDER BY rank LIMIT ?"""
        with self._reading() as conn:
            rows = conn.execute(sql, (query, query, limit)).fetchall()
        return [SearchHit(r[0], r[1], r[2], r[3], snippet_html(r[4], text)) for r in rows]

    # -- patient data -------------------------------------------------------------------------------------------

    def forget_patient_data(self) -> int:
        """Remove identifying DICOM tags and original file paths from every stored image reference (what versions
        before the `keep_patient_data` choice stored); the images themselves stay. Overwritten, not just
        unlinked: SQLite's secure delete zeroes the old values and the WAL is emptied. Returns how many image
        references were cleaned."""
        with self._lock:
            self._conn.execute("PRAGMA secure_delete = ON")
            try:
                cleaned = self._write(lambda c: c.execute(
                    "UPDATE message_images SET patient = '{}', source = '' WHERE patient != '{}' OR source != ''"
                ).rowcount)
                if not self.in_memory:
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.execute("PRAGMA secure_delete = OFF")
        return cleaned


def _title_from(question: str, length: int = 60) -> str:
    line = " ".join(question.split())
    return line if len(line) <= length else line[: length - 1].rstrip() + "…"
