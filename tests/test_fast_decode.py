"""The fast decode step on the CPU (no graph): per-step logits against eager decoding, teacher-forced past the
sliding window (24 on the tiny checkpoint), greedy identity through the engine, cache-size boundaries, adapter
switches through the step's LoRA slots, and the compiled step built in a background thread and swapped in.

Tolerance: both paths compute in float32 on the CPU, yet two correct float32 computations of the same logits
on this tiny random model (cached eager decoding and the uncached forward pass over the whole sequence) differ
by up to ~3e-3 once the sequence passes ~50 tokens, against a step-to-step change of the logits of ~0.15-0.4.
We therefore hold every step to 5% of the smallest step-to-step change of the eager logits (~0.008), still
under bfloat16's own rounding (2^-8 relative per operation, compounded over layers). A real bug is far above
it: `test_the_tolerance_catches_a_window_off_by_one` shows a sliding window one token too narrow failing it.
For prompts with an image, both cached paths (transformers' and ours) differ from the uncached pass over the whole
sequence by ~1e-3 from the second step: bitsandbytes' CPU 4-bit matmul rounds one-token inputs differently from
many-token ones; both are held to the bound.

The fast step runs q/k/v and gate/up as fused 4-bit matmuls whose layers then share the fused storage. On CPUs
with AVX512-BF16, bitsandbytes repacks a layer at its first forward and computes it in bfloat16; fusing turns the
members back into the portable float32 path. So each test builds its runner (fusing, once per model) before it
runs the eager reference, and both paths compute with the same weights.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from medgemma_desktop.core import fast_decode, fast_linear, prompt_pass
from medgemma_desktop.core.decoding import EagerDecoder, SamplingSettings, TokenPicker, generated_tokens
from medgemma_desktop.core.device import choose_device
from medgemma_desktop.core.engine import Engine, GenerationSettings
from medgemma_desktop.core.errors import ContextTooLongError
from medgemma_desktop.core.fast_decode import FastDecoder, FastDecoderFactory, StepRunner, choose_decoder
from medgemma_desktop.core.fast_linear import GATE_UP, QKV, FusedLinear, LoraSlots
from medgemma_desktop.core.nf4_matvec import matvec_supported
from medgemma_desktop.core.prompt_pass import image_features
from medgemma_desktop.core.prompts import build_chat
from medgemma_desktop.core.tiny_checkpoint import BASE_MODEL_ID, SLIDING_WINDOW, TOKENS_PER_IMAGE, TinyCheckpoint

TOLERANCE = 0.05  # of the smallest step-to-step change of the eager logits


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=False))


def _bound(eager: list[torch.Tensor]) -> float:
    return TOLERANCE * min(float((b - a).abs().max()) for a, b in itertools.pairwise(eager))


def _text_inputs(length: int, seed: int = 1) -> dict[str, torch.Tensor]:
    ids = torch.randint(20, 300, (1, length), generator=torch.Generator().manual_seed(seed))
    ids[0, 0] = 2
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _inside(tensor: torch.Tensor, storage: torch.Tensor) -> bool:
    start = storage.data_ptr()
    return start <= tensor.data_ptr() < start + storage.numel() * storage.element_size()


def _forced(count: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(20, 300, (count,), generator=torch.Generator().manual_seed(seed))


def _teacher_forced(decoder, inputs: dict[str, torch.Tensor], forced: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        logits = [decoder.prefill(inputs)]
        logits += [decoder.step(token.view(1)) for token in forced]
    decoder.release()
    return logits


def _image_inputs(engine: Engine) -> dict[str, torch.Tensor]:
    return engine.prepare(build_chat("Describe this X-ray.", [Image.new("RGB", (80, 64), (10, 200, 30))]))


@pytest.fixture(params=["uncompiled", "compiled"])
def formulation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The step computes some parts differently when torch.compile traces it (fused 4-bit scales, LoRA as
    multiply-and-sum); "compiled" runs those formulations eagerly here, since CI has no GPU to compile for."""
    if request.param == "compiled":
        monkeypatch.setattr(fast_linear, "is_compiling", lambda: True)
    return request.param


def test_text_prompt_matches_eager_every_step_past_the_window(tiny_engine: Engine, formulation: str) -> None:
    inputs, forced = _text_inputs(40), _forced(3 * SLIDING_WINDOW)
    assert 40 + len(forced) > 4 * SLIDING_WINDOW  # the ring wraps several times
    runner = StepRunner(tiny_engine.model, capacity=256)
    eager = _teacher_forced(EagerDecoder(tiny_engine.model), inputs, forced)
    fast = _teacher_forced(FastDecoder(runner), inputs, forced)
    assert len(fast) == len(eager) and _max_diff(eager, fast) < _bound(eager), (_max_diff(eager, fast), _bound(eager))


def test_short_prompt_crosses_the_window_while_decoding(tiny_engine: Engine) -> None:
    inputs, forced = _text_inputs(5, seed=3), _forced(2 * SLIDING_WINDOW, seed=4)
    runner = StepRunner(tiny_engine.model, capacity=128)
    eager = _teacher_forced(EagerDecoder(tiny_engine.model), inputs, forced)
    fast = _teacher_forced(FastDecoder(runner), inputs, forced)
    assert _max_diff(eager, fast) < _bound(eager)


def test_the_tolerance_catches_a_window_off_by_one(tiny_engine: Engine) -> None:
    inputs, forced = _text_inputs(30, seed=8), _forced(SLIDING_WINDOW, seed=9)
    runner = StepRunner(tiny_engine.model, capacity=128)
    eager = _teacher_forced(EagerDecoder(tiny_engine.model), inputs, forced)
    runner.state.window -= 1  # masks out the oldest token of the window
    assert _max_diff(eager, _teacher_forced(FastDecoder(runner), inputs, forced)) > 3 * _bound(eager)


def test_image_prompt_matches_the_uncached_forward_and_eager(tiny_engine: Engine) -> None:
    inputs, forced = _image_inputs(tiny_engine), _forced(2 * SLIDING_WINDOW, seed=5)
    length = inputs["input_ids"].shape[1]
    assert length > SLIDING_WINDOW and int(inputs["token_type_ids"].sum()) > 0
    fast = _teacher_forced(FastDecoder(StepRunner(tiny_engine.model, capacity=256)), inputs, forced)
    eager = _teacher_forced(EagerDecoder(tiny_engine.model), inputs, forced)
    ids = torch.cat([inputs["input_ids"], forced.view(1, -1)], dim=1)
    types = torch.cat([inputs["token_type_ids"], torch.zeros_like(forced).view(1, -1)], dim=1)
    with torch.inference_mode():
        uncached = tiny_engine.model(**dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids),
                                            token_type_ids=types)).logits[0, length - 1:]
    assert _max_diff(list(uncached), fast) < _bound(eager)
    assert _max_diff(eager, fast) < _bound(eager)


def test_each_image_attends_within_itself_only(tiny_engine: Engine) -> None:
    """Two images: each image's tokens see each other both ways (transformers' Gemma 3 masks), not the other
    image's later tokens; without the image blocks the logits move far past the bound, so the check sees them."""
    images = [Image.new("RGB", (80, 64), (10, 200, 30)), Image.new("RGB", (64, 64), (200, 10, 90))]
    inputs, forced = tiny_engine.prepare(build_chat("Compare the two X-rays.", images)), _forced(8, seed=12)
    assert int(inputs["token_type_ids"].sum()) == 2 * TOKENS_PER_IMAGE
    runner = StepRunner(tiny_engine.model, capacity=256)
    eager = _teacher_forced(EagerDecoder(tiny_engine.model), inputs, forced)
    assert _max_diff(eager, _teacher_forced(FastDecoder(runner), inputs, forced)) < _bound(eager)
    causal = {key: value for key, value in inputs.items() if key != "token_type_ids"}
    assert _max_diff(eager, _teacher_forced(FastDecoder(runner), causal, forced)) > 2 * _bound(eager)


def test_greedy_answer_is_identical_through_the_engine(tiny_engine: Engine) -> None:
    turns = build_chat("Describe this X-ray.", [Image.new("RGB", (80, 64), (90, 20, 160))], system="Be brief.")
    settings = GenerationSettings(max_new_tokens=3 * SLIDING_WINDOW)
    factory = FastDecoderFactory(StepRunner(tiny_engine.model, capacity=512))
    eager = tiny_engine.generate(turns, settings)
    eager_text = "".join(chunk.text for chunk in eager)
    tiny_engine.decoder_factory = factory
    try:
        fast = tiny_engine.generate(turns, settings)
        fast_text = "".join(chunk.text for chunk in fast)
    finally:
        tiny_engine.decoder_factory = EagerDecoder
    assert fast.stats.decoder == "fast" and eager.stats.decoder == "eager"
    assert fast.stats.new_tokens == eager.stats.new_tokens == 3 * SLIDING_WINDOW
    assert fast_text == eager_text and fast_text


class _QueuingAhead(FastDecoder):
    """The fast decoder as the GPU runs it (`queues_ahead`: the next step is queued before the host reads the
    token), on the CPU, counting its steps."""

    queues_ahead = True

    def __init__(self, runner: StepRunner) -> None:
        super().__init__(runner)
        self.steps = 0

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        return super().step(token)


def _answer_ids(decoder, inputs: dict[str, torch.Tensor], budget: int, stop_after: int | None = None) -> list[int]:
    picker = TokenPicker(SamplingSettings(), torch.device("cpu"))
    ids = []
    with torch.inference_mode():
        for token_id in generated_tokens(decoder, picker, decoder.prefill(inputs), budget):
            ids.append(token_id)
            if len(ids) == stop_after:
                break
    decoder.release()
    return ids


def test_a_step_queued_ahead_gives_the_same_answer_and_a_stop_leaves_no_trace(tiny_engine: Engine) -> None:
    inputs = _image_inputs(tiny_engine)
    eager = _answer_ids(EagerDecoder(tiny_engine.model), inputs, 20)
    runner = StepRunner(tiny_engine.model, capacity=512)
    ahead = _QueuingAhead(runner)
    assert _answer_ids(ahead, inputs, 20) == eager and ahead.steps == 19  # none after the last token
    stopped = _QueuingAhead(runner)
    assert _answer_ids(stopped, inputs, 20, stop_after=5) == eager[:5] and stopped.steps == 5  # one for nothing
    assert _answer_ids(_QueuingAhead(runner), inputs, 20) == eager
    # Through the engine, ending at an end token: the answer stops there, as without queuing ahead.
    tiny_engine.decoder_factory, ends = (lambda model: _QueuingAhead(runner)), tiny_engine._eos
    tiny_engine._eos = ends | {eager[6]}
    try:
        answer = tiny_engine.generate(build_chat("Describe this X-ray.", [Image.new("RGB", (80, 64), (10, 200, 30))]),
                                      GenerationSettings(max_new_tokens=20))
        text = "".join(chunk.text for chunk in answer)
    finally:
        tiny_engine.decoder_factory, tiny_engine._eos = EagerDecoder, ends
    first = eager.index(eager[6])
    assert answer.stats.stop_reason == "end" and answer.stats.new_tokens == first
    assert text == tiny_engine.processor.tokenizer.decode(eager[:first])


def test_the_vision_check_runs_through_the_fast_decoder(tiny_engine: Engine) -> None:
    """At load the vision check goes through the decoder the answers use (on a GPU, so that the first question
    meets its prompt pass warm): through the fast decoder it passes, and a dead projector is caught there too."""
    projector = tiny_engine.model.get_base_model().model.multi_modal_projector.mm_input_projection_weight
    saved = projector.detach().clone()
    factory, made = FastDecoderFactory(StepRunner(tiny_engine.model, capacity=512)), []
    tiny_engine.decoder_factory = lambda model: made.append(factory(model)) or made[-1]
    try:
        assert tiny_engine.check_vision() and made
        with torch.no_grad():
            projector.zero_()
        assert not tiny_engine.check_vision()
    finally:
        with torch.no_grad():
            projector.copy_(saved)
        tiny_engine.decoder_factory = EagerDecoder
    assert tiny_engine.check_vision()


def test_cache_smaller_than_the_window_and_its_boundary(tiny_engine: Engine) -> None:
    """A cache of C slots holds positions 0..C-1: the prompt plus C - prompt steps, and no more."""
    inputs, capacity = _text_inputs(6, seed=6), SLIDING_WINDOW - 4
    forced = _forced(capacity - 6, seed=7)
    decoder = FastDecoder(StepRunner(tiny_engine.model, capacity=capacity))
    eager = _teacher_forced(EagerDecoder(tiny_engine.model), inputs, forced)
    fast = _teacher_forced(decoder, inputs, forced[:-1])
    assert _max_diff(eager, fast) < _bound(eager)
    with torch.inference_mode():
        decoder.prefill(inputs)
        for token in forced:
            decoder.step(token.view(1))
        with pytest.raises(ContextTooLongError):
            decoder.step(forced[:1])
        with pytest.raises(ContextTooLongError):
            decoder.prefill(_text_inputs(capacity))


def test_one_runner_serves_one_generation_at_a_time(tiny_engine: Engine) -> None:
    factory = FastDecoderFactory(StepRunner(tiny_engine.model, capacity=64))
    first, second = factory(tiny_engine.model), factory(tiny_engine.model)
    with torch.inference_mode():
        first.prefill(_text_inputs(8))
        second.prefill(_text_inputs(8, seed=9))
        with pytest.raises(RuntimeError):
            first.step(_forced(1))
    with pytest.raises(ValueError):
        factory(torch.nn.Linear(2, 2))


def test_choose_decoder_is_eager_on_the_cpu(tiny_engine: Engine) -> None:
    factory, reason = choose_decoder(tiny_engine.model, choose_device(force_cpu=True))
    assert factory is EagerDecoder and "GPU" in reason


def test_fused_projections_equal_the_modules_with_and_without_the_adapter(tiny_engine: Engine,
                                                                          formulation: str) -> None:
    """q/k/v and gate/up as one 4-bit matmul each, o and down alone: the same outputs as PEFT's modules, LoRA on
    or off, with the adapter in slots of its own rank or padded to a larger one."""
    layer = tiny_engine.model.get_base_model().model.language_model.layers[1]
    name = tiny_engine.active_adapter
    slots = LoraSlots.covering([layer])
    assert slots.rank == 8 and slots.targets == {"q_proj", "v_proj", "o_proj"}
    padded = LoraSlots(32, slots.targets | {"k_proj", "down_proj"}, slots.dtype)
    try:
        for adapter, fit in itertools.product((name, None), (slots, padded)):
            tiny_engine.use_adapter(adapter, prepare_decoder=False)
            for parent, names in ((layer.self_attn, QKV), (layer.self_attn, ("o_proj",)), (layer.mlp, GATE_UP),
                                  (layer.mlp, ("down_proj",))):
                modules = [getattr(parent, n) for n in names]
                fused = FusedLinear(modules, names, fit)
                assert (fused.lora is not None) == bool(fit.targets & set(names))
                for tokens in (1, 5):  # the step and the prompt
                    x = torch.randn(1, tokens, modules[0].in_features, generator=torch.Generator().manual_seed(3))
                    with torch.inference_mode():
                        for got, module in zip(fused(x), modules, strict=True):
                            assert torch.allclose(got, module(x), atol=1e-6, rtol=1e-6)
                for module in modules:  # the 4-bit bytes exist once
                    assert _inside(getattr(module, "base_layer", module).weight, fused.weight)
    finally:
        tiny_engine.use_adapter(name, prepare_decoder=False)


def test_the_nf4_kernel_is_chosen_only_where_it_can_run(tiny_engine: Engine) -> None:
    """The NVRTC kernel takes CUDA, NF4 with blocks of 64 and rows of whole 64-weight blocks; anything else keeps
    bitsandbytes' kernel (on the CPU, every projection of the step). Its speed and exactness are measured on the
    GPU (benchmarks/nf4_gemv.py, and bench_decode.py's per-step logits check)."""
    assert not matvec_supported(torch.device("cpu"), 2560, "nf4", 64)
    for quant_type, blocksize, k in (("fp4", 64, 2560), ("nf4", 128, 2560), ("nf4", 64, 2560 + 32)):
        assert not matvec_supported(torch.device("cuda", 0), k, quant_type, blocksize)
    layer = tiny_engine.model.get_base_model().model.language_model.layers[0]
    fused = FusedLinear(fast_linear.projections(layer, "qkv"), QKV, LoraSlots.covering([layer]))
    assert fused.nf4_scales is None


def test_adapter_disabled_at_capture_matches_eager_without_it(tiny_engine: Engine) -> None:
    inputs, forced = _text_inputs(30, seed=10), _forced(SLIDING_WINDOW, seed=11)
    name = tiny_engine.active_adapter
    with_adapter = _teacher_forced(EagerDecoder(tiny_engine.model), inputs, forced)
    try:
        tiny_engine.use_adapter(None, prepare_decoder=False)
        runner = StepRunner(tiny_engine.model, capacity=128)
        eager = _teacher_forced(EagerDecoder(tiny_engine.model), inputs, forced)
        fast = _teacher_forced(FastDecoder(runner), inputs, forced)
    finally:
        tiny_engine.use_adapter(name, prepare_decoder=False)
    assert _max_diff(eager, fast) < _bound(eager) < _max_diff(eager, with_adapter)


def test_image_features_in_parts_equal_the_vision_tower(tiny_engine: Engine,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The prompt's pass runs SigLIP one image at a time with its MLP over a few patches at a time; split into
    four parts here (the tiny model has 64 patches per image), the features equal `get_image_features`."""
    monkeypatch.setattr(prompt_pass, "VISION_CHUNK_PATCHES", 16)
    images = [Image.new("RGB", (80, 64), (10, 200, 30)), Image.new("RGB", (64, 64), (200, 10, 90))]
    pixels = tiny_engine.prepare(build_chat("Compare the two X-rays.", images))["pixel_values"]
    state = StepRunner(tiny_engine.model, capacity=64).state
    with torch.inference_mode():
        expected = state.multimodal.get_image_features(pixels, return_dict=True).pooler_output
        got = image_features(state.multimodal, pixels)
    assert got.shape == expected.shape == (2, TOKENS_PER_IMAGE, expected.shape[-1])
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5) and expected.abs().max() > 0.1


def test_prompt_in_token_chunks_gives_the_same_logits(tiny_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The prompt's per-token parts (vision projections and MLP, the text MLP) run over a few tokens at a time to
    bound their memory; over 16 here instead of 1024 (2048 patches), the prompt's logits and the steps after it
    stay the same."""
    inputs, forced = _image_inputs(tiny_engine), _forced(4, seed=13)
    runner = StepRunner(tiny_engine.model, capacity=128)
    whole = _teacher_forced(FastDecoder(runner), inputs, forced)
    monkeypatch.setattr(prompt_pass, "PROMPT_CHUNK_TOKENS", 16)
    monkeypatch.setattr(prompt_pass, "VISION_CHUNK_PATCHES", 16)
    assert inputs["input_ids"].shape[1] > 2 * 16
    assert _max_diff(whole, _teacher_forced(FastDecoder(runner), inputs, forced)) < 1e-5


def test_prompt_pass_refuses_inputs_it_does_not_implement(tiny_engine: Engine) -> None:
    decoder = FastDecoder(StepRunner(tiny_engine.model, capacity=64))
    with torch.inference_mode(), pytest.raises(ValueError, match="token_type_ids_extra"):
        decoder.prefill(dict(_text_inputs(8), token_type_ids_extra=torch.zeros(1, 8)))


def _write_adapter(tiny_checkpoint: TinyCheckpoint, folder: Path, rank: int, targets: list[str], seed: int) -> Path:
    """Another LoRA adapter for the tiny base model, as PEFT saves one (non-zero B, so it changes the logits)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForConditionalGeneration

    model = Gemma3ForConditionalGeneration.from_pretrained(tiny_checkpoint.model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                  lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(folder, safe_serialization=True)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = BASE_MODEL_ID
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def switching_engine(tiny_checkpoint: TinyCheckpoint,
                     tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, Path]:
    """An engine of its own (the tests add adapters to it): the tiny rank-8 q/v/o adapter active, one of rank 4 on
    q/v that fits its slots, and one of rank 16 on all seven projections that does not."""
    root = tmp_path_factory.mktemp("adapters")
    small = _write_adapter(tiny_checkpoint, root / "small-r4", 4, ["q_proj", "v_proj"], seed=21)
    large = _write_adapter(tiny_checkpoint, root / "large-r16", 16, [*QKV, "o_proj", *GATE_UP, "down_proj"], seed=22)
    engine = Engine.load(tiny_checkpoint.model_dir, tiny_checkpoint.adapter_dir)
    engine.attach_more_adapters([small])
    return engine, large  # the large one is attached by the test, after the step is built


def test_adapter_switches_copy_into_the_captured_step(switching_engine: tuple[Engine, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Switching adapters (or to the base alone) keeps the step and its buffers and only copies the new LoRA
    into its slots; the step then follows eager decoding with the new adapter at every step, past the window. An
    adapter that does not fit builds the step once, with slots that then fit all of them."""
    engine, large = switching_engine
    builds: list[StepRunner] = []

    def build(model: torch.nn.Module, plan, context_limit: int, compile_step: bool) -> tuple[FastDecoderFactory, str]:
        builds.append(StepRunner(model, capacity=128))  # on the CPU, as the CUDA path builds its runner
        return FastDecoderFactory(builds[-1]), "fast"

    monkeypatch.setattr(fast_decode, "choose_decoder", build)
    engine.prepare_decoder()
    inputs, forced = _text_inputs(SLIDING_WINDOW + 6, seed=14), _forced(10, seed=15)  # the ring wraps
    first, small = engine.active_adapter, "small-r4"
    assert set(engine.adapters) == {first, small} and builds[0].state.slots.rank == 8
    previous = None
    for name in (None, small, first):
        engine.use_adapter(name)
        assert len(builds) == 1 and engine.decoder_factory.runner is builds[0]  # no new capture
        eager = _teacher_forced(EagerDecoder(engine.model), inputs, forced)
        fast = _teacher_forced(engine.decoder_factory(engine.model), inputs, forced)
        assert _max_diff(eager, fast) < _bound(eager), (name, _max_diff(eager, fast), _bound(eager))
        if previous is not None:  # the adapters really differ: the old adapter's logits fail the bound
            assert _max_diff(previous, fast) > 3 * _bound(eager)
        previous = eager
    engine.add_adapter(large)  # rank 16 on gate/up/down too: captured again, once
    assert len(builds) == 2 and builds[1].state.slots.rank == 16 and len(builds[1].state.slots.targets) == 7
    for name in ("large-r16", None):
        engine.use_adapter(name)
        assert len(builds) == 2
        eager = _teacher_forced(EagerDecoder(engine.model), inputs, forced)
        fast = _teacher_forced(engine.decoder_factory(engine.model), inputs, forced)
        assert _max_diff(eager, fast) < _bound(eager), (name, _max_diff(eager, fast), _bound(eager))


def test_compiled_step_is_built_in_the_background_and_swapped_in(tiny_engine: Engine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner answers at once with the uncompiled step while a background thread compiles the step on a
    scratch cache; the compiled step is swapped in at the next answer without compiling again for the live cache
    (dynamo's own tracing here, with its eager backend: CI has no GPU for inductor's kernels)."""
    monkeypatch.setattr(fast_decode, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    inputs, forced = _text_inputs(30, seed=16), _forced(SLIDING_WINDOW, seed=17)
    runner = StepRunner(tiny_engine.model, capacity=128, compile_step=True)
    eager = _teacher_forced(EagerDecoder(tiny_engine.model), inputs, forced)
    answered = _teacher_forced(FastDecoder(runner), inputs, forced)  # while compiling, or just after
    assert _max_diff(eager, answered) < _bound(eager)
    assert runner.adopt_compiled(wait=True) and runner.compiled and runner.compile_error is None
    decoder = FastDecoder(runner)
    assert decoder.name == "fast-compiled" and "compiled in the background" in FastDecoderFactory(runner).reason
    assert _max_diff(eager, _teacher_forced(decoder, inputs, forced)) < _bound(eager)
    torch._dynamo.reset()
