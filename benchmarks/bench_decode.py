"""Decode benchmark: the model card's recipe against the app's fast path, in one process on one GPU.

Builds a randomly initialised model with MedGemma 1.5 4B's exact shapes (speed and memory depend on shapes, not
weight values) plus a rank-8 LoRA adapter on q/v/o, then:
1. the recipe, as the adapter's model card loads it: NF4, float16 compute (the baseline being reproduced;
   the app never computes in float16), double quant, unmerged LoRA, plain `generate`;
2. the app under an 8 GiB cap (torch.cuda.set_per_process_memory_fraction): `Engine.load`, `choose_decoder`
   (compile + CUDA-graph capture), the engine's own per-token loop (prefill, pick, one host sync, step) with
   the app's fast decoder (compiled and captured by `Engine.load`) and the eager decoder; 2K context with one
   image; a per-step logits check against `EagerDecoder`, teacher-forced, with a prompt past the 1024-token
   sliding window; peak memory at 1K/2K/4K/8K context limits against `core.vram_plan.plan_vram`; then the
   time to first token alternating with the recipe reloaded beside the app.
Prints JSON lines and writes them to OUT/bench_decode.json. Usage: python benchmarks/bench_decode.py [OUT]
`--smoke` runs the app part on the tiny checkpoint on the CPU, to check this script without a GPU; `--build-only`
writes the full-size random checkpoint and stops.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medgemma_desktop.core.decoding import EagerDecoder, SamplingSettings, TokenPicker, generated_tokens
from medgemma_desktop.core.engine import Engine, LoadOptions
from medgemma_desktop.core.fast_decode import FastDecoder, choose_decoder

GIB = 2**30
ROOT = Path(tempfile.gettempdir())
CKPT, ADAPTER = ROOT / "medgemma-arch-random-896", ROOT / "lora-r8-random-896"
CONTEXT = 2048
CAP_BYTES = 8 * GIB
NEW_TOKENS = 256
CONFIG = dict(
    text_config=dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
                     num_key_value_heads=4, head_dim=256, vocab_size=262208, sliding_window=1024,
                     query_pre_attn_scalar=256, max_position_embeddings=131072,
                     rope_scaling={"rope_type": "linear", "factor": 8.0}),
    vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                       image_size=896, patch_size=14, vision_use_head=False),
    mm_tokens_per_image=256, bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0)
# The tiny checkpoint's tokenizer grown to Gemma's size (the tiny one's ids for the image markers) with a processor
# at MedGemma's image size and 256 tokens per image, so `Engine.load`'s vision check and the app's prompts run at
# the real shapes.
IMAGE_IDS = dict(image_token_index=364, boi_token_index=7, eoi_token_index=8)
RESULTS: list[dict] = []


def emit(record: dict, out: Path) -> None:
    """Print one result and rewrite the JSON file, so a run cut short keeps what it measured."""
    RESULTS.append(record)
    print(json.dumps(record), flush=True)
    (out / "bench_decode.json").write_text(json.dumps(RESULTS, indent=1))


def add_lora(model: torch.nn.Module) -> torch.nn.Module:
    """The seed's adapter: rank 8 on q/v/o, non-zero B so the adapter path really computes."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                                  lora_dropout=0.0))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=1e-3)
    return peft_model.eval()


def build(out: Path) -> None:
    """Random full-size checkpoint + tokenizer/processor files (the tiny tokenizer grown to Gemma's size) + adapter."""
    if (ADAPTER / "adapter_config.json").is_file():
        return
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    from benchmarks.gemma_sized_tokenizer import gemma_sized_tokenizer
    from medgemma_desktop.core.tiny_checkpoint import BASE_MODEL_ID, CHAT_TEMPLATE

    start = time.time()
    tokenizer = gemma_sized_tokenizer()
    ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in (
        ("image_token_index", "<image_soft_token>"), ("boi_token_index", "<start_of_image>"),
        ("eoi_token_index", "<end_of_image>"))}
    assert ids == IMAGE_IDS, ids
    with torch.device("cuda"):
        model = Gemma3ForConditionalGeneration(Gemma3Config(**CONFIG, **IMAGE_IDS)).to(torch.bfloat16)
        # transformers initialises the image projector to zeros, which hides the image path (and fails the
        # engine's vision check, so `ask` refuses images).
        model.model.multi_modal_projector.mm_input_projection_weight.data.normal_(std=0.02)
    model.save_pretrained(CKPT)
    image_processor = Gemma3ImageProcessor(
        size={"height": 896, "width": 896}, resample=2, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_pan_and_scan=False)
    Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                    image_seq_length=256).save_pretrained(CKPT)
    add_lora(model).save_pretrained(ADAPTER)
    config = json.loads((ADAPTER / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = BASE_MODEL_ID
    (ADAPTER / "adapter_config.json").write_text(json.dumps(config))
    del model
    gc.collect()
    torch.cuda.empty_cache()
    emit({"event": "built", "s": round(time.time() - start, 1)}, out)


def prompt(dtype: torch.dtype, device: str, text_tokens: int = 40, smoke: bool = False) -> dict[str, torch.Tensor]:
    """The seed bench's prompt: one image (256 soft tokens) and text, in Gemma 3's chat layout (smoke: tiny ids)."""
    if smoke:
        from medgemma_desktop.core.tiny_checkpoint import IMAGE_SIZE, TOKENS_PER_IMAGE

        image, boi, eoi, text = 364, 7, 8, [20 + i % 80 for i in range(text_tokens)]
        image_tokens, image_size = TOKENS_PER_IMAGE, IMAGE_SIZE
        ids = [2, 5, *text[:3], boi, *[image] * image_tokens, eoi, *text, 6, 5]
    else:
        image, boi, eoi = IMAGE_IDS["image_token_index"], IMAGE_IDS["boi_token_index"], IMAGE_IDS["eoi_token_index"]
        text = [1000 + i % 200000 for i in range(text_tokens)]
        image_tokens, image_size = 256, 896
        ids = [2, 105, 2364, 107, 108, boi, *[image] * image_tokens, eoi, 108, *text, 106, 107, 105, 4368, 107]
    types = [1 if i == image else 0 for i in ids]
    generator = torch.Generator(device="cpu").manual_seed(0)
    return {"input_ids": torch.tensor([ids], device=device),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device),
            "token_type_ids": torch.tensor([types], device=device),
            "pixel_values": torch.randn(1, 3, image_size, image_size, generator=generator).to(device, dtype)}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def memory() -> dict:
    return {"peak_alloc_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3)} if torch.cuda.is_available() else {}


def load_recipe() -> torch.nn.Module:
    """The model card's quick start: NF4 with float16 compute, double quant, unmerged LoRA."""
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.float16, bnb_4bit_use_double_quant=True)
    return add_lora(AutoModelForImageTextToText.from_pretrained(CKPT, quantization_config=quantization,
                                                                device_map="auto"))


def recipe_generate(model: torch.nn.Module, inputs: dict[str, torch.Tensor], new_tokens: int) -> dict:
    """Plain `generate`, timed by a streamer: the time to the first new token and the decode rate after it."""
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: torch.Tensor) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    clock = Clock()
    torch.cuda.synchronize()
    begin = time.perf_counter()
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       streamer=clock)
    torch.cuda.synchronize()
    return {"ttft_s": round(clock.times[1] - begin, 4),  # times[0]: the prompt, put before decoding starts
            "decode_tok_s": round((len(clock.times) - 2) / max(clock.times[-1] - clock.times[1], 1e-9), 2)}


def run_recipe(out: Path) -> dict:
    """The model card's quick start on the same GPU: float16 compute, double quant, plain generate."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    model = load_recipe()
    load_s = time.time() - start
    inputs = prompt(torch.float16, "cuda")
    record, firsts = {}, []
    for new_tokens in (8, 2, 2, 2, 2, 2, NEW_TOKENS):  # warm-up, five short answers for the first token, one full
        record = {"event": "recipe", "load_s": round(load_s, 1), "prompt_tokens": inputs["input_ids"].shape[1],
                  "new_tokens": new_tokens, **recipe_generate(model, inputs, new_tokens), **memory()}
        if new_tokens == 2:
            firsts.append(record["ttft_s"])
    firsts.sort()
    record = {**record, "ttft_s": firsts[len(firsts) // 2], "ttft_runs": firsts}
    emit(record, out)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return record


def generate(engine: Engine, decoder, inputs: dict[str, torch.Tensor], new_tokens: int) -> dict:
    """The engine's per-token loop (`decoding.generated_tokens`, as Engine._run): prefill, greedy pick, the
    next step queued before the token is read on the host where the decoder queues ahead."""
    device = engine.plan.device
    picker = TokenPicker(SamplingSettings(), torch.device(device))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    tokens = []
    with torch.inference_mode():
        logits = decoder.prefill(inputs)
        for token_id in generated_tokens(decoder, picker, logits, new_tokens):
            tokens.append(token_id)
            if len(tokens) == 1:
                first = time.perf_counter()
    end = time.perf_counter()
    decoder.release()
    return {"decoder": decoder.name, "prompt_tokens": inputs["input_ids"].shape[1], "new_tokens": new_tokens,
            "ttft_s": round(first - start, 4), "decode_tok_s": round((new_tokens - 1) / (end - first), 2),
            "first_token_at": first,
            "tokens_head": tokens[:16], **memory()}


def logits_check(engine: Engine, factories: dict, inputs: dict[str, torch.Tensor], steps: int) -> dict:
    """Per-step max |logit difference| of each fast decoder against EagerDecoder on the same forced tokens."""
    high = min(200000, engine.model.config.get_text_config().vocab_size - 64)
    forced = torch.randint(20, high, (steps,), generator=torch.Generator().manual_seed(1)).to(engine.plan.device)

    def run(decoder) -> list[torch.Tensor]:
        with torch.inference_mode():
            logits = [decoder.prefill(inputs)] + [decoder.step(t.view(1)) for t in forced]
        decoder.release()
        return logits

    eager = run(EagerDecoder(engine.model))
    scale = [float((b - a).abs().max()) for a, b in itertools.pairwise(eager)]
    record = {"event": "logits_check", "prompt_tokens": inputs["input_ids"].shape[1], "steps": steps,
              "last_position": inputs["input_ids"].shape[1] + steps - 1,
              "eager_step_to_step_max_abs": {"min": round(min(scale), 3),
                                             "median": round(sorted(scale)[len(scale) // 2], 3)},
              "eager_logit_abs_max": round(max(float(x.abs().max()) for x in eager), 2)}
    for name, factory in factories.items():
        fast = run(factory(engine.model))
        diffs = [float((a - b).abs().max()) for a, b in zip(eager, fast, strict=True)]
        agree = sum(int(a.argmax() == b.argmax()) for a, b in zip(eager, fast, strict=True))
        record[name] = {"max_abs_diff": round(max(diffs), 4),
                        "median_abs_diff": round(sorted(diffs)[len(diffs) // 2], 4),
                        "per_step_first8": [round(d, 4) for d in diffs[:8]], "argmax_agree": f"{agree}/{len(diffs)}"}
    return record


def bytes_per_token(engine: Engine, context: int) -> int:
    """Fewest bytes one decode step must read: the text tower's weights as stored (4-bit packed + scales,
    LoRA, norms), the full tied lm_head (the embedding lookup reads one row) and the attended K/V."""
    text = engine.model.get_base_model().model.language_model
    total = sum(t.numel() * t.element_size() for t in text.parameters()) - text.embed_tokens.weight.numel() * 2
    for module in text.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
    total += text.embed_tokens.weight.numel() * text.embed_tokens.weight.element_size()
    config = text.config
    per_token = 2 * config.num_key_value_heads * config.head_dim * 2
    sliding = sum(t == "sliding_attention" for t in config.layer_types)
    return total + per_token * (sliding * min(context, config.sliding_window)
                                + (config.num_hidden_layers - sliding) * context)


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (the practical bandwidth ceiling)."""
    src = torch.empty(2 * GIB, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / 10
    del src, dst
    torch.cuda.empty_cache()
    return 2 * 2 * GIB / seconds


def timed(engine: Engine, make_decoder, inputs: dict[str, torch.Tensor], new_tokens: int, runs: int) -> dict:
    """Warm-up, then the median time to first token of `runs` short answers and one full answer's decode rate."""
    generate(engine, make_decoder(), inputs, 8)
    firsts = sorted(generate(engine, make_decoder(), inputs, 2)["ttft_s"] for _ in range(runs))
    record = generate(engine, make_decoder(), inputs, new_tokens)
    return {**record, "ttft_s": firsts[len(firsts) // 2], "ttft_runs": firsts}


def ttft_against_the_recipe(engine: Engine, factory, runs: int) -> dict:
    """Time to first token of the recipe and of the app's path, alternating in one process with both models
    loaded, so that the host's load (shared machines drift by tens of ms) is the same for both."""
    recipe = load_recipe()
    recipe_prompt, app_prompt = prompt(torch.float16, "cuda"), prompt(engine.plan.dtype, "cuda")
    recipe_generate(recipe, recipe_prompt, 2)
    generate(engine, factory(engine.model), app_prompt, 2)
    times: dict[str, list[float]] = {"recipe": [], "app": []}
    for _ in range(runs):
        times["recipe"].append(recipe_generate(recipe, recipe_prompt, 2)["ttft_s"])
        times["app"].append(generate(engine, factory(engine.model), app_prompt, 2)["ttft_s"])
    del recipe
    gc.collect()
    torch.cuda.empty_cache()
    medians = {name: sorted(values)[runs // 2] for name, values in times.items()}
    return {"event": "ttft_alternating_with_recipe", "runs": times, "median_s": medians,
            "recipe_over_app": round(medians["recipe"] / medians["app"], 2)}


def contexts(engine: Engine, out: Path, config: dict, adapter_bytes: int) -> None:
    """Issue 5: per context limit, the app's decoder for that limit, a prompt (one image) filling all but 65
    tokens, 64 new tokens; peak allocated/reserved against `plan_vram`. The step is captured without compiling
    (the compiled step's memory differs only by its kernels' workspaces) to keep the run inside one device call."""
    from medgemma_desktop.core.vram_plan import plan_vram

    dtype, device = engine.plan.dtype, engine.plan.device
    for context in (1024, 2048, 4096, 8192):
        engine.decoder_factory = factory = EagerDecoder  # the previous context's graph and cache go first
        gc.collect()
        torch.cuda.empty_cache()
        start = time.time()
        factory, reason = choose_decoder(engine.model, engine.plan, context_limit=context, compile_step=False)
        setup_s = time.time() - start
        engine.decoder_factory = factory
        plan = plan_vram(config, context, images=1, adapter_bytes=adapter_bytes)
        record = {"event": "context", "context": context, "setup_s": round(setup_s, 1), "reason": reason,
                  "plan_gib": {name: round(value / GIB, 3) for name, value in plan.rows()} | {
                      "total": round(plan.total / GIB, 3),
                      "torch_part": round((plan.total - plan.cuda_context) / GIB, 3)}}
        try:
            result = generate(engine, factory(engine.model),
                              prompt(dtype, device, text_tokens=context - 65 - 269), 64)
            free, total = torch.cuda.mem_get_info()
            record.update(result, outside_torch_gib=round((total - free - torch.cuda.memory_reserved()) / GIB, 3))
        except torch.OutOfMemoryError as exc:
            record["error"] = f"out of memory: {exc}"[:300]
        emit(record, out)


def first_answer_after_load(engine: Engine, inputs: dict[str, torch.Tensor], loaded_at: float) -> dict:
    """The first answer right after `Engine.load` returned, as a user asking at once gets it (the compiled step
    is still being built in the background): seconds from load to its first token, and its decode rate."""
    record = generate(engine, engine.decoder_factory(engine.model), inputs, 64)
    return {**record, "first_token_after_load_s": round(record.pop("first_token_at") - loaded_at, 3)}


def wait_for_compiled(engine: Engine) -> dict:
    """Wait for the background compile, then put the compiled step in place (as the next answer would)."""
    runner = getattr(engine.decoder_factory, "runner", None)
    if runner is None:
        return {}
    start = time.perf_counter()
    adopted = runner.adopt_compiled(wait=True)
    return {"compiled": adopted, "compile_s": round(runner.compile_s or 0.0, 1),
            "waited_s": round(time.perf_counter() - start, 1), "compile_error": runner.compile_error,
            "decoder": engine.decoder_reason}


def adapter_switches(engine: Engine, inputs: dict[str, torch.Tensor], steps: int, out: Path) -> float:
    """`Engine.use_adapter` to the base alone and back, timed (synchronised), each followed by the per-step
    logits check against eager decoding with what is now active. Returns the slowest switch."""
    name, times = engine.active_adapter, []
    for target in (None, name):
        sync(engine.plan.device)
        start = time.perf_counter()
        engine.use_adapter(target)
        sync(engine.plan.device)
        times.append(time.perf_counter() - start)
        factory = engine.decoder_factory
        emit({"event": "after_switch", "adapter": target, "switch_s": round(times[-1], 4),
              "decoder": engine.decoder_reason,
              **logits_check(engine, {factory(engine.model).name: factory}, inputs, steps)}, out)
    return max(times)


def run_app(out: Path, model_dir: Path, adapter_dir: Path, smoke: bool) -> dict:
    """The app's path under the 8 GiB cap: Engine.load (the uncompiled graph captured, the compiled step built
    in the background), the first answer at once, then the compiled step: eager and fast generation, 2K context
    with one image, the per-step logits check, adapter switches, contexts. Returns the summary's figures."""
    cuda = torch.cuda.is_available() and not smoke
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(CAP_BYTES / torch.cuda.get_device_properties(0).total_memory)
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    engine = Engine.load(model_dir, adapter_dir, LoadOptions(force_cpu=smoke, context_limit=CONTEXT))
    loaded_at = time.perf_counter()
    load_s = time.time() - start
    emit({"event": "app_load", "load_s": round(load_s, 1), "plan": engine.plan.reason,
          "decoder": engine.decoder_reason, "allocated_after_gib": round(torch.cuda.memory_allocated() / GIB, 3)
          if cuda else None, **memory()}, out)
    if not cuda:
        from medgemma_desktop.core.fast_decode import FastDecoderFactory, StepRunner

        engine.decoder_factory = FastDecoderFactory(StepRunner(engine.model, CONTEXT, compile_step=False))
    factory = engine.decoder_factory
    dtype, device = engine.plan.dtype, engine.plan.device
    new_tokens, runs = (24, 1) if smoke else (NEW_TOKENS, 5)
    bench_prompt = prompt(dtype, device, smoke=smoke)
    first = first_answer_after_load(engine, bench_prompt, loaded_at)
    emit({"event": "first_answer_after_load", **first}, out)
    emit({"event": "compiled_in_background", **wait_for_compiled(engine)}, out)
    # The app's path first, as the app runs it: plain decoding afterwards gives the default stream a cuBLAS
    # workspace (32 MiB) that the fast path alone never holds.
    record = timed(engine, lambda: factory(engine.model), bench_prompt, new_tokens, runs)
    eager = timed(engine, lambda: EagerDecoder(engine.model), bench_prompt, 64 if cuda else 8, runs)
    emit({"event": "app_generate", **eager}, out)
    record["same_first16_tokens_as_eager"] = record["tokens_head"] == eager["tokens_head"][:16]
    # Time to first token again, eager and fast alternating, so both see the same state of the machine.
    alternating: dict[str, list[float]] = {"eager": [], record["decoder"]: []}
    for _ in range(runs):
        for name, decoder in (("eager", EagerDecoder(engine.model)), (record["decoder"], factory(engine.model))):
            alternating[name].append(generate(engine, decoder, bench_prompt, 1)["ttft_s"])
    record["ttft_alternating_s"] = {name: sorted(times)[len(times) // 2] for name, times in alternating.items()}
    needed = bytes_per_token(engine, bench_prompt["input_ids"].shape[1] + new_tokens)
    record["bytes_per_token_gb"] = round(needed / 1e9, 3)
    if cuda:
        bandwidth = copy_bandwidth()
        record["copy_bandwidth_tb_s"] = round(bandwidth / 1e12, 2)
        record["bandwidth_bound_tok_s"] = round(bandwidth / needed, 1)
        record["fraction_of_bandwidth_bound"] = round(record["decode_tok_s"] * needed / bandwidth, 3)
    emit({"event": "app_generate", **record}, out)
    # A 2K context with one image: a prompt of ~1.75K tokens, then new tokens up to the context limit.
    long_prompt = prompt(dtype, device, text_tokens=CONTEXT - NEW_TOKENS - 256 - 20 if cuda else 40, smoke=smoke)
    emit({"event": "app_2k_context_one_image", "cap_gib": CAP_BYTES / GIB if cuda else None,
          **generate(engine, factory(engine.model), long_prompt, new_tokens)}, out)
    # Per-step logits past the sliding window: the prompt alone passes 1024 tokens, then steps wrap the ring.
    check_prompt = prompt(dtype, device, text_tokens=1000 if cuda else 30, smoke=smoke)
    emit(logits_check(engine, {factory(engine.model).name: factory}, check_prompt, 64 if cuda else 30), out)
    switch_s = adapter_switches(engine, check_prompt, 64 if cuda else 30, out)
    summary = {"decode_tok_s": record["decode_tok_s"], "ttft_s": record["ttft_s"],
               "first_token_after_load_s": first["first_token_after_load_s"],
               "first_answer_decode_tok_s": first["decode_tok_s"], "adapter_switch_s": round(switch_s, 4),
               "load_s": round(load_s, 1), "peak_alloc_gib": record.get("peak_alloc_gib"),
               "fraction_of_bandwidth_bound": record.get("fraction_of_bandwidth_bound")}
    if cuda and "--contexts" in sys.argv:
        del factory
        adapter_bytes = sum(f.stat().st_size for f in Path(adapter_dir).glob("*.safetensors"))
        contexts(engine, out, engine.folder.config, adapter_bytes)
        engine.prepare_decoder()  # the app's own decoder again (its compiled step is in the cache by now)
        wait_for_compiled(engine)
    if cuda:
        # Last: the recipe loaded beside the app leaves its segments cached, which would inflate the reserved
        # memory of anything measured after it (run 11's 2K case: 6.5 GiB reserved for 3.46 allocated).
        alternating_record = ttft_against_the_recipe(engine, engine.decoder_factory, runs=7)
        emit(alternating_record, out)
        summary["ttft_alternating_s"] = alternating_record["median_s"]
    return summary


def main() -> None:
    import peft
    import transformers

    smoke = "--smoke" in sys.argv
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = Path(args[0] if args else Path(__file__).parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    try:
        import bitsandbytes
        bnb_version = bitsandbytes.__version__
    except ImportError as exc:
        bnb_version = repr(exc)
    emit({"event": "versions", "torch": torch.__version__, "cuda": torch.version.cuda,
          "transformers": transformers.__version__, "peft": peft.__version__, "bitsandbytes": bnb_version,
          "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "python": sys.version.split()[0],
          "FastDecoder": FastDecoder.__module__}, out)
    if smoke:
        from medgemma_desktop.core.tiny_checkpoint import write_tiny_checkpoint

        tiny = write_tiny_checkpoint(Path(tempfile.mkdtemp()))
        emit({"event": "summary", **run_app(out, tiny.model_dir, tiny.adapter_dir, smoke=True)}, out)
        return
    build(out)
    if "--build-only" in sys.argv:  # for bench_load.py, which needs the checkpoint
        return
    recipe = run_recipe(out) if "--no-recipe" not in sys.argv else None
    summary = run_app(out, CKPT, ADAPTER, smoke=False)
    if recipe is not None:
        summary |= {"recipe_decode_tok_s": recipe["decode_tok_s"], "recipe_ttft_s": recipe["ttft_s"],
                    "decode_over_recipe": round(summary["decode_tok_s"] / recipe["decode_tok_s"], 1)}
    emit({"event": "summary", **summary}, out)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
