"""What the conversation history holds, as the store hands it out: conversations, questions with their images,
answer variants, search hits, and the problems the store met and worked around."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.fingerprint import WeightsIdentity


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
