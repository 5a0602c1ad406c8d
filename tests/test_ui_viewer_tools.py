"""The viewer's radiology tools on pydicom's real CT_small.dcm and copies of it: distances in mm from Pixel
Spacing (and what is said without it), corner overlays, invert, rotate, flip, preset keys, the slice slider,
paging keys without clicking the image, the searchable tag list, and DICOM tools back on reopened pictures."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from medgemma_desktop.core.dicom import load_dicom
from medgemma_desktop.core.imaging import ImageInput, dicom_image_input, pixels_sha256
from medgemma_desktop.core.pixel_spacing import AT_DETECTOR, UNKNOWN
from medgemma_desktop.core.windowing import CT_WINDOW_PRESETS, apply_window
from medgemma_desktop.ui.image_canvas import ImageCanvas
from medgemma_desktop.ui.viewer import ViewerPanel
from medgemma_desktop.ui.viewer_loading import reopened_pictures

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
SPACING = 0.661468  # CT_small's Pixel Spacing, mm


def open_and_wait(qtbot, viewer: ViewerPanel, paths: list[Path]) -> None:
    with qtbot.waitSignal(viewer.load_finished, timeout=20_000):
        viewer.open_paths(paths)
    assert not viewer.error_label.isVisible(), viewer.error_label.text()


def send_mouse(canvas: ImageCanvas, kind: QEvent.Type, x: float, y: float, button=Qt.MouseButton.LeftButton):
    """A mouse event at picture pixel (x, y) as the window system delivers it."""
    position = QPointF(canvas.mapFromScene(canvas._item.mapToScene(QPointF(x, y))))
    buttons = Qt.MouseButton.NoButton if kind is QEvent.Type.MouseButtonRelease else button
    event = QMouseEvent(kind, position, canvas.viewport().mapToGlobal(position), button, buttons,
                        Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(canvas.viewport(), event)


def drag(canvas: ImageCanvas, start: tuple[float, float], end: tuple[float, float]) -> None:
    send_mouse(canvas, QEvent.Type.MouseButtonPress, *start)
    send_mouse(canvas, QEvent.Type.MouseMove, *end)
    send_mouse(canvas, QEvent.Type.MouseButtonRelease, *end)


def ct_copy(path: Path, **changes) -> Path:
    dataset = pydicom.dcmread(CT_SMALL)
    for keyword, value in changes.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    dataset.save_as(path)
    return path


def measure(qtbot, viewer: ViewerPanel, path: Path) -> str:
    open_and_wait(qtbot, viewer, [path])
    viewer.actual_button.click()  # one screen pixel per picture pixel: the mouse lands on whole pixels
    viewer.measure_button.click()
    drag(viewer.canvas, (10, 10), (40, 50))  # 30 across, 40 down: 50 pixels
    return viewer.measure_label.text()


def test_a_distance_is_in_mm_from_pixel_spacing(qtbot, viewer: ViewerPanel) -> None:
    assert measure(qtbot, viewer, CT_SMALL) == f"Distance: {50 * SPACING:.1f} mm" == "Distance: 33.1 mm"
    assert viewer.canvas.measurement.text == "33.1 mm"
    assert viewer.canvas.dragMode() is viewer.canvas.DragMode.NoDrag  # measuring, not panning
    viewer.rotate_button.click()  # the measurement is in the picture's pixels whatever the view does
    drag(viewer.canvas, (10, 10), (40, 50))
    assert viewer.measure_label.text() == "Distance: 33.1 mm"
    viewer.measure_button.click()
    assert viewer.canvas.measurement.text == "" and viewer.canvas.dragMode() is viewer.canvas.DragMode.ScrollHandDrag


def test_anisotropic_spacing_counts_rows_and_columns_apart(qtbot, viewer: ViewerPanel, tmp_path: Path) -> None:
    path = ct_copy(tmp_path / "aniso.dcm", PixelSpacing=[2.0, 0.5])  # rows 2 mm apart, columns 0.5 mm
    assert measure(qtbot, viewer, path) == f"Distance: {np.hypot(30 * 0.5, 40 * 2.0):.1f} mm"


def test_a_projection_x_ray_says_its_spacing_is_at_the_detector(qtbot, viewer: ViewerPanel, tmp_path: Path) -> None:
    path = ct_copy(tmp_path / "dx.dcm", Modality="DX", PixelSpacing=None, ImagerPixelSpacing=[0.2, 0.2])
    assert measure(qtbot, viewer, path) == f"Distance: 10.0 mm ({AT_DETECTOR})"
    assert viewer.canvas.measurement.text == "10.0 mm"


def test_without_spacing_the_distance_stays_in_pixels_and_says_why(qtbot, viewer: ViewerPanel,
                                                                   tmp_path: Path) -> None:
    path = ct_copy(tmp_path / "plain.dcm", PixelSpacing=None)
    assert measure(qtbot, viewer, path) == f"Distance: 50.0 px ({UNKNOWN})"


def test_corner_overlays_show_series_slice_position_and_window(qtbot, viewer: ViewerPanel, tmp_path: Path,
                                                               ct_series) -> None:
    ct_series(tmp_path / "series", [0, 100, 200, 300, 400])
    open_and_wait(qtbot, viewer, [tmp_path / "series"])
    corners = viewer.canvas.corners
    assert corners["top_left"].splitlines()[-1] == "Slice 3/5 · Pos 10.0 mm"  # from z 5 mm, 2.5 mm apart
    assert corners["bottom_left"] == "W 400 L 40"
    assert corners["top_right"] == ""  # no patient data until asked
    assert viewer.canvas.view_text().startswith("Zoom ")
    viewer.step_slice(1)
    assert viewer.canvas.corners["top_left"].splitlines()[-1] == "Slice 4/5 · Pos 12.5 mm"
    viewer.tags.toggle.click()
    viewer.tags.show_patient.click()
    assert "CompressedSamples^CT1" in viewer.canvas.corners["top_right"]
    viewer.tags.show_patient.click()
    assert viewer.canvas.corners["top_right"] == ""

    shown = viewer.canvas.grab().toImage()
    yellow = [shown.pixelColor(x, y) for x in range(4, 140) for y in range(4, 40)]
    assert any(c.red() > 200 and c.green() > 200 and c.blue() < 200 for c in yellow)  # the text is painted
    viewer.overlay_button.click()
    hidden = viewer.canvas.grab().toImage()
    assert not any(c.red() > 200 and c.green() > 200 and c.blue() < 200
                   for c in (hidden.pixelColor(x, y) for x in range(4, 140) for y in range(4, 40)))


def test_invert_rotate_and_flip(qtbot, viewer: ViewerPanel, tmp_path: Path) -> None:
    open_and_wait(qtbot, viewer, [CT_SMALL])
    hu = load_dicom(CT_SMALL).values[0]
    grey = int(apply_window(hu, 40, 400)[64, 70])
    viewer.invert_button.click()
    assert viewer.canvas.pixels.pixelColor(70, 64).red() == 255 - grey
    assert "Inverted" in viewer.canvas.corners["bottom_left"]
    viewer.invert_button.click()
    assert viewer.canvas.pixels.pixelColor(70, 64).red() == grey

    wide = tmp_path / "wide.png"
    Image.new("RGB", (200, 100), (40, 40, 40)).save(wide)
    open_and_wait(qtbot, viewer, [wide])
    canvas = viewer.canvas
    item = canvas._item

    def corner_of_top_left_pixel() -> tuple[float, float]:
        scene = canvas.sceneRect()
        point = item.mapToScene(QPointF(0, 0))
        return (point.x() - scene.left(), point.y() - scene.top())

    assert corner_of_top_left_pixel() == (0, 0)
    viewer.rotate_button.click()  # 90° clockwise: the top-left corner goes to the top right
    assert (canvas.sceneRect().width(), canvas.sceneRect().height()) == (100, 200)
    assert corner_of_top_left_pixel() == pytest.approx((100, 0))
    assert "Rotated 90°" in canvas.view_text()
    for _ in range(3):
        viewer.rotate_button.click()
    assert canvas.rotation == 0 and corner_of_top_left_pixel() == pytest.approx((0, 0))
    viewer.flip_h_button.click()
    assert corner_of_top_left_pixel() == pytest.approx((200, 0)) and "Flipped H" in canvas.view_text()
    viewer.flip_v_button.click()
    assert corner_of_top_left_pixel() == pytest.approx((200, 100))
    point = canvas.picture_point(canvas.mapFromScene(item.mapToScene(QPointF(20.5, 10.5))))
    assert (int(point.x()), int(point.y())) == (20, 10)  # the readout still names the picture's own pixel


def test_keys_on_the_image(qtbot, viewer: ViewerPanel) -> None:
    open_and_wait(qtbot, viewer, [CT_SMALL])
    canvas = viewer.canvas
    canvas.setFocus()
    assert viewer.view is not None
    presets = list(CT_WINDOW_PRESETS.values())
    qtbot.keyClick(canvas, Qt.Key.Key_2)  # 1 is the file's own window, then the CT presets in order
    assert viewer.view.window == presets[0]
    qtbot.keyClick(canvas, Qt.Key.Key_6)
    assert viewer.view.window == presets[4] and viewer.window_box.currentIndex() == 5
    qtbot.keyClick(canvas, Qt.Key.Key_1)
    assert viewer.view.window == viewer.view.default_window
    qtbot.keyClick(canvas, Qt.Key.Key_I)
    assert viewer.view.inverted and viewer.invert_button.isChecked()
    qtbot.keyClick(canvas, Qt.Key.Key_R)
    assert canvas.rotation == 90
    qtbot.keyClick(canvas, Qt.Key.Key_H)
    qtbot.keyClick(canvas, Qt.Key.Key_V)
    assert canvas.flipped_horizontally and canvas.flipped_vertically
    qtbot.keyClick(canvas, Qt.Key.Key_M)
    assert canvas.measuring and viewer.measure_button.isChecked()
    qtbot.keyClick(canvas, Qt.Key.Key_O)
    assert not canvas.overlays_visible


def test_preset_labels_fit_and_dragged_windows_read_in_whole_numbers(qtbot, viewer: ViewerPanel) -> None:
    open_and_wait(qtbot, viewer, [CT_SMALL])
    box = viewer.window_box
    assert box.itemText(1) == "2 Lung: W 1500 L -600"
    widest = max(box.fontMetrics().horizontalAdvance(box.itemText(i)) for i in range(box.count()))
    assert box.width() >= box.sizeHint().width() > widest  # "Lung (L -60(" no more
    viewer._start_window_drag()
    viewer._drag_window(73.3, -37.7)
    assert re.fullmatch(r"W \d+ L -?\d+", viewer.canvas.corners["bottom_left"])
    assert viewer.readout.text() == viewer.canvas.corners["bottom_left"]


def test_paging_keys_and_slider_step_slices_without_clicking_the_image(qtbot, viewer: ViewerPanel, tmp_path: Path,
                                                                      ct_series) -> None:
    ct_series(tmp_path / "series", [0, 100, 200, 300, 400])
    viewer.activateWindow()
    qtbot.waitUntil(viewer.isActiveWindow)
    open_and_wait(qtbot, viewer, [tmp_path / "series"])
    assert QApplication.focusWidget() is viewer.canvas  # ready for the keys as soon as the series is in
    qtbot.keyClick(viewer.canvas, Qt.Key.Key_Down)
    assert viewer.slice_label.text() == "slice 4 / 5"
    viewer.open_button.setFocus()  # focus anywhere else in the viewer: the paging keys still step slices
    qtbot.keyClick(viewer.open_button, Qt.Key.Key_PageDown)
    assert viewer.slice_label.text() == "slice 5 / 5"
    qtbot.keyClick(viewer.open_button, Qt.Key.Key_PageUp)
    assert viewer.slice_label.text() == "slice 4 / 5"
    viewer.tags.toggle.click()
    viewer.tags.table.setFocus()  # the tag list keeps its own paging
    qtbot.keyClick(viewer.tags.table, Qt.Key.Key_PageDown)
    assert viewer.slice_label.text() == "slice 4 / 5"

    slider = viewer.slider
    assert slider.isVisible() and (slider.minimum(), slider.maximum(), slider.value()) == (0, 4, 3)
    slider.setValue(0)
    assert viewer.slice_label.text() == "slice 1 / 5" and viewer.view is not None and viewer.view.slice == 0
    slider.setFocus()
    qtbot.keyClick(slider, Qt.Key.Key_Right)
    assert viewer.slice_label.text() == "slice 2 / 5"
    viewer.step_slice(2)
    assert slider.value() == 3


def test_the_full_tag_list_is_searchable_and_keeps_patient_data_hidden(qtbot, viewer: ViewerPanel) -> None:
    open_and_wait(qtbot, viewer, [CT_SMALL])
    tags = viewer.tags
    tags.toggle.click()
    rows = tags.rows()
    assert rows["SamplesPerPixel"] == "1" and rows["Modality"] == "CT"  # the whole header, not a summary
    assert "PatientName" not in rows and "StudyInstanceUID" not in rows and "InstitutionName" not in rows
    assert not [name for name in rows if name.startswith("Private")]
    tags.search.setText("spacing")
    assert set(tags.rows()) == {"PixelSpacing", "SpacingBetweenSlices"}
    tags.search.setText("compressedsamples")
    assert tags.rows() == {}  # the name is nowhere to be found while hidden
    tags.show_patient.click()
    assert tags.rows() == {"PatientName": "CompressedSamples^CT1"}
    tags.search.setText("")
    assert "StudyInstanceUID" in tags.rows()


def test_reopened_dicom_pictures_get_their_tools_back(tmp_path: Path, ct_series) -> None:
    ct = load_dicom(CT_SMALL)
    stored = dicom_image_input(ct)
    as_stored = ImageInput(image=stored.image, source=CT_SMALL, sha256=stored.sha256, label=stored.label,
                           metadata=dict(stored.metadata), patient=dict(stored.patient))  # no DICOM values
    ct_series(tmp_path / "series", [0, 100, 200])
    header = pydicom.dcmread(next((tmp_path / "series").iterdir()))
    slices = [ImageInput(image=Image.new("RGB", (8, 8), (n, n, n)), source=tmp_path / "series",
                         sha256=pixels_sha256(Image.new("RGB", (8, 8), (n, n, n))), label=f"slice {n}",
                         patient={"SeriesInstanceUID": header.SeriesInstanceUID}) for n in range(3)]
    gone = ImageInput(image=stored.image, source=tmp_path / "moved.dcm", sha256="0" * 64, label="moved",
                      patient=dict(stored.patient))
    single, series, plain = reopened_pictures([as_stored, *slices, gone])
    assert single.input.dicom is not None and single.frames and not single.frames[0][0].is_color
    assert series.series is not None and series.series.slice_count == 3
    assert plain.frames == () and plain.input is gone  # its file is gone: the stored picture, as before


def test_mr_offers_its_own_window_and_its_full_range(qtbot, viewer: ViewerPanel) -> None:
    mr = Path(get_testdata_file("MR_small.dcm"))  # type: ignore[arg-type]
    open_and_wait(qtbot, viewer, [mr])
    values = load_dicom(mr).values
    box = viewer.window_box
    assert [box.itemText(i).split(":")[0] for i in range(box.count())] == ["1 File default", "2 Full range"]
    canvas = viewer.canvas
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_2)
    assert viewer.view is not None and viewer.view.window == ((values.min() + values.max()) / 2,
                                                              values.max() - values.min())
    assert viewer.canvas.corners["top_left"].startswith("MR")


def test_pan_by_dragging_or_with_the_arrow_keys(qtbot, viewer: ViewerPanel, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("RGB", (1600, 1200), (90, 90, 90)).save(big)
    open_and_wait(qtbot, viewer, [big])
    canvas = viewer.canvas
    viewer.actual_button.click()  # larger than the view: there is somewhere to pan to
    assert canvas.dragMode() is canvas.DragMode.ScrollHandDrag
    canvas.setFocus()
    before = canvas.horizontalScrollBar().value()
    qtbot.keyClick(canvas, Qt.Key.Key_Right)
    assert canvas.horizontalScrollBar().value() > before
    before = canvas.verticalScrollBar().value()
    qtbot.keyClick(canvas, Qt.Key.Key_Down)
    assert canvas.verticalScrollBar().value() > before
