"""The conversation as exchanges (question, images, answer) and the one place that turns it into model turns.

Qt-free on purpose: the conversation store plugs in here, and the rules for what the model sees stay in one
method, `turns_for`: a question in a task mode is built by `core.prompts.build_task_prompt` (Google's formats);
a follow-up (no images of its own, after an answer in the same mode) is a plain question after the history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from medgemma_desktop.core.engine import GenerationStats
from medgemma_desktop.core.imaging import ImageInput, PaddingInfo
from medgemma_desktop.core.prompts import ChatTurn, TaskMode, build_chat, build_task_prompt


@dataclass
class Exchange:
    question: str  # as typed; "" asks the mode's default question
    images: tuple[ImageInput, ...]  # as the model sees them (a series' encoded slices, a padded picture)
    answer: str = ""
    thinking: str = ""
    show_thinking: bool = False  # the trace is folded until the user unfolds it
    stats: GenerationStats | None = None
    error: str = ""
    mode: TaskMode = TaskMode.FREE_CHAT
    padding: PaddingInfo | None = None  # localization: how the picture was padded to square
    target: ImageInput | None = None  # localization: the original picture the answer's boxes belong on
    # Where it is kept in the conversation store (None until the worker has recorded it):
    message_id: int | None = None
    answer_id: int | None = None  # the answer variant shown
    answer_ids: list[int] = field(default_factory=list)  # every variant, oldest first

    @property
    def complete(self) -> bool:
        """Answered, so it can be history for the next question (stopped answers count: the user saw them)."""
        return bool(self.answer.strip()) and not self.error

    @property
    def shown_question(self) -> str:
        return self.question or self.mode.default_question


class Conversation:
    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.id: int | None = None  # the stored conversation, once it has one

    def ask(self, question: str, images: Sequence[ImageInput], mode: TaskMode = TaskMode.FREE_CHAT, *,
            padding: PaddingInfo | None = None, target: ImageInput | None = None) -> list[ChatTurn]:
        """Record a question and give its turns; a question the mode refuses (`UserFacingError`) is not kept."""
        self.exchanges.append(Exchange(question, tuple(images), mode=mode, padding=padding, target=target))
        try:
            return self.turns_for(len(self.exchanges) - 1)
        except Exception:
            self.exchanges.pop()
            raise

    def preview(self, question: str, images: Sequence[ImageInput], mode: TaskMode) -> list[ChatTurn]:
        """The turns this question would send, without recording it (for the token budget)."""
        turns = self.ask(question, images, mode)
        self.exchanges.pop()
        return turns

    def retry(self, index: int) -> list[ChatTurn]:
        """Clear the shown answer of one exchange (a stored one stays a variant) and give its turns again."""
        exchange = self.exchanges[index]
        exchange.answer, exchange.thinking, exchange.stats, exchange.error = "", "", None, ""
        return self.turns_for(index)

    def turns_for(self, index: int) -> list[ChatTurn]:
        history: list[ChatTurn] = []
        previous: Exchange | None = None
        for earlier in self.exchanges[:index]:
            if earlier.complete:
                history.append(self._question_turns(earlier, previous, [])[-1])
                history.append(ChatTurn("assistant", (earlier.answer.strip(),)))
                previous = earlier
        return self._question_turns(self.exchanges[index], previous, history)

    @staticmethod
    def _question_turns(exchange: Exchange, previous: Exchange | None,
                        history: list[ChatTurn]) -> list[ChatTurn]:
        images = [item.image for item in exchange.images]
        if not images and previous is not None and previous.mode is exchange.mode:
            return build_chat(exchange.shown_question, history=history)
        return build_task_prompt(exchange.mode, images, exchange.question, history=history)

    @property
    def last(self) -> Exchange | None:
        return self.exchanges[-1] if self.exchanges else None

    def clear(self) -> None:
        self.exchanges.clear()
        self.id = None
