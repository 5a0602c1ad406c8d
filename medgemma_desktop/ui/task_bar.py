"""The task-mode bar above the question: which task (Google's prompt formats), how many slices a series
sends, and what the question costs in tokens, with a one-click fix when a series does not fit."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

from medgemma_desktop.core.prompts import MAX_SERIES_SLICES, TaskMode
from medgemma_desktop.session.question import SERIES_MODES, BudgetCheck

# Free chat first: it is what the window did before modes existed, and the default.
MODE_ORDER = (TaskMode.FREE_CHAT, TaskMode.DESCRIBE, TaskMode.CT_SERIES, TaskMode.MRI_SERIES,
              TaskMode.LONGITUDINAL_CXR, TaskMode.LOCALIZATION, TaskMode.DOCUMENT_EXTRACTION)


class TaskBar(QWidget):
    mode_changed = Signal(object)  # TaskMode
    slices_changed = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Task")
        self.mode_box = QComboBox()
        self.mode_box.setAccessibleName("Task mode")
        self.mode_box.setToolTip("What to ask for: each mode sends the images and text the way Google's "
                                 "MedGemma notebooks do")
        for mode in MODE_ORDER:
            self.mode_box.addItem(mode.title, mode)
            self.mode_box.setItemData(self.mode_box.count() - 1, mode.description, Qt.ItemDataRole.ToolTipRole)
        self.mode_box.currentIndexChanged.connect(self._on_mode)
        self.slices = QSpinBox()
        self.slices.setAccessibleName("Series slices")
        self.slices.setRange(1, MAX_SERIES_SLICES)
        self.slices.setValue(MAX_SERIES_SLICES)
        self.slices.setPrefix("slices: ")
        self.slices.setToolTip(f"How many slices of the series go to the model, sampled evenly through it "
                               f"(each costs 256 tokens; Google's notebook sends {MAX_SERIES_SLICES})")
        self.slices.valueChanged.connect(self.slices_changed)
        self.budget = QLabel("Token count: available once the model is loaded")
        self.budget.setAccessibleName("Token budget")
        self.budget.setWordWrap(True)
        self.fit_button = QPushButton()
        self.fit_button.setAccessibleName("Use the slices that fit")
        self.fit_button.setToolTip("Sample fewer slices so that the series fits the context limit")
        self.fit_button.clicked.connect(self._use_fitting_slices)
        self._fitting_slices = 0

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Task:"))
        row.addWidget(self.mode_box, 1)
        row.addWidget(self.slices)
        budget_row = QHBoxLayout()
        budget_row.setContentsMargins(0, 0, 0, 0)
        budget_row.addWidget(self.budget, 1)
        budget_row.addWidget(self.fit_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addLayout(budget_row)
        self.fit_button.hide()
        self._on_mode()

    @property
    def mode(self) -> TaskMode:
        return self.mode_box.currentData()

    def set_mode(self, mode: TaskMode) -> None:
        self.mode_box.setCurrentIndex(self.mode_box.findData(mode))

    @property
    def slice_count(self) -> int:
        return self.slices.value()

    def show_series(self, slice_count: int) -> None:
        """The series the next question reads has `slice_count` slices: offer no more than it has (or 85)."""
        most = max(1, min(slice_count, MAX_SERIES_SLICES))
        self.slices.setMaximum(most)
        self.slices.setValue(most)

    def show_budget(self, check: BudgetCheck) -> None:
        """The question's cost; when it does not fit, why, and for a series the slice count that fits."""
        self.show_message(check.problem or check.summary, error=bool(check.problem))
        fitting = check.slices_that_fit if not check.fits else None
        self._fitting_slices = fitting or 0
        self.fit_button.setText(f"Use {fitting} slices")
        self.fit_button.setVisible(bool(fitting))

    def show_message(self, text: str, error: bool = False) -> None:
        """A note in place of the count (no model yet, or what the mode still needs)."""
        self.budget.setText(text)
        self.budget.setObjectName("errorLabel" if error else "")
        self.budget.style().polish(self.budget)
        self.fit_button.hide()

    def _use_fitting_slices(self) -> None:
        if self._fitting_slices:
            self.slices.setValue(self._fitting_slices)

    def _on_mode(self) -> None:
        self.slices.setVisible(self.mode in SERIES_MODES)
        self.mode_changed.emit(self.mode)
