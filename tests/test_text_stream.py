"""Token-by-token detokenizing and the thinking-trace split."""

from __future__ import annotations

from transformers import Gemma3Processor

from medgemma_desktop.core.text_stream import IncrementalDetokenizer
from medgemma_desktop.core.thinking import split_thinking


def _tokenizer(tiny_checkpoint):
    return Gemma3Processor.from_pretrained(tiny_checkpoint.model_dir, local_files_only=True).tokenizer


def test_streamed_text_equals_whole_decode_including_multibyte(tiny_checkpoint) -> None:
    tokenizer = _tokenizer(tiny_checkpoint)
    text = "Right lung: 3 mm nodule (é, µ, 肺) — no effusion.\n\n| a | b |"
    ids = tokenizer.encode(text, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer)
    chunks = [detokenizer.push(i) for i in ids] + [detokenizer.flush()]
    streamed = "".join(c.text for c in chunks if c is not None)
    assert streamed == tokenizer.decode(ids) == text
    assert all("\ufffd" not in c.text for c in chunks if c is not None)


def test_thinking_trace_goes_to_its_own_channel(tiny_checkpoint) -> None:
    tokenizer = _tokenizer(tiny_checkpoint)
    ids = tokenizer.encode("<unused94>thought\nlook at the apex<unused95>No pneumothorax.", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer)
    chunks = [c for c in (detokenizer.push(i) for i in ids) if c is not None]
    thinking = "".join(c.text for c in chunks if c.thinking)
    answer = "".join(c.text for c in chunks if not c.thinking)
    assert thinking == "thought\nlook at the apex"
    assert answer == "No pneumothorax."


def test_a_vocabulary_without_the_thinking_markers_streams_plain_text(tiny_checkpoint, monkeypatch) -> None:
    tokenizer = _tokenizer(tiny_checkpoint)
    ids = tokenizer.encode("<unused94>thought\nNo pneumothorax.", add_special_tokens=False)
    monkeypatch.setattr(type(tokenizer.backend_tokenizer), "token_to_id", lambda self, token: None)
    detokenizer = IncrementalDetokenizer(tokenizer)
    chunks = [c for c in (detokenizer.push(i) for i in ids) if c is not None]
    assert not any(c.thinking for c in chunks)
    assert "".join(c.text for c in chunks) == "thought\nNo pneumothorax."


def test_split_thinking_on_text() -> None:
    assert split_thinking("<unused94>thought\nsteps<unused95>Final.") == ("Final.", "steps")
    assert split_thinking("Plain answer.") == ("Plain answer.", "")
    assert split_thinking("<unused94>thought\ncut off mid-thought") == ("", "cut off mid-thought")
