"""Full-text search of the history: user text as an FTS5 query that cannot be a syntax error, and the snippet
shown for each hit.

The snippet is cut here rather than by FTS5's `snippet()`, whose cost grows with the square of the matches in a
document: on a long answer that repeats itself (a model stuck in a loop) it took minutes. Here it is one regular
expression search over the text, so a hit costs time in proportion to where its first match is.
"""

from __future__ import annotations

import re
import unicodedata
from html import escape

SNIPPET_BEFORE = 40  # characters of context before the first match
SNIPPET_AFTER = 100  # ... and after it
_FOLD_LIMIT = 200_000  # characters searched again without accents when the plain search finds nothing


def query_words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def fts_query(text: str) -> str:
    """User text as an FTS5 query that cannot be a syntax error: every word quoted, the last one a prefix."""
    words = query_words(text)
    return " ".join(f'"{word}"' for word in words) + ("*" if words else "")


def _fold(text: str) -> str:
    """Lower case without accents, one character for each character (so positions stay the same)."""
    return "".join(unicodedata.normalize("NFKD", char)[:1].lower()[:1] for char in text)


def _pattern(words: list[str]) -> re.Pattern[str]:
    """Any query word as a whole word, the last one as a prefix (as the FTS5 query matches)."""
    alternatives = [rf"\b{re.escape(word)}\b" for word in words[:-1]] + [rf"\b{re.escape(words[-1])}\w*"]
    return re.compile("|".join(alternatives), re.IGNORECASE)


def snippet_html(text: str, query: str) -> str:
    """Escaped text around the first match of the query's words, every match in it in <b>...</b>."""
    words = query_words(query)
    if not words:
        return escape(text[: SNIPPET_BEFORE + SNIPPET_AFTER])
    pattern = _pattern(words)
    found = pattern.search(text)
    searched = text
    if found is None:  # FTS5 matched without accents ("cafe" finds "café"): look again in a folded copy
        searched = _fold(text[:_FOLD_LIMIT])
        found = _pattern([_fold(word) for word in words]).search(searched)
        pattern = _pattern([_fold(word) for word in words])
    start = max(0, found.start() - SNIPPET_BEFORE) if found else 0
    end = min(len(text), (found.end() if found else 0) + SNIPPET_AFTER)
    # Widen to whole words at both ends (a word of up to 30 characters).
    for _ in range(30):
        if start > 0 and text[start - 1].isalnum():
            start -= 1
        if end < len(text) and text[end].isalnum():
            end += 1
    pieces, position = [], start
    for match in pattern.finditer(searched, start, end):
        pieces += [escape(text[position:match.start()]), f"<b>{escape(text[match.start():match.end()])}</b>"]
        position = match.end()
    pieces.append(escape(text[position:end]))
    body = " ".join("".join(pieces).split())
    return ("…" if start > 0 else "") + body + ("…" if end < len(text) else "")
