"""File > Save as DICOM report… in the real window (the tiny checkpoint answering through the real worker): the
report and de-identified copies are written and validate; pictures get one line saying why there is no report;
a reopened conversation about a DICOM file has its DICOM tools back."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from dicom_validation import dciodvfy_errors
from PIL import Image
from pydicom.data import get_testdata_file
from PySide6.QtCore import Qt

from medgemma_desktop.core.imaging import load_any
from medgemma_desktop.ui.dicom_report_dialog import DicomReportDialog
from medgemma_desktop.ui.main_window import MainWindow
from medgemma_desktop.ui.worker import ModelState

TIMEOUT_MS = 30_000
CT = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]


def open_window(qtbot, settings_path: Path, data: Path) -> MainWindow:
    window = MainWindow(settings_path, loader=load_any, data_folder=data)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY, timeout=TIMEOUT_MS)
    window.settings = replace(window.settings, max_new_tokens=8)
    return window


@pytest.fixture
def window(qtbot, tiny_settings_path: Path, tmp_path: Path) -> Iterator[MainWindow]:
    main = open_window(qtbot, tiny_settings_path, tmp_path / "data")
    yield main
    main.close()


def save_dialog(window: MainWindow) -> DicomReportDialog:
    file_menu = window.menuBar().actions()[0].menu()
    [action] = [action for action in file_menu.actions() if action.text() == "Save as &DICOM report…"]
    action.trigger()
    dialog = window.findChild(DicomReportDialog)
    assert dialog is not None and dialog.isVisible()
    return dialog


def test_save_as_dicom_report_writes_a_valid_deidentified_report(qtbot, ask_and_wait, window: MainWindow,
                                                                 tmp_path: Path) -> None:
    with qtbot.waitSignal(window.viewer.load_finished):
        window.viewer.open_paths([CT])
    ask_and_wait(window, "What organ is shown?", TIMEOUT_MS)
    dialog = save_dialog(window)
    dialog.folder.set_path(str(tmp_path / "out"))
    dialog.deidentify.setChecked(True)
    with qtbot.waitSignal(dialog.saved, timeout=TIMEOUT_MS) as saved:
        qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    assert saved.args[0].startswith(f"Saved 1 DICOM report, 1 de-identified image to {tmp_path / 'out'}")
    assert window.statusBar().currentMessage() == saved.args[0]
    report = tmp_path / "out" / "question_1.dcm"
    [copy] = (tmp_path / "out" / "question_1_images").iterdir()
    for path in (report, copy):
        assert dciodvfy_errors(path) == [], path.name
    read = pydicom.dcmread(report)
    assert read.PatientName == "" and "CompressedSamples" not in str(read.to_json_dict())
    evidence = read.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == pydicom.dcmread(copy).SOPInstanceUID


def test_pictures_get_one_line_saying_why(qtbot, ask_and_wait, window: MainWindow, tmp_path: Path) -> None:
    picture = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (90, 90, 90)).save(picture)
    with qtbot.waitSignal(window.viewer.load_finished):
        window.viewer.open_paths([picture])
    ask_and_wait(window, "What is this?", TIMEOUT_MS)
    dialog = save_dialog(window)
    dialog.folder.set_path(str(tmp_path / "out"))
    qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(dialog.error_label.isVisible, timeout=TIMEOUT_MS)
    text = dialog.error_label.text()
    assert "\n" not in text and "photo.png" in text and "no DICOM image" in text and "Markdown" in text
    assert dialog.isVisible() and dialog.save_button.isEnabled()
    dialog.reject()


def test_a_reopened_conversation_keeps_its_dicom_tools(qtbot, ask_and_wait, tiny_settings_path: Path,
                                                       tmp_path: Path) -> None:
    """With patient details kept (the user's choice), the history knows the DICOM file again."""
    from medgemma_desktop.core.settings import load_settings, save_settings

    settings_path = tmp_path / "keeping.json"
    save_settings(replace(load_settings(tiny_settings_path).settings, keep_patient_data=True), settings_path)
    window = open_window(qtbot, settings_path, tmp_path / "data")
    with qtbot.waitSignal(window.viewer.load_finished):
        window.viewer.open_paths([CT])
    ask_and_wait(window, "What organ is shown?", TIMEOUT_MS)
    conversation = window.controller.session.id
    window.new_conversation()
    assert window.viewer.model.rowCount() == 0
    with qtbot.waitSignal(window.conversation_opened, timeout=TIMEOUT_MS):
        window.controller.open_conversation(conversation)
    viewer = window.viewer
    assert viewer.model.rowCount() == 1 and viewer.view is not None
    assert viewer.window_box.isVisible() and viewer.tags.isVisible()  # presets and tags are back
    assert viewer.view.value_at(64, 64) is not None and viewer.view.value_at(64, 64).endswith(" HU")
    window.close()
