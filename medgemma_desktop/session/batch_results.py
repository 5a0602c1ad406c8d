"""A batch's results file: one row per item, as JSON lines or CSV, written whole row by row so that a batch
killed at any moment leaves a file that reads back, and a second run with the same file skips what is done.

A row is written with one `write` and flushed to the disk before the next item starts. A run killed inside a
write can leave at most a part of one last row: reopening keeps the complete rows, rewrites the file without the
part (atomically), and the item is answered again.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medgemma_desktop.core.errors import UserFacingError

FIELDS = ("input", "item", "label", "task", "question", "answer", "boxes", "prompt_tokens", "new_tokens",
          "first_token_s", "total_s", "stop_reason", "model", "model_sha256", "adapter", "adapter_sha256",
          "answered_by", "error")
PATIENT_FIELD = "patient"  # only with --include-patient-data: the identifying DICOM tags, as JSON
DICOM_REPORT_FIELD = "dicom_report"  # only with --sr: the item's DICOM report file, or why it has none
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}

Row = dict[str, Any]


class ResultsFile:
    """Open with `ResultsFile.open`; `done` holds the (input, item) keys already answered; `write` adds a row."""

    def __init__(self, path: Path, kind: str, fields: tuple[str, ...], rows: list[Row]) -> None:
        self.path = path
        self.kind = kind
        self.fields = fields
        self.rows_before = len(rows)
        self.done = {(str(row.get("input", "")), str(row.get("item", ""))) for row in rows}
        self._handle = path.open("a", encoding="utf-8", newline="")

    @classmethod
    def open(cls, path: Path | str, include_patient: bool = False, dicom_reports: bool = False) -> ResultsFile:
        path = Path(path)
        kind = _FORMATS.get(path.suffix.lower())
        if kind is None:
            raise UserFacingError("the results file must end in .jsonl or .csv", path=path,
                                  fix="Name it results.jsonl (one JSON object a line) or results.csv.")
        fields = (*FIELDS, *((PATIENT_FIELD,) if include_patient else ()),
                  *((DICOM_REPORT_FIELD,) if dicom_reports else ()))
        rows: list[Row] = []
        if path.exists():
            rows, clean = _read(path, kind, fields)
            if not clean:
                _rewrite(path, kind, fields, rows)
        elif not path.parent.is_dir():
            raise UserFacingError("the folder for the results file does not exist", path=path.parent,
                                  fix="Create it first, or choose another --out.")
        results = cls(path, kind, fields, rows)
        if not path.stat().st_size and kind == "csv":
            results._append(_csv_text([dict(zip(fields, fields, strict=True))], fields))
        return results

    def write(self, row: Row) -> None:
        """Add one row, on the disk before this returns."""
        complete = {field: row.get(field) for field in self.fields}
        if self.kind == "csv":  # a cell holds text: lists (boxes) as JSON, nothing as empty
            cells = {key: json.dumps(value) if isinstance(value, list | dict) else "" if value is None else value
                     for key, value in complete.items()}
            self._append(_csv_text([cells], self.fields))
        else:
            self._append(json.dumps(complete, ensure_ascii=False) + "\n")
        self.done.add((str(complete["input"]), str(complete["item"])))

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _append(self, text: str) -> None:
        self._handle.write(text)
        self._handle.flush()
        os.fsync(self._handle.fileno())


def read_results(path: Path | str) -> list[Row]:
    """The complete rows of a results file (for tests, reports and the window's table)."""
    path = Path(path)
    kind = _FORMATS.get(path.suffix.lower(), "jsonl")
    return _read(path, kind, FIELDS)[0]


def _read(path: Path, kind: str, fields: tuple[str, ...]) -> tuple[list[Row], bool]:
    """The complete rows, and whether the file holds nothing else (no cut-off last row)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:  # as written: CSV rows end in "\r\n"
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserFacingError(f"the results file cannot be read ({type(exc).__name__})", path=path,
                              fix="Choose another --out, or move this file away.") from exc
    if not text:
        return [], True
    if kind == "jsonl":
        return _read_jsonl(text, path)
    return _read_csv(text, path, fields)


def _read_jsonl(text: str, path: Path) -> tuple[list[Row], bool]:
    rows: list[Row] = []
    lines = text.split("\n")
    complete, last = lines[:-1], lines[-1]  # a file of whole rows ends with "\n": `last` is then ""
    for number, line in enumerate(complete, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or "input" not in row:
            if number == len(complete) and not last:
                return rows, False  # a last row cut short in a way that still ended a line
            raise UserFacingError(f"line {number} of the results file is not a result row", path=path,
                                  fix="Choose another --out, or move this file away: it was not written by batch.")
        rows.append(row)
    return rows, not last


def _read_csv(text: str, path: Path, fields: tuple[str, ...]) -> tuple[list[Row], bool]:
    complete = text[:_end_of_last_row(text)]
    if not complete:  # killed while writing the header
        return [], False
    reader = csv.reader(io.StringIO(complete, newline=""))
    header = next(reader)
    if tuple(header[:len(FIELDS)]) != FIELDS:
        raise UserFacingError("the results file has other columns than a batch writes", path=path,
                              fix="Choose another --out, or move this file away.")
    if tuple(header) != fields:
        raise UserFacingError("the results file was written " + ("without" if len(fields) > len(header) else "with")
                              + " patient data", path=path,
                              fix="Resume with the same --include-patient-data choice, or choose another --out.")
    rows = list(reader)
    if any(len(values) != len(header) for values in rows):
        raise UserFacingError("the results file has rows of other lengths than a batch writes", path=path,
                              fix="Choose another --out, or move this file away.")
    return [dict(zip(header, values, strict=True)) for values in rows], len(complete) == len(text)


def _end_of_last_row(text: str) -> int:
    """Where the last complete row ends: after the last "\r\n" outside quotes (inside quotes it is an answer's
    own line break). Anything after it is a row cut short."""
    inside, end = False, 0
    for index, char in enumerate(text):
        if char == '"':
            inside = not inside  # an escaped quote ("") toggles twice
        elif char == "\n" and not inside and index and text[index - 1] == "\r":
            end = index + 1
    return end


def _csv_text(rows: Iterable[Mapping[str, Any]], fields: tuple[str, ...]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\r\n")
    writer.writerows(rows)
    return buffer.getvalue()


def _rewrite(path: Path, kind: str, fields: tuple[str, ...], rows: list[Row]) -> None:
    """Replace the file by its complete rows in one rename (never a moment without a valid file)."""
    if kind == "csv":
        text = _csv_text([dict(zip(fields, fields, strict=True)), *rows], fields)
    else:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
