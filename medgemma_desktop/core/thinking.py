"""MedGemma 1.5 may emit a thinking trace `<unused94>thought ... <unused95>` before its answer, even unasked.

The visible answer never shows it; the trace is kept apart so the UI can offer it folded.
"""

from __future__ import annotations

import re

THOUGHT_START = "<unused94>"
THOUGHT_END = "<unused95>"

_TRACE = re.compile(re.escape(THOUGHT_START) + r"(.*?)(?:" + re.escape(THOUGHT_END) + r"|\Z)", re.DOTALL)


def split_thinking(text: str) -> tuple[str, str]:
    """Return (answer, thinking): every trace removed from the answer, their texts joined as the thinking.

    An unterminated trace (the answer was cut off while thinking) runs to the end of the text.
    """
    traces = [match.group(1) for match in _TRACE.finditer(text)]
    answer = _TRACE.sub("", text)
    thinking = "\n".join(trace.removeprefix("thought").strip() for trace in traces)
    return answer.strip(), thinking
