"""The model thread: one long-lived QThread with one worker QObject that owns the backend: the local `Engine`, or a
`RemoteBackend` when the settings name a server (`ServerRequest`).

As in GPT4All's ChatLLM, the UI talks to the worker only through queued signals (`load_requested`,
`generate_requested`) and hears back through the worker's signals. Stop and cancel are not signals: a queued
signal would wait behind the running generation, so each request carries its own `threading.Event`, which the
UI thread sets directly and the engine checks every token (or between loading steps).

Generation is the session's: a request carries a `session.recording.AnswerJob` (its turns, settings and where
to keep the answer), and the worker only runs it with the engine on this thread, turning its callbacks into
signals. Every connection across the two threads is declared `Qt.ConnectionType.QueuedConnection`.

The two threads share one GIL, so the model thread must not hold it long (figures from this 2-core machine type):
- Loading imports most of torch and transformers here. The objects that makes set off Python's full garbage
  collections, 240-370 ms each with the GIL held: the window froze that long, three times per first load. Loading
  therefore runs with automatic collection off (`core.collection.deferred`) and freezes what it made out of later
  collections (`gc.freeze`); releasing the model unfreezes, so the engine's own collection frees the old model.
- The UI thread needs the GIL for every Python override a repaint calls; at Python's default 5 ms switch interval
  each waits up to 5 ms, so a paint during loading took 60-90 ms instead of 10. The host shortens the interval
  (`GIL_SWITCH_INTERVAL_S`): about 40 ms, and loading is not measurably slower.
"""

from __future__ import annotations

import enum
import gc
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from medgemma_desktop.core import collection
from medgemma_desktop.core.app_dirs import cache_dir
from medgemma_desktop.core.engine import Engine, LoadOptions, ModelIdentity
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.fingerprint import FingerprintCache
from medgemma_desktop.core.prompts import ChatTurn
from medgemma_desktop.core.quant_cache import QuantizedModelCache
from medgemma_desktop.core.remote import RemoteBackend
from medgemma_desktop.session.backend import PromptCounter
from medgemma_desktop.session.recording import Answer, AnswerJob
from medgemma_desktop.ui.hooks import report_unexpected

log = logging.getLogger(__name__)
# transformers reads a saved 4-bit model with a pool of loader threads; beside the model thread they starve the UI
# thread of the GIL (a frozen window for 100+ ms, measured). One loading thread keeps the window responsive.
os.environ.setdefault("HF_DEACTIVATE_ASYNC_LOAD", "1")


@dataclass(frozen=True)
class LoadRequest:
    model_dir: Path
    adapter_dir: Path | None
    options: LoadOptions
    more_adapters: tuple[Path, ...] = ()  # attached too, to switch to without reloading
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class ServerRequest:
    """Answer on an OpenAI-compatible server instead of a local model."""

    url: str
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


def server_counter(remote: RemoteBackend) -> PromptCounter:
    """The UI thread's budget count for a server: no HTTP per key press, so text is estimated cautiously (three
    characters a token, as `RemoteBackend` does without /tokenize); the server counts exactly before answering."""
    return PromptCounter(remote.tokens_per_image, lambda text: len(text) // 3 + 1, remote.context_limit,
                         counts_exactly=False)


@dataclass(frozen=True)
class GenerateRequest:
    job: AnswerJob

    @property
    def turns(self) -> tuple[ChatTurn, ...]:
        return self.job.turns

    @property
    def cancel(self) -> threading.Event:
        return self.job.cancel


@dataclass(frozen=True)
class AdapterRequest:
    """Attach the adapter folder `add` to the loaded base, or make the loaded adapter `use` active (None: the
    base model alone). Neither reloads the base."""

    add: Path | None = None
    use: str | None = None


class ModelState(enum.Enum):
    NO_MODEL = "no model"
    LOADING = "loading"
    READY = "ready"
    GENERATING = "generating"
    ERROR = "error"


class ModelWorker(QObject):
    """Lives on the model thread. Every slot runs there, one request at a time."""

    loading_progress = Signal(int, str)
    model_ready = Signal(object)  # ModelIdentity (after a load or an adapter change)
    token_counter_ready = Signal(object)  # session.backend.PromptCounter over the engine's tokenizer
    adapters_changed = Signal(object)  # dict[str, Path]: the adapters attached to the loaded base, by name
    adapters_skipped = Signal(object)  # list[str]: why each extra adapter was left out of the load
    recorded = Signal(int, int)  # message id, answer id: the question is stored, the answer about to start
    token = Signal(str)
    finished = Signal(object)  # Answer
    failed = Signal(str, str)  # kind, one-line message

    def __init__(self, cache: QuantizedModelCache | None, fingerprints: FingerprintCache) -> None:
        super().__init__()
        self._engine: Engine | RemoteBackend | None = None
        self._cache = cache
        self._fingerprints = fingerprints

    @property
    def engine(self) -> Engine | RemoteBackend | None:
        """The loaded engine or server; use it from another thread only while this one is idle
        (`ModelHost.idle_backend`)."""
        return self._engine

    @Slot(object)
    def load(self, request: LoadRequest | ServerRequest) -> None:
        self._release()
        if isinstance(request, ServerRequest):
            self._connect(request)
            return
        try:
            with collection.deferred():
                self._engine = Engine.load(request.model_dir, request.adapter_dir, request.options,
                                           progress=self.loading_progress.emit, cancel=request.cancel,
                                           cache=self._cache, fingerprints=self._fingerprints,
                                           more_adapters=request.more_adapters)
        except Exception as exc:
            self._fail(exc)
            return
        if self._engine.skipped_adapters:
            self.adapters_skipped.emit(list(self._engine.skipped_adapters.values()))
        self.token_counter_ready.emit(PromptCounter.for_tokenizer(
            self._engine.processor.tokenizer, self._engine.tokens_per_image, self._engine.context_limit))
        self._report_model()

    def _connect(self, request: ServerRequest) -> None:
        self.loading_progress.emit(0, f"asking {request.url} for its models")
        try:
            remote = RemoteBackend(request.url, api_key=request.api_key, model=request.model)
        except Exception as exc:
            self._fail(exc)
            return
        if request.cancel.is_set():
            remote.close()
            self.failed.emit("cancelled", "Connecting to the server was cancelled.")
            return
        self._engine = remote
        self.token_counter_ready.emit(server_counter(remote))
        self._report_model()

    @Slot(object)
    def change_adapter(self, request: AdapterRequest) -> None:
        if not isinstance(self._engine, Engine):
            self.failed.emit("adapter", "No local model is loaded. Load the base model before choosing an adapter "
                                        "(a server answers with the adapter it serves).")
            return
        try:
            if request.add is not None:
                self._engine.add_adapter(request.add)
            else:
                self._engine.use_adapter(request.use)
        except Exception as exc:
            self._fail(exc)
            return
        self._report_model()

    def _report_model(self) -> None:
        assert self._engine is not None
        adapters = self._engine.adapters if isinstance(self._engine, Engine) else {}
        self.adapters_changed.emit({name: adapter.path for name, adapter in adapters.items()})
        self.model_ready.emit(self._engine.identity)

    @Slot(object)
    def generate(self, request: GenerateRequest) -> None:
        if self._engine is None:
            self.failed.emit("model", "No model is loaded. Choose the model folders in Settings.")
            return
        try:
            answer = request.job.run(self._engine, self.token.emit, self.recorded.emit)
        except Exception as exc:
            self._fail(exc)
            return
        self.finished.emit(answer)

    @Slot()
    def release(self) -> None:
        """Drop the model on its own thread before the thread ends."""
        self._release()

    def _release(self) -> None:
        if self._engine is not None:
            gc.unfreeze()  # the model's objects were frozen after loading; closing collects them
            self._engine.close()
            self._engine = None

    def _fail(self, exc: Exception) -> None:
        if isinstance(exc, UserFacingError):
            log.info("%s failure", exc.kind)  # the message can name a patient's file: kept out of the log
            self.failed.emit(exc.kind, str(exc))
            return
        report_unexpected(type(exc), exc, exc.__traceback__)
        self.failed.emit("internal", f"Unexpected error: {type(exc).__name__}: {exc}. Details are in the log file.")


GIL_SWITCH_INTERVAL_S = 0.0005  # how long the UI thread waits, at most, for the GIL the model thread holds


class ModelHost(QObject):
    """Lives on the UI thread: owns the model thread and its worker, tracks the model state."""

    load_requested = Signal(object)  # LoadRequest
    generate_requested = Signal(object)  # GenerateRequest
    adapter_requested = Signal(object)  # AdapterRequest
    release_requested = Signal()
    state_changed = Signal(object, str)  # ModelState, detail

    def __init__(self, parent: QObject | None = None, cache: QuantizedModelCache | None = None,
                 fingerprints: FingerprintCache | None = None) -> None:
        """`cache` and `fingerprints` default to the saved 4-bit models and remembered digests in the app's cache
        folder."""
        super().__init__(parent)
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self.cache = cache or QuantizedModelCache(cache_dir() / "nf4")
        self.fingerprints = fingerprints or FingerprintCache(cache_dir() / "digests.json")
        self._thread = QThread(self)
        self._thread.setObjectName("model thread")
        self.worker = ModelWorker(self.cache, self.fingerprints)
        self.worker.moveToThread(self._thread)
        self._thread.finished.connect(self.worker.deleteLater)
        self.load_requested.connect(self.worker.load, Qt.ConnectionType.QueuedConnection)
        self.generate_requested.connect(self.worker.generate, Qt.ConnectionType.QueuedConnection)
        self.adapter_requested.connect(self.worker.change_adapter, Qt.ConnectionType.QueuedConnection)
        self.release_requested.connect(self.worker.release, Qt.ConnectionType.QueuedConnection)
        self.worker.loading_progress.connect(self._on_progress, Qt.ConnectionType.QueuedConnection)
        self.worker.model_ready.connect(self._on_ready, Qt.ConnectionType.QueuedConnection)
        self.worker.adapters_changed.connect(self._on_adapters, Qt.ConnectionType.QueuedConnection)
        self.worker.finished.connect(self._on_finished, Qt.ConnectionType.QueuedConnection)
        self.worker.failed.connect(self._on_failed, Qt.ConnectionType.QueuedConnection)
        self._pending: LoadRequest | ServerRequest | GenerateRequest | None = None
        self._identity: ModelIdentity | None = None
        self.adapters: dict[str, Path] = {}  # attached to the loaded base, by name
        self.model_dir: Path | None = None  # of the last load request
        self.state = ModelState.NO_MODEL
        self._thread.start()

    @property
    def identity(self) -> ModelIdentity | None:
        return self._identity

    @property
    def busy(self) -> bool:
        return self.state in (ModelState.LOADING, ModelState.GENERATING)

    @property
    def idle_backend(self) -> Engine | RemoteBackend | None:
        """The loaded engine while nothing runs on the model thread, for work the window keeps modal meanwhile
        (File > Batch…); None without a model, while loading or while answering."""
        return self.worker.engine if self.state is ModelState.READY else None

    def load(self, model_dir: Path, adapter_dir: Path | None, options: LoadOptions,
             more_adapters: tuple[Path, ...] = ()) -> None:
        self._request_load(LoadRequest(model_dir, adapter_dir, options, more_adapters))

    def connect_server(self, url: str, api_key: str | None, model: str | None) -> None:
        """Answer on the server at `url` from now on (the local model, if any, is released)."""
        self._request_load(ServerRequest(url, api_key, model))

    def _request_load(self, request: LoadRequest | ServerRequest) -> None:
        self._cancel_pending()
        self._pending = request
        self._identity = None
        self.adapters = {}
        self.model_dir = request.model_dir if isinstance(request, LoadRequest) else None
        self._set_state(ModelState.LOADING, "0%")
        self.load_requested.emit(request)

    def generate(self, job: AnswerJob) -> None:
        request = GenerateRequest(job)
        self._pending = request
        self._set_state(ModelState.GENERATING, "")
        self.generate_requested.emit(request)

    def change_adapter(self, request: AdapterRequest) -> None:
        """Attach or switch adapters on the model thread; the model is busy (not reloaded) until it reports."""
        self._set_state(ModelState.LOADING, "switching the adapter")
        self.adapter_requested.emit(request)

    def stop(self) -> None:
        """Thread-safe: the engine sees it before its next token (or next loading step)."""
        self._cancel_pending()

    def shutdown(self) -> None:
        """Stop any work, drop the model on its thread, end the thread and wait for it."""
        self._cancel_pending()
        if self._thread.isRunning():
            self.release_requested.emit()
            self._thread.quit()
            self._thread.wait()

    def _cancel_pending(self) -> None:
        if self._pending is not None:
            self._pending.cancel.set()

    def _set_state(self, state: ModelState, detail: str) -> None:
        self.state = state
        self.state_changed.emit(state, detail)

    @Slot(int, str)
    def _on_progress(self, percent: int, step: str) -> None:
        if self.state is ModelState.LOADING:
            self._set_state(ModelState.LOADING, f"{percent}% {step}")

    @Slot(object)
    def _on_ready(self, identity: ModelIdentity) -> None:
        if not isinstance(self._pending, GenerateRequest):  # the load (or adapter switch) that ended, not a newer ask
            self._pending = None
        self._identity = identity
        self._set_state(ModelState.READY, "")

    @Slot(object)
    def _on_adapters(self, adapters: dict[str, Path]) -> None:
        self.adapters = adapters

    @Slot(object)
    def _on_finished(self, _answer: Answer) -> None:
        self._pending = None
        self._set_state(ModelState.READY, "")

    @Slot(str, str)
    def _on_failed(self, kind: str, message: str) -> None:
        self._pending = None
        if self._identity is not None:  # a failed answer leaves the loaded model usable
            self._set_state(ModelState.READY, "")
        elif kind == "cancelled":
            self._set_state(ModelState.NO_MODEL, "")
        else:
            self._set_state(ModelState.ERROR, message)
