"""The window's menu bar: every action with its shortcut, wired to the part that does it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMenu

from medgemma_desktop.ui.batch_dialog import open_batch_dialog
from medgemma_desktop.ui.dicom_report_dialog import open_dicom_report_dialog
from medgemma_desktop.ui.send_controller import generation_settings

if TYPE_CHECKING:
    from medgemma_desktop.ui.main_window import MainWindow


def _action(window: MainWindow, menu: QMenu, text: str, slot: Callable[[], object],
            shortcut: QKeySequence | QKeySequence.StandardKey | str | None = None) -> QAction:
    action = QAction(text, window)
    if shortcut is not None:
        action.setShortcut(QKeySequence(shortcut))
    action.triggered.connect(slot)
    menu.addAction(action)
    return action


def build_menus(window: MainWindow) -> QAction:
    """Fill the menu bar; returns the export action (enabled only while a conversation is open)."""
    bar = window.menuBar()
    chat, viewer, controller = window.chat, window.viewer, window.controller
    file_menu = bar.addMenu("&File")
    _action(window, file_menu, "&Open images…", viewer.choose_files, QKeySequence.StandardKey.Open)
    _action(window, file_menu, "Open &folder…", viewer.choose_folder, "Ctrl+Shift+O")
    _action(window, file_menu, "&Paste image", viewer.paste_from_clipboard, QKeySequence.StandardKey.Paste)
    _action(window, file_menu, "&New conversation", window.new_conversation, QKeySequence.StandardKey.New)
    export = _action(window, file_menu, "&Export conversation…", window.open_export, "Ctrl+Shift+E")
    _action(window, file_menu, "Save as &DICOM report…",
            lambda: open_dicom_report_dialog(window, window.controller.session))
    _action(window, file_menu, "&Batch…",
            lambda: open_batch_dialog(window, window.host, generation_settings(window.settings)), "Ctrl+B")
    file_menu.addSeparator()
    _action(window, file_menu, "&Load model", window.request_load, "Ctrl+L")
    _action(window, file_menu, "&Model manager…", window.open_model_manager, "Ctrl+M")
    _action(window, file_menu, "&Settings…", window.open_settings, "Ctrl+,")  # Cmd+, on macOS
    file_menu.addSeparator()
    _action(window, file_menu, "&Quit", window.close, QKeySequence.StandardKey.Quit)
    chat_menu = bar.addMenu("&Chat")
    _action(window, chat_menu, "&Stop", window.host.stop, "Esc")
    _action(window, chat_menu, "&Regenerate", controller.regenerate, "Ctrl+R")
    _action(window, chat_menu, "&Copy answer", chat.copy_answer, "Ctrl+Shift+C")
    _action(window, chat_menu, "&Edit last question", lambda: chat.start_edit(len(chat.conversation.exchanges) - 1),
            "Ctrl+E")
    _action(window, chat_menu, "Pre&vious answer variant",
            lambda: controller.show_variant(len(chat.conversation.exchanges) - 1, -1), "Ctrl+[")
    _action(window, chat_menu, "Ne&xt answer variant",
            lambda: controller.show_variant(len(chat.conversation.exchanges) - 1, 1), "Ctrl+]")
    _action(window, chat_menu, "&Search history", window.history.search_box.setFocus, QKeySequence.StandardKey.Find)
    help_menu = bar.addMenu("&Help")
    _action(window, help_menu, "&About MedGemma Desktop", window.show_about)
    return export
