"""One question over many studies: every picture, DICOM file, series folder and DICOMDIR series is an item,
answered through the same session steps as a question in the window (`Session.ask`), one row per item.

Inputs are expanded into units first without reading a pixel (a file; a folder of pictures gives each picture; a
folder of DICOM files or with a DICOMDIR is one unit that may hold several series), and each unit is read only
when its turn comes, so memory holds one study at a time. A bad unit or item becomes a row with its error and the
batch goes on. Stop (the window's Cancel, the first Ctrl+C) ends the batch after the item being answered.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medgemma_desktop.core.boxes import boxes_record
from medgemma_desktop.core.dicom_export import answer_to_report, image_inputs
from medgemma_desktop.core.dicom_report import write_dicom_report
from medgemma_desktop.core.engine import GenerationSettings, ModelIdentity
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.prompts import TaskMode
from medgemma_desktop.session.backend import Backend
from medgemma_desktop.session.batch_results import DICOM_REPORT_FIELD, PATIENT_FIELD, ResultsFile, Row
from medgemma_desktop.session.conversation import Exchange, Session
from medgemma_desktop.session.inputs import InputItem, picture_files, read_inputs
from medgemma_desktop.session.question import MODE_FOR_MODALITY

log = logging.getLogger(__name__)

AUTO = "auto"  # a series in its CT or MRI series mode, a single image described
_ITEM = re.compile(r"item (\d+) of (\d+)")


@dataclass(frozen=True)
class BatchTask:
    """The question asked of every item."""

    task: str = AUTO  # a `TaskMode` value, or AUTO
    question: str = ""  # "" asks each mode's default question
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    include_patient: bool = False  # the identifying DICOM tags in a column of their own
    dicom_reports: Path | None = None  # a folder: each answer about DICOM images also as a DICOM report there
    deidentify: bool = False  # with dicom_reports: de-identified copies of the images, the report refers to them

    def mode_for(self, item: InputItem) -> TaskMode:
        if self.task != AUTO:
            return TaskMode(self.task)
        if item.series is not None:
            return MODE_FOR_MODALITY.get(item.series.modality, TaskMode.CT_SERIES)
        return TaskMode.DESCRIBE


@dataclass
class BatchSummary:
    answered: int = 0
    failed: int = 0
    skipped: int = 0  # finished by an earlier run with the same results file
    stopped: bool = False


def batch_units(paths: Sequence[Path | str]) -> list[Path]:
    """The inputs as units, in order, each once: files as they are, folders expanded (`_folder_units`)."""
    units: list[Path] = []
    for path in map(Path, paths):
        units.extend(_folder_units(path) if path.is_dir() else [path])
    return list(dict.fromkeys(units))


def _folder_units(folder: Path) -> list[Path]:
    """A folder with a DICOMDIR or with files other than pictures is one unit (its series are read together);
    each picture is a unit of its own; a folder of folders (one per study) is expanded folder by folder."""
    if (folder / "DICOMDIR").is_file():
        return [folder]
    pictures = picture_files(folder)
    others = [path for path in folder.iterdir() if path.is_file() and not path.name.startswith(".")
              and path not in pictures]
    if others:
        return [folder]
    below = sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
    return [*pictures, *(unit for sub in below for unit in _folder_units(sub))]


def unit_finished(unit: Path, done: set[tuple[str, str]]) -> bool:
    """Whether an earlier run wrote every row of this unit (known without reading it: its rows say "item k of n")."""
    items = {item for name, item in done if name == str(unit)}
    if "" in items:
        return True
    counts = {int(found[2]) for found in map(_ITEM.fullmatch, items) if found}
    return len(counts) == 1 and len(items) == counts.pop()


def run_batch(units: Sequence[Path], backend: Backend, task: BatchTask, results: ResultsFile,
              stop: threading.Event | None = None, on_opened: Callable[[Path, int], None] | None = None,
              on_row: Callable[[Row], None] | None = None) -> BatchSummary:
    """Answer every unit not yet in `results`, a row each item. `on_opened(unit, rows)` once a unit is read,
    with the rows it will add (a progress bar's total grows by rows - 1); `on_row` after each row is written."""
    summary = BatchSummary()
    for unit in units:
        if stop is not None and stop.is_set():
            summary.stopped = True
            break
        if unit_finished(unit, results.done):
            summary.skipped += 1
        else:
            for row in _unit_rows(unit, backend, task, results.done, stop, on_opened):
                results.write(row)
                if row["error"]:
                    summary.failed += 1
                else:
                    summary.answered += 1
                if on_row is not None:
                    on_row(row)
    return summary


def _unit_rows(unit: Path, backend: Backend, task: BatchTask, done: set[tuple[str, str]],
               stop: threading.Event | None, on_opened: Callable[[Path, int], None] | None):
    """The rows of one unit as they are answered (a generator: each is written before the next item starts)."""
    opened = read_inputs([unit])
    if opened.errors and not opened.items:
        if on_opened is not None:
            on_opened(unit, 1)
        yield _row(unit, "", task, error=str(opened.errors[0]))
        return
    # A unit that also held readable items: a row per bad part, named by it.
    errors = [error for error in opened.errors if (str(error.path or unit), "") not in done]
    count = len(opened.items)
    names = ["" if count == 1 else f"item {index} of {count}" for index in range(1, count + 1)]
    todo = [(name, item) for name, item in zip(names, opened.items, strict=True) if (str(unit), name) not in done]
    if on_opened is not None:
        on_opened(unit, len(errors) + len(todo))
    for error in errors:
        yield _row(Path(str(error.path or unit)), "", task, error=str(error))
    for position, (name, item) in enumerate(todo):
        if position and stop is not None and stop.is_set():
            return
        yield _answer_row(unit, name, item, backend, task)


def _answer_row(unit: Path, name: str, item: InputItem, backend: Backend, task: BatchTask) -> Row:
    mode = task.mode_for(item)
    row = _row(unit, name, task, item=item, mode=mode)
    session = Session(backend, settings=task.settings)
    try:
        answer = session.ask(mode, [item], task.question)
    except UserFacingError as exc:
        return {**row, "error": str(exc)}
    except Exception as exc:  # a bug, logged with its traceback: this item's row says so, the batch goes on
        log.exception("batch item %s failed", unit)
        return {**row, "error": f"{unit}: the item failed ({type(exc).__name__}); the log has the details."}
    stats, identity, exchange = answer.stats, answer.identity, session.last
    boxes = None
    if exchange is not None and exchange.boxes and exchange.target is not None:
        boxes = boxes_record(exchange.boxes, exchange.target.image.size, exchange.padding)["boxes"]
    if task.dicom_reports is not None and exchange is not None and identity is not None:
        row[DICOM_REPORT_FIELD] = _dicom_report(task.dicom_reports, unit, name, mode, answer.text, exchange,
                                                identity, task.deidentify)
    return {**row, "answer": answer.text, "boxes": boxes, "prompt_tokens": stats.prompt_tokens,
            "new_tokens": stats.new_tokens, "first_token_s": round(stats.time_to_first_token_s, 3),
            "total_s": round(stats.total_s, 3), "stop_reason": stats.stop_reason,
            **({"model": identity.model.folder, "model_sha256": identity.model.sha256,
                "adapter": identity.adapter.folder if identity.adapter else "",
                "adapter_sha256": identity.adapter.sha256 if identity.adapter else "",
                "answered_by": identity.device} if identity is not None else {})}


def _dicom_report(folder: Path, unit: Path, name: str, mode: TaskMode, text: str, exchange: Exchange,
                  identity: ModelIdentity, deidentify: bool) -> str:
    """Write the item's DICOM report; the report's path, or the one line saying why there is none."""
    stem = re.sub(r"[^\w.-]+", "_", f"{unit.parent.name}_{unit.name}_{name}").strip("_")
    report = answer_to_report(exchange.question or mode.default_question, text, mode.value, identity.model,
                              identity.adapter)
    try:
        return str(write_dicom_report(report, image_inputs(exchange.images), folder, deidentify=deidentify,
                                      stem=stem).report)
    except UserFacingError as exc:
        return str(exc)


def _row(unit: Path, name: str, task: BatchTask, *, item: InputItem | None = None, mode: TaskMode | None = None,
         error: str = "") -> Row:
    question = task.question or (mode.default_question if mode is not None else "")
    row: Row = {"input": str(unit), "item": name, "label": item.label if item is not None else "",
                "task": mode.value if mode is not None else task.task, "question": question, "error": error}
    if task.include_patient:
        row[PATIENT_FIELD] = json.dumps(dict(item.input.patient)) if item is not None else ""
    return row
