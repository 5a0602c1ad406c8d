"""Status bar widgets: GPU memory (polled once a second, and only while visible), the model's state, and the
loading progress with its Cancel button.

The GPU label follows qutebrowser's clock: its timer starts in `showEvent` and stops in `hideEvent`, so a
minimised window costs no NVML calls.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QHideEvent, QShowEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QToolButton, QWidget

from medgemma_desktop.core.device import DevicePlan
from medgemma_desktop.core.engine import ModelIdentity
from medgemma_desktop.core.gpu import GpuMemory, GpuMonitor
from medgemma_desktop.ui.worker import ModelState

REFRESH_MS = 1000
GIB = 2**30


def gpu_text(reading: GpuMemory) -> str:
    return (f"{reading.name} · VRAM {reading.used_bytes / GIB:.1f} / {reading.total_bytes / GIB:.1f} GiB"
            f" · this app {reading.app_reserved_bytes / GIB:.1f} GiB")


class GpuStatusLabel(QLabel):
    def __init__(self, plan: DevicePlan, monitor: GpuMonitor, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("GPU status")
        self._monitor = monitor
        self._plan = plan
        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        self.refresh()

    def set_plan(self, plan: DevicePlan) -> None:
        self._plan = plan
        self.refresh()

    def refresh(self) -> None:
        reading = self._monitor.read() if self._plan.is_cuda else None
        if reading is None:
            self.setText(self._plan.reason if self._plan.device == "cpu" else f"{self._plan.gpu_name} · no reading")
        else:
            self.setText(gpu_text(reading))
        self.setToolTip(self._plan.reason)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh()
        self.timer.start()

    def hideEvent(self, event: QHideEvent) -> None:
        self.timer.stop()
        super().hideEvent(event)


class ModelStatusLabel(QLabel):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Model status")
        self.show_state(ModelState.NO_MODEL, "", None)

    def show_state(self, state: ModelState, detail: str, identity: ModelIdentity | None) -> None:
        text = f"Model: {state.value}"
        if state is ModelState.LOADING:
            text += f" {detail}"
        elif state is ModelState.ERROR:
            text += f": {detail[:80]}…" if len(detail) > 80 else f": {detail}"
        if identity is not None and state in (ModelState.READY, ModelState.GENERATING):
            adapter = f" + {identity.adapter_name}" if identity.adapter_name else ""
            text += f" · {identity.model_name}{adapter} · {identity.device} {identity.dtype} · {identity.quantization}"
            text += " · vision active" if identity.vision_active else " · VISION NOT WORKING"
            text += " · fast decoding" if identity.decoder.startswith("fast") else " · plain decoding"
            detail = detail or identity.decoder
        self.setText(text)
        self.setToolTip(detail)


class LoadingProgress(QWidget):
    """Shown only while a model loads: the engine's own progress (hashing, quantizing, adapter) and Cancel."""

    cancel_clicked = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Model loading")
        self.bar = QProgressBar()
        self.bar.setAccessibleName("Loading progress")
        self.bar.setRange(0, 100)
        self.bar.setMaximumWidth(200)
        self.cancel_button = QToolButton()
        self.cancel_button.setText("Cancel loading")
        self.cancel_button.setAccessibleName("Cancel loading")
        self.cancel_button.setToolTip("Stop loading the model (Esc)")
        self.cancel_button.clicked.connect(self.cancel_clicked)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.bar)
        layout.addWidget(self.cancel_button)
        self.hide()

    def start(self) -> None:
        self.bar.setValue(0)
        self.bar.setToolTip("")
        self.show()

    def show_progress(self, percent: int, step: str) -> None:
        self.bar.setValue(percent)
        self.bar.setToolTip(step)
