"""Exports: every format carries the disclaimer and the model identity, and no patient data unless asked."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from medgemma_desktop.core.export import (
    DISCLAIMER,
    EXPORT_SCHEMA_VERSION,
    ExportError,
    export_html,
    export_json,
    export_markdown,
)
from medgemma_desktop.core.imaging import ImageInput, load_image
from medgemma_desktop.core.store import AnswerStatus, ConversationStore, WeightsIdentity

MODEL = WeightsIdentity("medgemma-1.5-4b-it", "1" * 64)
ADAPTER = WeightsIdentity("cxr-lora-r8", "2" * 64)
SETTINGS = {"max_new_tokens": 300, "temperature": 0.0}
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN-0042"}
BOXES = [{"box_2d": [120, 340, 560, 780], "label": "right lower lobe opacity"}]


@dataclasses.dataclass
class Sample:
    store: ConversationStore
    conversation_id: int
    image: ImageInput


@pytest.fixture
def sample(tmp_path: Path) -> Iterator[Sample]:
    """Two questions: one about a DICOM-like image with patient tags, answered twice (thinking, boxes); one
    edited and left without an answer."""
    Image.new("RGB", (40, 30), (10, 120, 200)).save(tmp_path / "IM0001.png")
    image = dataclasses.replace(load_image(tmp_path / "IM0001.png"), metadata={"modality": "CR"}, patient=PATIENT)
    with ConversationStore(tmp_path / "db" / "conversations.sqlite3", keep_patient_data=True) as store:
        conversation = store.create_conversation("Chest X-ray <review>")
        message = store.add_question(conversation.id, "Where is the opacity?", [image], task_mode="localize")
        first = store.begin_answer(message.id, MODEL, ADAPTER, SETTINGS)
        store.finish_answer(first, "<unused94>thought\nlook at the lungs<unused95>Right lower lobe.",
                            {"tokens_per_second": 21.0}, boxes=BOXES)
        second = store.begin_answer(message.id, MODEL, None, {**SETTINGS, "temperature": 0.7})
        store.finish_answer(second, "Right base.", {"tokens_per_second": 19.0}, AnswerStatus.STOPPED)
        store.select_variant(message.id, first)
        later = store.add_question(conversation.id, "Any effusion?", task_mode="describe")
        store.edit_question(later.id, "Any pleural effusion?")
        yield Sample(store, conversation.id, image)


def test_disclaimer_text() -> None:
    assert DISCLAIMER == ("Research use only. Not for clinical diagnosis or treatment. "
                          "Outputs need independent verification.")


def test_json_export_holds_everything_and_no_patient_data(sample: Sample, tmp_path: Path) -> None:
    path = export_json(sample.store, sample.conversation_id, tmp_path / "case.json")
    text = path.read_text(encoding="utf-8")
    record = json.loads(text)
    assert record["format"] == "medgemma-desktop-conversation"
    assert record["schema_version"] == EXPORT_SCHEMA_VERSION and record["disclaimer"] == DISCLAIMER
    assert record["includes_patient_data"] is False
    assert record["conversation"]["title"] == "Chest X-ray <review>"
    assert record["models"] == [
        {"model": {"folder": MODEL.folder, "sha256": MODEL.sha256},
         "adapter": {"folder": ADAPTER.folder, "sha256": ADAPTER.sha256}},
        {"model": {"folder": MODEL.folder, "sha256": MODEL.sha256}, "adapter": None}]
    first, second = record["messages"]
    assert (first["question"], first["task_mode"]) == ("Where is the opacity?", "localize")
    answers = first["answers"]
    assert [a["status"] for a in answers] == ["done", "stopped"] and first["active_answer_id"] == answers[0]["id"]
    assert answers[0]["answer"] == "Right lower lobe." and answers[0]["thinking"] == "look at the lungs"
    assert answers[0]["boxes"] == BOXES and answers[0]["settings"] == SETTINGS
    assert answers[0]["stats"] == {"tokens_per_second": 21.0}
    assert answers[1]["adapter"] is None and answers[1]["settings"]["temperature"] == 0.7
    for stamp in (record["exported_at"], first["created_at"], answers[0]["started_at"], answers[0]["finished_at"]):
        assert datetime.fromisoformat(stamp).tzinfo is not None
    assert second["question"] == "Any pleural effusion?" and second["edited_at"] and second["answers"] == []

    (image,) = first["images"]
    assert image["metadata"] == {"modality": "CR"} and "patient" not in image and "source" not in image
    assert "Doe^Jane" not in text and "MRN-0042" not in text and str(sample.image.source) not in text
    written = path.parent / image["file"]
    assert written.name == f"{sample.image.sha256}.png"
    assert Image.open(written).convert("RGB").tobytes() == sample.image.image.tobytes()


def test_json_export_with_patient_data(sample: Sample, tmp_path: Path) -> None:
    path = export_json(sample.store, sample.conversation_id, tmp_path / "with phi.json", include_patient_data=True)
    record = json.loads(path.read_text(encoding="utf-8"))
    (image,) = record["messages"][0]["images"]
    assert record["includes_patient_data"] is True
    assert image["patient"] == PATIENT and image["source"] == str(sample.image.source)


def markdown_images(text: str, folder: Path) -> list[Path]:
    return [folder / unquote(link) for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)]


def test_markdown_export(sample: Sample, tmp_path: Path) -> None:
    path = export_markdown(sample.store, sample.conversation_id, tmp_path / "my case.md")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Chest X-ray <review>\n")
    assert DISCLAIMER in text
    for fact in (MODEL.folder, MODEL.sha256, ADAPTER.folder, ADAPTER.sha256, "up to 300 new tokens",
                 "tokens per second: 21", "Where is the opacity?", "Right lower lobe.", "answer 1 of 2",
                 "right lower lobe opacity", "Any pleural effusion?", "*No answer.*", "Task: localize"):
        assert fact in text
    assert "look at the lungs" in text.split("<details><summary>Thinking</summary>")[1]
    assert "<unused94>" not in text and "Right base." not in text  # only the selected answer
    (image,) = markdown_images(text, path.parent)
    assert image == tmp_path / "my case_images" / f"{sample.image.sha256}.png" and image.is_file()
    assert "Doe^Jane" not in text and "MRN-0042" not in text

    with_phi = export_markdown(sample.store, sample.conversation_id, tmp_path / "phi.md", include_patient_data=True)
    assert "Doe^Jane" in with_phi.read_text(encoding="utf-8")


def test_html_for_pdf(sample: Sample, tmp_path: Path) -> None:
    path = export_html(sample.store, sample.conversation_id, tmp_path / "case.html")
    text = path.read_text(encoding="utf-8")
    assert DISCLAIMER in text and MODEL.sha256 in text and ADAPTER.folder in text
    assert "Chest X-ray &lt;review&gt;" in text  # user text is escaped
    (source,) = re.findall(r'<img src="([^"]+)"', text)
    image = Image.open(io.BytesIO((path.parent / source).read_bytes()))
    assert image.size == (40, 30)
    assert "Doe^Jane" not in text


def test_export_to_an_unwritable_place_is_a_user_error(sample: Sample, tmp_path: Path) -> None:
    (tmp_path / "a file").write_text("")
    with pytest.raises(ExportError) as raised:
        export_markdown(sample.store, sample.conversation_id, tmp_path / "a file" / "case.md")
    assert "cannot write the export" in str(raised.value)
