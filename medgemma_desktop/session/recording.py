"""One answer being generated and kept: the job a front end runs on its generating thread (the window's model
thread, the CLI's or the server's own).

The question is committed to the store before the first token (its images PNG-encoded here, off any UI thread),
the growing answer is saved as it streams (the store writes at most once a second), and the end is recorded with
the stats, the settings (the sampling seed included), the identity of the weights that produced it (read from the
backend on this thread, so an adapter switch queued just before cannot be misrecorded) and, for localization
answers, the boxes. The job never touches the conversation's exchanges: the session applies its `Answer` on the
session's own thread (`Session.finish`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from medgemma_desktop.core.boxes import Box, boxes_record, parse_boxes
from medgemma_desktop.core.engine import Generation, GenerationSettings, GenerationStats, ModelIdentity
from medgemma_desktop.core.imaging import ImageInput, PaddingInfo
from medgemma_desktop.core.prompts import ChatTurn, TaskMode
from medgemma_desktop.core.store import AnswerStatus, ConversationStore
from medgemma_desktop.core.thinking import THOUGHT_END, THOUGHT_START
from medgemma_desktop.session.backend import Backend

ChunkCallback = Callable[[str], None]
RecordedCallback = Callable[[int, int], None]  # message id, answer id


@dataclass(frozen=True)
class Answer:
    """A finished (or stopped) answer, as the front ends show it."""

    text: str
    thinking: str
    stats: GenerationStats
    answer_id: int | None = None  # the stored answer variant, when it was recorded
    identity: ModelIdentity | None = None
    message_id: int | None = None
    settings: GenerationSettings | None = None  # as generated (a regenerated answer's seed is here)


@dataclass(frozen=True)
class Recording:
    """Where an answer is kept: a new question (`message_id` None: add it first) or a new answer variant of a
    stored one (regenerate, edit and resend)."""

    store: ConversationStore
    conversation_id: int
    message_id: int | None
    question: str
    images: tuple[ImageInput, ...] = ()
    mode: TaskMode = TaskMode.FREE_CHAT
    target_size: tuple[int, int] | None = None  # localization: the original picture's width, height
    padding: PaddingInfo | None = None


def answer_boxes(mode: TaskMode, text: str) -> list[Box]:
    """The boxes a localization answer holds ([] for other modes)."""
    return parse_boxes(text) if mode is TaskMode.LOCALIZATION else []


def stored_text(generation: Generation) -> str:
    """The answer as the store keeps it: thinking trace (if any) in its markers, then the answer."""
    if not generation.thinking:
        return generation.raw_text
    return f"{THOUGHT_START}thought\n{generation.thinking}{THOUGHT_END}{generation.raw_text}"


def _status(stats: GenerationStats) -> AnswerStatus:
    return AnswerStatus.STOPPED if stats.stop_reason == "stopped" else AnswerStatus.DONE


def _kept_settings(settings: GenerationSettings, backend: Backend, identity: ModelIdentity) -> Mapping[str, Any]:
    return {**asdict(settings), "context_limit": backend.context_limit, "device": identity.device,
            "dtype": identity.dtype, "quantization": identity.quantization}


@dataclass(frozen=True, eq=False)
class AnswerJob:
    """The turns to send, how to decode them, and where to keep the answer. `run` it on the generating thread."""

    turns: tuple[ChatTurn, ...]
    settings: GenerationSettings
    record: Recording | None = None
    index: int = -1  # the exchange it answers, in its session
    cancel: threading.Event = field(default_factory=threading.Event)

    def run(self, backend: Backend, on_chunk: ChunkCallback | None = None,
            on_recorded: RecordedCallback | None = None) -> Answer:
        """Generate, streaming visible text to `on_chunk`; record as it goes. Exceptions reach the caller, after
        the stored answer is marked failed."""
        identity = backend.identity
        generation = backend.generate(self.turns, self.settings, cancel=self.cancel)
        record, message_id, answer_id = self.record, None, None
        try:
            if record is not None:
                message_id = record.message_id
                if message_id is None:
                    message_id = record.store.add_question(record.conversation_id, record.question, record.images,
                                                           record.mode.value).id
                answer_id = record.store.begin_answer(message_id, identity.model, identity.adapter,
                                                      _kept_settings(self.settings, backend, identity))
                if on_recorded is not None:
                    on_recorded(message_id, answer_id)
            for chunk in generation:
                if not chunk.thinking and on_chunk is not None:
                    on_chunk(chunk.text)
                if record is not None and answer_id is not None:
                    record.store.update_answer(answer_id, stored_text(generation))
        except BaseException:
            if record is not None and answer_id is not None:
                record.store.finish_answer(answer_id, stored_text(generation), asdict(generation.stats),
                                           AnswerStatus.FAILED)
            raise
        if record is not None and answer_id is not None:
            boxes = answer_boxes(record.mode, generation.text)
            kept = boxes_record(boxes, record.target_size, record.padding) if boxes and record.target_size else None
            record.store.finish_answer(answer_id, stored_text(generation), asdict(generation.stats),
                                       _status(generation.stats), boxes=kept)
        return Answer(generation.text, generation.thinking, generation.stats, answer_id, identity, message_id,
                      self.settings)
