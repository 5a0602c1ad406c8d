"""Print the command lines of the ```bash blocks in one section of README.md, so CI runs the README's own commands
(a green CI then cannot hide a step the README lacks). Usage: readme_commands.py "SECTION TITLE"."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def section_commands(title: str, text: str) -> list[str]:
    """The lines of the bash code blocks under the `## title` heading, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    if match is None:
        raise SystemExit(f"README.md has no section {title!r}")
    blocks = re.findall(r"^```bash\n(.*?)^```", match.group(1), re.MULTILINE | re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


if __name__ == "__main__":
    print("\n".join(section_commands(sys.argv[1], README.read_text(encoding="utf-8"))))
