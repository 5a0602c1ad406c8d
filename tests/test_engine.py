"""The engine on the tiny checkpoint: real transformers + bitsandbytes NF4 + PEFT loading and generation."""

from __future__ import annotations

import threading

import bitsandbytes as bnb
import pytest
import torch
from PIL import Image

from medgemma_desktop.core.decoding import EagerDecoder, SamplingSettings
from medgemma_desktop.core.engine import Engine, GenerationSettings, LoadOptions
from medgemma_desktop.core.errors import ContextTooLongError, LoadCancelled, OutOfMemoryError, VisionUnavailableError
from medgemma_desktop.core.prompts import build_chat


def _image(shade: int, size: tuple[int, int] = (80, 64)) -> Image.Image:
    return Image.new("RGB", size, (shade, 255 - shade, shade // 2))


def test_load_quantizes_to_nf4_and_attaches_lora(tiny_engine: Engine) -> None:
    linear4bit = [m for m in tiny_engine.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4bit and all(m.weight.quant_type == "nf4" for m in linear4bit)
    assert any(name.endswith("q_proj.lora_A") for name, _ in tiny_engine.model.named_modules())
    assert tiny_engine.plan.dtype == torch.float32  # CPU: never float16, bfloat16 needs a GPU
    assert tiny_engine.identity.adapter_name == "lora-r8-tiny"


def test_adapter_changes_the_answer(tiny_checkpoint, tiny_engine: Engine) -> None:
    base = Engine.load(tiny_checkpoint.model_dir)
    turns = build_chat("Describe the image.", [_image(30)])
    with torch.inference_mode():
        with_adapter = tiny_engine.model(**tiny_engine.prepare(turns)).logits
        without = base.model(**base.prepare(turns)).logits
    assert not torch.allclose(with_adapter, without, atol=1e-4)
    assert base.identity.adapter_name is None


def test_answer_streams_in_chunks_and_matches_generate(tiny_engine: Engine) -> None:
    turns = build_chat("Describe this X-ray.", [_image(10)], system="Be brief.")
    generation = tiny_engine.generate(turns, GenerationSettings(max_new_tokens=24))
    chunks = [chunk.text for chunk in generation]
    assert len(chunks) > 3
    assert "".join(chunks).strip() == generation.text
    stats = generation.stats
    assert stats.new_tokens == 24 and stats.stop_reason == "length" and stats.decoder == "eager"
    assert stats.time_to_first_token_s > 0 and stats.decode_tokens_per_s > 0
    assert 0 < stats.prompt_s < stats.time_to_first_token_s  # the prompt is prepared before the first token

    inputs = tiny_engine.prepare(turns)
    reference = tiny_engine.model.generate(**inputs, max_new_tokens=24, do_sample=False)
    expected = tiny_engine.processor.tokenizer.decode(reference[0, inputs["input_ids"].shape[1]:],
                                                      skip_special_tokens=True)
    assert generation.text == expected.strip()


def test_system_text_goes_into_the_first_user_turn(tiny_engine: Engine) -> None:
    inputs = tiny_engine.prepare(build_chat("What is shown?", system="You are a radiologist."))
    text = tiny_engine.processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.startswith("<bos><start_of_turn>user\nYou are a radiologist.\n\nWhat is shown?<end_of_turn>")
    assert text.endswith("<start_of_turn>model\n")


def test_images_keep_their_order(tiny_engine: Engine) -> None:
    first, second = _image(0, (40, 90)), _image(250, (90, 40))
    inputs = tiny_engine.prepare(build_chat("Compare.", [first, second]))
    alone = [tiny_engine.prepare(build_chat("x", [image]))["pixel_values"][0] for image in (first, second)]
    assert inputs["pixel_values"].shape[0] == 2
    assert torch.equal(inputs["pixel_values"][0], alone[0])
    assert torch.equal(inputs["pixel_values"][1], alone[1])
    image_token = tiny_engine.processor.tokenizer.image_token_id
    assert int((inputs["input_ids"] == image_token).sum()) == 2 * tiny_engine.tokens_per_image


def test_stop_takes_effect_within_one_token(tiny_engine: Engine) -> None:
    stop = threading.Event()
    generation = tiny_engine.generate(build_chat("Describe.", [_image(90)]), GenerationSettings(max_new_tokens=200),
                                      stop)
    for seen, _chunk in enumerate(generation, start=1):
        if seen == 3:
            stop.set()
    assert generation.stats.stop_reason == "stopped"
    assert generation.stats.new_tokens <= 5


def test_sampling_is_seeded_and_differs_from_greedy(tiny_engine: Engine) -> None:
    turns = build_chat("Describe.", [_image(120)])

    def answer(sampling: SamplingSettings) -> str:
        generation = tiny_engine.generate(turns, GenerationSettings(max_new_tokens=20, sampling=sampling))
        list(generation)
        return generation.text

    hot = SamplingSettings(greedy=False, temperature=5.0, top_k=0, top_p=1.0, seed=7)
    assert answer(hot) == answer(hot)
    assert answer(hot) != answer(SamplingSettings())


class _FailingDecoder(EagerDecoder):
    def __init__(self, model: torch.nn.Module, error: Exception, at_step: int) -> None:
        super().__init__(model)
        self._error, self._at_step, self._steps = error, at_step, 0

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self._steps += 1
        if self._steps == self._at_step:
            raise self._error
        return super().step(token)


def test_an_exception_inside_generation_reaches_the_consumer(tiny_engine: Engine) -> None:
    tiny_engine.decoder_factory = lambda model: _FailingDecoder(model, RuntimeError("kernel failed"), 3)
    try:
        with pytest.raises(RuntimeError, match="kernel failed"):
            list(tiny_engine.generate(build_chat("Describe.", [_image(5)]), GenerationSettings(max_new_tokens=20)))
    finally:
        tiny_engine.decoder_factory = EagerDecoder


def test_out_of_memory_is_typed_and_the_model_stays_usable(tiny_engine: Engine) -> None:
    tiny_engine.decoder_factory = lambda model: _FailingDecoder(model, torch.OutOfMemoryError("CUDA out of memory"), 2)
    turns = build_chat("Describe.", [_image(60)])
    try:
        with pytest.raises(OutOfMemoryError) as raised:
            list(tiny_engine.generate(turns, GenerationSettings(max_new_tokens=20)))
    finally:
        tiny_engine.decoder_factory = EagerDecoder
    assert "fewer images" in str(raised.value) and "\n" not in str(raised.value)
    generation = tiny_engine.generate(turns, GenerationSettings(max_new_tokens=5))
    list(generation)
    assert generation.stats.new_tokens == 5


def test_a_prompt_over_the_context_limit_is_refused_before_the_model_runs(tiny_checkpoint) -> None:
    engine = Engine.load(tiny_checkpoint.model_dir, options=LoadOptions(context_limit=40))
    with pytest.raises(ContextTooLongError, match="context limit is 40"):
        list(engine.generate(build_chat("Describe.", [_image(1), _image(2)])))


def test_new_tokens_are_capped_by_the_context_limit(tiny_checkpoint) -> None:
    engine = Engine.load(tiny_checkpoint.model_dir, options=LoadOptions(context_limit=64))
    generation = engine.generate(build_chat("Describe.", [_image(3)]), GenerationSettings(max_new_tokens=500))
    list(generation)
    assert generation.stats.prompt_tokens + generation.stats.new_tokens == 64


def test_loading_can_be_cancelled(tiny_checkpoint) -> None:
    cancel = threading.Event()
    steps: list[str] = []

    def progress(percent: int, step: str) -> None:
        steps.append(step)
        if percent >= 5:
            cancel.set()

    with pytest.raises(LoadCancelled):
        Engine.load(tiny_checkpoint.model_dir, tiny_checkpoint.adapter_dir, progress=progress, cancel=cancel)
    assert steps[0] == "checking the model folder"


def test_vision_check_passes_and_a_dead_projector_is_caught(tiny_checkpoint) -> None:
    engine = Engine.load(tiny_checkpoint.model_dir)
    assert engine.vision_active
    projector = engine.model.model.multi_modal_projector
    with torch.no_grad():
        projector.mm_input_projection_weight.zero_()
    assert not engine.check_vision()
    engine.vision_active = False
    with pytest.raises(VisionUnavailableError, match="cannot answer about images"):
        list(engine.generate(build_chat("Describe.", [_image(9)])))
    text_only = engine.generate(build_chat("Hello?"), GenerationSettings(max_new_tokens=3))
    list(text_only)
    assert text_only.stats.new_tokens == 3


def test_loading_reports_progress_through_the_weights_and_cancels_mid_load(tiny_checkpoint) -> None:
    cancel = threading.Event()
    seen: list[tuple[int, str]] = []

    def progress(percent: int, step: str) -> None:
        seen.append((percent, step))
        if "tensors" in step and percent >= 40:
            cancel.set()  # as the Cancel button does, halfway through the weights

    with pytest.raises(LoadCancelled):
        Engine.load(tiny_checkpoint.model_dir, tiny_checkpoint.adapter_dir, progress=progress, cancel=cancel)
    weights = [percent for percent, step in seen if "tensors" in step]
    assert len(weights) > 10 and weights == sorted(weights) and 25 <= weights[0] < weights[-1] < 75
    assert not any(step.startswith("attaching") for _, step in seen)  # it stopped inside the weights
