"""The image viewer: the canvas (`image_canvas`), its tools, a slice slider, the tag list and a thumbnail strip,
and the ways pictures come in (drop, paste, File > Open; decoded off the UI thread by `viewer_loading`).

For DICOM the canvas shows frames re-rendered from their measured values (`dicom_view`): window/level by preset
(number keys, as in Weasis) or right-drag, slices by wheel, keys or slider, the value under the cursor, distances
in mm, invert, rotate and flip, and the corner overlays radiology viewers print. Localization boxes are drawn over
the picture they belong to (`box_overlay`). Every tool has a button and a key; the keys work on the image, and
PageUp/PageDown step slices from anywhere in the viewer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QItemSelectionModel, QMimeData, QModelIndex, QPointF, Qt, Signal
from PySide6.QtGui import QGuiApplication, QImage, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSlider,
    QTextEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from medgemma_desktop.core.imaging import ImageInput, load_any
from medgemma_desktop.core.pixel_spacing import distance_text
from medgemma_desktop.core.windowing import Window
from medgemma_desktop.ui.background import BackgroundJobs
from medgemma_desktop.ui.box_overlay import FoundBoxes
from medgemma_desktop.ui.dicom_tags import DicomTagsPanel
from medgemma_desktop.ui.dicom_view import PictureView
from medgemma_desktop.ui.hooks import report_unexpected
from medgemma_desktop.ui.image_canvas import ImageCanvas
from medgemma_desktop.ui.image_list import ImageListModel, ThumbnailStrip
from medgemma_desktop.ui.pictures import Picture, clipboard_input, render_picture
from medgemma_desktop.ui.viewer_loading import OPEN_FILTER, ImageLoader, LoadResult, load_pictures
from medgemma_desktop.ui.window_level import WindowPresetBox, dragged_window, window_text

__all__ = ["ImageCanvas", "ImageLoader", "ViewerPanel"]

SERIES_HINT = ("Wheel, PageUp/PageDown or the arrow keys: previous/next slice · Ctrl+wheel: zoom · "
               "right-drag: window/level · keys 1-9: window presets")
PRESET_KEYS = [getattr(Qt.Key, f"Key_{number}") for number in range(1, 10)]
TEXT_INPUTS = (QLineEdit, QTextEdit, QPlainTextEdit)


def _tool_button(text: str, tip: str, slot: Callable[[], None], checkable: bool = False) -> QToolButton:
    button = QToolButton()
    button.setText(text)
    button.setToolTip(tip)
    button.setAccessibleName(text)
    button.setCheckable(checkable)
    button.clicked.connect(slot)
    return button


class ViewerPanel(QWidget):
    """The left side of the window. Owns the image list model the next question reads."""

    load_finished = Signal()  # after each batch of files is in (or failed)
    series_opened = Signal(str)  # DICOM modality of a series just opened ("CT", "MR", ...)

    def __init__(self, loader: ImageLoader = load_any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Images")
        self._loader = loader
        self._pasted = 0
        self._view: PictureView | None = None
        self._drag_start: Window | None = None
        self._found: dict[ImageInput, FoundBoxes] = {}
        self.jobs = BackgroundJobs(self)
        self.model = ImageListModel(self)
        self.canvas = ImageCanvas()
        self.canvas.dropped.connect(self.open_mime)
        self.canvas.slice_step.connect(self.step_slice)
        self.canvas.window_drag_started.connect(self._start_window_drag)
        self.canvas.window_dragged.connect(self._drag_window)
        self.canvas.hovered.connect(self._show_value)
        self.canvas.measured.connect(self._show_measurement)

        self.open_button = _tool_button("Open…", "Open image files, DICOM files or a DICOMDIR (Ctrl+O)",
                                        self.choose_files)
        self.remove_button = _tool_button("Remove", "Remove this image from the next question", self.remove_current)
        self.prior_button = _tool_button("Prior", "Mark this image as the prior (older) study: Compare chest "
                                         "X-rays sends it first", self._toggle_prior, checkable=True)
        self.boxes_button = _tool_button("Show boxes", "Show the boxes of the localization answer",
                                         self._update_boxes, checkable=True)
        self.boxes_button.setChecked(True)
        self.export_boxes_button = _tool_button("Export boxes…", "Save the boxes as JSON (with the research-use "
                                                "disclaimer)", self.choose_boxes_file)
        self.fit_button = _tool_button("Fit", "Fit the image to the window (F)", self.canvas.fit_to_window)
        self.actual_button = _tool_button("100%", "Show the image at its actual size", self.canvas.actual_size)
        self.window_box = WindowPresetBox()
        self.window_box.window_chosen.connect(self.set_window)
        self.invert_button = _tool_button("Invert", "Invert the grey levels (I)", self.toggle_invert, True)
        self.rotate_button = _tool_button("Rotate", "Rotate 90° clockwise (R)", self._rotate)
        self.flip_h_button = _tool_button("Flip H", "Flip left-right (H)", self._flip_horizontally)
        self.flip_v_button = _tool_button("Flip V", "Flip top-bottom (V)", self._flip_vertically)
        self.measure_button = _tool_button("Measure", "Measure a distance: drag on the image (M); mm from the "
                                           "file's pixel spacing", self._set_measuring, True)
        self.overlay_button = _tool_button("Overlay", "Show the corner texts: series, slice, window (O)",
                                           self._set_overlays, True)
        self.overlay_button.setChecked(True)
        rows = QVBoxLayout()
        for widgets in ((self.open_button, self.remove_button, self.prior_button, self.window_box, None,
                         self.boxes_button, self.export_boxes_button),
                        (self.fit_button, self.actual_button, self.invert_button, self.rotate_button,
                         self.flip_h_button, self.flip_v_button, self.measure_button, self.overlay_button, None)):
            row = QHBoxLayout()
            for widget in widgets:
                if widget is None:
                    row.addStretch(1)
                else:
                    row.addWidget(widget)
            rows.addLayout(row)
        self.canvas.key_actions = {
            **{key: (lambda index=index: self.window_box.choose(index)) for index, key in enumerate(PRESET_KEYS)},
            Qt.Key.Key_I: self.invert_button.click, Qt.Key.Key_R: self._rotate, Qt.Key.Key_H: self._flip_horizontally,
            Qt.Key.Key_V: self._flip_vertically, Qt.Key.Key_M: self.measure_button.click,
            Qt.Key.Key_O: self.overlay_button.click, Qt.Key.Key_F: self.canvas.fit_to_window,
        }
        # The image, its tools and the slider; PageUp/PageDown step slices wherever the focus is in it (the tag
        # list and the thumbnails below keep the keys for their own paging).
        self.image_area = QWidget()
        for sequence, step in ((QKeySequence(Qt.Key.Key_PageUp), -1), (QKeySequence(Qt.Key.Key_PageDown), 1)):
            shortcut = QShortcut(sequence, self.image_area, context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(lambda step=step: self.step_slice(step))

        self.slice_label = QLabel()
        self.slice_label.setAccessibleName("Slice")
        self.slice_label.setToolTip(SERIES_HINT)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setAccessibleName("Slice slider")
        self.slider.setToolTip("Drag, or use the arrow and paging keys, to move through the slices")
        self.slider.valueChanged.connect(self.show_slice)
        self.readout = QLabel()
        self.readout.setAccessibleName("Pixel value")
        self.readout.setToolTip("The value under the cursor (Hounsfield units for CT) and the display window")
        self.measure_label = QLabel()
        self.measure_label.setAccessibleName("Measured distance")
        slices = QHBoxLayout()
        slices.addWidget(self.slice_label)
        slices.addWidget(self.slider, 1)
        info = QHBoxLayout()
        info.addWidget(self.measure_label)
        info.addStretch(1)
        info.addWidget(self.readout)
        self.tags = DicomTagsPanel()
        self.tags.show_patient.toggled.connect(self._update_corners)

        self.error_label = QLabel()
        self.error_label.setObjectName("errorLabel")
        self.error_label.setWordWrap(True)
        self.error_label.setAccessibleName("Image error")
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.hide()

        self.strip = ThumbnailStrip(self.model)
        self.strip.selectionModel().currentChanged.connect(self._show_current)
        self.model.rowsInserted.connect(self._after_rows_changed)
        self.model.rowsRemoved.connect(self._after_rows_changed)
        self.model.modelReset.connect(self._after_rows_changed)
        self.model.modelReset.connect(self._found.clear)
        self.model.dataChanged.connect(self._update_buttons)

        area = QVBoxLayout(self.image_area)
        area.setContentsMargins(0, 0, 0, 0)
        area.addLayout(rows)
        area.addWidget(self.canvas, 1)
        area.addLayout(slices)
        area.addLayout(info)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.image_area, 1)
        layout.addWidget(self.tags)
        layout.addWidget(self.error_label)
        layout.addWidget(self.strip)
        self._after_rows_changed()

    @property
    def view(self) -> PictureView | None:
        """The picture on screen with its slice and window."""
        return self._view

    def choose_files(self) -> None:
        names, _ = QFileDialog.getOpenFileNames(self, "Open images", "", OPEN_FILTER)
        if names:
            self.open_paths([Path(name) for name in names])

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of images or a DICOM series")
        if folder:
            self.open_paths([Path(folder)])

    def current_picture(self) -> Picture | None:
        return self._view.picture if self._view is not None else None

    def open_paths(self, paths: list[Path]) -> None:
        loader = self._loader
        self.jobs.run(lambda: load_pictures(paths, loader), self._add_result, self._job_failed)

    def open_inputs(self, load: Callable[[], list[ImageInput]]) -> None:
        """Images made by `load` (the demo's sample study) rather than read from paths, on the background job."""
        self.jobs.run(lambda: LoadResult([render_picture(item) for item in load()], []), self._add_result,
                      self._job_failed)

    def paste_from_clipboard(self) -> None:
        self.open_mime(QGuiApplication.clipboard().mimeData())

    def open_mime(self, mime: QMimeData) -> None:
        """Pasted or dropped data: file URLs open as files, raw image data becomes a 'pasted image'."""
        paths = [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()]
        if paths:
            self.open_paths(paths)
        elif mime.hasImage():
            self._pasted += 1
            image, number = QImage(mime.imageData()), self._pasted
            self.jobs.run(lambda: LoadResult([render_picture(clipboard_input(image, number))], []),
                          self._add_result, self._job_failed)
        else:
            self.show_error("The clipboard holds no image. Copy an image or an image file first.")

    def remove_current(self) -> None:
        row = self.strip.currentIndex().row()
        if row >= 0 and not self.model.is_sent(row):
            self.model.remove(row)

    def show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))

    # Slices, window/level and the view's tools ---------------------------------------------------------------

    def step_slice(self, delta: int) -> None:
        if self._view is not None and self._view.step(delta):
            self.canvas.measurement.clear()
            self._render()

    def show_slice(self, index: int) -> None:
        if self._view is not None:
            self.step_slice(index - self._view.slice)

    def set_window(self, window: Window) -> None:
        """Display only: what the model gets does not change."""
        if self._view is not None and self._view.windowable:
            self._view.window = window
            self.window_box.show_window(window)
            self._render()

    def toggle_invert(self) -> None:
        if self._view is not None:
            self._view.inverted = self.invert_button.isChecked()
            self._render()

    def _rotate(self) -> None:
        self.canvas.rotate_clockwise()

    def _flip_horizontally(self) -> None:
        self.canvas.flip_horizontally()

    def _flip_vertically(self) -> None:
        self.canvas.flip_vertically()

    def _set_measuring(self) -> None:
        self.canvas.set_measuring(self.measure_button.isChecked())
        if not self.measure_button.isChecked():
            self.canvas.measurement.clear()
            self.measure_label.setText("")

    def _set_overlays(self) -> None:
        self.canvas.set_overlays_visible(self.overlay_button.isChecked())

    def _show_measurement(self, start: QPointF, end: QPointF) -> None:
        calibration = self._view.calibration if self._view is not None else None
        text = distance_text((start.x(), start.y()), (end.x(), end.y()), calibration)
        self.canvas.measurement.show_line(start, end, text.split(" (")[0])
        self.measure_label.setText(f"Distance: {text}")

    def _start_window_drag(self) -> None:
        self._drag_start = self._view.window if self._view is not None else None

    def _drag_window(self, dx: float, dy: float) -> None:
        if self._drag_start is not None:
            self.set_window(dragged_window(self._drag_start, dx, dy))

    def _render(self) -> None:
        view = self._view
        if view is None:
            return
        self.canvas.replace_pixels(view.render())
        self._update_labels()

    def _update_labels(self) -> None:
        view = self._view
        several = view is not None and view.slice_count > 1
        self.slice_label.setText(f"{'slice' if view.is_series else 'frame'} {view.slice + 1} / {view.slice_count}"
                                 if several else "")
        self.slider.setVisible(several)
        if several:
            self.slider.blockSignals(True)
            self.slider.setRange(0, view.slice_count - 1)
            self.slider.setPageStep(max(view.slice_count // 10, 1))
            self.slider.setValue(view.slice)
            self.slider.blockSignals(False)
        self._show_value(None)
        self._update_corners()

    def _update_corners(self) -> None:
        view = self._view
        self.canvas.set_corners(view.corner_texts(self.tags.show_patient.isChecked()) if view is not None else {})

    def _show_value(self, point: tuple[int, int] | None) -> None:
        view = self._view
        parts = []
        value = view.value_at(*point) if view is not None and point is not None else None
        if point is not None and value is not None:
            parts.append(f"x {point[0]}, y {point[1]}: {value}")
        if view is not None and view.window is not None:
            parts.append(window_text(view.window))
        self.readout.setText(" · ".join(parts))

    # Localization boxes --------------------------------------------------------------------------------------

    def set_boxes(self, target: ImageInput, found: FoundBoxes) -> None:
        """Keep the boxes with the picture they belong to, and show that picture."""
        self._found[target] = found
        row = next((row for row in range(self.model.rowCount()) if self.model.picture(row).input is target), -1)
        if row >= 0:
            self.strip.setCurrentIndex(self.model.index(row))
        self.boxes_button.setChecked(True)
        self._update_boxes()

    def current_boxes(self) -> FoundBoxes | None:
        return self._found.get(self._view.picture.input) if self._view is not None else None

    def choose_boxes_file(self) -> None:
        name, _ = QFileDialog.getSaveFileName(self, "Export boxes", "boxes.json", "JSON (*.json)")
        if name:
            self.export_boxes(Path(name))

    def export_boxes(self, path: Path) -> None:
        found = self.current_boxes()
        if found is None:
            return
        try:
            path.write_text(found.to_json(), encoding="utf-8")
        except OSError as exc:
            self.show_error(f"{path}: the boxes could not be saved ({exc.strerror or exc}). Choose another folder.")

    def _update_boxes(self) -> None:
        found = self.current_boxes()
        self.canvas.boxes.set_boxes(found.pixel_boxes() if found is not None else [])
        self.canvas.boxes.setVisible(self.boxes_button.isChecked())
        self.boxes_button.setVisible(found is not None)
        self.export_boxes_button.setVisible(found is not None)

    # Model and selection -------------------------------------------------------------------------------------

    def _toggle_prior(self) -> None:
        row = self.strip.currentIndex().row()
        if row >= 0:
            self.model.set_prior(row, self.prior_button.isChecked())

    def _add_result(self, result: LoadResult) -> None:
        first_new = self.model.rowCount()
        self.model.add(result.pictures)
        if result.pictures:
            self.strip.selectionModel().setCurrentIndex(self.model.index(first_new),
                                                        QItemSelectionModel.SelectionFlag.ClearAndSelect)
            if not isinstance(QApplication.focusWidget(), TEXT_INPUTS):  # never take the keys from typing
                self.canvas.setFocus(Qt.FocusReason.OtherFocusReason)
        self.show_error("\n".join(result.errors))
        series = next((picture.series for picture in result.pictures if picture.series is not None), None)
        if series is not None:
            self.series_opened.emit(series.modality)
        self.load_finished.emit()

    def _job_failed(self, exc: Exception) -> None:
        report_unexpected(type(exc), exc, exc.__traceback__)
        self.show_error(f"Could not open the images: {type(exc).__name__}: {exc}")
        self.load_finished.emit()

    def _show_current(self, current: QModelIndex, _previous: QModelIndex) -> None:
        view = PictureView(self.model.picture(current.row())) if current.isValid() else None
        self._view = view
        self.canvas.scrolls_slices = view is not None and view.slice_count > 1
        self.canvas.windowable = view is not None and view.windowable
        self.canvas.setToolTip(SERIES_HINT if self.canvas.scrolls_slices else "")
        self.invert_button.setChecked(False)
        self.canvas.show_image(view.render() if view is not None else None)
        self.measure_label.setText("")
        self.window_box.setVisible(self.canvas.windowable)
        if view is not None and view.windowable:
            self.window_box.reset(view.presets)
        dicom = view.image if view is not None else None
        self.tags.setVisible(dicom is not None)
        if dicom is not None:
            self.tags.show_tags(dicom.metadata, dicom.patient, dicom.source)
        self._update_labels()
        self._update_boxes()
        self._update_buttons()

    def _after_rows_changed(self) -> None:
        rows = self.model.rowCount()
        self.strip.setVisible(rows > 1)
        if rows == 0:
            self._show_current(QModelIndex(), QModelIndex())
        elif not self.strip.currentIndex().isValid():
            self.strip.setCurrentIndex(self.model.index(rows - 1))
        self._update_buttons()

    def _update_buttons(self) -> None:
        row = self.strip.currentIndex().row()
        has_image = row >= 0
        for button in (self.fit_button, self.actual_button, self.invert_button, self.rotate_button,
                       self.flip_h_button, self.flip_v_button, self.measure_button, self.overlay_button):
            button.setEnabled(has_image)
        self.remove_button.setEnabled(has_image and not self.model.is_sent(row))
        self.prior_button.setEnabled(has_image and self.model.rowCount() > 1)
        self.prior_button.setChecked(has_image and self.model.is_prior(row))
