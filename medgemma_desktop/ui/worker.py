"""The model thread: one long-lived QThread with one worker QObject that owns the `Engine`.

As in GPT4All's ChatLLM, the UI talks to the worker only through queued signals (`load_requested`,
`generate_requested`) and hears back through the worker's signals. Stop and cancel are not signals: a queued
signal would wait behind the running generation, so each request carries its own `threading.Event`, which the
UI thread sets directly and the engine checks every token (or between loading steps).
"""

from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QObject, QThread, Signal, Slot

from medgemma_desktop.core.engine import Engine, GenerationSettings, GenerationStats, LoadOptions, ModelIdentity
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.prompts import ChatTurn
from medgemma_desktop.ui.hooks import report_unexpected
from medgemma_desktop.ui.token_budget import TokenCounter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadRequest:
    model_dir: Path
    adapter_dir: Path | None
    options: LoadOptions
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class GenerateRequest:
    turns: tuple[ChatTurn, ...]
    settings: GenerationSettings
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Answer:
    """What the chat pane keeps of a finished (or stopped) answer."""

    text: str
    thinking: str
    stats: GenerationStats


class ModelState(enum.Enum):
    NO_MODEL = "no model"
    LOADING = "loading"
    READY = "ready"
    GENERATING = "generating"
    ERROR = "error"


class ModelWorker(QObject):
    """Lives on the model thread. Every slot runs there, one request at a time."""

    loading_progress = Signal(int, str)
    model_ready = Signal(object)  # ModelIdentity
    token_counter_ready = Signal(object)  # TokenCounter over the engine's tokenizer, for the budget shown
    token = Signal(str)
    finished = Signal(object)  # Answer
    failed = Signal(str, str)  # kind, one-line message

    def __init__(self) -> None:
        super().__init__()
        self._engine: Engine | None = None

    @Slot(object)
    def load(self, request: LoadRequest) -> None:
        self._release()
        try:
            self._engine = Engine.load(request.model_dir, request.adapter_dir, request.options,
                                       progress=self.loading_progress.emit, cancel=request.cancel)
        except Exception as exc:
            self._fail(exc)
            return
        self.token_counter_ready.emit(TokenCounter.for_tokenizer(self._engine.tokens_per_image,
                                                                 self._engine.processor.tokenizer))
        self.model_ready.emit(self._engine.identity)

    @Slot(object)
    def generate(self, request: GenerateRequest) -> None:
        if self._engine is None:
            self.failed.emit("model", "No model is loaded. Choose the model folders in Settings.")
            return
        generation = self._engine.generate(request.turns, request.settings, cancel=request.cancel)
        try:
            for chunk in generation:
                if not chunk.thinking:
                    self.token.emit(chunk.text)
        except Exception as exc:
            self._fail(exc)
            return
        self.finished.emit(Answer(generation.text, generation.thinking, generation.stats))

    @Slot()
    def release(self) -> None:
        """Drop the model on its own thread before the thread ends."""
        self._release()

    def _release(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def _fail(self, exc: Exception) -> None:
        if isinstance(exc, UserFacingError):
            log.info("%s failure: %s", exc.kind, exc)
            self.failed.emit(exc.kind, str(exc))
            return
        report_unexpected(type(exc), exc, exc.__traceback__)
        self.failed.emit("internal", f"Unexpected error: {type(exc).__name__}: {exc}. Details are in the log file.")


class ModelHost(QObject):
    """Lives on the UI thread: owns the model thread and its worker, tracks the model state."""

    load_requested = Signal(object)  # LoadRequest
    generate_requested = Signal(object)  # GenerateRequest
    release_requested = Signal()
    state_changed = Signal(object, str)  # ModelState, detail

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread = QThread(self)
        self._thread.setObjectName("model thread")
        self.worker = ModelWorker()
        self.worker.moveToThread(self._thread)
        self._thread.finished.connect(self.worker.deleteLater)
        self.load_requested.connect(self.worker.load)
        self.generate_requested.connect(self.worker.generate)
        self.release_requested.connect(self.worker.release)
        self.worker.loading_progress.connect(self._on_progress)
        self.worker.model_ready.connect(self._on_ready)
        self.worker.finished.connect(self._on_finished)
        self.worker.failed.connect(self._on_failed)
        self._pending: LoadRequest | GenerateRequest | None = None
        self._identity: ModelIdentity | None = None
        self.state = ModelState.NO_MODEL
        self._thread.start()

    @property
    def identity(self) -> ModelIdentity | None:
        return self._identity

    @property
    def busy(self) -> bool:
        return self.state in (ModelState.LOADING, ModelState.GENERATING)

    def load(self, model_dir: Path, adapter_dir: Path | None, options: LoadOptions) -> None:
        self._cancel_pending()
        request = LoadRequest(model_dir, adapter_dir, options)
        self._pending = request
        self._identity = None
        self._set_state(ModelState.LOADING, "0%")
        self.load_requested.emit(request)

    def generate(self, turns: list[ChatTurn], settings: GenerationSettings) -> None:
        request = GenerateRequest(tuple(turns), settings)
        self._pending = request
        self._set_state(ModelState.GENERATING, "")
        self.generate_requested.emit(request)

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
        self._pending = None
        self._identity = identity
        self._set_state(ModelState.READY, "")

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
