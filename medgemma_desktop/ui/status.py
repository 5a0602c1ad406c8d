"""Status bar widgets: GPU memory (polled once a second, and only while visible), the model's state, and the
loading progress with its Cancel button.

The model label stays short (state, model and adapter names, and any warning) and puts the rest in its tooltip:
the status bar's messages ("Exported to …") get only the room its permanent widgets leave.

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
SHORT_LIMIT = 36  # characters of a name or message in the status bar; the tooltip has all of it
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
            gpu = f"{shortened(self._plan.gpu_name or 'GPU')} · no reading"
            self.setText(f"CPU mode · {self._plan.dtype_name}" if self._plan.device == "cpu" else gpu)
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


def shortened(text: str, limit: int = SHORT_LIMIT) -> str:
    return text if len(text) <= limit else f"{text[:limit - 1]}…"


class ModelStatusLabel(QLabel):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Model status")
        self.show_state(ModelState.NO_MODEL, "", None)

    def show_state(self, state: ModelState, detail: str, identity: ModelIdentity | None) -> None:
        text, details = f"Model: {state.value}", [detail] if detail else []
        if state in (ModelState.LOADING, ModelState.ERROR) and detail:
            text += f": {shortened(detail)}"
        if identity is not None and state in (ModelState.READY, ModelState.GENERATING):
            adapter = f" + {identity.adapter_name}" if identity.adapter_name else ""
            text += f" · {shortened(identity.model_name + adapter)}"
            remote = identity.device.startswith("server ")  # `core.remote.RemoteBackend` answers
            if remote:
                text += f" · {shortened(identity.device, 2 * SHORT_LIMIT)}"  # where answers come from
            if not identity.vision_active:
                text += " · VISION NOT WORKING"
            details += [f"{identity.model_name}{adapter}",
                        f"{identity.device} {identity.dtype} · {identity.quantization}",
                        "vision active" if identity.vision_active else "VISION NOT WORKING: images do not reach "
                                                                       "the model",
                        identity.decoder if remote else
                        f"{'fast' if identity.decoder.startswith('fast') else 'plain'} decoding: {identity.decoder}"]
        self.setText(text)
        self.setToolTip("\n".join(details))


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
        self.bar.setRange(0, 100)
        self.bar.setValue(0)
        self.bar.setToolTip("")
        self.cancel_button.show()
        self.show()

    def start_busy(self, step: str) -> None:
        """Work with no measurable progress (the demo model being written): a moving bar, no Cancel."""
        self.bar.setRange(0, 0)
        self.bar.setToolTip(step)
        self.cancel_button.hide()
        self.show()

    def show_progress(self, percent: int, step: str) -> None:
        self.bar.setRange(0, 100)
        self.cancel_button.show()
        self.bar.setValue(percent)
        self.bar.setToolTip(step)
