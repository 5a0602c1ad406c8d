"""What the session needs from whatever generates: the local `core.engine.Engine`, or a remote
OpenAI-compatible server behind the same shape. Structural typing: core never imports the session.

Counting is split from generating on purpose. The window's session lives on the UI thread while the engine lives
on the model thread, so the UI thread holds only a `PromptCounter` (the engine's tokenizer, handed over once the
model is ready) and the model thread runs the generation (`AnswerJob.run`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from medgemma_desktop.core.engine import Generation, GenerationSettings, ModelIdentity
from medgemma_desktop.core.prompts import ChatTurn, TextTokenCounter, estimate_prompt_tokens, text_token_counter


class PromptCounting(Protocol):
    """How many tokens a prompt costs, and the context it must fit."""

    @property
    def context_limit(self) -> int: ...

    @property
    def tokens_per_image(self) -> int: ...

    def count_tokens(self, turns: Sequence[ChatTurn]) -> int: ...

    @property
    def counts_exactly(self) -> bool:
        """False where `count_tokens` estimates (a server without a tokenizer endpoint): the window says so."""
        ...


@runtime_checkable
class Backend(PromptCounting, Protocol):
    """Counts and generates. `generate` may run on any one thread; nothing runs until the result is iterated."""

    @property
    def identity(self) -> ModelIdentity: ...

    def generate(self, turns: Sequence[ChatTurn], settings: GenerationSettings,
                 cancel: threading.Event | None = None) -> Generation: ...


@dataclass(frozen=True)
class PromptCounter:
    """A model's token count without the model: plain text through its tokenizer, images at their fixed cost
    (exact, see `core.prompts.estimate_prompt_tokens`). Cheap enough for every key press on the UI thread."""

    tokens_per_image: int
    count_text: TextTokenCounter
    context_limit: int
    counts_exactly: bool = True

    @classmethod
    def for_tokenizer(cls, tokenizer: object, tokens_per_image: int, context_limit: int) -> PromptCounter:
        return cls(tokens_per_image, text_token_counter(tokenizer), context_limit)

    def count_tokens(self, turns: Sequence[ChatTurn]) -> int:
        return estimate_prompt_tokens(turns, self.tokens_per_image, self.count_text).total
