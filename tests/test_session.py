"""The session layer on the tiny checkpoint: inputs grouped into series however they arrive, one budget rule, and
a stored conversation reopened so exactly that continuing and regenerating it, in every task mode, send the
model the same token ids and pixels as the original conversation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from medgemma_desktop.core.engine import Engine, GenerationSettings
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.export import export_json, export_markdown
from medgemma_desktop.core.imaging import pad_to_square
from medgemma_desktop.core.prompts import CT_QUESTION, ChatTurn, TaskMode, build_series, series_instruction
from medgemma_desktop.core.store import ConversationStore
from medgemma_desktop.session.backend import Backend, PromptCounter
from medgemma_desktop.session.conversation import Session
from medgemma_desktop.session.inputs import InputItem, open_inputs, read_inputs
from medgemma_desktop.session.question import check_fits, prepare_question, slices_that_fit

SETTINGS = GenerationSettings(max_new_tokens=3)


def _picture(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path




def _model_inputs(engine: Engine, turns: Sequence[ChatTurn]) -> dict[str, torch.Tensor]:
    return engine.prepare(turns)


def _assert_same_model_inputs(engine: Engine, got: Sequence[ChatTurn], want: Sequence[ChatTurn]) -> None:
    a, b = _model_inputs(engine, got), _model_inputs(engine, want)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture
def store(tmp_path: Path) -> ConversationStore:
    with ConversationStore(tmp_path / "history.sqlite3") as opened:
        yield opened


def test_the_engine_is_a_backend_and_counts_exactly(tiny_engine: Engine) -> None:
    assert isinstance(tiny_engine, Backend) and tiny_engine.context_limit == 8192
    turns = build_series([Image.new("RGB", (40, 30))] * 3, CT_QUESTION)
    assert tiny_engine.count_tokens(turns) == int(tiny_engine.prepare(turns)["input_ids"].shape[1])
    counter = PromptCounter.for_tokenizer(tiny_engine.processor.tokenizer, tiny_engine.tokens_per_image, 900)
    assert counter.count_tokens(turns) == tiny_engine.count_tokens(turns)


def test_slices_chosen_one_by_one_become_one_series(tmp_path: Path, ct_slices) -> None:
    ct_slices(tmp_path / "ct", [2.5 * i for i in range(6)])
    files = sorted((tmp_path / "ct").iterdir())
    suffixless = []
    for file in files:  # as on CDs and PACS exports
        suffixless.append(file.with_suffix(""))
        file.rename(suffixless[-1])
    photo = _picture(tmp_path / "photo.png", (20, 10), (1, 2, 3))
    first, series = open_inputs([photo, *reversed(suffixless)])
    assert first.series is None and first.label == "photo.png"
    assert series.series is not None and series.slice_count == 6 and "(6 slices)" in series.label
    positions = [image.position[2] for image in series.series.images]
    assert positions == sorted(positions)
    (alone,) = open_inputs(suffixless[:1])  # one slice is one DICOM image
    assert alone.series is None and alone.input.dicom is not None


def test_folders_and_dicomdir_give_series(tmp_path: Path, ct_slices) -> None:
    ct_slices(tmp_path / "ct", [0.0, 2.5, 5.0])
    (folder,) = open_inputs([tmp_path / "ct"])
    assert folder.series is not None and folder.slice_count == 3
    items = open_inputs([Path(get_testdata_file("DICOMDIR"))])
    assert items and all(isinstance(item, InputItem) for item in items)
    assert any(item.series is not None for item in items)


def test_bad_paths_are_one_line_each_and_the_rest_still_opens(tmp_path: Path) -> None:
    good = _picture(tmp_path / "good.png", (8, 8), (9, 9, 9))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    opened = read_inputs([good, broken, tmp_path / "missing.dcm"])
    assert [item.label for item in opened.items] == ["good.png"]
    assert len(opened.errors) == 2 and "broken.png" in str(opened.errors[0]) and "missing.dcm" in str(opened.errors[1])
    with pytest.raises(UserFacingError, match=r"missing\.dcm"):
        open_inputs([tmp_path / "missing.dcm"])


def test_one_budget_rule_at_the_limit(tiny_engine: Engine) -> None:
    assert check_fits(900, 100, 1000) and not check_fits(901, 100, 1000)
    session = Session(tiny_engine, settings=GenerationSettings(max_new_tokens=10))
    check = session.budget(TaskMode.FREE_CHAT, 0, "Hello there")
    assert check is not None and check.fits
    session.settings = GenerationSettings(max_new_tokens=tiny_engine.context_limit - check.prompt_tokens)
    assert session.budget(TaskMode.FREE_CHAT, 0, "Hello there").fits  # exactly at the limit
    session.settings = GenerationSettings(max_new_tokens=tiny_engine.context_limit - check.prompt_tokens + 1)
    refused = session.budget(TaskMode.FREE_CHAT, 0, "Hello there")
    assert not refused.fits and "context limit" in refused.problem
    with pytest.raises(UserFacingError, match="context limit"):
        session.ask(TaskMode.FREE_CHAT, [], "Hello there")
    assert session.exchanges == []


def test_a_series_that_does_not_fit_offers_the_slices_that_do(tiny_engine: Engine, tmp_path: Path, ct_slices) -> None:
    counter = PromptCounter.for_tokenizer(tiny_engine.processor.tokenizer, tiny_engine.tokens_per_image, 900)
    fit = slices_that_fit(counter, CT_QUESTION, "CT", max_new_tokens=100)
    assert 0 < fit < 85
    at = build_series([Image.new("RGB", (1, 1))] * fit, CT_QUESTION)
    over = build_series([Image.new("RGB", (1, 1))] * (fit + 1), CT_QUESTION)
    assert check_fits(counter.count_tokens(at), 100, 900) and not check_fits(counter.count_tokens(over), 100, 900)
    session = Session(counter, settings=GenerationSettings(max_new_tokens=100))
    check = session.budget(TaskMode.CT_SERIES, 60, "", series="CT")
    assert not check.fits and check.slices_that_fit == fit and f"A CT series of {fit} slices fits" in check.problem


def _inputs_for(mode: TaskMode, tmp_path: Path, ct_slices, mr_series) -> tuple[list[InputItem], str, InputItem | None]:
    first = _picture(tmp_path / "first.png", (64, 48), (200, 10, 10))
    second = _picture(tmp_path / "second.png", (48, 64), (10, 200, 10))
    if mode is TaskMode.CT_SERIES:
        ct_slices(tmp_path / "ct", [2.5 * i for i in range(5)], offsets=[0, 50, 100, 150, 200])
        return open_inputs([tmp_path / "ct"]), "", None
    if mode is TaskMode.MRI_SERIES:
        return open_inputs([mr_series(tmp_path / "mr")]), "", None
    if mode is TaskMode.LONGITUDINAL_CXR:
        items = open_inputs([first, second])
        return items, "", items[1]
    if mode is TaskMode.FREE_CHAT:
        return open_inputs([first, second]), "What differs?", None
    if mode is TaskMode.LOCALIZATION:
        return open_inputs([second]), "left lung", None
    return open_inputs([first]), "", None


@pytest.mark.parametrize("mode", list(TaskMode), ids=lambda mode: mode.value)
def test_reopen_continue_and_regenerate_send_the_turns_of_the_original(mode: TaskMode, tiny_engine: Engine,
                                                                       store: ConversationStore, tmp_path: Path,
                                                                       ct_slices, mr_series) -> None:
    items, text, prior = _inputs_for(mode, tmp_path, ct_slices, mr_series)
    fresh = Session(tiny_engine, store, settings=SETTINGS)
    asked = fresh.begin(prepare_question(mode, items, text, prior, max_slices=3))
    fresh.run(asked)
    follow_up = fresh.begin(prepare_question(mode, [], "And what else?"))

    reopened = Session.reopen(store, fresh.id, tiny_engine, settings=SETTINGS)
    (stored,) = reopened.exchanges
    original = fresh.exchanges[0]
    assert stored.mode is mode and stored.answer == original.answer
    assert (stored.padding, stored.prior is not None) == (original.padding, original.prior is not None)
    continued = reopened.begin(prepare_question(mode, [], "And what else?"))
    _assert_same_model_inputs(tiny_engine, continued.turns, follow_up.turns)
    regenerated = reopened.begin_retry(0)
    _assert_same_model_inputs(tiny_engine, regenerated.turns, asked.turns)
    assert not regenerated.settings.sampling.greedy and regenerated.settings.sampling.seed is not None
    answer = reopened.run(regenerated)
    variant = store.message(answer.message_id).answer
    assert variant.settings["sampling"]["seed"] == regenerated.settings.sampling.seed  # recorded, reproducible
    assert reopened.exchanges[0].answer_ids == [original.answer_id, answer.answer_id]
    if mode is TaskMode.CT_SERIES:
        parts = asked.turns[-1].parts
        assert parts[0] == series_instruction("CT") and parts[-2] == "SLICE 3" and parts[-1] == CT_QUESTION


def test_localization_boxes_are_stored_exported_and_reopened(tiny_engine: Engine, store: ConversationStore,
                                                             tmp_path: Path, scripted_backend) -> None:
    path = _picture(tmp_path / "cxr.png", (240, 320), (60, 60, 60))
    session = Session(scripted_backend(), store, settings=SETTINGS)
    session.ask(TaskMode.LOCALIZATION, open_inputs([path]), "left lung")
    exchange = session.last
    assert exchange.padding is not None and exchange.padding.left == 40 and len(exchange.boxes) == 1
    padded, _ = pad_to_square(Image.open(path).convert("RGB"))
    (message,) = store.messages(session.id)
    record = message.answer.boxes
    assert record["boxes"][0]["box_2d"] == [100, 200, 500, 600]
    assert record["boxes"][0]["pixels"] == {"left": 24, "top": 32, "right": 152, "bottom": 160}
    assert record["image"] == {"width": 240, "height": 320}

    markdown = export_markdown(store, session.id, tmp_path / "out.md").read_text(encoding="utf-8")
    assert '"box_2d": [100, 200, 500, 600]' in markdown and '"left": 24' in markdown
    exported = export_json(store, session.id, tmp_path / "out.json").read_text(encoding="utf-8")
    assert '"left lung"' in exported and '"pixels"' in exported

    reopened = Session.reopen(store, session.id, tiny_engine)
    (again,) = reopened.exchanges
    assert again.boxes == exchange.boxes and again.padding == exchange.padding
    assert again.target is not None and again.target.image.size == (240, 320)
    assert again.target.image.tobytes() == exchange.target.image.tobytes()
    assert again.images[0].image.tobytes() == padded.tobytes()


def test_edit_rewords_and_answers_again_from_the_history_before(tiny_engine: Engine, store: ConversationStore) -> None:
    session = Session(tiny_engine, store, settings=SETTINGS)
    session.ask(TaskMode.FREE_CHAT, [], "First question")
    session.ask(TaskMode.FREE_CHAT, [], "Second question")
    job = session.begin_edit(0, "First question, reworded")
    assert job.turns == (ChatTurn("user", ("First question, reworded",)),)
    assert job.settings == SETTINGS  # an edit answers with the settings as they are
    session.run(job)
    (first, _second) = store.messages(session.id)
    assert first.question == "First question, reworded" and len(first.variants) == 2
    assert session.show_variant(0, -1) and session.exchanges[0].answer_id == first.variants[0].id


def test_a_failed_generation_is_stored_as_failed_and_shown_in_the_exchange(scripted_backend,
                                                                          store: ConversationStore) -> None:
    failure = UserFacingError("the GPU ran out of memory", fix="Use fewer images.")
    session = Session(scripted_backend("A partial", failure), store, settings=SETTINGS)
    with pytest.raises(UserFacingError, match="out of memory"):
        session.ask(TaskMode.FREE_CHAT, [], "Hello")
    (message,) = store.messages(session.id)
    assert message.answer.status.value == "failed" and message.answer.text == "A partial"
    assert "out of memory" in session.last.error and not session.last.complete


def test_a_series_mode_reads_the_selected_volume_and_leaves_pictures_waiting(tmp_path: Path, ct_slices) -> None:
    from medgemma_desktop.core.windowing import ct_rgb_slice
    from medgemma_desktop.session.question import plan_items

    photo = open_inputs([_picture(tmp_path / "photo.png", (20, 10), (1, 2, 3))])
    ct_slices(tmp_path / "ct", [0.0, 2.5, 5.0, 7.5])
    (series,) = open_inputs([tmp_path / "ct"])
    (lone_ct,) = open_inputs([Path(get_testdata_file("CT_small.dcm"))])  # as the demo's sample study gives it
    waiting = [*photo, lone_ct, series]
    assert plan_items(TaskMode.CT_SERIES, waiting) == [series]  # the newest series
    assert plan_items(TaskMode.CT_SERIES, waiting, selected=lone_ct) == [lone_ct]  # the one the user looks at
    prepared = prepare_question(TaskMode.CT_SERIES, [*photo, lone_ct])
    (slice_,) = prepared.images  # a lone CT image goes as a one-slice volume, through the CT windows
    assert prepared.series == "CT"
    assert slice_.image.tobytes() == Image.fromarray(ct_rgb_slice(lone_ct.input.dicom.values[0])).tobytes()
    with pytest.raises(UserFacingError, match="reads DICOM slices"):
        plan_items(TaskMode.CT_SERIES, photo)
    with pytest.raises(UserFacingError, match="is a series of slices"):
        plan_items(TaskMode.DESCRIBE, waiting)
