"""The one model thread and the bounded queue of requests waiting for it.

The model answers one request at a time (one GPU, one KV cache); requests wait in a queue of fixed length, and one
more is refused at once with 503 and a Retry-After estimated from how long recent answers took. Results go back
through each job's `emit` callback, called on the model thread; stop is the job's `cancel` event, checked by the
backend once per token, set when a client goes away or a stop string is reached.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from medgemma_desktop.core.engine import GenerationSettings, GenerationStats
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.prompts import ChatTurn
from medgemma_desktop.server.api_errors import ApiError, busy, from_user_error
from medgemma_desktop.server.stop_sequences import StopMatcher
from medgemma_desktop.session.backend import Backend
from medgemma_desktop.session.question import BudgetCheck

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Piece:
    """Answer text (or thinking-trace text) as it comes."""

    text: str
    thinking: bool = False


@dataclass(frozen=True)
class Finished:
    stats: GenerationStats
    finish_reason: str  # OpenAI's: "stop" (end of answer or a stop string) or "length"


@dataclass(frozen=True)
class Failed:
    error: ApiError


JobEvent = Piece | Finished | Failed


@dataclass
class Job:
    """One request's answer. `settings.max_new_tokens` None: as long as the context allows (as vLLM does when
    a request gives no max_tokens); given, prompt and answer must fit together (the session's budget rule)."""

    turns: Sequence[ChatTurn]
    settings: GenerationSettings
    emit: Callable[[JobEvent], None]
    stop: Sequence[str] = ()
    cancel: threading.Event = field(default_factory=threading.Event)
    fill_context: bool = False


@dataclass(frozen=True)
class _Call:
    """Other work that must not overlap generation (the tokenizer is not safe to share between threads)."""

    function: Callable[[], Any]
    result: Future


class ModelQueue:
    """Runs jobs one at a time on its own thread; at most `capacity` wait."""

    def __init__(self, backend: Backend, capacity: int = 4) -> None:
        self._backend = backend
        self._jobs: queue.Queue[Job | _Call | None] = queue.Queue(maxsize=max(capacity, 1))
        self._average_s = 2.0  # a first guess for Retry-After, replaced by measured answers
        self._running: Job | None = None
        self._thread = threading.Thread(target=self._serve, name="model", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    def retry_after_s(self) -> int:
        """Seconds until a place in the queue is likely free: the jobs ahead times a recent answer's length."""
        return min(max(math.ceil(self._average_s * (self._jobs.qsize() + 1)), 1), 120)

    def check_room(self) -> None:
        """Refuse early, before a large body is read and decoded, when the queue is already full."""
        if self._jobs.full():
            raise busy(self.retry_after_s())

    def submit(self, job: Job) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise busy(self.retry_after_s()) from None

    def call(self, function: Callable[[], Any]) -> Future:
        """Run `function` on the model thread in turn; its result or exception arrives in the future."""
        result: Future = Future()
        try:
            self._jobs.put_nowait(_Call(function, result))
        except queue.Full:
            raise busy(self.retry_after_s()) from None
        return result

    def close(self, timeout_s: float = 10.0) -> None:
        """Refuse what waits, stop what runs, end the thread."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, _Call):
                job.result.cancel()
            elif job is not None:
                _send(job, Failed(ApiError(503, "the server is shutting down", type="server_busy",
                                           code="shutting_down")))
        running = self._running
        if running is not None:
            running.cancel.set()
        self._jobs.put(None)
        self._thread.join(timeout_s)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            if isinstance(job, _Call):
                _call(job)
                continue
            if job.cancel.is_set():  # its client left while it waited
                continue
            self._running = job
            start = time.monotonic()
            try:
                self._run(job)
            finally:
                self._running = None
            self._average_s = 0.7 * self._average_s + 0.3 * (time.monotonic() - start)

    def _run(self, job: Job) -> None:
        matcher = StopMatcher(job.stop)
        try:
            generation = self._backend.generate(job.turns, self._budgeted(job), job.cancel)
            for chunk in generation:
                if chunk.thinking:
                    _send(job, Piece(chunk.text, thinking=True))
                    continue
                text = matcher.push(chunk.text)
                if text:
                    _send(job, Piece(text))
                if matcher.stopped:
                    job.cancel.set()  # the backend stops at its next token
            tail = matcher.flush()
            if tail:
                _send(job, Piece(tail))
            length = generation.stats.stop_reason == "length" and not matcher.stopped
            _send(job, Finished(generation.stats, "length" if length else "stop"))
        except UserFacingError as exc:
            _send(job, Failed(from_user_error(exc)))
        except Exception:  # a bug: logged with its traceback; the client gets one line, the thread lives on
            log.exception("generation failed")
            _send(job, Failed(ApiError(500, "the model failed on this request; the server log has the details",
                                       type="server_error", code="internal_error")))

    def _budgeted(self, job: Job) -> GenerationSettings:
        """The settings with the answer's length decided, or the session's one-line refusal when it cannot fit."""
        prompt = self._backend.count_tokens(job.turns)
        limit = self._backend.context_limit
        settings = job.settings
        if job.fill_context:
            settings = replace(settings, max_new_tokens=max(limit - prompt, 1))
        BudgetCheck(prompt, settings.max_new_tokens, limit, sum(len(turn.images) for turn in job.turns)).refuse()
        return settings


def _send(job: Job, event: JobEvent) -> None:
    try:
        job.emit(event)
    except Exception:  # the request is gone (its event loop closed): stop working for it
        job.cancel.set()


def _call(call: _Call) -> None:
    if not call.result.set_running_or_notify_cancel():
        return
    try:
        call.result.set_result(call.function())
    except BaseException as exc:  # handed to the waiting request, which reports it
        call.result.set_exception(exc)
