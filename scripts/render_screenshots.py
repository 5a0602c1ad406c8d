"""Render the main window offscreen to PNG files under docs/ for the README.

The window runs for real: the tiny random checkpoint is loaded through the real worker (the status bar says so)
and a synthetic chest-X-ray-like picture is opened through the viewer. The answer on screen is a fixed
illustrative sample, because the tiny model writes random characters; it is not MedGemma output. Each question
goes through the window's send controller; its fixed answer is kept in the history and handed over the way the
worker hands over a finished answer. The DICOM view shows a small CT series made of pydicom's test file
CT_small.dcm; the localization view draws the boxes of such a fixed answer. Token counts are the tiny
checkpoint's (16 tokens per image, not MedGemma's 256). The demo view is the app's own demo mode (its synthetic
CT phantom series in the lung window); the large-text view is the window at 150 % text size on a screen
of 1067 x 667 logical pixels (a 1600 x 1000 screen at 150 % scaling), the size the window now opens at there.
The model manager shows an adapter check refused under its field. Caches and demo files go to a temporary folder,
not the user's.

    PYTHONPATH=. python scripts/render_screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pydicom
from PIL import Image, ImageDraw, ImageFilter
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from PySide6.QtCore import QEventLoop, QPointF, QTimer
from PySide6.QtWidgets import QApplication

from medgemma_desktop.core.engine import GenerationStats
from medgemma_desktop.core.prompts import TaskMode
from medgemma_desktop.core.settings import Settings, save_settings
from medgemma_desktop.core.tiny_checkpoint import write_tiny_checkpoint
from medgemma_desktop.core.windowing import CT_WINDOW_PRESETS
from medgemma_desktop.session.recording import Answer
from medgemma_desktop.ui.main_window import MainWindow
from medgemma_desktop.ui.settings_dialog import SettingsDialog
from medgemma_desktop.ui.theme import apply_theme
from medgemma_desktop.ui.viewer import ViewerPanel
from medgemma_desktop.ui.worker import GenerateRequest, ModelState

QUESTION = "Describe the findings on this chest X-ray."
SAMPLE_ANSWER = """**Findings** (illustrative sample text)

| Region | Observation |
|---|---|
| Lungs | Clear, no focal consolidation |
| Heart | Normal size |
| Pleura | No effusion or pneumothorax |

- Trachea midline
- No acute bony abnormality

**Impression:** no acute cardiopulmonary process.

```json
{"effusion": false}
```"""
SAMPLE_STATS = GenerationStats(prompt_tokens=273, new_tokens=64, time_to_first_token_s=0.42,
                               decode_tokens_per_s=38.5, total_s=2.1, stop_reason="end", decoder="eager")


def synthetic_chest_film(path: Path) -> Path:
    """A grey, blurred, roughly thorax-shaped picture: no patient data anywhere."""
    image = Image.new("L", (640, 720), 20)
    draw = ImageDraw.Draw(image)
    draw.ellipse((90, 120, 300, 620), fill=70)
    draw.ellipse((340, 120, 550, 620), fill=70)
    draw.ellipse((250, 330, 430, 600), fill=170)
    draw.rectangle((300, 40, 340, 330), fill=150)
    for y in range(170, 600, 46):
        draw.arc((70, y - 40, 570, y + 80), 200, 340, fill=200, width=6)
    image.filter(ImageFilter.GaussianBlur(6)).convert("RGB").save(path)
    return path


BOXES_ANSWER = ("The left lung lies on the patient's left, the side of the heart (illustrative sample text).\n"
                 'Final Answer: ```json[{"box_2d": [150, 520, 870, 870], "label": "left lung"}, '
                 '{"box_2d": [150, 130, 870, 480], "label": "right lung"}]```')


def ct_series_folder(folder: Path, slices: int = 12) -> Path:
    """Copies of pydicom's CT_small.dcm as one axial series, 2.5 mm apart, values shifted a little per slice."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    for number in range(slices):
        dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        dataset.SeriesInstanceUID = uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.SeriesDescription = "Synthetic CT (pydicom CT_small)"
        dataset.ImagePositionPatient = [0.0, 0.0, 2.5 * number]
        pixels = dataset.pixel_array
        dataset.PixelData = (pixels + 8 * number).astype(pixels.dtype).tobytes()
        dataset.save_as(folder / f"slice{number:03d}.dcm")
    return folder


def spin_until(done, timeout_s: float = 30) -> None:
    loop = QEventLoop()
    timer = QTimer()
    timer.timeout.connect(lambda: done() and loop.quit())
    timer.start(20)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    if not done():
        raise RuntimeError("the window did not reach the expected state in time")


def hand_over_answer(window: MainWindow, question: str, text: str) -> None:
    """Ask `question` through the window's send controller as a user would (checked, images rendered, the
    exchange begun), then keep and hand over `text` the way the worker keeps and hands over a finished answer.
    The worker never generates (`main` disconnects it: the tiny model writes noise)."""
    requests: list[GenerateRequest] = []
    window.host.generate_requested.connect(requests.append)
    window.controller.ask(question)
    spin_until(lambda: bool(requests))
    window.host.generate_requested.disconnect(requests.append)
    record, identity, worker = requests[0].job.record, window.host.identity, window.host.worker
    message_id = record.store.add_question(record.conversation_id, record.question, record.images,
                                           record.mode.value).id
    answer_id = record.store.begin_answer(message_id, identity.model, identity.adapter, {})
    worker.recorded.emit(message_id, answer_id)  # as `AnswerJob.run` records it: the history names it
    record.store.finish_answer(answer_id, text, asdict(SAMPLE_STATS))
    worker.finished.emit(Answer(text, "", SAMPLE_STATS, answer_id, identity, message_id, requests[0].job.settings))
    spin_until(lambda: window.host.state is ModelState.READY)
    window.controller.update_budget()


def viewer_screenshots(out: Path, work: Path, app: QApplication) -> list[Path]:
    """The viewer alone with its radiology tools: a measurement in mm, corner overlays, the lung preset, the
    slice slider and a tag search; then the same slice inverted, rotated and flipped."""
    viewer = ViewerPanel()
    viewer.resize(900, 980)
    viewer.show()
    viewer.open_paths([ct_series_folder(work / "ct_tools")])
    spin_until(lambda: viewer.model.rowCount() == 1)
    viewer.window_box.choose(1)  # key 2: lung
    viewer.actual_button.click()
    viewer.canvas.zoom_by(4.0)
    viewer.measure_button.click()
    viewer.canvas.measured.emit(QPointF(20, 96), QPointF(104, 70))
    viewer.tags.toggle.setChecked(True)
    viewer.tags.search.setText("spacing")
    app.processEvents()
    tools = out / "viewer_tools.png"
    viewer.grab().save(str(tools))
    viewer.measure_button.click()
    viewer.tags.search.setText("")
    viewer.tags.toggle.setChecked(False)
    viewer.window_box.choose(4)  # key 5: bone
    viewer.invert_button.click()
    viewer.rotate_button.click()
    viewer.flip_h_button.click()
    viewer.canvas.fit_to_window()
    app.processEvents()
    orientation = out / "viewer_orientation.png"
    viewer.grab().save(str(orientation))
    viewer.close()
    return [tools, orientation]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="medgemma-screens-"))
    for variable in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        os.environ[variable] = str(work / variable.lower())  # the demo model and history stay in `work`
    app = QApplication(sys.argv[:1])
    apply_theme(app, "light")
    for path in viewer_screenshots(args.out, work, app):  # the viewer alone: no model needed
        print(path)

    first = MainWindow(work / "empty-settings.json")
    first.resize(1180, 760)
    first.show()
    spin_until(lambda: not first.first_run.machine_label.text().startswith("Checking"))  # the machine check
    first.grab().save(str(args.out / "first_run.png"))
    first.close()

    checkpoint = write_tiny_checkpoint(work / "checkpoint")
    settings_path = work / "settings.json"
    save_settings(Settings(model_dir=str(checkpoint.model_dir), adapter_dir=str(checkpoint.adapter_dir)),
                  settings_path)
    window = MainWindow(settings_path)
    window.resize(1180, 760)
    window.show()
    spin_until(lambda: window.host.state is ModelState.READY)
    window.host.generate_requested.disconnect(window.host.worker.generate)  # the tiny model writes noise
    window.viewer.open_paths([synthetic_chest_film(work / "synthetic_chest.png")])
    spin_until(lambda: window.viewer.model.rowCount() == 1)
    hand_over_answer(window, QUESTION, SAMPLE_ANSWER)
    window.chat.question.setPlainText("Is the heart size normal?")
    app.processEvents()
    window.grab().save(str(args.out / "window.png"))

    window._change_settings(replace(window.settings, theme="dark"))
    app.processEvents()
    window.grab().save(str(args.out / "window_dark.png"))
    window._change_settings(replace(window.settings, theme="light"))

    window.new_conversation()
    window.viewer.open_paths([ct_series_folder(work / "ct")])
    spin_until(lambda: window.viewer.model.rowCount() == 1)
    window.viewer.set_window(CT_WINDOW_PRESETS["lung"])
    window.chat.question.setPlainText("Is there a pulmonary nodule?")
    window.viewer.tags.toggle.setChecked(True)
    window.controller.update_budget()
    app.processEvents()
    window.grab().save(str(args.out / "window_ct.png"))

    window.new_conversation()
    window.chat.task.set_mode(TaskMode.LOCALIZATION)
    window.viewer.open_paths([synthetic_chest_film(work / "synthetic_chest.png")])
    spin_until(lambda: window.viewer.model.rowCount() == 1)
    hand_over_answer(window, "left lung", BOXES_ANSWER)
    app.processEvents()
    window.grab().save(str(args.out / "window_boxes.png"))
    manager = window.open_model_manager()  # a refused adapter folder: the reason shows under its field
    manager.adapter_field.set_path(str(checkpoint.model_dir))
    manager.check_adapter()
    spin_until(lambda: not manager.checking)
    app.processEvents()
    manager.grab().save(str(args.out / "model_manager.png"))
    manager.reject()

    window.resize(1067 - 16, 667 - 48)
    window.new_conversation()
    window.chat.task.set_mode(TaskMode.FREE_CHAT)
    apply_theme(app, "light", 150)
    window.viewer.open_paths([synthetic_chest_film(work / "synthetic_chest.png")])
    spin_until(lambda: window.viewer.model.rowCount() == 1)
    hand_over_answer(window, QUESTION, SAMPLE_ANSWER)
    app.processEvents()
    window.grab().save(str(args.out / "window_large_text.png"))
    apply_theme(app, "light", 100)
    window.close()

    demo = MainWindow(work / "demo-settings.json", data_folder=work / "data", demo=True)
    demo.resize(1180, 760)
    demo.show()
    spin_until(lambda: demo.host.state is ModelState.READY and demo.viewer.model.rowCount() == 3, 120)
    for row in reversed(range(3)):  # the CT-series task reads one series: the single images are removed
        if demo.viewer.model.picture(row).series is None:
            demo.viewer.model.remove(row)
    demo.viewer.strip.setCurrentIndex(demo.viewer.model.index(0))
    demo.viewer.set_window(CT_WINDOW_PRESETS["lung"])
    demo.chat.question.setPlainText("Any nodules?")
    demo.controller.update_budget()
    app.processEvents()
    demo.grab().save(str(args.out / "window_demo.png"))
    settings = SettingsDialog(demo.settings, demo)
    settings.show()
    app.processEvents()
    settings.grab().save(str(args.out / "settings.png"))
    settings.close()
    demo.close()
    for name in ("first_run.png", "window.png", "window_dark.png", "window_ct.png", "window_boxes.png",
                 "window_large_text.png", "window_demo.png", "settings.png", "model_manager.png"):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
