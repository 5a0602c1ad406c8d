"""The image viewer: a zoomable, pannable canvas, a thumbnail strip, and the ways pictures come in (drop,
paste, File > Open).

Files are decoded by a loader function handed in (`core.imaging.load_image` by default; DICOM and series
loaders plug in the same way) on a background job, so a 100 MB TIFF never freezes the window. The canvas shows
a `Picture`'s QImage; window/level and slice scrolling will re-render that image from the same `ImageInput`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QItemSelectionModel, QMimeData, QModelIndex, QSize, Qt, Signal
from PySide6.QtGui import (
    QDragEnterEvent,
    QDragMoveEvent,
    QDropEvent,
    QGuiApplication,
    QImage,
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
    QListView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.imaging import ImageInput, load_image
from medgemma_desktop.ui.background import BackgroundJobs
from medgemma_desktop.ui.hooks import report_unexpected
from medgemma_desktop.ui.image_list import ImageListModel
from medgemma_desktop.ui.pictures import THUMBNAIL_SIZE, Picture, clipboard_input, render_picture

ImageLoader = Callable[[Path], ImageInput]
# Files taken from a dropped folder; anything else in the folder (notes, hidden files) is skipped.
PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
OPEN_FILTER = "Images (*.png *.jpg *.jpeg *.tif *.tiff *.bmp *.webp);;All files (*)"
ZOOM_STEP = 1.25


@dataclass(frozen=True)
class LoadResult:
    pictures: list[Picture]
    errors: list[str]


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; folders replaced by their picture files, sorted by name."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir()
                                if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES and not p.name.startswith(".")))
        else:
            files.append(path)
    return files


def load_pictures(paths: list[Path], loader: ImageLoader) -> LoadResult:
    """Runs off the UI thread: decode each file, keep going past bad ones and say which failed."""
    pictures, errors = [], []
    for path in paths:
        try:
            pictures.append(render_picture(loader(path)))
        except UserFacingError as exc:
            errors.append(str(exc))
    return LoadResult(pictures, errors)


class ImageCanvas(QGraphicsView):
    """Wheel zooms around the cursor, dragging pans; keeps fitting the window until the user zooms."""

    dropped = Signal(QMimeData)

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
        self._fitting = True
        self._placeholder = self.scene().addText("Drop images or folders here,\npaste with Ctrl+V, or use File > Open.")

    def show_image(self, image: QImage | None) -> None:
        self._placeholder.setVisible(image is None)
        self._item.setPixmap(QPixmap.fromImage(image) if image is not None else QPixmap())
        rect = self._item.boundingRect() if image is not None else self._placeholder.boundingRect()
        self.scene().setSceneRect(rect)
        self.fit_to_window()

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
        if steps:
            self.zoom_by(ZOOM_STEP ** steps)
        event.accept()

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

    def __init__(self, loader: ImageLoader = load_image, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Images")
        self._loader = loader
        self._pasted = 0
        self.jobs = BackgroundJobs(self)
        self.model = ImageListModel(self)
        self.canvas = ImageCanvas()
        self.canvas.dropped.connect(self.open_mime)

        self.open_button = _tool_button("Open…", "Open image files (Ctrl+O)", self.choose_files)
        self.fit_button = _tool_button("Fit", "Fit the image to the window", self.canvas.fit_to_window)
        self.actual_button = _tool_button("100%", "Show the image at its actual size", self.canvas.actual_size)
        self.remove_button = _tool_button("Remove", "Remove this image from the next question", self.remove_current)
        tools = QHBoxLayout()
        for button in (self.open_button, self.fit_button, self.actual_button, self.remove_button):
            tools.addWidget(button)
        tools.addStretch(1)

        self.error_label = QLabel()
        self.error_label.setObjectName("errorLabel")
        self.error_label.setWordWrap(True)
        self.error_label.setAccessibleName("Image error")
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.hide()

        self.strip = QListView()
        self.strip.setAccessibleName("Image thumbnails")
        self.strip.setModel(self.model)
        self.strip.setViewMode(QListView.ViewMode.IconMode)
        self.strip.setFlow(QListView.Flow.LeftToRight)
        self.strip.setWrapping(False)
        self.strip.setIconSize(QSize(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        self.strip.setFixedHeight(THUMBNAIL_SIZE + 44)
        self.strip.setMovement(QListView.Movement.Static)
        self.strip.selectionModel().currentChanged.connect(self._show_current)
        self.model.rowsInserted.connect(self._after_rows_changed)
        self.model.rowsRemoved.connect(self._after_rows_changed)
        self.model.modelReset.connect(self._after_rows_changed)
        self.model.dataChanged.connect(self._update_buttons)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(tools)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.error_label)
        layout.addWidget(self.strip)
        self._after_rows_changed()

    def choose_files(self) -> None:
        names, _ = QFileDialog.getOpenFileNames(self, "Open images", "", OPEN_FILTER)
        if names:
            self.open_paths([Path(name) for name in names])

    def open_paths(self, paths: list[Path]) -> None:
        files = expand_paths(paths)
        if not files:
            self.show_error(f"No picture files in {', '.join(str(p) for p in paths)}.")
            return
        loader = self._loader
        self.jobs.run(lambda: load_pictures(files, loader), self._add_result, self._job_failed)

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

    def _add_result(self, result: LoadResult) -> None:
        first_new = self.model.rowCount()
        self.model.add(result.pictures)
        if result.pictures:
            self.strip.selectionModel().setCurrentIndex(self.model.index(first_new),
                                                        QItemSelectionModel.SelectionFlag.ClearAndSelect)
        self.show_error("\n".join(result.errors))
        self.load_finished.emit()

    def _job_failed(self, exc: Exception) -> None:
        report_unexpected(type(exc), exc, exc.__traceback__)
        self.show_error(f"Could not open the images: {type(exc).__name__}: {exc}")
        self.load_finished.emit()

    def _show_current(self, current: QModelIndex, _previous: QModelIndex) -> None:
        self.canvas.show_image(self.model.picture(current.row()).image if current.isValid() else None)
        self._update_buttons()

    def _after_rows_changed(self) -> None:
        rows = self.model.rowCount()
        self.strip.setVisible(rows > 1)
        if rows == 0:
            self.canvas.show_image(None)
        elif not self.strip.currentIndex().isValid():
            self.strip.setCurrentIndex(self.model.index(rows - 1))
        self._update_buttons()

    def _update_buttons(self) -> None:
        row = self.strip.currentIndex().row()
        has_image = row >= 0
        self.fit_button.setEnabled(has_image)
        self.actual_button.setEnabled(has_image)
        self.remove_button.setEnabled(has_image and not self.model.is_sent(row))
