"""The history database's schema: its migrations, how a connection is opened, and whether a file is one of ours.

Migration i takes a database from user_version i to i + 1, in one transaction with the version bump; the
application_id tells our database apart from any other SQLite file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from medgemma_desktop.core.app_dirs import APP_NAME
from medgemma_desktop.core.store_records import AnswerStatus

APPLICATION_ID = 0x4D474D44  # "MGMD"
# Tables holding the history, parents before children (the order rows can be copied in).
TABLES = ("conversations", "images", "messages", "message_images", "answers")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
SCHEMA_VERSION = len(MIGRATIONS)


class Unusable(Exception):
    """The file opened but is not a database of ours that this version can use."""

    def __init__(self, reason: str, *, move_aside: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.move_aside = move_aside


def connect(target: str | Path) -> sqlite3.Connection:
    # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) and short.
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def check_ours(conn: sqlite3.Connection) -> None:
    """Raise `Unusable` unless the database is empty (version 0) or one of ours this version can read."""
    application_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if application_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise Unusable(f"it was written by a newer version of {APP_NAME} (schema {version})", move_aside=False)
    elif application_id != 0 or objects:
        raise Unusable("it is not a MedGemma Desktop history (another application's database)", move_aside=True)


def migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for target, statements in enumerate(MIGRATIONS[version:], start=version + 1):
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


def prepare(conn: sqlite3.Connection, *, on_disk: bool) -> None:
    """Bring an opened database up to date and mark answers cut off by a crash."""
    if on_disk:
        # WAL: readers never block the writer. FULL: a committed question survives a power cut or an OS crash
        # (a GPU driver can take the machine down), at the price of one fsync per commit.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
    migrate(conn)
    conn.execute("UPDATE answers SET status = ? WHERE status = ?",
                 (AnswerStatus.INTERRUPTED.value, AnswerStatus.STREAMING.value))
