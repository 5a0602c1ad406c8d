"""Copy links in the transcript: one under every answer and one under every fenced code block in it.

The transcript is a QTextBrowser showing Markdown, so its "buttons" are links (Tab reaches them, Enter follows
them); `copy:<exchange>` copies that answer, `code:<exchange>.<block>` one code block of it, without fences.
"""

from __future__ import annotations

import re

# A fenced block on lines of its own: ``` or ~~~, an optional language, the code, the same fence closing it.
FENCE = re.compile(r"^(?P<fence>```|~~~)[^\n`]*\n(?P<code>.*?)^(?P=fence)[ \t]*$", re.MULTILINE | re.DOTALL)


def code_blocks(answer: str) -> list[str]:
    """The code of each fenced block, in order, without its fences or its last newline."""
    return [match.group("code").removesuffix("\n") for match in FENCE.finditer(answer)]


def with_copy_links(answer: str, index: int) -> str:
    """The answer's Markdown with a "Copy code" link under each fenced block and a "Copy answer" link below."""
    count = 0

    def link(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"{match.group(0)}\n\n[Copy code](code:{index}.{count - 1})"

    return f"{FENCE.sub(link, answer)}\n\n[Copy answer](copy:{index})"


def parse_link(url: str) -> tuple[str, int, int] | None:
    """("copy", exchange, 0) or ("code", exchange, block) for a copy link; None for any other link."""
    match = re.fullmatch(r"(copy):(\d+)|(code):(\d+)\.(\d+)", url)
    if match is None:
        return None
    if match.group(1):
        return "copy", int(match.group(2)), 0
    return "code", int(match.group(4)), int(match.group(5))
