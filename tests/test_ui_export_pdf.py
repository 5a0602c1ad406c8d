"""PDF export read back: every image is in the PDF at its own pixel size (not a broken-image icon), nothing is
laid out past the page's right edge (hashes included), demo exports say so, and stats read as words."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfReader
from PySide6.QtGui import QPageSize, QPdfWriter

from medgemma_desktop.core.export import DEMO_NOTICE, export_html
from medgemma_desktop.core.imaging import load_image
from medgemma_desktop.core.store import ConversationStore, WeightsIdentity
from medgemma_desktop.ui.export_dialog import ExportChoice, pdf_document, write_export

SIZES = [(400, 300), (64, 48), (900, 700)]
STATS = {"prompt_tokens": 273, "new_tokens": 64, "time_to_first_token_s": 0.42, "decode_tokens_per_s": 38.5,
         "total_s": 2.1, "peak_memory_bytes": None, "stop_reason": "length", "decoder": "eager"}
SETTINGS = {"max_new_tokens": 64, "sampling": {"greedy": True, "temperature": 0.7, "top_k": 64, "top_p": 0.95,
                                               "seed": None}, "context_limit": 8192, "device": "cpu"}
LONG_WORD = "0123456789abcdef" * 12  # 192 characters without a space, like a long hash or URL


def flat(text: str) -> str:
    """Without white space and with the PDF's ligatures spelled out, for comparing extracted text."""
    for ligature, letters in {"ﬁ": "fi", "ﬂ": "fl", "ﬀ": "ff", "ﬃ": "ffi", "ﬄ": "ffl"}.items():
        text = text.replace(ligature, letters)
    return "".join(text.split())


@pytest.fixture
def conversation(tmp_path: Path) -> Iterator[tuple[ConversationStore, int]]:
    images = []
    for number, (width, height) in enumerate(SIZES):
        Image.new("RGB", (width, height), (40 * number, 120, 200)).save(tmp_path / f"picture{number}.png")
        images.append(load_image(tmp_path / f"picture{number}.png"))
    with ConversationStore(tmp_path / "conversations.sqlite3") as store:
        conversation = store.create_conversation("Three pictures")
        message = store.add_question(conversation.id, f"What is {LONG_WORD}?", images)
        answer = store.begin_answer(message.id, WeightsIdentity("medgemma-1.5-4b-it", "1" * 64),
                                    WeightsIdentity("cxr-lora", "2" * 64), SETTINGS)
        store.finish_answer(answer, f"Nothing to see. {LONG_WORD}", STATS)
        yield store, conversation.id


def test_pdf_holds_every_image_at_its_size_and_readable_stats(qapp, conversation, tmp_path: Path) -> None:
    store, conversation_id = conversation
    path = write_export(store, conversation_id, ExportChoice(tmp_path / "case.pdf", "pdf", False))
    reader = PdfReader(path)
    found = sorted(image.image.size for page in reader.pages for image in page.images)
    assert found == sorted(SIZES)
    text = flat("".join(page.extract_text() or "" for page in reader.pages))
    assert flat(LONG_WORD) in text and "2" * 64 in text  # long words are kept whole in the text
    assert flat("first token 0.42 s · 38.5 tokens/s · 273 prompt + 64 new tokens") in text
    assert flat("greedy decoding · up to 64 new tokens · context limit 8,192 tokens") in text
    assert "{" not in text and "time_to_first_token" not in text  # no raw JSON
    assert flat(DEMO_NOTICE) not in text


def test_pdf_layout_keeps_every_line_on_the_page(qapp, conversation, tmp_path: Path) -> None:
    store, conversation_id = conversation
    html = export_html(store, conversation_id, tmp_path / "html" / "conversation.html")
    writer = QPdfWriter(str(tmp_path / "unused.pdf"))
    writer.setPageSize(QPageSize(QPageSize.PageSizeId.A4))
    document = pdf_document(html, writer)
    width = document.pageSize().width()
    layout = document.documentLayout()
    block, checked = document.begin(), 0
    while block.isValid():
        rect = layout.blockBoundingRect(block)
        lines = [block.layout().lineAt(i) for i in range(block.layout().lineCount())]
        right = max((rect.left() + line.x() + line.naturalTextWidth() for line in lines), default=rect.left())
        assert right <= width + 1, f"{block.text()[:40]!r} runs to {right:.0f} of {width:.0f}"
        checked += 1
        block = block.next()
    assert checked > 20 and document.pageCount() >= 1
    del writer


def test_demo_exports_are_marked_in_every_format(qapp, conversation, tmp_path: Path) -> None:
    store, conversation_id = conversation
    for fmt, suffix in (("markdown", "md"), ("json", "json"), ("pdf", "pdf")):
        path = write_export(store, conversation_id, ExportChoice(tmp_path / f"demo.{suffix}", fmt, False, demo=True))
        if fmt == "pdf":
            text = "".join(page.extract_text() or "" for page in PdfReader(path).pages)
        else:
            text = path.read_text(encoding="utf-8")
        assert flat(DEMO_NOTICE) in flat(text), fmt
    assert '"demo": true' in (tmp_path / "demo.json").read_text(encoding="utf-8")
