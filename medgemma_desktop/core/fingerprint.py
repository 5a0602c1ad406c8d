"""Content identity of model and adapter folders: which weights produced an answer, and the 4-bit cache's key.

Hashing 8.6 GB of shards takes a while, so each file's digest is remembered by (path, size, mtime) in a small
JSON file and only recomputed when the file changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

BLOCK = 8 << 20


@dataclass(frozen=True)
class WeightsIdentity:
    """Which weights produced an answer: the folder's name and a hash of its contents."""

    folder: str
    sha256: str

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class FingerprintCache:
    """Remembers file digests across runs; safe to share between threads."""

    def __init__(self, path: Path | None = None) -> None:
        """`path` None keeps digests for this run only."""
        self.path = path
        self._lock = threading.Lock()
        self._known: dict[str, str] = {}
        if path is not None:
            try:
                self._known = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._known = {}

    @staticmethod
    def _stamp(file: Path) -> str:
        stat = file.stat()
        return f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"

    def file_digest(self, file: Path, progress: Callable[[int], None] | None = None) -> str:
        stamp = self._stamp(file)
        with self._lock:
            if stamp in self._known:
                return self._known[stamp]
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(BLOCK), b""):
                digest.update(block)
                if progress:
                    progress(len(block))
        value = digest.hexdigest()
        with self._lock:
            self._known[stamp] = value
            self._save()
        return value

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._known, indent=0, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only cache dir only costs re-hashing next time

    def folder_digest(self, files: Iterable[Path], progress: Progress | None = None) -> str:
        """One digest over the named files' digests (names included, order fixed)."""
        files = sorted(files)
        total = sum(f.stat().st_size for f in files)
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if progress:
                progress(done, total)

        combined = hashlib.sha256()
        for file in files:
            combined.update(f"{file.name}:{self.file_digest(file, advance)}\n".encode())
        if progress:
            progress(total, total)
        return combined.hexdigest()
