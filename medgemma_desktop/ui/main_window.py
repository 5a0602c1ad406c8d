"""The main window: history, viewer and chat side by side, status bar below, first-run page until a model is set.

In demo mode (`--demo`, or "Try the demo") it runs the tiny random model from `core.demo` on the sample study,
under a banner that cannot be missed, with its own history file; choosing the real folders leaves the demo
without a restart.

It wires the parts together and owns the decisions that span them: what a question carries (the viewer's
pending images rendered for the chat's task mode, checked against the token budget before anything is sent),
where it is kept (the conversation store, through the worker's `Recording`), which past conversation is open,
where a localization answer's boxes go, when a model (re)loads, and what happens to running work when it closes.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from PIL import Image
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import QApplication, QLabel, QMainWindow, QSplitter, QStackedWidget, QVBoxLayout, QWidget

from medgemma_desktop.core.app_dirs import data_dir
from medgemma_desktop.core.boxes import parse_boxes
from medgemma_desktop.core.decoding import SamplingSettings
from medgemma_desktop.core.demo import DEMO_MAX_NEW_TOKENS, demo_checkpoint, demo_series, sample_study
from medgemma_desktop.core.device import choose_device
from medgemma_desktop.core.engine import GenerationSettings, LoadOptions, ModelIdentity
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.export import DISCLAIMER
from medgemma_desktop.core.gpu import GpuMonitor
from medgemma_desktop.core.imaging import ImageInput, load_any
from medgemma_desktop.core.prompts import TaskMode
from medgemma_desktop.core.settings import Settings, load_settings, save_settings
from medgemma_desktop.core.store import DB_FILENAME, ConversationStore
from medgemma_desktop.core.tiny_checkpoint import TinyCheckpoint
from medgemma_desktop.ui.about import AboutDialog
from medgemma_desktop.ui.background import BackgroundJobs
from medgemma_desktop.ui.box_overlay import FoundBoxes
from medgemma_desktop.ui.chat import ChatPane
from medgemma_desktop.ui.demo_banner import DemoBanner
from medgemma_desktop.ui.export_dialog import ExportDialog, write_export
from medgemma_desktop.ui.first_run import FirstRunPage
from medgemma_desktop.ui.folder_field import folders_problem
from medgemma_desktop.ui.history import HistoryPanel
from medgemma_desktop.ui.hooks import report_unexpected
from medgemma_desktop.ui.model_manager import ModelManagerDialog
from medgemma_desktop.ui.pictures import Picture, render_picture
from medgemma_desktop.ui.settings_dialog import SettingsDialog
from medgemma_desktop.ui.status import GpuStatusLabel, LoadingProgress, ModelStatusLabel
from medgemma_desktop.ui.stored_conversation import StoredConversation, read_conversation, show_variant
from medgemma_desktop.ui.task_inputs import (
    MODE_FOR_MODALITY,
    SERIES_MODES,
    ModelImages,
    count_model_images,
    model_images,
    plan_images,
)
from medgemma_desktop.ui.theme import app_icon, apply_theme
from medgemma_desktop.ui.token_budget import BudgetCheck, TokenCounter, check_budget
from medgemma_desktop.ui.viewer import ImageLoader, ViewerPanel
from medgemma_desktop.ui.window_size import first_window_size
from medgemma_desktop.ui.worker import AdapterRequest, Answer, ModelHost, ModelState, Recording

log = logging.getLogger(__name__)
RELOAD_FIELDS = ("model_dir", "adapter_dir", "force_cpu", "context_limit")
BUDGET_DELAY_MS = 150  # recount after typing pauses, not on every key
# Stands in for each image while counting: the count depends on how many images there are, not on their pixels.
_COUNTED_IMAGE = ImageInput(image=Image.new("RGB", (1, 1)), source=Path("counted"), sha256="", label="counted")
DEMO_DB_FILENAME = "demo-history.sqlite3"  # demo answers never mix with real history
TITLE = "MedGemma Desktop"


def _reopened(store: ConversationStore, conversation_id: int) -> tuple[StoredConversation, list[Picture]]:
    """Runs on a background job: the stored conversation and its images rendered for the viewer, each once."""
    stored = read_conversation(store, conversation_id)
    seen: dict[str, Picture] = {}
    for exchange in stored.exchanges:
        for image in exchange.images:
            if image.sha256 not in seen:
                seen[image.sha256] = render_picture(image)
    return stored, list(seen.values())


class MainWindow(QMainWindow):
    # After the chat pane shows an answer (finished or stopped); the worker has already stored it.
    answer_finished = Signal(object)  # Answer
    conversation_opened = Signal(int)  # a stored conversation is shown
    export_finished = Signal(Path)
    export_failed = Signal(str)

    def __init__(self, settings_path: Path | None = None, loader: ImageLoader = load_any,
                 monitor: GpuMonitor | None = None, data_folder: Path | None = None, demo: bool = False) -> None:
        """`data_folder` holds the conversation histories (the platform data folder by default); `demo` starts in
        demo mode."""
        super().__init__()
        self.setWindowTitle(TITLE)
        self.setWindowIcon(app_icon())
        self.setAccessibleName("MedGemma Desktop")
        self._settings_path = settings_path
        loaded = load_settings(settings_path)
        self.settings = loaded.settings
        self._monitor = monitor or GpuMonitor()
        self._answering = False
        self._preparing = False
        self._load_when_idle = False
        self.token_counter: TokenCounter | None = None  # from the worker once a model is ready
        self._switching_adapter = False
        self._closed = False
        self._data_folder = data_folder or data_dir()
        # Kept open until the window closes: an answer still streaming into one may finish after a switch.
        self._stores: dict[Path, ConversationStore] = {}
        self.store = self._open_store(DB_FILENAME)
        self.jobs = BackgroundJobs(self)
        self.demo = False
        self._demo_checkpoint: TinyCheckpoint | None = None

        self.host = ModelHost(self)
        self.history = HistoryPanel(self.store)
        self.viewer = ViewerPanel(loader)
        self.chat = ChatPane()
        self.first_run = FirstRunPage()
        self.workspace = QSplitter(Qt.Orientation.Horizontal)
        self.workspace.setAccessibleName("Workspace")
        self.workspace.addWidget(self.history)
        self.workspace.addWidget(self.viewer)
        self.workspace.addWidget(self.chat)
        self.workspace.setSizes([230, 520, 480])
        self.pages = QStackedWidget()
        self.pages.addWidget(self.first_run)
        self.pages.addWidget(self.workspace)
        self.demo_banner = DemoBanner()
        self.demo_banner.hide()
        self.disclaimer = QLabel(DISCLAIMER)
        self.disclaimer.setObjectName("disclaimer")
        self.disclaimer.setAccessibleName("Disclaimer")
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(6, 6, 6, 0)
        layout.addWidget(self.demo_banner)
        layout.addWidget(self.pages, 1)
        layout.addWidget(self.disclaimer)
        self.setCentralWidget(central)

        self.gpu_status = GpuStatusLabel(choose_device(self.settings.force_cpu), self._monitor)
        self.model_status = ModelStatusLabel()
        self.loading = LoadingProgress()
        self.statusBar().addPermanentWidget(self.loading)
        self.statusBar().addPermanentWidget(self.model_status)
        self.statusBar().addPermanentWidget(self.gpu_status)
        self._build_menus()

        self.host.state_changed.connect(self._on_state)
        self.host.worker.model_ready.connect(self._on_model_ready)
        self.host.worker.adapters_skipped.connect(self._on_adapters_skipped)
        self.host.worker.loading_progress.connect(self.loading.show_progress)
        self.loading.cancel_clicked.connect(self.host.stop)
        self.host.worker.token.connect(self.chat.append_token)
        self.host.worker.token_counter_ready.connect(self._use_token_counter)
        self.host.worker.recorded.connect(self._on_recorded)
        self.host.worker.finished.connect(self._on_finished)
        self.host.worker.failed.connect(self._on_failed)
        self.chat.question_submitted.connect(self.ask)
        self.chat.edit_submitted.connect(self.resend_edited)
        self.chat.variant_requested.connect(self.show_variant)
        self.chat.stop_clicked.connect(self.host.stop)
        self.chat.regenerate_clicked.connect(self.regenerate)
        self.history.conversation_chosen.connect(self.open_conversation)
        self.history.new_requested.connect(self.new_conversation)
        self.history.deleted.connect(self._on_deleted)
        self.chat.question.image_pasted.connect(self.viewer.open_mime)
        self.viewer.series_opened.connect(self._suggest_series_mode)
        self.first_run.folders_chosen.connect(self._use_folders)
        self._budget_timer = QTimer(self)
        self._budget_timer.setSingleShot(True)
        self._budget_timer.setInterval(BUDGET_DELAY_MS)
        self._budget_timer.timeout.connect(self.update_budget)
        for signal in (self.chat.task.mode_changed, self.chat.task.slices_changed, self.chat.question.textChanged,
                       self.viewer.model.rowsInserted, self.viewer.model.rowsRemoved, self.viewer.model.modelReset,
                       self.viewer.model.dataChanged, self.answer_finished):
            signal.connect(self._budget_timer.start)
        self.first_run.demo_requested.connect(self.start_demo)
        self.demo_banner.leave_requested.connect(self._leave_demo_requested)
        self.resize(first_window_size(self))
        if loaded.notice:
            self.statusBar().showMessage(loaded.notice, 20_000)
        self._sync_first_run()
        if demo:
            self.start_demo()
        else:
            self._start()

    def _action(self, menu, text: str, slot, shortcut: QKeySequence | str | None = None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        self._action(file_menu, "&Open images…", self.viewer.choose_files, QKeySequence.StandardKey.Open)
        self._action(file_menu, "&Paste image", self.viewer.paste_from_clipboard, QKeySequence.StandardKey.Paste)
        self._action(file_menu, "&New conversation", self.new_conversation, QKeySequence.StandardKey.New)
        self.export_action = self._action(file_menu, "&Export conversation…", self.open_export, "Ctrl+Shift+E")
        file_menu.addSeparator()
        self._action(file_menu, "&Load model", self._request_load, "Ctrl+L")
        self._action(file_menu, "&Model manager…", self.open_model_manager, "Ctrl+M")
        self._action(file_menu, "&Settings…", self.open_settings, "Ctrl+,")  # Cmd+, on macOS
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        chat_menu = bar.addMenu("&Chat")
        self._action(chat_menu, "&Stop", self.host.stop, "Esc")
        self._action(chat_menu, "&Regenerate", self.regenerate, "Ctrl+R")
        self._action(chat_menu, "&Copy answer", self.chat.copy_answer, "Ctrl+Shift+C")
        self._action(chat_menu, "&Edit last question", self._edit_last, "Ctrl+E")
        self._action(chat_menu, "Pre&vious answer variant", lambda: self._step_last(-1), "Ctrl+[")
        self._action(chat_menu, "Ne&xt answer variant", lambda: self._step_last(1), "Ctrl+]")
        self._action(chat_menu, "&Search history", self.history.search_box.setFocus, QKeySequence.StandardKey.Find)
        help_menu = bar.addMenu("&Help")
        self._action(help_menu, "&About MedGemma Desktop", self.show_about)

    # Model ---------------------------------------------------------------------------------------------------

    def _start(self) -> None:
        problem = folders_problem(self.settings.model_dir or "", self.settings.adapter_dir or "")
        self.first_run.set_folders(self.settings.model_dir, self.settings.adapter_dir)
        if problem is None:
            self.pages.setCurrentWidget(self.workspace)
            self._request_load()
        else:
            self.first_run.show_error(problem if self.settings.has_model else "")
            self.pages.setCurrentWidget(self.first_run)

    @Slot(str, str)
    def _use_folders(self, model_dir: str, adapter_dir: str) -> None:
        self._change_settings(replace(self.settings, model_dir=model_dir, adapter_dir=adapter_dir or None))
        self.pages.setCurrentWidget(self.workspace)
        if self.demo:
            self.leave_demo()
        else:
            self._request_load()

    def _model_folders(self) -> tuple[Path, Path | None] | None:
        """The folders to load: the demo model in demo mode, else the settings' (None: nothing to load yet)."""
        if self.demo:
            checkpoint = self._demo_checkpoint
            return (checkpoint.model_dir, checkpoint.adapter_dir) if checkpoint else None
        if not self.settings.model_dir:
            return None
        return Path(self.settings.model_dir), Path(self.settings.adapter_dir) if self.settings.adapter_dir else None

    def _request_load(self) -> None:
        """Load the current folders; if the model thread is busy, stop it and load once it is idle."""
        folders = self._model_folders()
        if folders is None:
            return
        if self.host.busy:
            self._load_when_idle = True
            self.host.stop()
            return
        more = () if self.demo else tuple(Path(path) for path in self.settings.attached_adapter_dirs)
        self.host.load(*folders, LoadOptions(force_cpu=self.settings.force_cpu,
                                             context_limit=self.settings.context_limit), more)

    # Demo mode -----------------------------------------------------------------------------------------------

    def start_demo(self) -> None:
        """The normal window on the tiny random model with the sample study loaded, its own history, a banner."""
        if self.demo:
            self.pages.setCurrentWidget(self.workspace)
            return
        self.demo = True
        self.setWindowTitle(f"{TITLE} (DEMO: answers mean nothing)")
        self.demo_banner.show()
        self._switch_history(DEMO_DB_FILENAME)
        self.pages.setCurrentWidget(self.workspace)
        self.viewer.open_inputs(sample_study)
        self.jobs.run(demo_series, self._open_demo_series, self._demo_failed)  # written once, in the cache
        if self._demo_checkpoint is None:
            self.model_status.setText("Model: preparing the demo model…")
            self.loading.start_busy("Writing the tiny demo model into the cache folder (the first time only)")
            self.jobs.run(demo_checkpoint, self._demo_ready, self._demo_failed)  # written once, in the cache
        else:
            self._request_load()

    def _demo_ready(self, checkpoint: TinyCheckpoint) -> None:
        self._demo_checkpoint = checkpoint
        if self.demo:
            self._request_load()

    def _open_demo_series(self, folder: Path) -> None:
        if self.demo:
            self.viewer.open_paths([folder])

    def _demo_failed(self, exc: Exception) -> None:
        self.loading.hide()
        self.model_status.show_state(self.host.state, "", self.host.identity)
        report_unexpected(type(exc), exc, exc.__traceback__)
        self.chat.show_notice(f"The demo model could not be made: {type(exc).__name__}: {exc}")

    def leave_demo(self) -> None:
        """Back to the real model and the real history, without a restart."""
        if not self.demo:
            return
        self.demo = False
        self.setWindowTitle(TITLE)
        self.demo_banner.hide()
        self._switch_history(DB_FILENAME)
        self._request_load()

    def _leave_demo_requested(self) -> None:
        if folders_problem(self.settings.model_dir or "", self.settings.adapter_dir or "") is None:
            self.leave_demo()
        else:  # not configured yet: choose the folders first; the demo runs until then
            self.pages.setCurrentWidget(self.first_run)

    def _switch_history(self, filename: str) -> None:
        if self.host.state is ModelState.GENERATING:
            self.host.stop()  # the answer still lands in the history it was asked in
        self._answering = False
        self.chat.clear()
        self.chat.task.set_mode(TaskMode.FREE_CHAT)  # not the demo series' mode, with no series left
        self.viewer.model.clear()
        self.store = self._open_store(filename)
        self.history.set_store(self.store)
        self._update_controls()

    def _open_store(self, filename: str) -> ConversationStore:
        path = self._data_folder / filename
        if path not in self._stores:
            self._stores[path] = ConversationStore(path)
        return self._stores[path]

    def _sync_first_run(self) -> None:
        self.first_run.context_limit = self.settings.context_limit
        self.first_run.force_cpu = self.settings.force_cpu

    def generation_settings(self) -> GenerationSettings:
        limit = self.settings.max_new_tokens
        return GenerationSettings(max_new_tokens=min(limit, DEMO_MAX_NEW_TOKENS) if self.demo else limit,
                                  sampling=SamplingSettings(greedy=self.settings.greedy,
                                                            temperature=self.settings.temperature))

    # Questions -----------------------------------------------------------------------------------------------

    @Slot(str)
    def ask(self, question: str) -> None:
        """Check the question against its mode and the token budget, render its images on a background job,
        then send it. A refused question stays in the box with the reason above it."""
        if self.host.state is not ModelState.READY or self._preparing:
            return
        mode, slices = self.chat.task.mode, self.chat.task.slice_count
        try:
            plan = self._plan(mode)
            check = self._check_budget(question, mode, plan)
        except UserFacingError as exc:
            self.chat.show_notice(str(exc))
            return
        if check is not None and check.problem:
            self.chat.task.show_budget(check)
            self.chat.show_notice(check.problem)
            return
        self._preparing = True
        self._update_controls()
        self.jobs.run(lambda: model_images(mode, plan, slices), lambda images: self._send(question, mode, images),
                      self._preparation_failed)

    def _send(self, question: str, mode: TaskMode, images: ModelImages) -> None:
        self._preparing = False
        if self.host.state is not ModelState.READY:
            self._update_controls()
            return
        try:
            turns = self.chat.begin(question, list(images.images), mode, padding=images.padding,
                                    target=images.target)
        except UserFacingError as exc:
            self.chat.show_notice(str(exc))
            self._update_controls()
            return
        self.viewer.model.mark_sent()
        self._answering = True
        record = Recording(self.store, self._stored_conversation(), None, question or mode.default_question,
                           tuple(images.images), mode.value)
        self.host.generate(turns, self.generation_settings(), record)

    def _preparation_failed(self, exc: Exception) -> None:
        self._preparing = False
        if isinstance(exc, UserFacingError):
            self.chat.show_notice(str(exc))
        else:
            report_unexpected(type(exc), exc, exc.__traceback__)
            self.chat.show_notice(f"The images could not be prepared: {type(exc).__name__}: {exc}. "
                                  "Details are in the log file.")
        self._update_controls()

    def _plan(self, mode: TaskMode) -> list[Picture]:
        return plan_images(mode, self.viewer.model.pending_pictures(), self.viewer.model.prior())

    def _check_budget(self, question: str, mode: TaskMode, plan: list[Picture]) -> BudgetCheck | None:
        """The question's token cost (None until the tokenizer is loaded); raises the mode's `UserFacingError`
        when it cannot take these images."""
        counted = [_COUNTED_IMAGE] * count_model_images(plan, self.chat.task.slice_count)
        turns = self.chat.conversation.preview(question, counted, mode)
        if self.token_counter is None:
            return None
        has_series = any(picture.series is not None for picture in plan)
        return check_budget(turns, self.token_counter, context_limit=self.settings.context_limit,
                            reserve_tokens=self.generation_settings().max_new_tokens,
                            series=SERIES_MODES.get(mode) if has_series else None,
                            question=question.strip() or mode.default_question)

    def update_budget(self) -> None:
        """Show what the question being typed would cost, or what its mode still needs."""
        mode = self.chat.task.mode
        # While the box is empty in a mode without a default question, count a one-word question.
        question = self.chat.question.toPlainText() or mode.default_question or "?"
        try:
            check = self._check_budget(question, mode, self._plan(mode))
        except UserFacingError as exc:
            self.chat.task.show_message(str(exc))
            return
        if check is None:
            self.chat.task.show_message("Token count: available once the model is loaded")
        else:
            self.chat.task.show_budget(check)

    @Slot(object)
    def _use_token_counter(self, counter: TokenCounter) -> None:
        self.token_counter = counter
        self.update_budget()

    @Slot(str)
    def _suggest_series_mode(self, modality: str) -> None:
        """A CT or MR series just opened: switch to its series mode unless one is already chosen."""
        mode = MODE_FOR_MODALITY.get(modality)
        if mode is not None and self.chat.task.mode not in SERIES_MODES:
            self.chat.task.set_mode(mode)

    def regenerate(self) -> None:
        """Answer the last question again; the earlier answer stays, as a variant to switch back to."""
        if self.host.state is not ModelState.READY or self._preparing or self.chat.conversation.last is None:
            return
        self._retry(len(self.chat.conversation.exchanges) - 1)

    @Slot(int, str)
    def resend_edited(self, index: int, question: str) -> None:
        """A past question reworded: stored as edited and answered again from the history before it."""
        if self.host.state is not ModelState.READY:
            return
        exchange = self.chat.conversation.exchanges[index]
        if exchange.message_id is not None:
            self.store.edit_question(exchange.message_id, question)
        exchange.question = question
        self._retry(index)

    def _retry(self, index: int) -> None:
        exchange = self.chat.conversation.exchanges[index]
        turns = self.chat.begin_retry(index)
        self._answering = True
        record = Recording(self.store, self._stored_conversation(), exchange.message_id, exchange.question,
                           exchange.images)
        self.host.generate(turns, self.generation_settings(), record)

    def _stored_conversation(self) -> int:
        """The open conversation's id in the store, created with the first question."""
        conversation = self.chat.conversation
        if conversation.id is None:
            conversation.id = self.store.create_conversation().id
            self.history.set_current(conversation.id)
        return conversation.id

    @Slot(int, int)
    def show_variant(self, index: int, step: int) -> None:
        """Show an older (-1) or newer (+1) answer to question `index`; it becomes the one sent as history."""
        exchanges = self.chat.conversation.exchanges
        if self._answering or not 0 <= index < len(exchanges):
            return
        exchange = exchanges[index]
        ids = exchange.answer_ids
        if exchange.message_id is None or exchange.answer_id not in ids:
            return
        position = ids.index(exchange.answer_id) + step
        if not 0 <= position < len(ids):
            return
        self.store.select_variant(exchange.message_id, ids[position])
        show_variant(exchange, next(v for v in self.store.variants(exchange.message_id) if v.id == ids[position]))
        self.chat.refresh()
        self._update_controls()

    def _step_last(self, step: int) -> None:
        self.show_variant(len(self.chat.conversation.exchanges) - 1, step)

    def _edit_last(self) -> None:
        if self.chat.conversation.exchanges:
            self.chat.start_edit(len(self.chat.conversation.exchanges) - 1)

    def new_conversation(self) -> None:
        if self.host.state is ModelState.GENERATING:
            self.host.stop()
            return
        self.chat.clear()
        self.viewer.model.clear()
        self.history.set_current(None)
        self._update_controls()

    @Slot(int)
    def open_conversation(self, conversation_id: int) -> None:
        """Show a past conversation (its images read back from the store on a background job), ready to go on."""
        if self._answering:
            self.statusBar().showMessage("Stop the answer before opening another conversation.", 10_000)
            return
        store = self.store
        self.jobs.run(lambda: _reopened(store, conversation_id),
                      lambda result: self._show_reopened(store, *result), self._open_failed)

    def _show_reopened(self, store: ConversationStore, stored: StoredConversation, pictures: list[Picture]) -> None:
        if store is not self.store or self._answering:  # the history changed meanwhile (demo left)
            return
        self.chat.show_conversation(stored.exchanges, stored.conversation_id)
        self.viewer.model.clear()
        self.viewer.model.add(pictures, sent=True)
        self.history.set_current(stored.conversation_id)
        self._update_controls()
        self.conversation_opened.emit(stored.conversation_id)

    def _open_failed(self, exc: Exception) -> None:
        report_unexpected(type(exc), exc, exc.__traceback__)
        self.chat.show_notice(f"The conversation could not be opened: {type(exc).__name__}: {exc}")

    @Slot(int)
    def _on_deleted(self, conversation_id: int) -> None:
        if conversation_id == self.chat.conversation.id and not self._answering:
            self.new_conversation()

    @Slot(int, int)
    def _on_recorded(self, message_id: int, answer_id: int) -> None:
        if self._closed:  # queued before the model thread ended; the store is closed
            return
        self.chat.recorded(message_id, answer_id)
        self.history.refresh()  # the first question names a new conversation

    @Slot(object)
    def _on_finished(self, answer: Answer) -> None:
        self._answering = False
        self.chat.finish(answer)
        exchange = self.chat.conversation.last
        if exchange is not None and exchange.mode is TaskMode.LOCALIZATION and exchange.target is not None:
            boxes = parse_boxes(answer.text)
            if boxes:
                self.viewer.set_boxes(exchange.target, FoundBoxes(tuple(boxes), exchange.target.image.size,
                                                                  exchange.padding))
            else:
                self.chat.show_notice("The answer holds no boxes in the expected format, so none are drawn.")
        if not self._closed:
            self.history.refresh()
        self._update_controls()
        self.answer_finished.emit(answer)

    # Export --------------------------------------------------------------------------------------------------

    def open_export(self) -> ExportDialog | None:
        conversation_id = self.chat.conversation.id
        if conversation_id is None:
            self.statusBar().showMessage("Ask a question or open a conversation first: there is nothing to export.",
                                         10_000)
            return None
        dialog = ExportDialog(self.store.conversation(conversation_id).title, Path.home(), self, demo=self.demo)
        store = self.store
        dialog.accepted.connect(lambda: self._export(store, conversation_id, dialog))
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        return dialog

    def _export(self, store: ConversationStore, conversation_id: int, dialog: ExportDialog) -> None:
        choice = dialog.choice()
        self.statusBar().showMessage(f"Exporting to {choice.path}…")
        self.jobs.run(lambda: write_export(store, conversation_id, choice), self._exported, self._export_failed)

    def _exported(self, path: Path) -> None:
        self.statusBar().showMessage(f"Exported to {path}", 20_000)
        self.export_finished.emit(path)

    def _export_failed(self, exc: Exception) -> None:
        if not isinstance(exc, UserFacingError):
            report_unexpected(type(exc), exc, exc.__traceback__)
        self.statusBar().showMessage(f"Export failed: {exc}", 30_000)
        self.export_failed.emit(str(exc))

    # Adapters ------------------------------------------------------------------------------------------------

    def change_adapter(self, request: AdapterRequest) -> None:
        """Attach or switch an adapter on the model thread, without reloading the base."""
        if self.host.state is not ModelState.READY:
            self.statusBar().showMessage("Wait for the model to be ready before switching adapters.", 10_000)
            return
        self._switching_adapter = True
        self.host.change_adapter(request)

    @Slot(object)
    def _on_model_ready(self, identity: ModelIdentity) -> None:
        """After a load or an adapter change: remember the attached adapters (and, after a switch, the active
        one) so the next start attaches them again."""
        switched, self._switching_adapter = self._switching_adapter, False
        name = identity.adapter_name
        if switched:
            self.statusBar().showMessage(
                f"Answering with {f'the adapter {name}' if name else 'the base model alone'}.", 10_000)
        if self.demo:
            return
        attached = tuple(str(path) for path in self.host.adapters.values())
        settings = replace(self.settings, attached_adapter_dirs=attached)
        if switched:
            adapter = self.host.adapters.get(name) if name else None
            settings = replace(settings, adapter_dir=str(adapter) if adapter else None)
        if settings != self.settings:
            self._save_settings(settings)  # nothing shown depends on the adapters: no restyling after each load

    @Slot(object)
    def _on_adapters_skipped(self, reasons: list[str]) -> None:
        self.chat.show_notice("Adapters left out of this load (add them again in the model manager): "
                              + " ".join(reasons))

    def open_model_manager(self) -> ModelManagerDialog:
        dialog = ModelManagerDialog(self.host, self.settings, self)
        dialog.model_chosen.connect(lambda model_dir: self._use_folders(model_dir, ""))
        dialog.adapter_add_requested.connect(lambda path: self.change_adapter(AdapterRequest(add=path)))
        dialog.adapter_use_requested.connect(lambda name: self.change_adapter(AdapterRequest(use=name)))
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        return dialog

    @Slot(str, str)
    def _on_failed(self, kind: str, message: str) -> None:
        if self._answering:
            self._answering = False
            self.chat.fail(message)
            if not self._closed:
                self.history.refresh()
        elif self._switching_adapter:
            self._switching_adapter = False
            self.chat.show_notice(f"The adapter could not be used: {message}")
        elif kind == "cancelled":
            self.chat.show_notice("Loading was cancelled. Use File > Load model (Ctrl+L) to load it again.")
        else:
            self.chat.show_notice(f"The model could not be loaded: {message}")
        self._update_controls()

    @Slot(object, str)
    def _on_state(self, state: ModelState, detail: str) -> None:
        self.model_status.show_state(state, detail, self.host.identity)
        if state is ModelState.LOADING:
            self.token_counter = None  # another model may count differently
        loading = state is ModelState.LOADING and not self._switching_adapter
        if loading and self.loading.isHidden():
            self.loading.start()
        elif not loading:
            self.loading.hide()
        if self._load_when_idle and not self.host.busy:
            self._load_when_idle = False
            self._request_load()
        self._update_controls()

    def _update_controls(self) -> None:
        self.chat.set_busy(self.host.busy, can_send=self.host.state is ModelState.READY and not self._preparing)
        self.export_action.setEnabled(self.chat.conversation.id is not None)

    # Dialogs and settings ------------------------------------------------------------------------------------

    def open_settings(self) -> SettingsDialog:
        dialog = SettingsDialog(self.settings, self)
        dialog.accepted.connect(lambda: self._apply_settings(dialog.settings()))
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        return dialog

    def show_about(self) -> AboutDialog:
        dialog = AboutDialog(self)
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        return dialog

    def _save_settings(self, settings: Settings) -> None:
        self.settings = settings
        try:
            save_settings(settings, self._settings_path)
        except OSError as exc:
            self.statusBar().showMessage(f"Settings could not be saved: {exc}", 20_000)

    def _change_settings(self, settings: Settings) -> None:
        """Save, then apply what the window shows of them (theme, device plan, token budget)."""
        self._save_settings(settings)
        app = QApplication.instance()
        if isinstance(app, QApplication):
            apply_theme(app, settings.theme, settings.text_size)
        self.gpu_status.set_plan(choose_device(settings.force_cpu))
        self._budget_timer.start()
        self._sync_first_run()

    def _apply_settings(self, settings: Settings) -> None:
        reload = any(getattr(settings, name) != getattr(self.settings, name) for name in RELOAD_FIELDS)
        self._change_settings(settings)
        if self.demo and settings.has_model:  # the dialog checked the folders: the real model takes over
            self.pages.setCurrentWidget(self.workspace)
            self.leave_demo()
        elif reload and settings.has_model:
            self.pages.setCurrentWidget(self.workspace)
            self._request_load()

    # Shutdown ------------------------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        """Stop the model thread and join it before the window goes, so no QThread outlives its owner."""
        self.hide()
        log.info("closing: stopping the model thread")
        self._load_when_idle = False
        self.host.shutdown()
        self.viewer.jobs.wait()
        self.jobs.wait()
        self._monitor.close()
        self.first_run.jobs.wait()
        if not self._closed:
            self._closed = True
            for store in self._stores.values():
                store.purge_deleted()  # deleting is final once the window (and its Undo) is gone
                store.close()
        super().closeEvent(event)
