"""The conversation history: one SQLite database the store owns, so nothing a user asked or was answered is lost.

Questions are committed before generation starts and the growing answer is saved every `save_interval` seconds,
so a crash or a kill leaves at most that much text unsaved; an answer still 'streaming' when the database is
next opened was cut off and becomes 'interrupted'. Images are kept once per content hash (`ImageInput.sha256`,
the hash of the file the user dropped) as PNG blobs of the pixels the model saw, so moving or deleting the
original file does not break history and no DICOM header (which holds patient data) is copied into a blob.

A database that is not ours or is unreadable is renamed aside, never deleted; a disk that is full or read-only
turns the store into an in-memory one. Both leave a `StoreProblem` in `take_notices()` for the window to show.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from html import escape
from pathlib import Path
from typing import Any, TypeVar

from medgemma_desktop.core.app_dirs import APP_NAME, data_dir
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.fingerprint import WeightsIdentity
from medgemma_desktop.core.imaging import ImageInput

DB_FILENAME = "conversations.sqlite3"
APPLICATION_ID = 0x4D474D44  # "MGMD": tells our database apart from any other SQLite file
DEFAULT_SAVE_INTERVAL = 1.0  # seconds between saves of a growing answer

T = TypeVar("T")


def default_store_path() -> Path:
    return data_dir() / DB_FILENAME


class StoreProblem(UserFacingError):
    """The history file could not be used as it was; the store kept working (moved aside, or in memory)."""

    kind = "store"


class AnswerStatus(str, Enum):
    STREAMING = "streaming"
    DONE = "done"
    STOPPED = "stopped"  # the user pressed Stop
    FAILED = "failed"  # generation raised (out of memory, ...)
    INTERRUPTED = "interrupted"  # the app died while streaming


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    created_at: float  # Unix seconds
    updated_at: float
    deleted_at: float | None


@dataclass(frozen=True)
class MessageImage:
    """An image as a message refers to it; `patient` and `source` may identify a patient and are never exported
    unless the user asks."""

    sha256: str
    label: str
    width: int
    height: int
    metadata: Mapping[str, str]
    patient: Mapping[str, str]
    source: str


@dataclass(frozen=True)
class AnswerVariant:
    """One answer to a question. Regenerating adds a variant; `question` is the text this variant answered,
    which differs from the message's current question after an edit."""

    id: int
    message_id: int
    question: str
    text: str  # as generated, thinking trace included (see core.thinking)
    status: AnswerStatus
    model: WeightsIdentity
    adapter: WeightsIdentity | None
    settings: Mapping[str, Any]
    stats: Mapping[str, Any]
    boxes: Any  # the parsed localization JSON, or None
    started_at: float
    updated_at: float
    finished_at: float | None


@dataclass(frozen=True)
class Message:
    """A question with its images and every answer generated for it, oldest first."""

    id: int
    conversation_id: int
    question: str
    task_mode: str
    created_at: float
    edited_at: float | None
    images: tuple[MessageImage, ...]
    variants: tuple[AnswerVariant, ...]
    active_variant_id: int | None

    @property
    def answer(self) -> AnswerVariant | None:
        """The variant the user selected (the newest unless they switched)."""
        return next((v for v in self.variants if v.id == self.active_variant_id), None)


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    conversation_title: str
    message_id: int
    answer_id: int | None  # None: the match is in the question
    snippet_html: str  # escaped text, matches in <b>...</b>


# Migration i takes a database from user_version i to i + 1, in one transaction with the version bump.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            deleted_at REAL)""",
        "CREATE INDEX conversations_by_update ON conversations (updated_at)",
        """CREATE TABLE images (
            sha256 TEXT PRIMARY KEY,
            png BLOB NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL)""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            question TEXT NOT NULL,
            task_mode TEXT NOT NULL,
            created_at REAL NOT NULL,
            edited_at REAL,
            active_answer_id INTEGER)""",
        "CREATE INDEX messages_by_conversation ON messages (conversation_id, id)",
        """CREATE TABLE message_images (
            message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            sha256 TEXT NOT NULL REFERENCES images (sha256),
            label TEXT NOT NULL,
            metadata TEXT NOT NULL,
            patient TEXT NOT NULL,
            source TEXT NOT NULL,
            PRIMARY KEY (message_id, position))""",
        "CREATE INDEX message_images_by_image ON message_images (sha256)",
        """CREATE TABLE answers (
            id INTEGER PRIMARY KEY,
            message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            question TEXT NOT NULL,
            text TEXT NOT NULL,
            status TEXT NOT NULL,
            model_folder TEXT NOT NULL,
            model_sha256 TEXT NOT NULL,
            adapter_folder TEXT,
            adapter_sha256 TEXT,
            settings TEXT NOT NULL,
            stats TEXT NOT NULL,
            boxes TEXT,
            started_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL)""",
        "CREATE INDEX answers_by_message ON answers (message_id, id)",
        "CREATE INDEX answers_by_status ON answers (status)",
        """CREATE VIRTUAL TABLE questions_fts USING fts5 (
            question, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2')""",
        """CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
            INSERT INTO questions_fts (rowid, question) VALUES (new.id, new.question); END""",
        """CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
            INSERT INTO questions_fts (questions_fts, rowid, question) VALUES ('delete', old.id, old.question); END""",
        """CREATE TRIGGER messages_au AFTER UPDATE OF question ON messages BEGIN
            INSERT INTO questions_fts (questions_fts, rowid, question) VALUES ('delete', old.id, old.question);
            INSERT INTO questions_fts (rowid, question) VALUES (new.id, new.question); END""",
        """CREATE VIRTUAL TABLE answers_fts USING fts5 (
            text, content='answers', content_rowid='id', tokenize='unicode61 remove_diacritics 2')""",
        """CREATE TRIGGER answers_ai AFTER INSERT ON answers BEGIN
            INSERT INTO answers_fts (rowid, text) VALUES (new.id, new.text); END""",
        """CREATE TRIGGER answers_ad AFTER DELETE ON answers BEGIN
            INSERT INTO answers_fts (answers_fts, rowid, text) VALUES ('delete', old.id, old.text); END""",
        """CREATE TRIGGER answers_au AFTER UPDATE OF text ON answers BEGIN
            INSERT INTO answers_fts (answers_fts, rowid, text) VALUES ('delete', old.id, old.text);
            INSERT INTO answers_fts (rowid, text) VALUES (new.id, new.text); END""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

# Failures of the disk rather than of the data: full, read-only, I/O error, cannot open.
# (SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN; sqlite3 names them only from Python 3.11.)
_DISK_ERRORS = {8, 10, 13, 14}
_SNIPPET_START, _SNIPPET_END = "\x02", "\x03"


def _is_disk_error(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _DISK_ERRORS


def _is_unreadable(exc: sqlite3.Error) -> bool:
    """SQLite says the file is corrupt or not a database at all (these map to the base DatabaseError)."""
    return type(exc) is sqlite3.DatabaseError


class _Unusable(Exception):
    """The file opened but is not a database of ours that this version can use."""

    def __init__(self, reason: str, *, move_aside: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.move_aside = move_aside


def _connect(target: str | Path) -> sqlite3.Connection:
    # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) and short.
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _check_ours(conn: sqlite3.Connection) -> None:
    """Raise `_Unusable` unless the database is empty (version 0) or one of ours this version can read."""
    application_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if application_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise _Unusable(f"it was written by a newer version of {APP_NAME} (schema {version})", move_aside=False)
    elif application_id != 0 or objects:
        raise _Unusable("it is not a MedGemma Desktop history (another application's database)", move_aside=True)


def _read_only(path: Path) -> sqlite3.Connection | None:
    """Our database opened for reading only, so its history can be copied into memory when the disk refuses
    writes; `immutable` because a read-only folder cannot hold the WAL index file."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    except sqlite3.Error:
        return None
    try:
        _check_ours(conn)
    except (sqlite3.Error, _Unusable):
        conn.close()
        return None
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for target, statements in enumerate(_MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _prepare(conn: sqlite3.Connection, *, on_disk: bool) -> None:
    """Bring an opened database up to date and mark answers cut off by a crash."""
    if on_disk:
        # WAL: readers never block the writer. FULL: a committed question survives a power cut or an OS crash
        # (a GPU driver can take the machine down), at the price of one fsync per commit.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
    _migrate(conn)
    conn.execute("UPDATE answers SET status = ? WHERE status = ?",
                 (AnswerStatus.INTERRUPTED.value, AnswerStatus.STREAMING.value))


def _move_aside(path: Path) -> Path:
    """Rename the database (and its WAL files, which would otherwise be replayed into the new one) with a
    timestamp suffix; nothing is deleted."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.moved-aside-{stamp}")
    count = 1
    while target.exists():
        count += 1
        target = path.with_name(f"{path.name}.moved-aside-{stamp}-{count}")
    path.replace(target)
    for suffix in ("-wal", "-shm", "-journal"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            companion.replace(target.with_name(target.name + suffix))
    return target


def _png(image_input: ImageInput) -> bytes:
    buffer = io.BytesIO()
    image_input.image.save(buffer, format="PNG", compress_level=1)  # fast: this may run on the UI thread
    return buffer.getvalue()


def _fts_query(text: str) -> str:
    """User text as an FTS5 query that cannot be a syntax error: every word quoted, the last one a prefix."""
    words = re.findall(r"\w+", text)
    return " ".join(f'"{word}"' for word in words) + ("*" if words else "")


def _snippet_html(snippet: str) -> str:
    return escape(snippet).replace(_SNIPPET_START, "<b>").replace(_SNIPPET_END, "</b>")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class ConversationStore:
    """Owns the history database. Safe to call from the UI thread and the model worker thread.

    One connection (`check_same_thread=False`) shared under a lock, rather than one per thread: an in-memory
    fallback database exists only inside its one connection, and every call is a short transaction, so the
    lock is never held for long.
    """

    def __init__(self, path: Path | str | None = None, *, save_interval: float = DEFAULT_SAVE_INTERVAL) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.save_interval = save_interval
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
            conn = _connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            return self._memory(_read_only(self.path), f"cannot open it ({exc})")
        try:
            _check_ours(conn)
            _prepare(conn, on_disk=True)
            return conn
        except _Unusable as exc:
            conn.close()
            if not exc.move_aside:
                return self._memory(None, exc.reason)
            return self._fresh_after_moving_aside(exc.reason)
        except sqlite3.Error as exc:
            conn.close()
            if _is_unreadable(exc):
                return self._fresh_after_moving_aside(f"it is damaged or not a database ({exc})")
            return self._memory(_read_only(self.path), f"cannot write to it ({exc})")

    def _fresh_after_moving_aside(self, reason: str) -> sqlite3.Connection:
        try:
            moved = _move_aside(self.path)
        except OSError as exc:
            return self._memory(None, f"{reason}, and it cannot be renamed ({exc})")
        self._notices.append(StoreProblem(
            f"the conversation history could not be used: {reason}", path=self.path,
            fix=f"It was kept as {moved.name} and a new, empty history was started."))
        conn = _connect(self.path)
        try:
            _prepare(conn, on_disk=True)
            return conn
        except sqlite3.Error as exc:
            conn.close()
            return self._memory(None, f"cannot write a new one ({exc})")

    def _memory(self, source: sqlite3.Connection | None, reason: str) -> sqlite3.Connection:
        """Switch to an in-memory database, copying what `source` holds so history stays visible."""
        conn = _connect(":memory:")
        if source is not None:
            try:
                source.backup(conn)
            except sqlite3.Error:
                conn.close()
                conn = _connect(":memory:")
            source.close()
        _prepare(conn, on_disk=False)
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
                if self.in_memory or not _is_disk_error(exc):
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
        """Commit a question and its images; call before generation starts so a crash cannot lose it."""
        now = time.time()
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
                     _json(dict(image.patient)), str(image.source)))
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
        query = _fts_query(text)
        if not query:
            return []
        marks = (_SNIPPET_START, _SNIPPET_END, "…", 12)
        sql = """
            SELECT m.conversation_id, c.title, m.id AS message_id, NULL AS answer_id,
                   snippet(questions_fts, 0, ?, ?, ?, ?) AS snippet, questions_fts.rank AS rank
            FROM questions_fts JOIN messages m ON m.id = questions_fts.rowid
                 JOIN conversations c ON c.id = m.conversation_id
            WHERE questions_fts MATCH ? AND c.deleted_at IS NULL
            UNION ALL
            SELECT m.conversation_id, c.title, m.id, a.id,
                   snippet(answers_fts, 0, ?, ?, ?, ?), answers_fts.rank
            FROM answers_fts JOIN answers a ON a.id = answers_fts.rowid
                 JOIN messages m ON m.id = a.message_id JOIN conversations c ON c.id = m.conversation_id
            WHERE answers_fts MATCH ? AND c.deleted_at IS NULL
            ORDER BY rank LIMIT ?"""
        with self._reading() as conn:
            rows = conn.execute(sql, (*marks, query, *marks, query, limit)).fetchall()
        return [SearchHit(r[0], r[1], r[2], r[3], _snippet_html(r[4])) for r in rows]


def _title_from(question: str, length: int = 60) -> str:
    line = " ".join(question.split())
    return line if len(line) <= length else line[: length - 1].rstrip() + "…"
