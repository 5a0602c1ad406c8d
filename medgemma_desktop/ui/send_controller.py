"""The send controller: the window's one owner of the open conversation (a `session.Session`) and of the one
state that says whether a question can be sent now.

Like GPT4All's `Chat`, a non-widget controller between the views and the model thread: the chat pane and the
viewer show what the session holds; questions, regenerations and edits go through the session, which builds the
turns and the `AnswerJob`; the worker runs the job on the model thread. No widget builds turns or writes the store.

`Phase` is the state machine the send, regenerate and edit controls follow:
NO_MODEL -> LOADING -> READY -> PREPARING (images rendered on a background job) -> ANSWERING -> READY.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import replace

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot

from medgemma_desktop.core.decoding import SamplingSettings
from medgemma_desktop.core.engine import GenerationSettings
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.imaging import ImageInput
from medgemma_desktop.core.prompts import TaskMode
from medgemma_desktop.core.settings import Settings
from medgemma_desktop.core.store import ConversationStore
from medgemma_desktop.session.backend import PromptCounter
from medgemma_desktop.session.conversation import Exchange, Session
from medgemma_desktop.session.inputs import InputItem
from medgemma_desktop.session.question import (
    MODE_FOR_MODALITY,
    SERIES_MODES,
    PreparedQuestion,
    count_model_images,
    plan_items,
    render_images,
)
from medgemma_desktop.session.recording import Answer, AnswerJob
from medgemma_desktop.ui.background import BackgroundJobs
from medgemma_desktop.ui.box_overlay import FoundBoxes
from medgemma_desktop.ui.chat import ChatPane
from medgemma_desktop.ui.hooks import report_unexpected
from medgemma_desktop.ui.pictures import Picture
from medgemma_desktop.ui.viewer import ViewerPanel
from medgemma_desktop.ui.viewer_loading import reopened_pictures
from medgemma_desktop.ui.worker import ModelHost, ModelState

BUDGET_DELAY_MS = 150  # recount after typing pauses, not on every key
QUEUED = Qt.ConnectionType.QueuedConnection


class Phase(enum.Enum):
    NO_MODEL = "no model"
    LOADING = "loading"
    READY = "ready"
    PREPARING = "preparing"
    ANSWERING = "answering"


def generation_settings(settings: Settings) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=settings.max_new_tokens,
                              sampling=SamplingSettings(greedy=settings.greedy, temperature=settings.temperature))


def _reopened(store: ConversationStore, conversation_id: int, counter: PromptCounter | None,
              settings: Settings) -> tuple[Session, list[Picture]]:
    """Runs on a background job: the stored conversation and its pictures for the viewer, each once (a
    localization question shows its original picture, where the boxes go; DICOM shown from its files again while
    they are there, with its tools)."""
    session = Session.reopen(store, conversation_id, counter, settings=generation_settings(settings))
    return session, reopened_pictures(image for exchange in session.exchanges
                                      for image in ((exchange.target,) if exchange.target is not None
                                                    else exchange.images))


class SendController(QObject):
    phase_changed = Signal(object)  # Phase
    answer_finished = Signal(object)  # Answer, after the views show it
    conversation_opened = Signal(int)
    conversation_changed = Signal()  # a question was stored or answered: the history list may change
    status = Signal(str)  # a passing note for the status bar
    model_failed = Signal(str, str)  # kind, message: a failure of the model thread that was not an answer's

    def __init__(self, host: ModelHost, chat: ChatPane, viewer: ViewerPanel, jobs: BackgroundJobs,
                 store: ConversationStore, settings: Callable[[], Settings]) -> None:
        super().__init__(chat)
        self._host, self._chat, self._viewer, self._jobs = host, chat, viewer, jobs
        self._settings = settings
        self.store = store
        self.phase = Phase.NO_MODEL
        self.counter: PromptCounter | None = None  # the engine's tokenizer, from the worker
        self._answering: tuple[Session, AnswerJob] | None = None  # the job out on the model thread
        self.session = self._new_session()
        chat.show_session(self.session)

        worker = host.worker
        host.state_changed.connect(self._on_host_state)
        worker.token_counter_ready.connect(self._use_counter, QUEUED)
        worker.token.connect(chat.append_token, QUEUED)
        worker.recorded.connect(self._on_recorded, QUEUED)
        worker.finished.connect(self._on_finished, QUEUED)
        worker.failed.connect(self._on_failed, QUEUED)
        chat.question_submitted.connect(self.ask)
        chat.edit_submitted.connect(self.resend_edited)
        chat.variant_requested.connect(self.show_variant)
        chat.stop_clicked.connect(host.stop)
        chat.regenerate_clicked.connect(self.regenerate)
        viewer.series_opened.connect(self._suggest_series_mode)
        viewer.strip.selectionModel().currentChanged.connect(self._show_selected_series)
        self._budget_timer = QTimer(self)
        self._budget_timer.setSingleShot(True)
        self._budget_timer.setInterval(BUDGET_DELAY_MS)
        self._budget_timer.timeout.connect(self.update_budget)
        for signal in (chat.task.mode_changed, chat.task.slices_changed, chat.question.textChanged,
                       viewer.model.rowsInserted, viewer.model.rowsRemoved, viewer.model.modelReset,
                       viewer.model.dataChanged, viewer.strip.selectionModel().currentChanged, self.answer_finished):
            signal.connect(self._budget_timer.start)

    # The state machine ---------------------------------------------------------------------------------------

    @property
    def can_send(self) -> bool:
        return self.phase is Phase.READY

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self._chat.set_busy(phase is Phase.ANSWERING or self._host.busy, can_send=phase is Phase.READY)
        self.phase_changed.emit(phase)

    @Slot(object, str)
    def _on_host_state(self, state: ModelState, _detail: str) -> None:
        if state is ModelState.LOADING:
            self.counter = None  # another model may count differently
        if self.phase in (Phase.PREPARING, Phase.ANSWERING) and state is not ModelState.LOADING:
            self._enter(self.phase)  # the question ends through `_send`, `_on_finished` or `_on_failed`
        else:
            self._enter(self._phase_of(state))

    @staticmethod
    def _phase_of(state: ModelState) -> Phase:
        return {ModelState.LOADING: Phase.LOADING, ModelState.READY: Phase.READY,
                ModelState.GENERATING: Phase.ANSWERING}.get(state, Phase.NO_MODEL)

    def _after_answer(self) -> None:
        """The question went out and came back (or never went): follow the model again."""
        self._answering = None
        self._enter(self._phase_of(self._host.state))

    # Sessions --------------------------------------------------------------------------------------------------

    def _new_session(self) -> Session:
        return Session(self._counter(), self.store, settings=generation_settings(self._settings()))

    def _counter(self) -> PromptCounter | None:
        """The model's count against the context limit in the settings (a change there reloads the model)."""
        counter = self.counter
        return replace(counter, context_limit=self._settings().context_limit) if counter is not None else None

    def _refresh_session(self) -> Session:
        session = self.session
        session.backend, session.settings = self._counter(), generation_settings(self._settings())
        return session

    def new_conversation(self, store: ConversationStore | None = None) -> None:
        """An empty conversation (in `store`, when the history file changes)."""
        self.store = store or self.store
        self.session = self._new_session()
        self._chat.show_session(self.session)
        self._viewer.model.clear()
        self._enter(self.phase)

    @Slot(object)
    def _use_counter(self, counter: PromptCounter) -> None:
        self.counter = counter
        self.update_budget()

    # Questions -----------------------------------------------------------------------------------------------

    def _plan(self, mode: TaskMode) -> tuple[list[InputItem], list[Picture]]:
        """The items the question carries (`session.question.plan_items`) and the viewer pictures they are."""
        pictures = self._viewer.model.pending_pictures()
        items = [InputItem(picture.input, picture.series) for picture in pictures]

        def item_of(picture: Picture | None) -> InputItem | None:
            return next((item for item, shown in zip(items, pictures, strict=True) if shown is picture), None)

        plan = plan_items(mode, items, item_of(self._viewer.model.prior()), item_of(self._viewer.current_picture()))
        return plan, [pictures[next(i for i, item in enumerate(items) if item is planned)] for planned in plan]

    def update_budget(self) -> None:
        """Show what the question being typed would cost, or what its mode still needs (one place: the task
        bar; the count stays as it was while a question is on its way)."""
        if self.phase in (Phase.PREPARING, Phase.ANSWERING):
            return
        task = self._chat.task
        mode = task.mode
        # While the box is empty in a mode without a default question, count a one-word question.
        text = self._chat.question.toPlainText() or mode.default_question or "?"
        try:
            plan, _ = self._plan(mode)
            check = self._refresh_session().budget(mode, count_model_images(mode, plan, task.slice_count), text,
                                                   self._series(mode, plan))
        except UserFacingError as exc:
            task.show_message(str(exc), error=True)
            return
        if check is None:
            task.show_message("Token count: available once the model is loaded")
        else:
            task.show_budget(check)

    @staticmethod
    def _series(mode: TaskMode, plan: list[InputItem]) -> str | None:
        return SERIES_MODES.get(mode) if plan else None

    @Slot(str)
    def ask(self, text: str) -> None:
        """Check the question against its mode and the budget, render its images on a background job, then send
        it. A refused question stays in the box, the reason in the task bar."""
        if not self.can_send:
            return
        task = self._chat.task
        mode, slices = task.mode, task.slice_count
        try:
            plan, pictures = self._plan(mode)
            check = self._refresh_session().budget(mode, count_model_images(mode, plan, slices), text,
                                                   self._series(mode, plan))
        except UserFacingError as exc:
            task.show_message(str(exc), error=True)
            return
        if check is not None and not check.fits:
            task.show_budget(check)
            return
        self._enter(Phase.PREPARING)
        self._jobs.run(lambda: render_images(mode, plan, slices, text),
                       lambda prepared: self._send(prepared, pictures), self._preparation_failed)

    def _send(self, prepared: PreparedQuestion, pictures: list[Picture]) -> None:
        if self.phase is not Phase.PREPARING or self._host.state is not ModelState.READY:
            self._after_answer()
            return
        try:
            job = self._refresh_session().begin(prepared)
        except UserFacingError as exc:
            self._chat.task.show_message(str(exc), error=True)
            self._after_answer()
            return
        self._viewer.model.mark_sent(pictures)
        self._start(job, new_question=True)

    def _preparation_failed(self, exc: Exception) -> None:
        if isinstance(exc, UserFacingError):
            self._chat.show_notice(str(exc))
        else:
            report_unexpected(type(exc), exc, exc.__traceback__)
            self._chat.show_notice(f"The images could not be prepared: {type(exc).__name__}: {exc}. "
                                   "Details are in the log file.")
        self._after_answer()

    def _start(self, job: AnswerJob, new_question: bool = False) -> None:
        self._answering = (self.session, job)
        self._chat.begin_answer(job.index, new_question)
        self._enter(Phase.ANSWERING)
        self._host.generate(job)

    def regenerate(self) -> None:
        """Answer the last question again, sampled with a new recorded seed so the answer differs; the earlier
        answer stays, as a variant to switch back to."""
        if not self.can_send or self.session.last is None:
            return
        job = self._refresh_session().begin_retry(len(self.session.exchanges) - 1)
        sampling = job.settings.sampling
        self.status.emit(f"Regenerating with sampling (temperature {sampling.temperature:g}, seed {sampling.seed}) "
                         "so that the answer differs; the seed is kept with the answer.")
        self._start(job)

    @Slot(int, str)
    def resend_edited(self, index: int, text: str) -> None:
        """A past question reworded: stored as edited and answered again from the history before it."""
        if self.can_send and 0 <= index < len(self.session.exchanges):
            self._start(self._refresh_session().begin_edit(index, text))

    @Slot(int, int)
    def show_variant(self, index: int, step: int) -> None:
        if self.phase is not Phase.ANSWERING and self.session.show_variant(index, step):
            self._chat.refresh()
            self._enter(self.phase)

    # What the model thread reports -----------------------------------------------------------------------------

    @Slot(int, int)
    def _on_recorded(self, message_id: int, answer_id: int) -> None:
        if self._answering is not None:
            session, job = self._answering
            session.recorded(job, message_id, answer_id)
            self._chat.refresh()
            self.conversation_changed.emit()  # the first question names a new conversation

    @Slot(object)
    def _on_finished(self, answer: Answer) -> None:
        exchange = None
        if self._answering is not None:
            session, job = self._answering
            exchange = session.finish(job, answer) if session is self.session else None
        self._chat.finish()
        if exchange is not None and exchange.mode is TaskMode.LOCALIZATION and exchange.target is not None:
            if exchange.boxes:
                self._draw_boxes(exchange.target, exchange)
            else:
                self._chat.show_notice("The answer holds no boxes in the expected format, so none are drawn.")
        self._after_answer()
        self.conversation_changed.emit()
        self.answer_finished.emit(answer)

    @Slot(str, str)
    def _on_failed(self, kind: str, message: str) -> None:
        if self._answering is None:
            self.model_failed.emit(kind, message)
            return
        session, job = self._answering
        session.fail(job, message)
        self._chat.fail(message)
        self._after_answer()
        self.conversation_changed.emit()

    def _draw_boxes(self, target: ImageInput, exchange: Exchange) -> None:
        self._viewer.set_boxes(target, FoundBoxes(exchange.boxes, target.image.size, exchange.padding))

    # Stored conversations ------------------------------------------------------------------------------------

    def open_conversation(self, conversation_id: int) -> None:
        """Show a past conversation (read back on a background job), ready to go on in its mode."""
        if self.phase in (Phase.PREPARING, Phase.ANSWERING):
            self.status.emit("Stop the answer before opening another conversation.")
            return
        store, counter, settings = self.store, self._counter(), self._settings()
        self._jobs.run(lambda: _reopened(store, conversation_id, counter, settings),
                       lambda result: self._show_reopened(store, *result), self._open_failed)

    def _show_reopened(self, store: ConversationStore, session: Session, pictures: list[Picture]) -> None:
        if store is not self.store or self.phase in (Phase.PREPARING, Phase.ANSWERING):
            return  # the history changed meanwhile (demo left), or a question went out
        self.session = session
        self._chat.show_session(session)
        self._viewer.model.clear()
        self._viewer.model.add(pictures, sent=True)
        last = session.last
        if last is not None:
            self._chat.task.set_mode(last.mode)  # continuing goes on in the same mode
        for exchange in session.exchanges:
            if exchange.boxes and exchange.target is not None:
                shown = next((p.input for p in pictures if p.input.sha256 == exchange.target.sha256), None)
                if shown is not None:
                    self._draw_boxes(shown, exchange)
        self._enter(self.phase)
        self.conversation_opened.emit(session.id)

    def _open_failed(self, exc: Exception) -> None:
        report_unexpected(type(exc), exc, exc.__traceback__)
        self._chat.show_notice(f"The conversation could not be opened: {type(exc).__name__}: {exc}")

    # Series ----------------------------------------------------------------------------------------------------

    @Slot(str)
    def _suggest_series_mode(self, modality: str) -> None:
        """A CT or MR series just opened: switch to its series mode unless one is already chosen."""
        mode = MODE_FOR_MODALITY.get(modality)
        if mode is not None and self._chat.task.mode not in SERIES_MODES:
            self._chat.task.set_mode(mode)

    def _show_selected_series(self) -> None:
        picture = self._viewer.current_picture()
        if picture is not None and picture.series is not None:
            self._chat.task.show_series(picture.series.slice_count)
