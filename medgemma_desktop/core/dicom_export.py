"""Answers as DICOM reports: what the window's File > Save as DICOM report…, `ask --sr`, batch `--sr` and
`history export --format dicom` write (`write_conversation_reports` from the store; `answer_to_report` with
`image_inputs` and `core.dicom_report.write_dicom_report` for an answer in hand).

Each question of a conversation whose inputs include DICOM images becomes one report (`core.dicom_report`) of
its shown answer, named `question_<n>.dcm`; questions about pictures only are left out with a line saying so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from medgemma_desktop.core.boxes import parse_boxes
from medgemma_desktop.core.dicom_report import DicomReportError, ReportedAnswer, WrittenReport, write_dicom_report
from medgemma_desktop.core.dicom_sources import InputRecord
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.fingerprint import WeightsIdentity
from medgemma_desktop.core.imaging import ImageInput
from medgemma_desktop.core.prompts import TaskMode
from medgemma_desktop.core.store import AnswerStatus, ConversationStore, Message
from medgemma_desktop.core.thinking import split_thinking


def task_title(task_mode: str) -> str:
    try:
        return TaskMode(task_mode).title
    except ValueError:
        return task_mode or "Free question"


def answer_to_report(question: str, text: str, task_mode: str, model: WeightsIdentity,
                     adapter: WeightsIdentity | None, complete: bool = True) -> ReportedAnswer:
    """An answer as generated (thinking trace included) as a report states it: the visible answer, and for
    localization the boxes of its final answer."""
    visible, _thinking = split_thinking(text)
    boxes = tuple(parse_boxes(text)) if task_mode == TaskMode.LOCALIZATION.value else ()
    return ReportedAnswer(question=question, answer=visible.strip(), task=task_title(task_mode), model=model,
                          adapter=adapter, boxes=boxes, complete=complete)


def reported_answer(message: Message) -> ReportedAnswer:
    """The message's shown answer as a report states it; raises `UserFacingError` when it has none."""
    variant = message.answer
    if variant is None:
        raise UserFacingError("this question has no answer yet, so there is nothing to report",
                              fix="Wait for the answer, or ask again.")
    return answer_to_report(variant.question, variant.text, message.task_mode, variant.model, variant.adapter,
                            complete=variant.status is AnswerStatus.DONE)


def message_inputs(message: Message) -> list[InputRecord]:
    return [InputRecord(image.label, Path(image.source), image.patient, image.metadata) for image in message.images]


def image_inputs(images: Iterable[ImageInput]) -> list[InputRecord]:
    """What a report needs of the images a question was asked about (`ask --sr` and batch, without a store)."""
    return [InputRecord(image.label, image.source, image.patient, image.metadata) for image in images]


def write_message_report(store: ConversationStore, message_id: int, out_dir: Path | str, *,
                         deidentify: bool = False, stem: str = "report") -> WrittenReport:
    message = store.message(message_id)
    return write_dicom_report(reported_answer(message), message_inputs(message), out_dir, deidentify=deidentify,
                              stem=stem)


# One question's report to write, or the reason it has none.
ReportRequest = tuple[ReportedAnswer, Sequence[InputRecord]] | UserFacingError


def write_reports(requests: Sequence[ReportRequest], out_dir: Path | str, *,
                  deidentify: bool = False) -> tuple[list[WrittenReport], list[str]]:
    """`question_<n>.dcm` for each request that can be written; returns them and a line per question left out.

    Raises `UserFacingError` when none could be written, `DicomReportError` when the folder cannot be written.
    """
    written: list[WrittenReport] = []
    left_out: list[str] = []
    for number, request in enumerate(requests, start=1):
        try:
            if isinstance(request, UserFacingError):
                raise request
            answer, inputs = request
            written.append(write_dicom_report(answer, inputs, out_dir, deidentify=deidentify,
                                              stem=f"question_{number}"))
        except DicomReportError:
            raise  # the folder cannot be written: every other question would fail the same way
        except UserFacingError as exc:
            left_out.append(f"question {number}: {exc}")
    if not written:
        reason = left_out[0] if left_out else "the conversation has no questions"
        raise UserFacingError(f"nothing to write as a DICOM report ({reason.rstrip('.')})",
                              fix="Export it as Markdown, JSON or PDF instead.")
    return written, left_out


def write_conversation_reports(store: ConversationStore, conversation_id: int, out_dir: Path | str, *,
                               deidentify: bool = False) -> tuple[list[WrittenReport], list[str]]:
    """Every answered question about DICOM images of a stored conversation (its files found again from what the
    store kept: paths and UIDs are kept only when the user chose to keep patient details)."""
    requests: list[ReportRequest] = []
    for message in store.messages(conversation_id):
        try:
            requests.append((reported_answer(message), message_inputs(message)))
        except UserFacingError as exc:
            requests.append(exc)
    return write_reports(requests, out_dir, deidentify=deidentify)


def written_summary(folder: Path, written: list[WrittenReport], left_out: list[str]) -> str:
    """One line for the status bar or the terminal: what was written where, and what was left out."""
    states = sum(item.presentation_state is not None for item in written)
    copies = sum(len(item.deidentified) for item in written)
    parts = [f"{len(written)} DICOM report{'s' if len(written) != 1 else ''}"]
    if states:
        parts.append(f"{states} presentation state{'s' if states != 1 else ''}")
    if copies:
        parts.append(f"{copies} de-identified image{'s' if copies != 1 else ''}")
    notes = left_out + [note for item in written for note in item.notes]  # questions and inputs left out, warnings
    return f"Saved {', '.join(parts)} to {folder}" + (f". Notes: {'; '.join(notes)}" if notes else "")
