"""The message list the engine sends to the model, in Gemma 3's chat format.

Gemma 3 has no system role: the chat template prepends a system text to the first user turn. Roles must
alternate user / assistant. Images stay in the order given, each costing `tokens_per_image` tokens (256 for
MedGemma).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import Image

Role = Literal["system", "user", "assistant"]
Part = str | Image.Image


@dataclass(frozen=True)
class ChatTurn:
    """One turn: text and images in the order the model should read them."""

    role: Role
    parts: tuple[Part, ...]

    @property
    def images(self) -> list[Image.Image]:
        return [part for part in self.parts if isinstance(part, Image.Image)]


def user_turn(*parts: Part) -> ChatTurn:
    return ChatTurn("user", tuple(parts))


def build_chat(question: str, images: Sequence[Image.Image] = (), system: str | None = None,
               history: Sequence[ChatTurn] = ()) -> list[ChatTurn]:
    """A plain question: earlier turns, then the images followed by the question (images first, as Google's
    notebooks put them)."""
    turns: list[ChatTurn] = []
    if system:
        turns.append(ChatTurn("system", (system,)))
    turns.extend(history)
    turns.append(user_turn(*images, question))
    return turns


def to_processor_messages(turns: Sequence[ChatTurn]) -> list[dict]:
    """Turns in the structure `processor.apply_chat_template` expects."""
    messages = []
    for turn in turns:
        content = [{"type": "image", "image": part} if isinstance(part, Image.Image) else {"type": "text", "text": part}
                   for part in turn.parts]
        messages.append({"role": turn.role, "content": content})
    return messages
