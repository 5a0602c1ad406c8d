"""Token ids to text, one token at a time, at constant cost per token.

Decoding the whole answer after every token costs O(n) per token; this keeps a short window instead (the
prefix/read offsets of text-generation-inference) and holds text back while a multi-byte character is still
incomplete. Thinking-trace markers are recognised by token id, so the trace never reaches the visible answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from medgemma_desktop.core.thinking import THOUGHT_END, THOUGHT_START


@dataclass(frozen=True)
class TextChunk:
    text: str
    thinking: bool = False


class IncrementalDetokenizer:
    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self._thinking = False
        # The marker ids straight from the backend: None where the vocabulary lacks one, and no copy of Gemma's
        # 262,144-entry vocabulary per answer (`get_vocab`: 0.1-0.2 s before every first token).
        backend = tokenizer.backend_tokenizer
        self._start = backend.token_to_id(THOUGHT_START)
        self._end = backend.token_to_id(THOUGHT_END)

    def push(self, token_id: int) -> TextChunk | None:
        """Add one generated token; return the text it completes, if any."""
        if token_id in (self._start, self._end):
            pending = self.flush()
            self._thinking = token_id == self._start
            return pending
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        after = decode(self._ids[self._prefix:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return None
        self._prefix, self._read = self._read, len(self._ids)
        return TextChunk(after[len(before):], self._thinking)

    def flush(self) -> TextChunk | None:
        """Text still held back at the end of the answer (an incomplete character shows as U+FFFD)."""
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        rest = decode(self._ids[self._prefix:], skip_special_tokens=True)[len(before):]
        self._ids.clear()
        self._prefix = self._read = 0
        return TextChunk(rest, self._thinking) if rest else None
