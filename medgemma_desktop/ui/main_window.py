"""The main window: viewer on the left, chat on the right, status bar below, first-run page until a model is set.

It wires the parts together and owns the decisions that span them: what a question carries (the viewer's
pending images rendered for the chat's task mode, checked against the token budget before anything is sent),
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

from medgemma_desktop.core.boxes import parse_boxes
from medgemma_desktop.core.decoding import SamplingSettings
from medgemma_desktop.core.device import choose_device
from medgemma_desktop.core.engine import GenerationSettings, LoadOptions
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.export import DISCLAIMER
from medgemma_desktop.core.gpu import GpuMonitor
from medgemma_desktop.core.imaging import ImageInput, load_any
from medgemma_desktop.core.prompts import TaskMode
from medgemma_desktop.core.settings import Settings, load_settings, save_settings
from medgemma_desktop.ui.about import AboutDialog
from medgemma_desktop.ui.background import BackgroundJobs
from medgemma_desktop.ui.box_overlay import FoundBoxes
from medgemma_desktop.ui.chat import ChatPane
from medgemma_desktop.ui.first_run import FirstRunPage
from medgemma_desktop.ui.folder_field import folders_problem
from medgemma_desktop.ui.hooks import report_unexpected
from medgemma_desktop.ui.pictures import Picture
from medgemma_desktop.ui.settings_dialog import SettingsDialog
from medgemma_desktop.ui.status import GpuStatusLabel, ModelStatusLabel
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
from medgemma_desktop.ui.worker import Answer, ModelHost, ModelState

log = logging.getLogger(__name__)
RELOAD_FIELDS = ("model_dir", "adapter_dir", "force_cpu", "context_limit")
BUDGET_DELAY_MS = 150  # recount after typing pauses, not on every key
# Stands in for each image while counting: the count depends on how many images there are, not on their pixels.
_COUNTED_IMAGE = ImageInput(image=Image.new("RGB", (1, 1)), source=Path("counted"), sha256="", label="counted")


class MainWindow(QMainWindow):
    # After the chat pane shows an answer (finished or stopped): the seam for saving it to the store.
    answer_finished = Signal(object)  # Answer

    def __init__(self, settings_path: Path | None = None, loader: ImageLoader = load_any,
                 monitor: GpuMonitor | None = None) -> None:
        super().__init__()
        self.setWindowTitle("MedGemma Desktop")
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

        self.host = ModelHost(self)
        self.jobs = BackgroundJobs(self)
        self.viewer = ViewerPanel(loader)
        self.chat = ChatPane()
        self.first_run = FirstRunPage()
        self.workspace = QSplitter(Qt.Orientation.Horizontal)
        self.workspace.setAccessibleName("Workspace")
        self.workspace.addWidget(self.viewer)
        self.workspace.addWidget(self.chat)
        self.workspace.setSizes([560, 520])
        self.pages = QStackedWidget()
        self.pages.addWidget(self.first_run)
        self.pages.addWidget(self.workspace)
        self.disclaimer = QLabel(DISCLAIMER)
        self.disclaimer.setObjectName("disclaimer")
        self.disclaimer.setAccessibleName("Disclaimer")
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(6, 6, 6, 0)
        layout.addWidget(self.pages, 1)
        layout.addWidget(self.disclaimer)
        self.setCentralWidget(central)

        self.gpu_status = GpuStatusLabel(choose_device(self.settings.force_cpu), self._monitor)
        self.model_status = ModelStatusLabel()
        self.statusBar().addPermanentWidget(self.model_status)
        self.statusBar().addPermanentWidget(self.gpu_status)
        self._build_menus()

        self.host.state_changed.connect(self._on_state)
        self.host.worker.token.connect(self.chat.append_token)
        self.host.worker.token_counter_ready.connect(self._use_token_counter)
        self.host.worker.finished.connect(self._on_finished)
        self.host.worker.failed.connect(self._on_failed)
        self.chat.question_submitted.connect(self.ask)
        self.chat.stop_clicked.connect(self.host.stop)
        self.chat.regenerate_clicked.connect(self.regenerate)
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
        self.resize(1180, 760)
        if loaded.notice:
            self.statusBar().showMessage(loaded.notice, 20_000)
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
        file_menu.addSeparator()
        self._action(file_menu, "&Load model", self._request_load, "Ctrl+L")
        self._action(file_menu, "&Settings…", self.open_settings, QKeySequence.StandardKey.Preferences)
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        chat_menu = bar.addMenu("&Chat")
        self._action(chat_menu, "&Stop", self.host.stop, "Esc")
        self._action(chat_menu, "&Regenerate", self.regenerate, "Ctrl+R")
        self._action(chat_menu, "&Copy answer", self.chat.copy_answer, "Ctrl+Shift+C")
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
        self._request_load()

    def _request_load(self) -> None:
        """Load with the current settings; if the model thread is busy, stop it and load once it is idle."""
        if not self.settings.model_dir:
            return
        if self.host.busy:
            self._load_when_idle = True
            self.host.stop()
            return
        adapter = Path(self.settings.adapter_dir) if self.settings.adapter_dir else None
        self.host.load(Path(self.settings.model_dir), adapter,
                       LoadOptions(force_cpu=self.settings.force_cpu, context_limit=self.settings.context_limit))

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=self.settings.max_new_tokens,
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
        self.host.generate(turns, self.generation_settings())

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
                            reserve_tokens=self.settings.max_new_tokens,
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
        if self.host.state is not ModelState.READY or self._preparing or self.chat.conversation.last is None:
            return
        self._answering = True
        self.host.generate(self.chat.begin_regenerate(), self.generation_settings())

    def new_conversation(self) -> None:
        if self.host.state is ModelState.GENERATING:
            self.host.stop()
            return
        self.chat.clear()
        self.viewer.model.clear()

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
        self._update_controls()
        self.answer_finished.emit(answer)

    @Slot(str, str)
    def _on_failed(self, kind: str, message: str) -> None:
        if self._answering:
            self._answering = False
            self.chat.fail(message)
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
        if self._load_when_idle and not self.host.busy:
            self._load_when_idle = False
            self._request_load()
        self._update_controls()

    def _update_controls(self) -> None:
        self.chat.set_busy(self.host.busy, can_send=self.host.state is ModelState.READY and not self._preparing)

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

    def _change_settings(self, settings: Settings) -> None:
        self.settings = settings
        try:
            save_settings(settings, self._settings_path)
        except OSError as exc:
            self.statusBar().showMessage(f"Settings could not be saved: {exc}", 20_000)
        app = QApplication.instance()
        if isinstance(app, QApplication):
            apply_theme(app, settings.theme)
        self.gpu_status.set_plan(choose_device(settings.force_cpu))
        self._budget_timer.start()

    def _apply_settings(self, settings: Settings) -> None:
        reload = any(getattr(settings, name) != getattr(self.settings, name) for name in RELOAD_FIELDS)
        self._change_settings(settings)
        if reload and settings.has_model:
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
        super().closeEvent(event)
