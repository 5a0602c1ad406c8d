"""DICOM in the viewer, on pydicom's real CT_small.dcm: Hounsfield units under the cursor, window presets and
right-drag re-rendering from the stored values, a shuffled series folder scrolled in slice order, and the tag
panel keeping patient data hidden until asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication

from medgemma_desktop.core.dicom import load_dicom
from medgemma_desktop.core.windowing import CT_WINDOW_PRESETS, Window, apply_window
from medgemma_desktop.ui.image_canvas import ImageCanvas
from medgemma_desktop.ui.viewer import ViewerPanel

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]


def open_and_wait(qtbot, viewer: ViewerPanel, paths: list[Path]) -> None:
    with qtbot.waitSignal(viewer.load_finished, timeout=20_000):
        viewer.open_paths(paths)
    assert not viewer.error_label.isVisible(), viewer.error_label.text()


def move_mouse(canvas: ImageCanvas, x: float, y: float, buttons=Qt.MouseButton.NoButton) -> None:
    """A mouse move over picture pixel (x, y), delivered as the window system would."""
    position = QPointF(canvas.mapFromScene(QPointF(x + 0.5, y + 0.5)))
    event = QMouseEvent(QEvent.Type.MouseMove, position, canvas.viewport().mapToGlobal(position),
                        Qt.MouseButton.NoButton, buttons, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(canvas.viewport(), event)


def mouse_button(canvas: ImageCanvas, kind: QEvent.Type, position: QPointF, button: Qt.MouseButton) -> None:
    buttons = button if kind is QEvent.Type.MouseButtonPress else Qt.MouseButton.NoButton
    event = QMouseEvent(kind, position, canvas.viewport().mapToGlobal(position), button, buttons,
                        Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(canvas.viewport(), event)


def wheel(canvas: ImageCanvas, notches: int, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    event = QWheelEvent(QPointF(50, 50), QPointF(50, 50), QPoint(0, 0), QPoint(0, 120 * notches),
                        Qt.MouseButton.NoButton, modifiers, Qt.ScrollPhase.NoScrollPhase, False)
    canvas.wheelEvent(event)


def shown_grey(viewer: ViewerPanel, x: int, y: int) -> int:
    return viewer.canvas.pixels.pixelColor(x, y).red()


def test_hounsfield_units_under_the_cursor(qtbot, viewer: ViewerPanel) -> None:
    open_and_wait(qtbot, viewer, [CT_SMALL])
    hu = load_dicom(CT_SMALL).values[0]
    for x, y in ((64, 64), (10, 100), (100, 30)):
        move_mouse(viewer.canvas, x, y)
        assert f"x {x}, y {y}: {hu[y, x]:.0f} HU" in viewer.readout.text()
    assert "W 400 L 40" in viewer.readout.text()  # CT without a window in the file: soft tissue


def test_window_presets_and_right_drag_re_render_from_the_hounsfield_units(qtbot, viewer: ViewerPanel) -> None:
    open_and_wait(qtbot, viewer, [CT_SMALL])
    hu = load_dicom(CT_SMALL).values[0]
    box = viewer.window_box
    assert box.isVisible() and box.count() == 1 + len(CT_WINDOW_PRESETS)
    assert shown_grey(viewer, 64, 64) == apply_window(hu, 40, 400)[64, 64]
    for name, window in CT_WINDOW_PRESETS.items():
        index = next(i for i in range(box.count()) if box.itemText(i).lower().startswith(f"{i + 1} {name}:"))
        box.activated.emit(index)
        expected = apply_window(hu, window.center, window.width)
        assert viewer.view is not None and viewer.view.window == window
        assert [shown_grey(viewer, x, y) for x, y in ((64, 64), (20, 90), (5, 5))] == \
            [expected[y, x] for x, y in ((64, 64), (20, 90), (5, 5))]
    assert viewer.model.pending()[0].metadata["window_width"] == "400"  # the model's picture is unchanged

    before = viewer.view.window
    start = QPointF(viewer.canvas.viewport().rect().center())
    mouse_button(viewer.canvas, QEvent.Type.MouseButtonPress, start, Qt.MouseButton.RightButton)
    move_mouse(viewer.canvas, 0, 0, Qt.MouseButton.RightButton)  # somewhere up and left of the centre
    end = QPointF(viewer.canvas.mapFromScene(QPointF(0.5, 0.5)))
    mouse_button(viewer.canvas, QEvent.Type.MouseButtonRelease, end, Qt.MouseButton.RightButton)
    dragged = viewer.view.window
    assert dragged.width < before.width and dragged.center < before.center  # left narrows, up lowers the level
    assert box.currentIndex() == -1  # "Custom"
    assert shown_grey(viewer, 64, 64) == apply_window(hu, dragged.center, dragged.width)[64, 64]
    assert viewer.canvas.dragMode() is viewer.canvas.DragMode.ScrollHandDrag  # left-drag still pans


def test_a_shuffled_series_folder_is_one_item_scrolled_in_slice_order(qtbot, viewer: ViewerPanel, tmp_path: Path,
                                                                      ct_series) -> None:
    offsets = ct_series(tmp_path / "series", [0, 100, 200, 300, 400])
    (tmp_path / "series" / "notes.txt").write_text("not DICOM")
    open_and_wait(qtbot, viewer, [tmp_path / "series"])
    assert viewer.model.rowCount() == 1
    assert viewer.model.pending_pictures()[0].series.slice_count == 5  # type: ignore[union-attr]
    hu = load_dicom(CT_SMALL).values[0]
    canvas = viewer.canvas
    assert canvas.scrolls_slices and "Ctrl+wheel: zoom" in canvas.toolTip()
    assert viewer.slice_label.text() == "slice 3 / 5"  # opens at the middle slice

    def shown_offset() -> int:
        move_mouse(canvas, 64, 64)
        value = int(viewer.readout.text().split(": ")[1].split(" HU")[0])
        return value - int(hu[64, 64])

    viewer.show_slice(0)
    seen = [shown_offset()]
    for _ in range(4):
        wheel(canvas, -1)  # wheel towards the user: next slice
        seen.append(shown_offset())
    assert seen == offsets and viewer.slice_label.text() == "slice 5 / 5"
    wheel(canvas, -1)
    assert viewer.slice_label.text() == "slice 5 / 5"  # stops at the end
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_PageUp)
    qtbot.keyClick(canvas, Qt.Key.Key_Up)
    assert viewer.slice_label.text() == "slice 3 / 5" and shown_offset() == 200
    qtbot.keyClick(canvas, Qt.Key.Key_PageDown)
    assert viewer.slice_label.text() == "slice 4 / 5"
    zoom = canvas.zoom
    wheel(canvas, 1, Qt.KeyboardModifier.ControlModifier)
    assert canvas.zoom == pytest.approx(zoom * 1.25) and viewer.slice_label.text() == "slice 4 / 5"


def test_a_dicomdir_opens_one_item_per_series(qtbot, viewer: ViewerPanel) -> None:
    dicomdir = Path(get_testdata_file("DICOMDIR"))  # type: ignore[arg-type]
    open_and_wait(qtbot, viewer, [dicomdir])
    pictures = viewer.model.pending_pictures()
    assert len(pictures) == 13  # the DICOMDIR's series; one-slice series are plain DICOM pictures
    assert sum(picture.series.slice_count if picture.series else 1 for picture in pictures) == 31
    brain = next(picture for picture in pictures if picture.input.label.startswith("Routine Brain"))
    viewer.strip.setCurrentIndex(viewer.model.index(pictures.index(brain)))
    assert viewer.slice_label.text() == "slice 3 / 4" and viewer.canvas.scrolls_slices


def test_patient_data_is_hidden_until_the_user_asks(qtbot, viewer: ViewerPanel) -> None:
    open_and_wait(qtbot, viewer, [CT_SMALL])
    tags = viewer.tags
    assert tags.isVisible() and not tags.table.isVisible()  # collapsed at first
    qtbot.mouseClick(tags.toggle, Qt.MouseButton.LeftButton)
    assert tags.table.isVisible()

    def rows() -> dict[str, str]:
        return {tags.table.topLevelItem(i).text(0): tags.table.topLevelItem(i).text(1)
                for i in range(tags.table.topLevelItemCount())}

    assert rows()["Modality"] == "CT" and "PatientName" not in rows() and "PatientID" not in rows()
    assert "CompressedSamples" not in " ".join(rows().values())
    tags.show_patient.click()
    assert rows()["PatientName"] == "CompressedSamples^CT1"
    tags.show_patient.click()
    assert "PatientName" not in rows()


def test_plain_pictures_show_rgb_under_the_cursor_and_no_dicom_controls(qtbot, viewer: ViewerPanel,
                                                                        tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (50, 40), (10, 20, 30)).save(path)
    open_and_wait(qtbot, viewer, [path])
    move_mouse(viewer.canvas, 5, 5)
    assert viewer.readout.text() == "x 5, y 5: RGB 10, 20, 30"
    assert not viewer.window_box.isVisible() and not viewer.tags.isVisible() and viewer.slice_label.text() == ""
    assert not viewer.canvas.scrolls_slices


def test_window_drag_keeps_a_positive_width() -> None:
    from medgemma_desktop.ui.window_level import dragged_window

    assert dragged_window(Window(40, 400), -10_000, 0).width == 1.0
    assert dragged_window(Window(40, 256), 256, 256) == Window(296, 512)
    np.testing.assert_allclose(dragged_window(Window(0, 512), 0, -128), Window(-256, 512))
