"""The model manager: check a base model folder and adapter folders (the core's checks and reports, hashes with a
progress bar, remembered), see the memory plan for the current context limit, list and clear the saved 4-bit
models, and switch the active adapter (or run the base alone) without reloading the base.

Checks and hashes run on a background job; the engine is never touched here: attaching or switching an adapter
is a request the main window sends to the model thread. A check's progress and its failure show right under the
field (or list) it concerns, not at the bottom of the dialog.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)

from medgemma_desktop.core.device import choose_device
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.fingerprint import FingerprintCache
from medgemma_desktop.core.model_folder import (
    check_adapter_folder,
    check_model_folder,
    describe_adapter,
    describe_model,
)
from medgemma_desktop.core.settings import Settings
from medgemma_desktop.ui.background import BackgroundJobs
from medgemma_desktop.ui.buttons import labelled_button
from medgemma_desktop.ui.folder_field import FolderField
from medgemma_desktop.ui.hooks import report_unexpected
from medgemma_desktop.ui.machine_check import judge_machine
from medgemma_desktop.ui.worker import ModelHost, ModelState

ADAPTER_ROLE = Qt.ItemDataRole.UserRole + 1  # the adapter's name; "" for the base model alone
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class FolderReport:
    path: Path
    rows: list[tuple[str, str]]
    sha256: str
    memory: str = ""  # the plan and verdict (base model only)


def inspect_model(path: str, fingerprints: FingerprintCache, context_limit: int, force_cpu: bool,
                  progress: Progress) -> FolderReport:
    """Off the UI thread: check the folder, hash its weights (remembered), plan its memory."""
    import torch

    model = check_model_folder(path)
    sha256 = fingerprints.folder_digest(model.shards, progress)
    plan = choose_device(force_cpu)
    free = torch.cuda.mem_get_info(0)[0] if plan.is_cuda else None
    verdict = judge_machine(plan, free, model, context_limit)
    memory = "<br>".join([escape(verdict.summary), *(f"{escape(n)}: {escape(v)}" for n, v in verdict.details)])
    return FolderReport(model.path, [*describe_model(model), ("sha256", sha256)], sha256, memory)


def inspect_adapter(path: str, model_path: Path, fingerprints: FingerprintCache, progress: Progress) -> FolderReport:
    """Off the UI thread: check the adapter against the base model and hash it as the engine does."""
    adapter = check_adapter_folder(path, check_model_folder(model_path, read_tokenizer=False))  # its shapes
    sha256 = fingerprints.folder_digest([adapter.weights, adapter.path / "adapter_config.json"], progress)
    return FolderReport(adapter.path, [*describe_adapter(adapter), ("sha256", sha256)], sha256)


def report_html(rows: list[tuple[str, str]]) -> str:
    return "<br>".join(f"<b>{escape(name)}</b>: {escape(value)}" for name, value in rows)


class _ProgressRelay(QObject):
    """Lives on the UI thread; a job emits from its pool thread and Qt queues the call to the progress bar."""

    changed = Signal(int, int)  # done, total (bytes)


def _label(name: str, error: bool = False) -> QLabel:
    label = QLabel()
    label.setAccessibleName(name)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    if error:
        label.setObjectName("errorLabel")
        label.hide()
    return label


class ModelManagerDialog(QDialog):
    model_chosen = Signal(str)  # a checked base model folder to load (the base alone; adapters added after)
    adapter_add_requested = Signal(Path)  # a checked adapter folder to attach to the loaded base
    adapter_use_requested = Signal(object)  # str | None: the adapter to make active, None for the base alone
    checked = Signal(object)  # FolderReport, after a folder passed its checks
    check_failed = Signal(str)  # the one-line reason
    cache_cleared = Signal(int)

    def __init__(self, host: ModelHost, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Model manager")
        self.setAccessibleName("Model manager")
        self.resize(720, 680)
        self._host = host
        self._settings = settings
        self._model_report: FolderReport | None = None
        self.checking = False
        self._cached = 0  # saved 4-bit models listed
        self.jobs = BackgroundJobs(self)
        self._progress = _ProgressRelay(self)

        self.model_field = FolderField("Base model folder", "Choose the google/medgemma-1.5-4b-it folder")
        self.model_field.set_path(settings.model_dir)
        self.check_model_button = labelled_button("Check", "Check the base model folder and compute its hash")
        self.check_model_button.clicked.connect(self.check_model)
        self.load_model_button = labelled_button("Load this model", "Load this base model (the loaded one is replaced)")
        self.load_model_button.clicked.connect(self._load_model)
        self.model_report = _label("Base model report")
        self.memory_label = _label("Memory plan")
        self.adapter_field = FolderField("Adapter folder", "Choose a LoRA adapter folder")
        self.add_adapter_button = labelled_button("Check and add",
                                                  "Check the adapter and attach it to the loaded model")
        self.add_adapter_button.clicked.connect(self.check_adapter)
        self.adapter_report = _label("Adapter report")
        self.adapters = QListWidget()
        self.adapters.setAccessibleName("Adapters")
        self.adapters.itemDoubleClicked.connect(lambda _item: self.use_selected())
        self.use_adapter_button = labelled_button("Use selected", "Answer with the selected adapter (no reload)")
        self.use_adapter_button.clicked.connect(self.use_selected)
        self.model_error = _label("Base model error", error=True)
        self.adapter_error = _label("Adapter error", error=True)
        self.cache_error = _label("Saved 4-bit models error", error=True)
        self._error_label = self.model_error  # where the running job's failure goes
        self.progress_bar = QProgressBar()
        self.progress_bar.setAccessibleName("Hashing progress")
        self.progress_bar.setFormat("computing the hash: %p%")
        self.progress_bar.hide()
        self._progress.changed.connect(self._show_progress)
        self.cache_list = QListWidget()
        self.cache_list.setAccessibleName("Saved 4-bit models")
        self.clear_cache_button = labelled_button("Clear saved 4-bit models",
                                          "Delete them; the next start quantizes the weights again (slower)")
        self.clear_cache_button.clicked.connect(self.clear_cache)

        base_box = QGroupBox("Base model")
        base = QVBoxLayout(base_box)
        row = QHBoxLayout()
        row.addWidget(self.model_field, 1)
        row.addWidget(self.check_model_button)
        row.addWidget(self.load_model_button)
        base.addLayout(row)
        base.addWidget(self.progress_bar)
        base.addWidget(self.model_error)
        base.addWidget(self.model_report)
        base.addWidget(QLabel(f"<b>Memory plan</b> (context limit {settings.context_limit:,} tokens, one image):"))
        base.addWidget(self.memory_label)
        adapter_box = QGroupBox("Adapters (switching does not reload the base model)")
        adapter = QVBoxLayout(adapter_box)
        row = QHBoxLayout()
        row.addWidget(self.adapter_field, 1)
        row.addWidget(self.add_adapter_button)
        adapter.addLayout(row)
        adapter.addWidget(self.adapter_error)
        adapter.addWidget(self.adapter_report)
        adapter.addWidget(self.adapters)
        adapter.addWidget(self.use_adapter_button, 0, Qt.AlignmentFlag.AlignRight)
        cache_box = QGroupBox(f"Saved 4-bit models ({host.cache.root})")
        cache = QVBoxLayout(cache_box)
        cache.addWidget(self.cache_list)
        cache.addWidget(self.cache_error)
        cache.addWidget(self.clear_cache_button, 0, Qt.AlignmentFlag.AlignRight)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(base_box)
        layout.addWidget(adapter_box, 1)
        layout.addWidget(cache_box)
        layout.addWidget(buttons)

        host.state_changed.connect(self._on_model_state)
        self.refresh_adapters()
        self.refresh_cache()
        self._update_buttons()

    # Checks --------------------------------------------------------------------------------------------------

    def check_model(self) -> None:
        path, fingerprints = self.model_field.path(), self._host.fingerprints
        context_limit, force_cpu = self._settings.context_limit, self._settings.force_cpu
        self._run(lambda: inspect_model(path, fingerprints, context_limit, force_cpu, self._progress.changed.emit),
                  self._model_checked, self.model_error)

    def check_adapter(self) -> None:
        """Check the adapter against the loaded base model's folder, then ask the model thread to attach it."""
        model = self._loaded_model_dir()
        self._error_label = self.adapter_error
        if model is None:
            self._show_error("Load a base model first: an adapter is checked against it.")
            return
        path, fingerprints = self.adapter_field.path(), self._host.fingerprints
        self._run(lambda: inspect_adapter(path, model, fingerprints, self._progress.changed.emit),
                  self._adapter_checked, self.adapter_error)

    def _run(self, job: Callable[[], FolderReport], on_success: Callable[[FolderReport], None],
             error_label: QLabel) -> None:
        self._error_label = error_label
        self._show_error("")
        section = error_label.parentWidget().layout()  # the hash's progress shows above the error, by the field
        section.insertWidget(section.indexOf(error_label), self.progress_bar)
        self.progress_bar.setValue(0)
        self.progress_bar.show()
        self._set_checking(True)
        self.jobs.run(job, on_success, self._check_failed)

    def _model_checked(self, report: FolderReport) -> None:
        self._model_report = report
        self._set_checking(False)
        self.model_report.setText(report_html(report.rows))
        self.memory_label.setText(report.memory)
        self.checked.emit(report)

    def _adapter_checked(self, report: FolderReport) -> None:
        self._set_checking(False)
        self.adapter_report.setText(report_html(report.rows))
        if report.path.name in self._host.adapters:
            self._show_error(f"An adapter named {report.path.name} is already attached; choose it in the list.")
        else:
            self.adapter_add_requested.emit(report.path)
        self.checked.emit(report)

    def _check_failed(self, exc: Exception) -> None:
        self._set_checking(False)
        if not isinstance(exc, UserFacingError):
            report_unexpected(type(exc), exc, exc.__traceback__)
        message = str(exc) if isinstance(exc, UserFacingError) else f"Unexpected error: {type(exc).__name__}: {exc}"
        self._show_error(message)
        self.check_failed.emit(message)

    def _show_progress(self, done: int, total: int) -> None:
        self.progress_bar.setValue(100 * done // total if total else 100)

    def _set_checking(self, checking: bool) -> None:
        self.checking = checking  # a folder check (and its hash) is running
        if not checking:
            self.progress_bar.hide()
        self._update_buttons()

    def _show_error(self, message: str) -> None:
        """Show (or, with "", clear) the error of the check that ran last, under its own field."""
        for label in (self.model_error, self.adapter_error, self.cache_error):
            label.setText(message if label is self._error_label else "")
            label.setVisible(bool(message) and label is self._error_label)

    # Model and adapters --------------------------------------------------------------------------------------

    def _load_model(self) -> None:
        if self._model_report is not None:
            self.model_chosen.emit(str(self._model_report.path))

    def use_selected(self) -> None:
        item = self.adapters.currentItem()
        if item is None or self._host.state is not ModelState.READY:
            return
        name = item.data(ADAPTER_ROLE) or None
        identity = self._host.identity
        if identity is not None and name != identity.adapter_name:
            self.adapter_use_requested.emit(name)

    def refresh_adapters(self) -> None:
        """The adapters attached to the loaded base, plus the base alone; the active one marked and selected."""
        self.adapters.clear()
        identity = self._host.identity
        active = identity.adapter_name if identity else None
        entries = [(name, f"{name} ({path})") for name, path in self._host.adapters.items()]
        entries.append(("", "Base model alone (no adapter)"))
        for name, text in entries:
            item = QListWidgetItem(f"{text}{' — active' if (name or None) == active and identity else ''}")
            item.setData(ADAPTER_ROLE, name)
            self.adapters.addItem(item)
            if (name or None) == active and identity is not None:
                self.adapters.setCurrentItem(item)

    def _loaded_model_dir(self) -> Path | None:
        return self._host.model_dir if self._host.identity is not None else None

    def _on_model_state(self, state: ModelState, _detail: str) -> None:
        self.refresh_adapters()
        if state is ModelState.READY:
            self.refresh_cache()  # a first load has just saved its 4-bit model
        self._update_buttons()

    def _update_buttons(self) -> None:
        checking = self.checking
        ready = self._host.state is ModelState.READY
        self.check_model_button.setEnabled(not checking)
        self.load_model_button.setEnabled(not checking and self._model_report is not None
                                          and not self._host.busy)
        self.add_adapter_button.setEnabled(not checking and ready)
        self.use_adapter_button.setEnabled(ready)
        self.clear_cache_button.setEnabled(self._cached > 0 and self._host.state is not ModelState.LOADING)

    # Saved 4-bit models --------------------------------------------------------------------------------------

    def refresh_cache(self) -> None:
        self.cache_list.clear()
        entries = self._host.cache.entries()
        self._cached = len(entries)
        for entry in entries:
            created = datetime.fromtimestamp(entry.created).strftime("%d %b %Y %H:%M")
            item = QListWidgetItem(f"{entry.model_name}: {entry.size_bytes / 1e9:.2f} GB, saved {created}")
            item.setToolTip(str(entry.path))
            self.cache_list.addItem(item)
        if not self.cache_list.count():
            self.cache_list.addItem("No saved 4-bit models: the next start quantizes the weights and saves them.")
        self.cache_list.setEnabled(bool(entries))
        self._update_buttons()

    def clear_cache(self) -> None:
        cache = self._host.cache
        self._error_label = self.cache_error
        self._show_error("")
        self.clear_cache_button.setEnabled(False)
        self.jobs.run(cache.clear, self._cache_cleared, self._check_failed)

    def _cache_cleared(self, count: int) -> None:
        self.refresh_cache()
        self.cache_cleared.emit(count)
