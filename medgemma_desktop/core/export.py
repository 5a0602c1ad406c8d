"""A conversation written out for people and programs: JSON (everything), Markdown, and HTML (which the window
prints to PDF with Qt).

All three come from one record built by `conversation_record`, so they carry the same facts: the research-use
disclaimer, the model and adapter that produced each answer, settings, stats and timestamps. Images are written
beside the export as `<name>_images/<sha256>.png` and referred to by that relative path. Identifying DICOM tags
and the original file paths are left out unless the user ticks "include patient data".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.store import AnswerVariant, ConversationStore, Message, WeightsIdentity
from medgemma_desktop.core.thinking import split_thinking

DISCLAIMER = "Research use only. Not for clinical diagnosis or treatment. Outputs need independent verification."
DEMO_NOTICE = ("DEMO: these answers come from a tiny model with random weights (the app's demo mode); they mean "
               "nothing.")
EXPORT_FORMAT = "medgemma-desktop-conversation"
EXPORT_SCHEMA_VERSION = 1


class ExportError(UserFacingError):
    """The export file or its image folder could not be written."""

    kind = "export"


def _when(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _identity(identity: WeightsIdentity | None) -> dict[str, str] | None:
    return None if identity is None else {"folder": identity.folder, "sha256": identity.sha256}


def _answer_record(variant: AnswerVariant) -> dict[str, Any]:
    answer, thinking = split_thinking(variant.text)
    return {
        "id": variant.id,
        "question": variant.question,
        "text": variant.text,
        "answer": answer,
        "thinking": thinking,
        "status": variant.status.value,
        "model": _identity(variant.model),
        "adapter": _identity(variant.adapter),
        "settings": dict(variant.settings),
        "stats": dict(variant.stats),
        "boxes": variant.boxes,
        "started_at": _when(variant.started_at),
        "updated_at": _when(variant.updated_at),
        "finished_at": _when(variant.finished_at),
    }


def _message_record(message: Message, include_patient_data: bool, image_folder: str) -> dict[str, Any]:
    images = []
    for image in message.images:
        entry: dict[str, Any] = {"sha256": image.sha256, "file": f"{image_folder}/{image.sha256}.png",
                                 "label": image.label, "width": image.width, "height": image.height,
                                 "metadata": dict(image.metadata)}
        if include_patient_data:
            entry |= {"patient": dict(image.patient), "source": image.source}
        images.append(entry)
    return {
        "id": message.id,
        "question": message.question,
        "task_mode": message.task_mode,
        "created_at": _when(message.created_at),
        "edited_at": _when(message.edited_at),
        "images": images,
        "active_answer_id": message.active_variant_id,
        "answers": [_answer_record(variant) for variant in message.variants],
    }


def conversation_record(store: ConversationStore, conversation_id: int, *, include_patient_data: bool = False,
                        image_folder: str = "images", demo: bool = False) -> dict[str, Any]:
    """Everything about one conversation as JSON-ready data; images are referred to under `image_folder`;
    `demo`: it was held in demo mode, and every format says so at the top."""
    conversation = store.conversation(conversation_id)
    messages = store.messages(conversation_id)
    models: list[dict[str, Any]] = []
    for variant in (v for m in messages for v in m.variants):
        pair = {"model": _identity(variant.model), "adapter": _identity(variant.adapter)}
        if pair not in models:
            models.append(pair)
    return {
        "format": EXPORT_FORMAT,
        "schema_version": EXPORT_SCHEMA_VERSION,
        "disclaimer": DISCLAIMER,
        "demo": demo,
        **({"demo_notice": DEMO_NOTICE} if demo else {}),
        "exported_at": _when(datetime.now(timezone.utc).timestamp()),
        "includes_patient_data": include_patient_data,
        "conversation": {"id": conversation.id, "title": conversation.title,
                         "created_at": _when(conversation.created_at), "updated_at": _when(conversation.updated_at)},
        "models": models,
        "messages": [_message_record(m, include_patient_data, image_folder) for m in messages],
    }


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{key.replace('_', ' ')} {_plain(item)}" for key, item in value.items())
    return str(value)


def settings_text(settings: dict[str, Any]) -> str:
    """The generation settings an answer was made with, in words ("greedy · up to 1,024 new tokens · …")."""
    rest = dict(settings)
    parts = []
    sampling = rest.pop("sampling", None)
    if isinstance(sampling, dict):
        sampling = dict(sampling)
        if sampling.pop("greedy", False):
            parts.append("greedy decoding")
            sampling = {key: value for key, value in sampling.items() if key == "seed" and value is not None}
        else:
            sampling = {key: value for key, value in sampling.items() if value is not None}
            parts.append("sampling" + (f" ({_plain(sampling)})" if sampling else ""))
            sampling = {}
        if sampling:
            parts.append(_plain(sampling))
    if "max_new_tokens" in rest:
        parts.append(f"up to {_plain(rest.pop('max_new_tokens'))} new tokens")
    if "context_limit" in rest:
        parts.append(f"context limit {_plain(rest.pop('context_limit'))} tokens")
    device = " ".join(str(rest.pop(key)) for key in ("device", "dtype", "quantization") if key in rest)
    if device:
        parts.append(device)
    parts += [f"{key.replace('_', ' ')}: {_plain(value)}" for key, value in rest.items()]
    return " · ".join(parts) or "not recorded"


def stats_text(stats: dict[str, Any]) -> str:
    """An answer's figures in words ("first token 0.42 s · 38.5 tokens/s · 273 prompt + 64 new tokens · …")."""
    rest = dict(stats)
    parts = []
    if "time_to_first_token_s" in rest:
        parts.append(f"first token {rest.pop('time_to_first_token_s'):.2f} s")
    if rest.get("decode_tokens_per_s"):
        parts.append(f"{rest.pop('decode_tokens_per_s'):.1f} tokens/s")
    rest.pop("decode_tokens_per_s", None)
    if "prompt_tokens" in rest and "new_tokens" in rest:
        parts.append(f"{rest.pop('prompt_tokens'):,} prompt + {rest.pop('new_tokens'):,} new tokens")
    if "total_s" in rest:
        parts.append(f"{rest.pop('total_s'):.1f} s in all")
    peak = rest.pop("peak_memory_bytes", None)
    if peak:
        parts.append(f"peak memory {peak / 2**30:.1f} GiB")
    reason = rest.pop("stop_reason", None)
    if reason:
        parts.append({"end": "ended by the model", "length": "hit the token limit",
                      "stopped": "stopped by the user"}.get(reason, f"ended: {reason}"))
    if rest.get("decoder"):
        parts.append(f"decoder: {rest.pop('decoder')}")
    rest.pop("decoder", None)
    parts += [f"{key.replace('_', ' ')}: {_plain(value)}" for key, value in rest.items()]
    return " · ".join(parts) or "not recorded"


def _identity_text(identity: dict[str, str] | None) -> str:
    return "none" if identity is None else f"{identity['folder']} (sha256 {identity['sha256']})"


def _active_answer(message: dict[str, Any]) -> dict[str, Any] | None:
    return next((a for a in message["answers"] if a["id"] == message["active_answer_id"]), None)


def _answer_facts(answer: dict[str, Any]) -> list[tuple[str, str]]:
    facts = [("Model", _identity_text(answer["model"])), ("Adapter", _identity_text(answer["adapter"])),
             ("Settings", settings_text(answer["settings"])), ("Stats", stats_text(answer["stats"])),
             ("Started", answer["started_at"]), ("Finished", answer["finished_at"] or "not finished")]
    return [(name, str(value)) for name, value in facts]


def markdown_text(record: dict[str, Any]) -> str:
    """The record as a readable Markdown document (the active answer of each question; the JSON has them all)."""
    conversation = record["conversation"]
    lines = [f"# {conversation['title'] or 'Conversation'}", "", f"> **{record['disclaimer']}**", ""]
    if record.get("demo"):
        lines += [f"> **{record['demo_notice']}**", ""]
    lines += [
             f"- Exported: {record['exported_at']}",
             f"- Started: {conversation['created_at']}; last active: {conversation['updated_at']}",
             f"- Patient data: {'included' if record['includes_patient_data'] else 'not included'}"]
    lines += [f"- Model: {_identity_text(pair['model'])}; adapter: {_identity_text(pair['adapter'])}"
              for pair in record["models"]]
    for number, message in enumerate(record["messages"], start=1):
        edited = f", edited {message['edited_at']}" if message["edited_at"] else ""
        lines += ["", f"## Question {number}", "", f"*Task: {message['task_mode'] or 'none'}; asked "
                  f"{message['created_at']}{edited}*", "", message["question"]]
        for image in message["images"]:
            alt = image["label"].replace("[", "\\[").replace("]", "\\]")
            lines += ["", f"![{alt}]({quote(image['file'])})", "",
                      f"*{alt}* ({image['width']}×{image['height']}, sha256 {image['sha256']})"]
            lines += [f"- {key}: {value}" for key, value in image["metadata"].items()]
            if "patient" in image:
                lines += [f"- Patient data, {key}: {value}" for key, value in image["patient"].items()]
                lines.append(f"- Source file: {image['source']}")
        answer = _active_answer(message)
        if answer is None:
            lines += ["", "*No answer.*"]
            continue
        count = len(message["answers"])
        variant = f"; answer {message['answers'].index(answer) + 1} of {count}" if count > 1 else ""
        lines += ["", f"### Answer ({answer['status']}{variant})", ""]
        if answer["question"] != message["question"]:
            lines += [f"*This answers the earlier wording:* {answer['question']}", ""]
        lines.append(answer["answer"])
        if answer["thinking"]:
            lines += ["", "<details><summary>Thinking</summary>", "", answer["thinking"], "", "</details>"]
        lines.append("")
        lines += [f"- {name}: {value}" for name, value in _answer_facts(answer)]
        if answer["boxes"] is not None:
            lines += ["", "Boxes:", "", "```json", json.dumps(answer["boxes"]), "```"]
    return "\n".join(lines) + "\n"


def html_text(record: dict[str, Any]) -> str:
    """The record as simple HTML that Qt's QTextDocument renders (for PDF): plain text, images by relative path."""
    conversation = record["conversation"]

    def para(text: str, style: str = "") -> str:
        return f'<p style="white-space: pre-wrap;{style}">{escape(text)}</p>'

    def facts(rows: list[tuple[str, str]]) -> str:
        cells = "".join(f"<tr><td><b>{escape(name)}</b></td><td>{escape(value)}</td></tr>" for name, value in rows)
        return f'<table cellpadding="2">{cells}</table>'

    header = [("Exported", record["exported_at"]), ("Started", conversation["created_at"]),
              ("Last active", conversation["updated_at"]),
              ("Patient data", "included" if record["includes_patient_data"] else "not included")]
    header += [("Model", f"{_identity_text(p['model'])}; adapter: {_identity_text(p['adapter'])}")
               for p in record["models"]]
    parts = [f"<h1>{escape(conversation['title'] or 'Conversation')}</h1>",
             f'<p style="border: 1px solid black; padding: 4px;"><b>{escape(record["disclaimer"])}</b></p>']
    if record.get("demo"):
        parts.append(f'<p style="border: 2px solid black; padding: 4px;"><b>{escape(record["demo_notice"])}</b></p>')
    parts.append(facts(header))
    for number, message in enumerate(record["messages"], start=1):
        edited = f", edited {message['edited_at']}" if message["edited_at"] else ""
        parts += [f"<h2>Question {number}</h2>",
                  para(f"Task: {message['task_mode'] or 'none'}; asked {message['created_at']}{edited}",
                       " font-style: italic;"),
                  para(message["question"])]
        for image in message["images"]:
            rows = [("Image", image["label"]), ("sha256", image["sha256"]), *image["metadata"].items()]
            if "patient" in image:
                rows += [(f"Patient data, {key}", value) for key, value in image["patient"].items()]
                rows.append(("Source file", image["source"]))
            parts += [f'<p><img src="{escape(image["file"])}" width="{min(image["width"], 480)}"></p>', facts(rows)]
        answer = _active_answer(message)
        if answer is None:
            parts.append(para("No answer.", " font-style: italic;"))
            continue
        parts.append(f"<h3>Answer ({escape(answer['status'])})</h3>")
        if answer["question"] != message["question"]:
            parts.append(para(f"This answers the earlier wording: {answer['question']}", " font-style: italic;"))
        parts.append(para(answer["answer"]))
        rows = _answer_facts(answer)
        if answer["boxes"] is not None:
            rows.append(("Boxes", json.dumps(answer["boxes"])))
        parts.append(facts(rows))
    body = "\n".join(parts)
    return f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>\n{body}\n</body></html>\n'


def export_file_name(title: str) -> str:
    """A file name (without suffix) for a conversation's export, from its title."""
    return re.sub(r"[^\w\- ]+", "", title).strip()[:60] or "conversation"


def _export(store: ConversationStore, conversation_id: int, path: Path | str, include_patient_data: bool,
            demo: bool, render: Callable[[dict[str, Any]], str]) -> Path:
    path = Path(path)
    image_folder = f"{path.stem}_images"
    record = conversation_record(store, conversation_id, include_patient_data=include_patient_data,
                                 image_folder=image_folder, demo=demo)
    try:
        for sha256 in {image["sha256"] for message in record["messages"] for image in message["images"]}:
            target = path.parent / image_folder / f"{sha256}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.image_png(sha256))
        path.write_text(render(record), encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"cannot write the export ({exc.strerror or exc})", path=path,
                          fix="Choose another folder or free some disk space.") from exc
    return path


def export_json(store: ConversationStore, conversation_id: int, path: Path | str, *,
                include_patient_data: bool = False, demo: bool = False) -> Path:
    """Everything, machine-readable (`format`, `schema_version`), images beside it."""
    return _export(store, conversation_id, path, include_patient_data, demo,
                   lambda record: json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def export_markdown(store: ConversationStore, conversation_id: int, path: Path | str, *,
                    include_patient_data: bool = False, demo: bool = False) -> Path:
    return _export(store, conversation_id, path, include_patient_data, demo, markdown_text)


def export_html(store: ConversationStore, conversation_id: int, path: Path | str, *,
                include_patient_data: bool = False, demo: bool = False) -> Path:
    """HTML with images beside it (`<name>_images/`), for Qt's QTextDocument to print to PDF."""
    return _export(store, conversation_id, path, include_patient_data, demo, html_text)
