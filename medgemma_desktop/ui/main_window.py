"""The main window: history, viewer and chat side by side, status bar below, first-run page until a model is set.

In demo mode (`--demo`, or "Try the demo") it runs the tiny random model on the sample study, under a banner,
with its own history file; choosing the real folders leaves the demo without a restart.

It lays the parts out and owns what spans them outside a question: which model (re)loads and when, the history
file in use, settings, exports, adapters, and what happens to running work when it closes. Questions belong to
the send controller (`send_controller.SendController`) and the session it asks; the menus live in `menus`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Slot
from PySide6.QtGui import QCloseEvent, QPaintEvent
from PySide6.QtWidgets import QApplication, QLabel, QMainWindow, QSplitter, QStackedWidget, QVBoxLayout, QWidget

from medgemma_desktop.core.app_dirs import data_dir
from medgemma_desktop.core.demo import DEMO_MAX_NEW_TOKENS, demo_checkpoint, demo_series, sample_study
from medgemma_desktop.core.device import choose_device
from medgemma_desktop.core.engine import LoadOptions, ModelIdentity
from medgemma_desktop.core.export import DISCLAIMER
from medgemma_desktop.core.gpu import GpuMonitor
from medgemma_desktop.core.imaging import load_any
from medgemma_desktop.core.prompts import TaskMode
from medgemma_desktop.core.settings import SERVER_FIELDS, Settings, load_settings, save_settings
from medgemma_desktop.core.store import DB_FILENAME
from medgemma_desktop.core.tiny_checkpoint import TinyCheckpoint
from medgemma_desktop.session.inputs import ImageLoader
from medgemma_desktop.ui.about import AboutDialog
from medgemma_desktop.ui.background import BackgroundJobs
from medgemma_desktop.ui.chat import ChatPane
from medgemma_desktop.ui.demo_banner import DemoBanner
from medgemma_desktop.ui.export_dialog import ExportDialog
from medgemma_desktop.ui.export_flow import ExportFlow
from medgemma_desktop.ui.first_run import FirstRunPage
from medgemma_desktop.ui.folder_field import folders_problem
from medgemma_desktop.ui.history import HistoryPanel
from medgemma_desktop.ui.history_files import HistoryFiles
from medgemma_desktop.ui.hooks import report_unexpected
from medgemma_desktop.ui.menus import build_menus
from medgemma_desktop.ui.model_manager import ModelManagerDialog
from medgemma_desktop.ui.send_controller import SendController
from medgemma_desktop.ui.settings_dialog import SettingsDialog
from medgemma_desktop.ui.status import GpuStatusLabel, LoadingProgress, ModelStatusLabel
from medgemma_desktop.ui.theme import app_icon, apply_theme
from medgemma_desktop.ui.viewer import ViewerPanel
from medgemma_desktop.ui.window_size import first_window_size
from medgemma_desktop.ui.worker import AdapterRequest, ModelHost, ModelState

log = logging.getLogger(__name__)
QUEUED = Qt.ConnectionType.QueuedConnection
RELOAD_FIELDS = ("model_dir", "adapter_dir", "force_cpu", "context_limit", *SERVER_FIELDS)
DEMO_DB_FILENAME = "demo-history.sqlite3"  # demo answers never mix with real history
TITLE = "MedGemma Desktop"
FIRST_PAINT_WAIT_MS = 500  # a window not painted by then (hidden, minimised) starts its first load anyway


class MainWindow(QMainWindow):
    def __init__(self, settings_path: Path | None = None, loader: ImageLoader = load_any,
                 monitor: GpuMonitor | None = None, data_folder: Path | None = None, demo: bool = False) -> None:
        """`data_folder` holds the histories (default: the platform data folder); `demo` starts in demo mode."""
        super().__init__()
        self.setWindowTitle(TITLE)
        self.setWindowIcon(app_icon())
        self.setAccessibleName("MedGemma Desktop")
        self._settings_path, loaded = settings_path, load_settings(settings_path)
        self.settings = loaded.settings
        self._monitor = monitor or GpuMonitor()
        self._load_when_idle = self._switching_adapter = self._closed = False  # _load_when_idle: asked while busy
        self._painted = self._load_after_paint = False  # see paintEvent
        self._histories = HistoryFiles(data_folder or data_dir(), self.settings.keep_patient_data)
        self.store = self._histories.open(DB_FILENAME)
        self.jobs = BackgroundJobs(self)
        self.demo = False
        self._demo_checkpoint: TinyCheckpoint | None = None

        self.host = ModelHost(self)
        self.history = HistoryPanel(self.store)
        self.viewer = ViewerPanel(loader)
        self.chat = ChatPane()
        self.controller = SendController(self.host, self.chat, self.viewer, self.jobs, self.store,
                                         self.question_settings)
        self.answer_finished = self.controller.answer_finished  # Answer, after the chat pane shows it
        self.conversation_opened = self.controller.conversation_opened  # a stored conversation is shown
        self.first_run = FirstRunPage()
        self.workspace = QSplitter(Qt.Orientation.Horizontal)
        self.workspace.setAccessibleName("Workspace")
        for part in (self.history, self.viewer, self.chat):
            self.workspace.addWidget(part)
        self.workspace.setSizes([230, 520, 480])
        self.pages = QStackedWidget()
        for page in (self.first_run, self.workspace):
            self.pages.addWidget(page)
        self.demo_banner = DemoBanner()
        self.demo_banner.hide()
        self.disclaimer = QLabel(DISCLAIMER)
        self.disclaimer.setObjectName("disclaimer")
        self.disclaimer.setAccessibleName("Disclaimer")
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(6, 6, 6, 0)
        for widget, stretch in ((self.demo_banner, 0), (self.pages, 1), (self.disclaimer, 0)):
            layout.addWidget(widget, stretch)
        self.setCentralWidget(central)

        self.gpu_status = GpuStatusLabel(choose_device(self.settings.force_cpu), self._monitor)
        self.model_status = ModelStatusLabel()
        self.loading = LoadingProgress()
        for widget in (self.loading, self.model_status, self.gpu_status):
            self.statusBar().addPermanentWidget(widget)
        self.export_action = build_menus(self)
        self.exports = ExportFlow(self.jobs, self.statusBar(), self)
        self.export_finished, self.export_failed = self.exports.finished, self.exports.failed

        self.host.state_changed.connect(self._on_state)
        worker = self.host.worker
        worker.model_ready.connect(self._on_model_ready, QUEUED)
        worker.adapters_skipped.connect(self._on_adapters_skipped, QUEUED)
        worker.loading_progress.connect(self.loading.show_progress, QUEUED)
        self.controller.model_failed.connect(self._on_model_failed)
        self.loading.cancel_clicked.connect(self.host.stop)
        self.controller.conversation_changed.connect(self._refresh_history)
        self.controller.phase_changed.connect(self._update_export)
        self.controller.status.connect(lambda text: self.statusBar().showMessage(text, 15_000))
        self.controller.conversation_opened.connect(self.history.set_current)
        self.history.conversation_chosen.connect(self.controller.open_conversation)
        self.history.new_requested.connect(self.new_conversation)
        self.history.deleted.connect(self._on_deleted)
        self.chat.question.image_pasted.connect(self.viewer.open_mime)
        self.first_run.folders_chosen.connect(self._use_folders)
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

    # Model ---------------------------------------------------------------------------------------------------

    def _start(self) -> None:
        problem = folders_problem(self.settings.model_dir or "", self.settings.adapter_dir or "", read_tokenizer=False)
        self.first_run.set_folders(self.settings.model_dir, self.settings.adapter_dir)
        if problem is None or self.settings.server_url:
            self.pages.setCurrentWidget(self.workspace)
            self.request_load()
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
            self.request_load()

    def _model_folders(self) -> tuple[Path, Path | None] | None:
        """The folders to load: the demo model in demo mode, else the settings' (None: nothing to load yet)."""
        if self.demo:
            checkpoint = self._demo_checkpoint
            return (checkpoint.model_dir, checkpoint.adapter_dir) if checkpoint else None
        if not self.settings.model_dir:
            return None
        return Path(self.settings.model_dir), Path(self.settings.adapter_dir) if self.settings.adapter_dir else None

    def request_load(self) -> None:
        """Load the model folders or connect to the server; if the model thread is busy, stop it, load when idle.
        Asked before the window's first paint, it waits for that paint (`paintEvent`)."""
        if not self._painted:
            if not self._load_after_paint:
                self._load_after_paint = True
                QTimer.singleShot(FIRST_PAINT_WAIT_MS, self._end_first_paint_wait)
            return
        folders, server = self._model_folders(), None if self.demo else self.settings.server_url
        if folders is None and not server:
            return
        if self.host.busy:
            self._load_when_idle = True
            self.host.stop()
        elif server:
            self.host.connect_server(server, self.settings.api_key(), self.settings.server_model)
        elif folders is not None:
            more = () if self.demo else tuple(Path(path) for path in self.settings.attached_adapter_dirs)
            self.host.load(*folders, LoadOptions(force_cpu=self.settings.force_cpu,
                                                 context_limit=self.settings.context_limit), more)

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
        self.jobs.run(demo_series, lambda folder: self.viewer.open_paths([folder]) if self.demo else None,
                      self._demo_failed)  # written once, in the cache
        if self._demo_checkpoint is None:
            self.model_status.setText("Model: preparing the demo model…")
            self.loading.start_busy("Writing the tiny demo model into the cache folder (the first time only)")
            self.jobs.run(demo_checkpoint, self._demo_ready, self._demo_failed)  # written once, in the cache
        else:
            self.request_load()

    def _demo_ready(self, checkpoint: TinyCheckpoint) -> None:
        self._demo_checkpoint = checkpoint
        if self.demo:
            self.request_load()

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
        self.request_load()

    def _leave_demo_requested(self) -> None:
        if folders_problem(self.settings.model_dir or "", self.settings.adapter_dir or "",
                           read_tokenizer=False) is None:  # leaving loads, which checks the tokenizer it builds
            self.leave_demo()
        else:  # not configured yet: choose the folders first; the demo runs until then
            self.pages.setCurrentWidget(self.first_run)

    def _switch_history(self, filename: str) -> None:
        if self.host.state is ModelState.GENERATING:
            self.host.stop()  # the answer still lands in the history it was asked in
        self.store = self._histories.open(filename)
        self.controller.new_conversation(self.store)
        self.chat.task.set_mode(TaskMode.FREE_CHAT)  # not the demo series' mode, with no series left
        self.history.set_store(self.store)
        self._update_export()

    def question_settings(self) -> Settings:
        """The settings questions are asked with: demo answers stop early (the tiny model writes noise)."""
        limit = min(self.settings.max_new_tokens, DEMO_MAX_NEW_TOKENS) if self.demo else self.settings.max_new_tokens
        return replace(self.settings, max_new_tokens=limit)

    def _sync_first_run(self) -> None:
        self.first_run.context_limit = self.settings.context_limit
        self.first_run.force_cpu = self.settings.force_cpu

    def new_conversation(self) -> None:
        if self.host.state is ModelState.GENERATING:
            self.host.stop()
            return
        self.controller.new_conversation()
        self.history.set_current(None)

    @Slot(int)
    def _on_deleted(self, conversation_id: int) -> None:
        if conversation_id == self.controller.session.id and self.host.state is not ModelState.GENERATING:
            self.new_conversation()

    def _refresh_history(self) -> None:
        if not self._closed:  # a report queued before the model thread ended; the store is closed
            self.history.refresh()
            self.history.set_current(self.controller.session.id)
        self._update_export()

    def _update_export(self) -> None:
        self.export_action.setEnabled(self.controller.session.id is not None)

    def open_export(self) -> ExportDialog | None:
        return self.exports.open(self.store, self.controller.session.id, demo=self.demo)

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
    def _on_model_failed(self, kind: str, message: str) -> None:
        """A load or an adapter change failed (the send controller reports answers that fail)."""
        if self._switching_adapter:
            self._switching_adapter = False
            self.chat.show_notice(f"The adapter could not be used: {message}")
        elif kind == "cancelled":
            self.chat.show_notice("Loading was cancelled. Use File > Load model (Ctrl+L) to load it again.")
        else:
            self.chat.show_notice(f"The model could not be loaded: {message}")

    @Slot(object, str)
    def _on_state(self, state: ModelState, detail: str) -> None:
        self.model_status.show_state(state, detail, self.host.identity)
        loading = state is ModelState.LOADING and not self._switching_adapter
        if loading and self.loading.isHidden():
            self.loading.start()
        elif not loading:
            self.loading.hide()
        if self._load_when_idle and not self.host.busy:
            self._load_when_idle = False
            self.request_load()

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
        self._histories.keep_patient_data(settings.keep_patient_data)
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
        self.controller.update_budget()
        self._sync_first_run()

    def _apply_settings(self, settings: Settings) -> None:
        reload = any(getattr(settings, name) != getattr(self.settings, name) for name in RELOAD_FIELDS)
        self._change_settings(settings)
        if self.demo and settings.has_model:  # the dialog checked the folders: the real model takes over
            self.pages.setCurrentWidget(self.workspace)
            self.leave_demo()
        elif reload and settings.has_model:
            self.pages.setCurrentWidget(self.workspace)
            self.request_load()

    def paintEvent(self, event: QPaintEvent) -> None:
        """The first paint lets a load asked for before it start: a load from the start competed with that paint
        for the GIL, which then took 55-122 ms instead of 7-8."""
        super().paintEvent(event)
        if not self._painted:
            QTimer.singleShot(0, self._end_first_paint_wait)

    def _end_first_paint_wait(self) -> None:
        self._painted = True
        if self._load_after_paint:
            self._load_after_paint = False
            self.request_load()

    def closeEvent(self, event: QCloseEvent) -> None:
        """Stop the model thread and join it before the window goes, so no QThread outlives its owner."""
        self.hide()
        log.info("closing: stopping the model thread")
        self._load_when_idle = self._load_after_paint = False
        self.host.shutdown()
        for jobs in (self.viewer.jobs, self.jobs, self.first_run.jobs):
            jobs.wait()
        self._monitor.close()
        if not self._closed:
            self._closed = True
            self._histories.close()
        super().closeEvent(event)
