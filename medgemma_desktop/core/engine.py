"""The engine owns the model: it loads MedGemma 4-bit + a LoRA adapter from local folders and streams answers.

Generation runs in the caller's thread as a plain generator (no helper thread, no streamer queue), so an
exception inside the model reaches the caller and nobody waits forever on a streamer. Stop is a thread-safe
`threading.Event` checked once per token.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medgemma_desktop.core.bitsandbytes_import import import_bitsandbytes
from medgemma_desktop.core.decoding import (
    Decoder,
    EagerDecoder,
    SamplingSettings,
    TokenPicker,
    check_max_new_tokens,
    generated_tokens,
)
from medgemma_desktop.core.device import DevicePlan, choose_device
from medgemma_desktop.core.errors import (
    AdapterFolderError,
    ContextTooLongError,
    LoadCancelled,
    OutOfMemoryError,
    UserFacingError,
    VisionUnavailableError,
)
from medgemma_desktop.core.fingerprint import FingerprintCache, WeightsIdentity
from medgemma_desktop.core.load_progress import ProgressCallback, check_cancel, weights_progress
from medgemma_desktop.core.model_folder import (
    AdapterFolder,
    ModelFolder,
    check_adapter_folder,
    check_built_tokenizer,
    check_model_folder,
    processor_failure,
)
from medgemma_desktop.core.prompts import ChatTurn, estimate_prompt_tokens, text_token_counter, to_processor_messages
from medgemma_desktop.core.quant_cache import QuantizedModelCache, cache_key
from medgemma_desktop.core.text_stream import IncrementalDetokenizer, TextChunk
from medgemma_desktop.core.thinking import split_thinking

log = logging.getLogger(__name__)
# bitsandbytes' CPU backend looks for an optional kernel on the hub (needs the `kernels` package, which we do not
# install) and warns when it is absent: expected offline, and only alarming to users.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

@dataclass(frozen=True)
class LoadOptions:
    double_quant: bool = True  # as the model card; saves ~0.4 bits per weight
    force_cpu: bool = False
    context_limit: int = 8192
    compile_step: bool = True  # build the compiled decode step in the background (not worth it for one answer)


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 1024
    sampling: SamplingSettings = field(default_factory=SamplingSettings)

    def __post_init__(self) -> None:
        check_max_new_tokens(self.max_new_tokens)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    time_to_first_token_s: float = 0.0  # from the question
    prompt_s: float = 0.0  # of that, preparing the prompt (template, images, copy to the device)
    decode_tokens_per_s: float = 0.0
    total_s: float = 0.0
    peak_memory_bytes: int | None = None
    stop_reason: str = ""  # "end", "length", "stopped"
    decoder: str = ""


@dataclass(frozen=True)
class ModelIdentity:
    """Which weights produced an answer and how they ran: recorded with every answer and export."""

    model: WeightsIdentity
    adapter: WeightsIdentity | None
    device: str
    dtype: str
    quantization: str
    decoder: str = "plain decoding"  # the decode path and why (`Engine.decoder_reason`)
    vision_active: bool = True  # the load-time check that images reach the model

    @property
    def model_name(self) -> str:
        return self.model.folder

    @property
    def adapter_name(self) -> str | None:
        return self.adapter.folder if self.adapter else None


class Generation:
    """An answer being generated: iterate for `TextChunk`s; afterwards `text`, `thinking` and `stats` are set."""

    def __init__(self, chunks: Callable[[Generation], Iterator[TextChunk]]) -> None:
        self.stats = GenerationStats()
        self.raw_text = ""
        self.thinking = ""
        self._chunks = chunks

    @property
    def text(self) -> str:
        return self.raw_text.strip()

    def __iter__(self) -> Iterator[TextChunk]:
        for chunk in self._chunks(self):
            if chunk.thinking:
                self.thinking += chunk.text
            else:
                self.raw_text += chunk.text
            yield chunk
        # A trace the tokenizer produced as plain text (not as marker tokens) is split off here.
        answer, extra = split_thinking(self.raw_text)
        if extra:
            self.raw_text, self.thinking = answer, (self.thinking + "\n" + extra).strip()
        self.thinking = self.thinking.removeprefix("thought").strip()


class Engine:
    """Owns the quantized model, the processor and the active adapter."""

    def __init__(self, model: torch.nn.Module, processor, plan: DevicePlan, folder: ModelFolder,
                 options: LoadOptions, model_sha256: str, fingerprints: FingerprintCache) -> None:
        self.model = model
        self.processor = processor
        self.plan = plan
        self.folder = folder
        self.options = options
        self.model_sha256 = model_sha256
        self.loaded_from_cache = False
        self.vision_active = False
        self.adapters: dict[str, AdapterFolder] = {}
        self.active_adapter: str | None = None
        self.decoder_factory: Callable[[torch.nn.Module], Decoder] = EagerDecoder
        self._plain_reason = "plain decoding"
        self._fingerprints = fingerprints
        self._adapter_sha256: dict[str, str] = {}
        self.skipped_adapters: dict[Path, str] = {}  # extra adapters that did not load, with why
        eos = model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos])

    @classmethod
    def load(cls, model_dir: Path | str, adapter_dir: Path | str | None = None, options: LoadOptions | None = None,
             progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
             cache: QuantizedModelCache | None = None, fingerprints: FingerprintCache | None = None,
             more_adapters: Sequence[Path | str] = ()) -> Engine:
        """Check the folders, then load the base model in NF4 (from `cache` when it holds this model), attach the
        adapter (the active one) and `more_adapters` (to switch to later). Cancellable between steps. An extra
        adapter that no longer loads (moved, changed, made for another base) costs only itself: it is left out
        and named in `skipped_adapters`. The folders are checked before transformers' model code is imported
        (seconds), so a bad folder is refused at once and progress starts as soon as the command does."""
        options = options or LoadOptions()
        fingerprints = fingerprints or FingerprintCache()
        report = progress or (lambda percent, step: None)
        report(1, "checking the model folder")
        folder = check_model_folder(model_dir, read_tokenizer=False)  # the built tokenizer is checked below
        adapter = check_adapter_folder(adapter_dir, folder) if adapter_dir else None
        plan = choose_device(options.force_cpu)
        log.info("loading %s on %s (%s)", folder.path.name, plan.device, plan.reason)
        check_cancel(cancel)
        digest = fingerprints.folder_digest(
            folder.shards, lambda done, total: report(2 + 18 * done // max(total, 1), "checking the weights' hash"))
        check_cancel(cancel)
        report(20, "loading transformers")
        import_bitsandbytes()  # before transformers' quantizer imports it
        from transformers import BitsAndBytesConfig, Gemma3ForConditionalGeneration, Gemma3Processor

        check_cancel(cancel)
        report(22, "reading the processor")
        try:
            processor = Gemma3Processor.from_pretrained(folder.path, local_files_only=True)
        except Exception as exc:  # transformers' own errors for a defect the folder check left to this read
            raise processor_failure(folder, exc) from exc
        check_built_tokenizer(folder, processor.tokenizer.backend_tokenizer)
        key = cache_key(digest, options.double_quant, plan.dtype_name, folder.shaping_files)
        cached = cache.lookup(key) if cache is not None else None
        common = dict(dtype=plan.dtype, device_map={"": plan.device}, local_files_only=True, use_safetensors=True,
                      trust_remote_code=False)
        model = None
        from_cache = False
        if cached is not None:
            check_cancel(cancel)
            try:
                with weights_progress(report, 25, 75, "reading the saved 4-bit model", cancel):
                    model = Gemma3ForConditionalGeneration.from_pretrained(cached, **common)
                from_cache = True
            except LoadCancelled:
                raise
            except Exception as exc:  # a damaged entry of any kind is rebuilt, never trusted
                log.warning("the saved 4-bit model could not be read (%s); quantizing again", exc)
                cache.remove(key)
        if model is None:
            check_cancel(cancel)
            quantization = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=plan.dtype,
                bnb_4bit_use_double_quant=options.double_quant,
            )
            with weights_progress(report, 25, 75, "loading and quantizing the weights to 4-bit NF4", cancel):
                model = Gemma3ForConditionalGeneration.from_pretrained(folder.path, quantization_config=quantization,
                                                                       **common)
            if cache is not None and not (cancel is not None and cancel.is_set()):
                report(75, "saving the 4-bit model for faster starts")
                cache.store(model, key, folder.path.name)
        model.eval()
        if not plan.is_cuda:
            _keep_float32_on_cpu(model)
        if cancel is not None and cancel.is_set():
            del model
            _free_memory()
            raise LoadCancelled("loading was cancelled")
        engine = cls(model, processor, plan, folder, options, digest, fingerprints)
        engine.loaded_from_cache = from_cache
        if adapter is not None:
            report(80, f"attaching the adapter {adapter.name}")
            engine.add_adapter(adapter.path, prepare_decoder=False)
        engine.attach_more_adapters([Path(path) for path in more_adapters
                                     if adapter is None or Path(path).resolve() != adapter.path.resolve()])
        check_cancel(cancel)
        if plan.is_cuda:
            report(85, "preparing fast decoding")
        engine.prepare_decoder()
        report(92, "checking that the vision tower sees images")
        engine.vision_active = engine.check_vision()
        report(100, "ready")
        return engine

    def prepare_decoder(self) -> None:
        """Pick the decode path: the CUDA-graph step on CUDA (captured in seconds for the context limit, with LoRA
        slots that fit every loaded adapter; compiled in the background), plain decoding elsewhere or when the fast
        path cannot start, with the reason in `decoder_reason`."""
        from medgemma_desktop.core.fast_decode import choose_decoder

        if self.decoder_factory is not EagerDecoder:  # drop the previous graph and static cache first
            close = getattr(self.decoder_factory, "close", None)
            self.decoder_factory = EagerDecoder
            if close is not None:
                close()
            _free_memory()
        self.decoder_factory, self._plain_reason = choose_decoder(self.model, self.plan, self.options.context_limit,
                                                                  self.options.compile_step)
        log.info("%s", self._plain_reason)

    @property
    def decoder_reason(self) -> str:
        """The decode path and why; the fast path's changes once its compiled step is in place."""
        return getattr(self.decoder_factory, "reason", self._plain_reason)

    def check_vision(self) -> bool:
        """Is the image path live? Two different tiny images must give finite, different next-token logits,
        through the decoder the answers use: on CUDA its prompt pass then meets the user's first question warm.

        Other apps lose vision silently when the projector or tower does not match; this catches it at load.
        """
        from PIL import Image

        from medgemma_desktop.core.prompts import build_chat

        decoder = self.decoder_factory(self.model)
        with torch.inference_mode():
            logits = [decoder.prefill(self.prepare(build_chat("Describe.", [Image.new("RGB", (32, 32), (shade,) * 3)])))
                      for shade in (0, 255)]
        decoder.release()
        return all(bool(torch.isfinite(row).all()) for row in logits) and not torch.equal(logits[0], logits[1])

    @property
    def adapter(self) -> AdapterFolder | None:
        return self.adapters.get(self.active_adapter) if self.active_adapter else None

    def add_adapter(self, adapter_dir: Path | str, prepare_decoder: bool = True) -> AdapterFolder:
        """Attach another LoRA adapter to the loaded base (no reload) and make it the active one."""
        from peft import PeftModel

        adapter = check_adapter_folder(adapter_dir, self.folder)
        name = adapter.name
        if name in self.adapters:
            raise AdapterFolderError(f"an adapter named {name} is already loaded", path=adapter.path,
                                     fix="Rename the folder to load a second adapter of the same name.")
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(adapter.path, adapter_name=name, is_trainable=False, local_files_only=True)
        else:
            self.model = PeftModel.from_pretrained(self.model, adapter.path, adapter_name=name, is_trainable=False,
                                                   local_files_only=True)
        self.model.eval()
        self.adapters[name] = adapter
        self._adapter_sha256[name] = self._fingerprints.folder_digest([adapter.weights, adapter.path /
                                                                        "adapter_config.json"])
        self.use_adapter(name, prepare_decoder)
        return adapter

    def attach_more_adapters(self, paths: list[Path]) -> None:
        """Attach adapters to switch to later, keeping the active one (or the base alone) active."""
        active = self.active_adapter
        for path in paths:
            try:
                self.add_adapter(path, prepare_decoder=False)
            except Exception as exc:  # any failure leaves this adapter out, not the model
                log.warning("adapter %s left out", path, exc_info=True)
                self.skipped_adapters[path] = str(exc) if isinstance(exc, UserFacingError) else \
                    f"{path}: the adapter could not be attached ({type(exc).__name__}; the log has the details)."
        if self.active_adapter != active:
            self.use_adapter(active, prepare_decoder=False)

    def use_adapter(self, name: str | None, prepare_decoder: bool = True) -> None:
        """Switch the active adapter, or run the base model alone with `None`. The fast path copies it into its
        step's LoRA slots (milliseconds); only an adapter that does not fit them builds the step again, with slots
        that then fit every loaded adapter. Not during an answer."""
        if name is not None and name not in self.adapters:
            raise AdapterFolderError(f"no adapter named {name} is loaded", fix="Add it in the model manager first.")
        if not self.adapters:
            return
        lora_model = self.model.base_model
        if name is None:
            lora_model.disable_adapter_layers()
        else:
            lora_model.enable_adapter_layers()
            self.model.set_adapter(name)
        self.active_adapter = name
        if prepare_decoder:
            load = getattr(self.decoder_factory, "load_adapter", None)
            if load is None or not load():
                self.prepare_decoder()

    @property
    def identity(self) -> ModelIdentity:
        name = self.active_adapter
        return ModelIdentity(
            model=WeightsIdentity(self.folder.path.name, self.model_sha256),
            adapter=WeightsIdentity(name, self._adapter_sha256[name]) if name else None,
            device=self.plan.device, dtype=self.plan.dtype_name,
            quantization="NF4, double quant" if self.options.double_quant else "NF4",
            decoder=self.decoder_reason, vision_active=self.vision_active,
        )

    @property
    def tokens_per_image(self) -> int:
        return self.folder.tokens_per_image

    def prepare(self, turns: Sequence[ChatTurn]) -> dict[str, torch.Tensor]:
        """Turns -> model inputs through the model's own chat template and processor."""
        inputs = self.processor.apply_chat_template(
            to_processor_messages(turns), add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt",
        )
        device = self.plan.device
        return {key: (value.to(device, self.plan.dtype) if value.is_floating_point() else value.to(device))
                for key, value in inputs.items()}

    @property
    def context_limit(self) -> int:
        """The most tokens (prompt + answer) one generation may hold."""
        return self.options.context_limit

    counts_exactly = True  # `count_tokens` uses the model's own tokenizer

    def count_tokens(self, turns: Sequence[ChatTurn]) -> int:
        """The prompt's length as `prepare` makes it, counted without preprocessing any image (an 85-slice series
        is counted before anything is resized): exact, see `estimate_prompt_tokens`."""
        return estimate_prompt_tokens(turns, self.tokens_per_image,
                                      text_token_counter(self.processor.tokenizer)).total

    def generate(self, turns: Sequence[ChatTurn], settings: GenerationSettings | None = None,
                 cancel: threading.Event | None = None) -> Generation:
        """Start an answer. Nothing runs until the result is iterated."""
        settings = settings or GenerationSettings()
        return Generation(lambda generation: self._run(generation, turns, settings, cancel))

    def _run(self, generation: Generation, turns: Sequence[ChatTurn], settings: GenerationSettings,
             cancel: threading.Event | None) -> Iterator[TextChunk]:
        stats = generation.stats
        start = time.perf_counter()
        if not self.vision_active and any(turn.images for turn in turns):
            raise VisionUnavailableError(
                "this model's vision path gave no usable output at load, so it cannot answer about images",
                path=self.folder.path, fix="Copy the complete google/medgemma-1.5-4b-it folder again, or ask "
                                           "without images.")
        inputs = self.prepare(turns)
        stats.prompt_s = time.perf_counter() - start
        prompt_tokens = int(inputs["input_ids"].shape[1])
        stats.prompt_tokens = prompt_tokens
        limit = self.options.context_limit
        if prompt_tokens >= limit:
            raise ContextTooLongError(
                f"the question needs {prompt_tokens:,} tokens but the context limit is {limit:,}",
                fix=f"Use fewer images (each costs {self.tokens_per_image} tokens), fewer CT slices or a shorter "
                    "text, or raise the context limit in the settings.")
        budget = min(settings.max_new_tokens, limit - prompt_tokens)
        decoder = self.decoder_factory(self.model)
        picker = TokenPicker(settings.sampling, torch.device(self.plan.device))
        detokenizer = IncrementalDetokenizer(self.processor.tokenizer)
        if self.plan.is_cuda:
            torch.cuda.reset_peak_memory_stats()
        first_token_at = None
        stats.stop_reason = "length"
        try:
            with torch.inference_mode():
                logits = decoder.prefill(inputs)
                stats.decoder = decoder.name  # after the prefill, which may put a compiled step in place
                for produced, token_id in enumerate(generated_tokens(decoder, picker, logits, budget)):
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                        stats.time_to_first_token_s = first_token_at - start
                    if token_id in self._eos:
                        stats.stop_reason = "end"
                        break
                    stats.new_tokens = produced + 1
                    chunk = detokenizer.push(token_id)
                    if chunk is not None:
                        yield chunk
                    if cancel is not None and cancel.is_set():
                        stats.stop_reason = "stopped"
                        break
        except torch.OutOfMemoryError as exc:
            decoder.release()
            del decoder
            _free_memory()
            raise OutOfMemoryError(
                f"the GPU ran out of memory with a {prompt_tokens:,}-token prompt",
                fix="Use fewer images or CT slices, a shorter question, a lower context limit or fewer new tokens; "
                    "the model stays loaded.") from exc
        finally:
            end = time.perf_counter()
            stats.total_s = end - start
            if first_token_at is not None and stats.new_tokens > 1:
                stats.decode_tokens_per_s = (stats.new_tokens - 1) / max(end - first_token_at, 1e-9)
            if self.plan.is_cuda:
                stats.peak_memory_bytes = torch.cuda.max_memory_allocated()
        decoder.release()
        tail = detokenizer.flush()
        if tail is not None:
            yield tail

    def close(self) -> None:
        """Drop the model, the decode graph and static cache, and give their memory back."""
        self.decoder_factory = EagerDecoder
        self.model = None  # type: ignore[assignment]
        _free_memory()


def _keep_float32_on_cpu(model: torch.nn.Module) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks each NF4 layer at its first forward for a kernel that
    computes in bfloat16. The app computes in float32 on the CPU (the plan says so), identically on every machine,
    and the fast decoder is checked against that path, so the repacking is switched off."""
    nf4_layer = import_bitsandbytes().nn.Linear4bit
    for module in model.modules():
        if isinstance(module, nf4_layer):
            module.support_avx512bf16_for_cpu = False


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
