"""The conversation as exchanges (question, images, answer) and the one place that turns it into model turns.

Qt-free on purpose: the conversation store and task-mode presets will plug in here, and the rules for what the
model sees (history, then this question's images, then its text) stay in one method, `turns_for`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medgemma_desktop.core.engine import GenerationStats
from medgemma_desktop.core.imaging import ImageInput
from medgemma_desktop.core.prompts import ChatTurn, build_chat, user_turn


@dataclass
class Exchange:
    question: str
    images: tuple[ImageInput, ...]
    answer: str = ""
    thinking: str = ""
    stats: GenerationStats | None = None
    error: str = ""
    # Where it is kept in the conversation store (None until the worker has recorded it):
    message_id: int | None = None
    answer_id: int | None = None  # the answer variant shown
    answer_ids: list[int] = field(default_factory=list)  # every variant, oldest first

    @property
    def complete(self) -> bool:
        """Answered, so it can be history for the next question (stopped answers count: the user saw them)."""
        return bool(self.answer.strip()) and not self.error


class Conversation:
    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.id: int | None = None  # the stored conversation, once it has one

    def ask(self, question: str, images: list[ImageInput]) -> list[ChatTurn]:
        self.exchanges.append(Exchange(question, tuple(images)))
        return self.turns_for(len(self.exchanges) - 1)

    def retry(self, index: int) -> list[ChatTurn]:
        """Clear the shown answer of one exchange (a stored one stays a variant) and give its turns again."""
        exchange = self.exchanges[index]
        exchange.answer, exchange.thinking, exchange.stats, exchange.error = "", "", None, ""
        return self.turns_for(index)

    def turns_for(self, index: int) -> list[ChatTurn]:
        history: list[ChatTurn] = []
        for earlier in self.exchanges[:index]:
            if earlier.complete:
                history.append(user_turn(*(item.image for item in earlier.images), earlier.question))
                history.append(ChatTurn("assistant", (earlier.answer.strip(),)))
        exchange = self.exchanges[index]
        return build_chat(exchange.question, [item.image for item in exchange.images], history=history)

    @property
    def last(self) -> Exchange | None:
        return self.exchanges[-1] if self.exchanges else None

    def clear(self) -> None:
        self.exchanges.clear()
        self.id = None
