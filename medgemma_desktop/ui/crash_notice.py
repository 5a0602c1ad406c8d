"""The one-line notice that the last run crashed (a native fault: a GPU driver, a library's C code), shown once at
the next start from the faulthandler report (core/logging_setup.py), with the report a click away for a bug
report. It sits in a toolbar above the window's content so it neither covers nor moves anything the user needs."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QSizePolicy,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

MAX_SHOWN_CHARS = 200_000  # a report is a few KB; a runaway one must not freeze the dialog


class CrashLogDialog(QDialog):
    def __init__(self, report: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Crash report of the last run")
        self.setAccessibleName("Crash report of the last run")
        where = QLabel(f"Saved as {report}. Attach it to a bug report: it shows where the code was, not your "
                       "questions or images.")
        where.setWordWrap(True)
        where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.text = QPlainTextEdit(report.read_text(encoding="utf-8", errors="replace")[:MAX_SHOWN_CHARS])
        self.text.setReadOnly(True)
        self.text.setAccessibleName("Crash report")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = buttons.addButton("Copy", QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.setAccessibleName("Copy the crash report")
        self.copy_button.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.text.toPlainText()))
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(where)
        layout.addWidget(self.text)
        layout.addWidget(buttons)
        self.resize(720, 420)


class CrashNotice(QToolBar):
    """"The last run ended in a crash." with Show log and Dismiss."""

    def __init__(self, report: Path, parent: QWidget | None = None) -> None:
        super().__init__("Crash notice", parent)
        self.setObjectName("crashNotice")
        self.setAccessibleName("Crash notice")
        self.setMovable(False)
        self.setFloatable(False)
        self.report = report
        self.dialog: CrashLogDialog | None = None
        self.label = QLabel("The last run of MedGemma Desktop ended in a crash; its report may help fix it.")
        self.label.setAccessibleName("The last run crashed")
        self.label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.addWidget(self.label)
        self.show_action = self.addAction("Show log", self.show_log)
        self.dismiss_action = self.addAction("Dismiss", self.dismiss)
        for action, name in ((self.show_action, "Show the crash report"), (self.dismiss_action, "Dismiss")):
            self.widgetForAction(action).setAccessibleName(name)

    def show_log(self) -> None:
        self.dialog = CrashLogDialog(self.report, self.window())
        self.dialog.show()

    def dismiss(self) -> None:
        self.hide()
        self.deleteLater()
