"""The canvas the picture is shown on: zoom, pan, rotation and flips, right-drag window/level, distance
measurement, the value under the cursor, and the corner overlays radiology viewers print on the image.

Rotation and flips transform the picture's item, not the view, so that everything drawn as its child (boxes,
the measurement) keeps using the picture's own pixel coordinates. The corner texts are painted over the view in
screen coordinates and never scale or rotate.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QEvent, QMimeData, QPoint, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QDragEnterEvent,
    QDragMoveEvent,
    QDropEvent,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPixmap,
    QResizeEvent,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import QGraphicsPixmapItem, QGraphicsScene, QGraphicsView, QWidget

from medgemma_desktop.ui.box_overlay import BoxOverlay
from medgemma_desktop.ui.measurement import MeasurementOverlay

ZOOM_STEP = 1.25
SLICE_KEYS = {Qt.Key.Key_PageUp: -1, Qt.Key.Key_PageDown: 1, Qt.Key.Key_Up: -1, Qt.Key.Key_Down: 1,
              Qt.Key.Key_Left: -1, Qt.Key.Key_Right: 1}
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
_ALIGN = {"top_left": Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft,
          "top_right": Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignRight,
          "bottom_left": Qt.AlignmentFlag.AlignBottom | Qt.AlignmentFlag.AlignLeft,
          "bottom_right": Qt.AlignmentFlag.AlignBottom | Qt.AlignmentFlag.AlignRight}
_OVERLAY_MARGIN = 6


class ImageCanvas(QGraphicsView):
    """Wheel zooms around the cursor, dragging pans; keeps fitting the window until the user zooms.

    While a series is shown (`scrolls_slices`), the wheel and the paging and arrow keys step through slices and
    Ctrl+wheel zooms; while a DICOM picture is shown (`windowable`), right-drag adjusts window/level; while
    `measuring`, left-drag measures a distance instead of panning. `key_actions` maps further keys to commands.
    """

    dropped = Signal(QMimeData)
    slice_step = Signal(int)  # -1 previous, +1 next
    window_drag_started = Signal()
    window_dragged = Signal(float, float)  # dx, dy in screen pixels since the drag started
    hovered = Signal(object)  # (x, y) picture pixel under the cursor, or None
    measured = Signal(QPointF, QPointF)  # a measurement's ends in picture pixels, while it is drawn

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
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAccessibleName("Image viewer")
        self.setAccessibleDescription("Drop image files or folders here")
        self.viewport().setAccessibleName("Image")  # what screen readers land on inside the viewer
        self.viewport().setAccessibleDescription("The picture or slice shown; drop image files or folders here")
        self.viewport().setMouseTracking(True)
        self.boxes = BoxOverlay(self._item)
        self.measurement = MeasurementOverlay(self._item)
        self.scrolls_slices = False
        self.windowable = False
        self.measuring = False
        self.key_actions: dict[Qt.Key, Callable[[], None]] = {}
        self.corners: dict[str, str] = dict.fromkeys(CORNERS, "")
        self.overlays_visible = True
        self.rotation = 0  # degrees clockwise, a multiple of 90
        self.flipped_horizontally = False
        self.flipped_vertically = False
        self._drag_from: QPoint | None = None
        self._measure_from: QPointF | None = None
        self._fitting = True
        self._placeholder = self.scene().addText("Drop images, folders or DICOM series here,\n"
                                                 "paste with Ctrl+V, or use File > Open.")

    # Showing -------------------------------------------------------------------------------------------------

    def show_image(self, image: QImage | None) -> None:
        self._placeholder.setVisible(image is None)
        self._item.setPixmap(QPixmap.fromImage(image) if image is not None else QPixmap())
        self.measurement.clear()
        self.rotation, self.flipped_horizontally, self.flipped_vertically = 0, False, False
        self._fitting = True
        self._apply_orientation()

    def replace_pixels(self, image: QImage) -> None:
        """Another slice or window of the same picture: new pixels, same zoom and scroll position."""
        self._item.setPixmap(QPixmap.fromImage(image))

    @property
    def pixels(self) -> QImage:
        return self._item.pixmap().toImage()

    @property
    def zoom(self) -> float:
        return self.transform().m11()

    def set_corners(self, corners: dict[str, str]) -> None:
        self.corners = {corner: corners.get(corner, "") for corner in CORNERS}
        self.viewport().update()

    def view_text(self) -> str:
        """The bottom-right corner's view state: zoom, rotation, flips."""
        parts = [f"Zoom {self.zoom * 100:.0f}%"]
        if self.rotation:
            parts.append(f"Rotated {self.rotation}°")
        if self.flipped_horizontally:
            parts.append("Flipped H")
        if self.flipped_vertically:
            parts.append("Flipped V")
        return " · ".join(parts)

    def set_overlays_visible(self, visible: bool) -> None:
        self.overlays_visible = visible
        self.viewport().update()

    # Orientation ---------------------------------------------------------------------------------------------

    def rotate_clockwise(self) -> None:
        self.rotation = (self.rotation + 90) % 360
        self._apply_orientation()

    def flip_horizontally(self) -> None:
        self.flipped_horizontally = not self.flipped_horizontally
        self._apply_orientation()

    def flip_vertically(self) -> None:
        self.flipped_vertically = not self.flipped_vertically
        self._apply_orientation()

    def _apply_orientation(self) -> None:
        """Rotate and flip the picture about its centre; the scene is the rotated picture's bounds."""
        centre = self._item.boundingRect().center()
        transform = QTransform().translate(centre.x(), centre.y()).rotate(self.rotation)
        transform.scale(-1 if self.flipped_horizontally else 1, -1 if self.flipped_vertically else 1)
        self._item.setTransform(transform.translate(-centre.x(), -centre.y()))
        has_image = not self._item.pixmap().isNull()
        rect = self._item.sceneBoundingRect() if has_image else self._placeholder.sceneBoundingRect()
        self.scene().setSceneRect(rect)
        if self._fitting or not has_image:
            self.fit_to_window()

    def picture_point(self, position: QPointF | QPoint) -> QPointF:
        """The picture pixel position under a viewport position, whatever the zoom, rotation or flips."""
        return self._item.mapFromScene(self.mapToScene(QPointF(position).toPoint()))

    # Zoom ----------------------------------------------------------------------------------------------------

    def fit_to_window(self) -> None:
        self._fitting = True
        if not self._item.pixmap().isNull():
            self.fitInView(self._item.sceneBoundingRect(), Qt.AspectRatioMode.KeepAspectRatio)
        else:
            self.resetTransform()

    def actual_size(self) -> None:
        self._fitting = False
        self.resetTransform()

    def zoom_by(self, factor: float) -> None:
        self._fitting = False
        self.scale(factor, factor)

    # Input ---------------------------------------------------------------------------------------------------

    def wheelEvent(self, event: QWheelEvent) -> None:
        steps = event.angleDelta().y() / 120
        if steps and self.scrolls_slices and not event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.slice_step.emit(-1 if steps > 0 else 1)
        elif steps:
            self.zoom_by(ZOOM_STEP ** steps)
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = Qt.Key(event.key())
        step = SLICE_KEYS.get(key)
        if self.scrolls_slices and step is not None:
            self.slice_step.emit(step)
        elif key in self.key_actions and not event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier:
            self.key_actions[key]()
        else:
            super().keyPressEvent(event)
            return
        event.accept()

    def set_measuring(self, measuring: bool) -> None:
        self.measuring = measuring
        self.setDragMode(QGraphicsView.DragMode.NoDrag if measuring else QGraphicsView.DragMode.ScrollHandDrag)
        self.viewport().setCursor(Qt.CursorShape.CrossCursor if measuring else Qt.CursorShape.OpenHandCursor)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.RightButton and self.windowable:
            self._drag_from = event.position().toPoint()
            self.window_drag_started.emit()
        elif event.button() == Qt.MouseButton.LeftButton and self.measuring and not self._item.pixmap().isNull():
            self._measure_from = self.picture_point(event.position())
            self.measured.emit(self._measure_from, self._measure_from)
        else:
            super().mousePressEvent(event)
            return
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        position = event.position().toPoint()
        if self._drag_from is not None:
            delta = position - self._drag_from
            self.window_dragged.emit(float(delta.x()), float(delta.y()))
        point = self.picture_point(position)
        if self._measure_from is not None:
            self.measured.emit(self._measure_from, point)
        x, y = int(point.x() // 1), int(point.y() // 1)
        inside = not self._item.pixmap().isNull() and self._item.boundingRect().contains(point)
        self.hovered.emit((x, y) if inside else None)
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.RightButton and self._drag_from is not None:
            self._drag_from = None
        elif event.button() == Qt.MouseButton.LeftButton and self._measure_from is not None:
            self.measured.emit(self._measure_from, self.picture_point(event.position()))
            self._measure_from = None
        else:
            super().mouseReleaseEvent(event)
            return
        event.accept()

    def leaveEvent(self, event: QEvent) -> None:
        self.hovered.emit(None)
        super().leaveEvent(event)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if self._fitting:
            self.fit_to_window()

    # Corner overlays -----------------------------------------------------------------------------------------

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:
        super().drawForeground(painter, rect)
        if not self.overlays_visible or self._item.pixmap().isNull():
            return
        painter.save()
        painter.resetTransform()  # screen coordinates: the texts neither zoom nor rotate
        area = QRectF(self.viewport().rect()).adjusted(_OVERLAY_MARGIN, _OVERLAY_MARGIN, -_OVERLAY_MARGIN,
                                                       -_OVERLAY_MARGIN)
        texts = dict(self.corners)
        texts["bottom_right"] = "\n".join(line for line in (self.corners["bottom_right"], self.view_text()) if line)
        for corner, text in texts.items():
            if not text:
                continue
            painter.setPen(QColor(0, 0, 0))  # a shadow keeps the text readable on white bone and black air
            painter.drawText(area.translated(1, 1), _ALIGN[corner], text)
            painter.setPen(QColor(255, 255, 170))
            painter.drawText(area, _ALIGN[corner], text)
        painter.restore()

    # Drag and drop -------------------------------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        self.dropped.emit(event.mimeData())
        event.acceptProposedAction()
