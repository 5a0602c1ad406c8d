"""What a question costs in tokens before it is sent, counted with the model's own tokenizer.

The worker hands over the engine's tokenizer when the model is ready (`ModelWorker.token_counter_ready`) rather
than the window loading a second copy: the tokenizers library holds the GIL while it parses tokenizer.json, so
a second load, even on a background thread, would freeze the window for about a second (measured: 0.65 s for a
7 MB vocabulary). Sharing it is safe: counting only encodes plain text without padding or truncation, so it
never changes the tokenizer's state (the one thing that makes a Rust tokenizer raise "Already borrowed" across
threads), and the engine's own calls do not either. Counting a question takes a fraction of a millisecond on
the UI thread and is exact (`core.prompts.estimate_prompt_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from medgemma_desktop.core.prompts import (
    ChatTurn,
    TextTokenCounter,
    TokenBudget,
    estimate_prompt_tokens,
    max_slices_that_fit,
    text_token_counter,
)


@dataclass(frozen=True)
class TokenCounter:
    tokens_per_image: int
    count_text: TextTokenCounter

    @classmethod
    def for_tokenizer(cls, tokens_per_image: int, tokenizer: object) -> TokenCounter:
        return cls(tokens_per_image, text_token_counter(tokenizer))


@dataclass(frozen=True)
class BudgetCheck:
    """The cost of one question against the context, and for a series that does not fit, what would."""

    budget: TokenBudget
    images: int
    series: Literal["CT", "MRI"] | None = None  # the question sends a series of `images` slices
    slices_that_fit: int | None = None

    @property
    def summary(self) -> str:
        noun = "slice" if self.series else "image"
        images = f", {self.images} {noun}{'s' if self.images != 1 else ''}" if self.images else ""
        return (f"Input {self.budget.total:,} tokens{images} · limit {self.budget.context_limit:,}, "
                f"{self.budget.reserve_tokens:,} kept for the answer")

    @property
    def problem(self) -> str:
        """Why the question cannot be sent ("" when it fits)."""
        if self.budget.fits:
            return ""
        needs = (f"The question needs {self.budget.total:,} tokens, but only "
                 f"{self.budget.context_limit - self.budget.reserve_tokens:,} fit the context limit of "
                 f"{self.budget.context_limit:,} with {self.budget.reserve_tokens:,} kept for the answer.")
        if self.series and self.slices_that_fit:
            return f"{needs} A {self.series} series of {self.slices_that_fit} slices fits."
        return (f"{needs} Use fewer images or a shorter text, or raise the context limit (or lower the new "
                "tokens) in Settings.")


def check_budget(turns: Sequence[ChatTurn], counter: TokenCounter, *, context_limit: int, reserve_tokens: int,
                 series: Literal["CT", "MRI"] | None = None, question: str = "") -> BudgetCheck:
    """Count `turns`; when they carry a series (`series` set; `question` the text asked after its slices) and do
    not fit, find the largest slice count that does."""
    budget = estimate_prompt_tokens(turns, counter.tokens_per_image, counter.count_text,
                                    context_limit=context_limit, reserve_tokens=reserve_tokens)
    images = len(turns[-1].images) if turns else 0
    fit = None
    if series is not None and not budget.fits:
        fit = max_slices_that_fit(question, counter.tokens_per_image, counter.count_text, modality=series,
                                  context_limit=context_limit, reserve_tokens=reserve_tokens, history=turns[:-1])
    return BudgetCheck(budget, images, series, fit)
