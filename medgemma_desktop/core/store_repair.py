"""When the history file is not healthy: which failures are the disk's, a read-only view, moving a file aside, and
salvaging what still reads out of a damaged database into a new one.

A database with a few damaged pages opens without complaint and then fails on every query that touches them;
`quick_check` at open finds that once, and `salvage` copies every row that can still be read (skipping past the
damaged pages), so the user gets one notice instead of an error per conversation.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from medgemma_desktop.core.store_records import AnswerStatus
from medgemma_desktop.core.store_schema import TABLES, Unusable, check_ours, connect, prepare

# Failures of the disk rather than of the data: full, read-only, I/O error, cannot open.
# (SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN; sqlite3 names them only from Python 3.11.)
_DISK_ERRORS = {8, 10, 13, 14}
_JSON_COLUMNS = {"message_images": ("metadata", "patient"), "answers": ("settings", "stats", "boxes")}
_LONGEST_SKIP = 1 << 24  # rowids skipped at most past one damaged region before a table is given up


def is_disk_error(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _DISK_ERRORS


def is_unreadable(exc: sqlite3.Error) -> bool:
    """SQLite says the file is corrupt or not a database at all (these map to the base DatabaseError)."""
    return type(exc) is sqlite3.DatabaseError


def read_only(path: Path) -> sqlite3.Connection | None:
    """Our database opened for reading only, so its history can be copied into memory when the disk refuses
    writes; `immutable` because a read-only folder cannot hold the WAL index file."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    except sqlite3.Error:
        return None
    try:
        check_ours(conn)
    except (sqlite3.Error, Unusable):
        conn.close()
        return None
    return conn


def move_aside(path: Path) -> Path:
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


def quick_check(conn: sqlite3.Connection) -> str | None:
    """None when SQLite's quick check finds the database sound, else the first problem it names."""
    try:
        found = [row[0] for row in conn.execute("PRAGMA quick_check(3)").fetchall()]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if found == ["ok"] else "; ".join(found)


@dataclass(frozen=True)
class Salvaged:
    conversations: int
    questions: int
    answers: int
    rows_lost: int  # rows that could not be read, or were left without the row they belong to

    def summary(self) -> str:
        kept = (f"{self.conversations} conversation(s), {self.questions} question(s) and {self.answers} "
                "answer(s) were kept")
        return kept + (f"; {self.rows_lost} damaged record(s) could not be saved" if self.rows_lost else "")


def salvage(source: sqlite3.Connection, path: Path) -> Salvaged:
    """Copy every readable, consistent row of `source` into a new history database at `path`."""
    path.unlink(missing_ok=True)
    target = connect(path)
    try:
        prepare(target, on_disk=False)
        target.execute("PRAGMA foreign_keys = OFF")
        lost = 0
        target.execute("BEGIN IMMEDIATE")
        for table in TABLES:
            columns = [row[1] for row in target.execute(f"PRAGMA table_info({table})")]
            insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            for row in _readable_rows(source, table, columns):
                if row is None or not _consistent(table, dict(zip(columns, row, strict=True))):
                    lost += 1
                    continue
                try:
                    target.execute(insert, row)
                except sqlite3.Error:
                    lost += 1
        lost += _drop_orphans(target)
        target.execute("COMMIT")
        counts = [target.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                  for table in ("conversations", "messages", "answers")]
        return Salvaged(*counts, rows_lost=lost)
    finally:
        target.close()


def _readable_rows(source: sqlite3.Connection, table: str, columns: list[str]) -> Iterator[tuple | None]:
    """Rows in rowid order; at a damaged page, skip ahead (1, 2, 4, ... rowids) until reading works again.
    Yields None once for each damaged region met."""
    select = f"SELECT rowid, {', '.join(columns)} FROM {table} WHERE rowid > ? ORDER BY rowid"
    last, skip = 0, 0  # rowids of these tables start at 1
    while skip <= _LONGEST_SKIP:
        try:
            for row in source.execute(select, (last + skip,)):
                last, skip = row[0], 0
                yield tuple(row[1:])
            return
        except sqlite3.DatabaseError:
            if skip == 0:
                yield None
            skip = max(1, skip * 2)


def _consistent(table: str, row: dict) -> bool:
    """A row from a damaged page can come back with garbage in it: keep it only if the store can read it back."""
    for column in _JSON_COLUMNS.get(table, ()):
        value = row[column]
        if value is None and column == "boxes":
            continue
        try:
            json.loads(value)
        except (TypeError, ValueError):
            return False
    if table == "answers":
        return row["status"] in {status.value for status in AnswerStatus}
    return True


def _drop_orphans(conn: sqlite3.Connection) -> int:
    """Remove rows whose parent was lost; returns how many."""
    removed = 0
    for statement in (
        "DELETE FROM messages WHERE conversation_id NOT IN (SELECT id FROM conversations)",
        "DELETE FROM answers WHERE message_id NOT IN (SELECT id FROM messages)",
        "DELETE FROM message_images WHERE message_id NOT IN (SELECT id FROM messages) "
        "OR sha256 NOT IN (SELECT sha256 FROM images)",
    ):
        removed += conn.execute(statement).rowcount
    conn.execute("UPDATE messages SET active_answer_id = NULL "
                 "WHERE active_answer_id IS NOT NULL AND active_answer_id NOT IN (SELECT id FROM answers)")
    return removed
