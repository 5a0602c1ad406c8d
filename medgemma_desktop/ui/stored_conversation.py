"""A past conversation read back from the store as the exchanges the chat pane shows and the model continues.

Images come back as the PNG pixels the model saw (`ConversationStore.image_png`), so continuing a conversation
sends the model exactly what it read before, even if the original files are gone. Qt-free: it runs on a
background job, since decoding a stored CT series takes a moment.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from pathlib import Path

from PIL import Image

from medgemma_desktop.core.engine import GenerationStats
from medgemma_desktop.core.imaging import ImageInput
from medgemma_desktop.core.store import AnswerStatus, AnswerVariant, ConversationStore, Message, MessageImage
from medgemma_desktop.core.thinking import split_thinking
from medgemma_desktop.ui.conversation import Exchange

STATUS_NOTES = {
    AnswerStatus.FAILED: "This answer failed before it finished.",
    AnswerStatus.INTERRUPTED: "The app closed before this answer finished.",
    AnswerStatus.STREAMING: "This answer is still being written.",
}
_STATS_FIELDS = {item.name for item in fields(GenerationStats)}


@dataclass(frozen=True)
class StoredConversation:
    conversation_id: int
    title: str
    exchanges: list[Exchange]


def stored_image(store: ConversationStore, image: MessageImage) -> ImageInput:
    with Image.open(io.BytesIO(store.image_png(image.sha256))) as png:
        pixels = png.convert("RGB")
    return ImageInput(image=pixels, source=Path(image.source), sha256=image.sha256, label=image.label,
                      metadata=dict(image.metadata), patient=dict(image.patient))


def show_variant(exchange: Exchange, variant: AnswerVariant | None) -> None:
    """Make `variant` the answer the exchange shows (text, thinking, stats, and a note if it did not finish)."""
    exchange.answer_id = variant.id if variant else None
    if variant is None:
        exchange.answer, exchange.thinking, exchange.stats, exchange.error = "", "", None, ""
        return
    exchange.answer, exchange.thinking = split_thinking(variant.text)
    known = {key: value for key, value in variant.stats.items() if key in _STATS_FIELDS}
    exchange.stats = GenerationStats(**known) if variant.finished_at is not None and known else None
    exchange.error = STATUS_NOTES.get(variant.status, "")


def exchange_from(store: ConversationStore, message: Message) -> Exchange:
    exchange = Exchange(message.question, tuple(stored_image(store, image) for image in message.images),
                        message_id=message.id, answer_ids=[variant.id for variant in message.variants])
    show_variant(exchange, message.answer)
    return exchange


def read_conversation(store: ConversationStore, conversation_id: int) -> StoredConversation:
    conversation = store.conversation(conversation_id)
    return StoredConversation(conversation_id, conversation.title,
                              [exchange_from(store, message) for message in store.messages(conversation_id)])
