"""One-token-at-a-time decoding behind a small interface, so the engine's loop (sampling, stopping, streaming,
cancellation) is the same for the plain path and the fast CUDA-graph path (`core.fast_decode`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from medgemma_desktop.core.errors import UserFacingError


class Decoder(Protocol):
    """Feeds the prompt, then one token at a time; each call returns the next-token logits (1-D, float32).
    `queues_ahead`: `step` only queues its work on the GPU and returns at once (a replayed CUDA graph), so the
    next step can be queued before the token it is fed has been read on the host (`generated_tokens`)."""

    name: str
    queues_ahead: bool

    def prefill(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def step(self, token: torch.Tensor) -> torch.Tensor: ...

    def release(self) -> None: ...


class EagerDecoder:
    """Transformers' own forward pass with its dynamic cache: what `generate` does, one step at a time."""

    name = "eager"
    queues_ahead = False  # a step is thousands of host calls: after a stop, one too many would be felt

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self._cache: DynamicCache | None = None
        self._position = 0

    def prefill(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        self._cache = DynamicCache(config=self._model.config)
        out = self._model(**inputs, past_key_values=self._cache, use_cache=True, logits_to_keep=1)
        self._position = int(inputs["input_ids"].shape[1])
        return out.logits[0, -1].float()

    def step(self, token: torch.Tensor) -> torch.Tensor:
        position = torch.tensor([[self._position]], device=token.device)
        out = self._model(input_ids=token.view(1, 1), past_key_values=self._cache, use_cache=True,
                          position_ids=position, cache_position=position[0], logits_to_keep=1)
        self._position += 1
        return out.logits[0, -1].float()

    def release(self) -> None:
        self._cache = None


MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64 bits


@dataclass(frozen=True)
class SamplingSettings:
    """Greedy by default, as Google's notebooks decode MedGemma. Checked when made, so a bad value from a command
    line, a settings file or a request is one line before any model work, never a traceback from a warper."""

    greedy: bool = True
    temperature: float = 0.7
    top_k: int = 64
    top_p: float = 0.95
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature, finite=True)
        if not self.greedy and not self.temperature > 0:
            raise UserFacingError(f"the temperature must be above 0 when sampling (got {self.temperature:g})",
                                  fix="Use a value such as 0.7, or greedy decoding.")
        _check_number("top-p", self.top_p, finite=True)
        if not 0 < self.top_p <= 1:
            raise UserFacingError(f"top-p must be above 0 and at most 1 (got {self.top_p:g})",
                                  fix="Use a value such as 0.95 (1 switches the filter off).")
        _check_whole("top-k", self.top_k, 0, None)
        if self.seed is not None:
            _check_whole("the seed", self.seed, 0, MAX_SEED)


def _check_number(name: str, value: object, *, finite: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (finite and not math.isfinite(value)):
        raise UserFacingError(f"{name} must be a finite number (got {value!r})", fix=f"Give {name} as a number.")


def _check_whole(name: str, value: object, low: int, high: int | None) -> None:
    """A whole number in low..high (high None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        limit = f"from {low:,} to {high:,}" if high is not None else f"of at least {low:,}"
        shown = f"{value:,}" if isinstance(value, int) and abs(value) < 10**30 else repr(value)[:40]
        raise UserFacingError(f"{name} must be a whole number {limit} (got {shown})",
                              fix=f"Give {name} {limit}.")


def check_max_new_tokens(value: object) -> None:
    """The answer length limit: a whole number of at least 1."""
    _check_whole("the maximum number of new tokens", value, 1, None)


class TokenPicker:
    """Greedy argmax, or temperature / top-k / top-p sampling with transformers' own warpers."""

    def __init__(self, settings: SamplingSettings, device: torch.device) -> None:
        self._greedy = settings.greedy or settings.temperature <= 0
        self._warpers = LogitsProcessorList()
        if not self._greedy:  # top_k 0 and top_p 1.0 switch those filters off
            self._warpers.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k > 0:
                self._warpers.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p < 1.0:
                self._warpers.append(TopPLogitsWarper(settings.top_p))
        self._generator = torch.Generator(device=device)
        if settings.seed is not None:
            self._generator.manual_seed(settings.seed)
        else:
            self._generator.seed()

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token id as a 1-element tensor on the logits' device (no host sync)."""
        if self._greedy:
            return logits.argmax(-1, keepdim=True)
        scores = self._warpers(None, logits.view(1, -1))
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=self._generator).view(1)


class _TokenReader:
    """Reads picked token ids on the host. On CUDA through one pinned buffer behind an event, so that reading
    waits for the pick alone, not for a step queued after it."""

    def __init__(self, device: torch.device) -> None:
        self._copied = torch.cuda.Event() if device.type == "cuda" else None
        self._host = torch.empty(1, dtype=torch.long, pin_memory=self._copied is not None)

    def start(self, token: torch.Tensor) -> None:
        """Queue the copy of `token` (a 1-element tensor) to the host."""
        self._host.copy_(token.view(1), non_blocking=self._copied is not None)
        if self._copied is not None:
            self._copied.record()

    def read(self) -> int:
        if self._copied is not None:
            self._copied.synchronize()
        return int(self._host)


def generated_tokens(decoder: Decoder, picker: TokenPicker, logits: torch.Tensor, budget: int) -> Iterator[int]:
    """The answer's token ids, at most `budget`, from the prompt's next-token `logits` on, each fed back as the
    next step's input. The caller stops by leaving the loop (an end token, a cancel).

    For a decoder that `queues_ahead`, the next step is queued before the token it is fed is read on the host,
    so the GPU goes straight on while the host streams the token (a host round trip per token is ~2% of a 3 ms
    step); the price is one step computed for nothing when the caller stops early. Otherwise the step runs only
    when the caller asks for the next token."""
    reader = _TokenReader(logits.device)
    for produced in range(budget):
        token = picker.pick(logits)
        more = produced + 1 < budget
        if more and decoder.queues_ahead:
            reader.start(token)
            logits = decoder.step(token)
            yield reader.read()
        else:
            yield int(token)
            if more:
                logits = decoder.step(token)
