"""The image viewer: a zoomable, pannable canvas, a thumbnail strip, and the ways pictures come in (drop,
paste, File > Open).

Files are decoded by a loader function handed in (`core.imaging.load_any` by default: pictures and DICOM
files) on a background job, so a 100 MB TIFF or a 300-slice CT never freezes the window; a folder of DICOM files
or a DICOMDIR becomes one item per series. For DICOM the canvas shows frames re-rendered from their measured
values (`dicom_view`): window/level by preset or right-drag, slices by wheel or keys, the value under the cursor.
Localization boxes are drawn over the picture they belong to (`box_overlay`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QEvent, QItemSelectionModel, QMimeData, QModelIndex, QPoint, Qt, Signal
from PySide6.QtGui import (
    QDragEnterEvent,
    QDragMoveEvent,
    QDropEvent,
    QGuiApplication,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPixmap,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QFileDialog,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from medgemma_desktop.core.imaging import ImageInput, load_any
from medgemma_desktop.core.windowing import Window
from medgemma_desktop.session.inputs import ImageLoader, read_inputs
from medgemma_desktop.ui.background import BackgroundJobs
from medgemma_desktop.ui.box_overlay import BoxOverlay, FoundBoxes
from medgemma_desktop.ui.dicom_tags import DicomTagsPanel
from medgemma_desktop.ui.dicom_view import PictureView
from medgemma_desktop.ui.hooks import report_unexpected
from medgemma_desktop.ui.image_list import ImageListModel, ThumbnailStrip
from medgemma_desktop.ui.pictures import Picture, clipboard_input, render_item, render_picture
from medgemma_desktop.ui.window_level import WindowPresetBox, dragged_window, window_text

# No suffix filter by default: DICOM files from CDs and PACS exports often have none.
OPEN_FILTER = ("Images and DICOM, with or without a suffix (*);;"
               "Pictures (*.png *.jpg *.jpeg *.tif *.tiff *.bmp *.webp);;DICOM (*.dcm *.dicom DICOMDIR)")
ZOOM_STEP = 1.25
SLICE_KEYS = {Qt.Key.Key_PageUp: -1, Qt.Key.Key_PageDown: 1, Qt.Key.Key_Up: -1, Qt.Key.Key_Down: 1,
              Qt.Key.Key_Left: -1, Qt.Key.Key_Right: 1}
SERIES_HINT = ("Wheel, PageUp/PageDown or the arrow keys: previous/next slice · Ctrl+wheel: zoom · "
               "right-drag: window/level")


@dataclass(frozen=True)
class LoadResult:
    pictures: list[Picture]
    errors: list[str]


def load_pictures(paths: list[Path], loader: ImageLoader) -> LoadResult:
    """Runs off the UI thread: `session.inputs.read_inputs` (series grouped however the files came), rendered."""
    opened = read_inputs(paths, loader)
    return LoadResult([render_item(item) for item in opened.items], [str(error) for error in opened.errors])


class ImageCanvas(QGraphicsView):
    """Wheel zooms around the cursor, dragging pans; keeps fitting the window until the user zooms.

    While a series is shown (`scrolls_slices`), the wheel and the paging and arrow keys step through slices
    and Ctrl+wheel zooms; while a DICOM picture is shown (`windowable`), right-drag adjusts window/level.
    """

    dropped = Signal(QMimeData)
    slice_step = Signal(int)  # -1 previous, +1 next
    window_drag_started = Signal()
    window_dragged = Signal(float, float)  # dx, dy in screen pixels since the drag started
    hovered = Signal(object)  # (x, y) picture pixel under the cursor, or None

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self._item = QGraphicsPixmapItem()
        self._item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.scene().addItem(self._item)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self.setAcceptDrops(True)
        self.setAccessibleName("Image viewer")
        self.setAccessibleDescription("Drop image files or folders here")
        self.viewport().setAccessibleName("Image")  # what screen readers land on inside the viewer
        self.viewport().setAccessibleDescription("The picture or slice shown; drop image files or folders here")
        self.viewport().setMouseTracking(True)
        self.boxes = BoxOverlay(self._item)
        self.scrolls_slices = False
        self.windowable = False
        self._drag_from: QPoint | None = None
        self._fitting = True
        self._placeholder = self.scene().addText("Drop images, folders or DICOM series here,\n"
                                                 "paste with Ctrl+V, or use File > Open.")

    def show_image(self, image: QImage | None) -> None:
        self._placeholder.setVisible(image is None)
        self._item.setPixmap(QPixmap.fromImage(image) if image is not None else QPixmap())
        rect = self._item.boundingRect() if image is not None else self._placeholder.boundingRect()
        self.scene().setSceneRect(rect)
        self.fit_to_window()

    def replace_pixels(self, image: QImage) -> None:
        """Another slice or window of the same picture: new pixels, same zoom and scroll position."""
        self._item.setPixmap(QPixmap.fromImage(image))

    @property
    def pixels(self) -> QImage:
        return self._item.pixmap().toImage()

    @property
    def zoom(self) -> float:
        return self.transform().m11()

    def fit_to_window(self) -> None:
        self._fitting = True
        if not self._item.pixmap().isNull():
            self.fitInView(self._item, Qt.AspectRatioMode.KeepAspectRatio)
        else:
            self.resetTransform()

    def actual_size(self) -> None:
        self._fitting = False
        self.resetTransform()

    def zoom_by(self, factor: float) -> None:
        self._fitting = False
        self.scale(factor, factor)

    def wheelEvent(self, event: QWheelEvent) -> None:
        steps = event.angleDelta().y() / 120
        if steps and self.scrolls_slices and not event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.slice_step.emit(-1 if steps > 0 else 1)
        elif steps:
            self.zoom_by(ZOOM_STEP ** steps)
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        step = SLICE_KEYS.get(Qt.Key(event.key()))
        if self.scrolls_slices and step is not None:
            self.slice_step.emit(step)
            event.accept()
            return
        super().keyPressEvent(event)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.RightButton and self.windowable:
            self._drag_from = event.position().toPoint()
            self.window_drag_started.emit()
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        position = event.position().toPoint()
        if self._drag_from is not None:
            delta = position - self._drag_from
            self.window_dragged.emit(float(delta.x()), float(delta.y()))
        point = self._item.mapFromScene(self.mapToScene(position))
        x, y = int(point.x() // 1), int(point.y() // 1)
        inside = not self._item.pixmap().isNull() and self._item.boundingRect().contains(point)
        self.hovered.emit((x, y) if inside else None)
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.RightButton and self._drag_from is not None:
            self._drag_from = None
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def leaveEvent(self, event: QEvent) -> None:
        self.hovered.emit(None)
        super().leaveEvent(event)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if self._fitting:
            self.fit_to_window()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        self.dropped.emit(event.mimeData())
        event.acceptProposedAction()


def _tool_button(text: str, tip: str, slot: Callable[[], None]) -> QToolButton:
    button = QToolButton()
    button.setText(text)
    button.setToolTip(tip)
    button.setAccessibleName(text)
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

        self.open_button = _tool_button("Open…", "Open image files, DICOM files or a DICOMDIR (Ctrl+O)",
                                        self.choose_files)
        self.fit_button = _tool_button("Fit", "Fit the image to the window", self.canvas.fit_to_window)
        self.actual_button = _tool_button("100%", "Show the image at its actual size", self.canvas.actual_size)
        self.remove_button = _tool_button("Remove", "Remove this image from the next question", self.remove_current)
        self.prior_button = _tool_button("Prior", "Mark this image as the prior (older) study: Compare chest "
                                         "X-rays sends it first", self._toggle_prior)
        self.prior_button.setCheckable(True)
        self.window_box = WindowPresetBox()
        self.window_box.window_chosen.connect(self.set_window)
        self.boxes_button = _tool_button("Show boxes", "Show the boxes of the localization answer",
                                         self._update_boxes)
        self.boxes_button.setCheckable(True)
        self.boxes_button.setChecked(True)
        self.export_boxes_button = _tool_button("Export boxes…", "Save the boxes as JSON (with the research-use "
                                                "disclaimer)", self.choose_boxes_file)
        tools = QHBoxLayout()
        for widget in (self.open_button, self.fit_button, self.actual_button, self.remove_button,
                       self.prior_button, self.window_box):
            tools.addWidget(widget)
        tools.addStretch(1)
        tools.addWidget(self.boxes_button)
        tools.addWidget(self.export_boxes_button)

        self.slice_label = QLabel()
        self.slice_label.setAccessibleName("Slice")
        self.slice_label.setToolTip(SERIES_HINT)
        self.readout = QLabel()
        self.readout.setAccessibleName("Pixel value")
        self.readout.setToolTip("The value under the cursor (Hounsfield units for CT) and the display window")
        info = QHBoxLayout()
        info.addWidget(self.slice_label)
        info.addStretch(1)
        info.addWidget(self.readout)
        self.tags = DicomTagsPanel()

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

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(tools)
        layout.addWidget(self.canvas, 1)
        layout.addLayout(info)
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

    # Slices and window/level ---------------------------------------------------------------------------------

    def step_slice(self, delta: int) -> None:
        if self._view is not None and self._view.step(delta):
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
        self.slice_label.setText(f"{'slice' if view.is_series else 'frame'} {view.slice + 1} / {view.slice_count}"
                                 if view is not None and view.slice_count > 1 else "")
        self._show_value(None)


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
        self.canvas.show_image(view.render() if view is not None else None)
        self._update_labels()
        self.window_box.setVisible(self.canvas.windowable)
        if view is not None and view.default_window is not None:
            self.window_box.reset(view.default_window, view.is_ct)
        dicom = view.frames[0][0] if view is not None and view.frames else None
        self.tags.setVisible(dicom is not None)
        if dicom is not None:
            self.tags.show_tags(dicom.metadata, dicom.patient)
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
        self.fit_button.setEnabled(has_image)
        self.actual_button.setEnabled(has_image)
        self.remove_button.setEnabled(has_image and not self.model.is_sent(row))
        self.prior_button.setEnabled(has_image and self.model.rowCount() > 1)
        self.prior_button.setChecked(has_image and self.model.is_prior(row))
