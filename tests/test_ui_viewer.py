"""The image viewer: files, folders and pasted pictures come in through a background job; zoom, fit, 100%;
a thumbnail strip once there are several images; removing an image from the next question."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt
from PySide6.QtGui import QGuiApplication, QImage, QWheelEvent

from medgemma_desktop.core.imaging import ImageInput, load_image
from medgemma_desktop.ui.viewer import ViewerPanel


def write_picture(path: Path, size: tuple[int, int] = (400, 300), colour=(120, 30, 30)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def open_and_wait(qtbot, viewer: ViewerPanel, paths: list[Path]) -> None:
    with qtbot.waitSignal(viewer.load_finished, timeout=10_000):
        viewer.open_paths(paths)


def test_files_are_decoded_off_the_ui_thread_by_the_loader_given(qtbot, tmp_path: Path) -> None:
    threads: list[int] = []

    def recording_loader(path: Path) -> ImageInput:
        threads.append(threading.get_ident())
        return load_image(path)

    panel = ViewerPanel(loader=recording_loader)
    qtbot.addWidget(panel)
    open_and_wait(qtbot, panel, [write_picture(tmp_path / "a.png")])
    assert threads and threads[0] != threading.get_ident()
    assert panel.model.rowCount() == 1


def test_a_dropped_folder_opens_its_pictures_in_name_order(qtbot, viewer: ViewerPanel, tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "c.tiff"):
        write_picture(folder / name)
    (folder / "notes.txt").write_text("not a picture")
    (folder / ".hidden.png").write_bytes(b"")
    open_and_wait(qtbot, viewer, [folder])
    assert [item.label for item in viewer.model.pending()] == ["a.jpg", "b.png", "c.tiff"]
    assert not viewer.error_label.isVisible()
    assert viewer.strip.isVisible()  # several images: the thumbnail strip shows
    assert viewer.strip.currentIndex().row() == 0


def test_one_image_hides_the_strip_and_remove_takes_it_off_the_next_question(qtbot, viewer: ViewerPanel,
                                                                             tmp_path: Path) -> None:
    open_and_wait(qtbot, viewer, [write_picture(tmp_path / "a.png")])
    assert not viewer.strip.isVisible()
    open_and_wait(qtbot, viewer, [write_picture(tmp_path / "b.png")])
    assert viewer.strip.isVisible()
    assert viewer.strip.currentIndex().row() == 1  # the newest is shown
    qtbot.mouseClick(viewer.remove_button, Qt.MouseButton.LeftButton)
    assert [item.label for item in viewer.model.pending()] == ["a.png"]
    assert not viewer.strip.isVisible()


def test_sent_images_stay_listed_but_cannot_be_removed(qtbot, viewer: ViewerPanel, tmp_path: Path) -> None:
    open_and_wait(qtbot, viewer, [write_picture(tmp_path / "a.png")])
    viewer.model.mark_sent(viewer.model.pending_pictures())
    assert viewer.model.pending() == [] and viewer.model.rowCount() == 1
    assert not viewer.remove_button.isEnabled()
    assert "(sent)" in viewer.model.data(viewer.model.index(0))


def test_zoom_fit_and_actual_size(qtbot, viewer: ViewerPanel, tmp_path: Path) -> None:
    open_and_wait(qtbot, viewer, [write_picture(tmp_path / "big.png", (2000, 1500))])
    canvas = viewer.canvas
    fitted = canvas.zoom
    assert 0 < fitted < 1  # a 2000 px picture fits a 600 px window
    wheel = QWheelEvent(QPointF(50, 50), QPointF(50, 50), QPoint(0, 0), QPoint(0, 120), Qt.MouseButton.NoButton,
                        Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    canvas.wheelEvent(wheel)
    assert canvas.zoom == pytest.approx(fitted * 1.25)
    qtbot.mouseClick(viewer.actual_button, Qt.MouseButton.LeftButton)
    assert canvas.zoom == 1.0
    qtbot.mouseClick(viewer.fit_button, Qt.MouseButton.LeftButton)
    assert canvas.zoom == pytest.approx(fitted)
    assert canvas.dragMode() is canvas.DragMode.ScrollHandDrag  # dragging pans


def test_paste_an_image_from_the_clipboard(qtbot, viewer: ViewerPanel) -> None:
    image = QImage(64, 48, QImage.Format.Format_RGB32)
    image.fill(Qt.GlobalColor.darkCyan)
    QGuiApplication.clipboard().setImage(image)
    with qtbot.waitSignal(viewer.load_finished, timeout=10_000):
        viewer.paste_from_clipboard()
    [pasted] = viewer.model.pending()
    assert pasted.label == "pasted image 1" and pasted.image.size == (64, 48)
    assert pasted.image.getpixel((5, 5)) == (0, 128, 128)
    assert len(pasted.sha256) == 64


def test_pasting_text_says_what_is_wrong(viewer: ViewerPanel) -> None:
    mime = QMimeData()
    mime.setText("just words")
    viewer.open_mime(mime)
    assert viewer.error_label.isVisible() and "no image" in viewer.error_label.text()
