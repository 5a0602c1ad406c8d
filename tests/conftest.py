"""Shared fixtures: one tiny MedGemma-shaped checkpoint per test session, loaded through the real code, and a
guard that fails any test leaving a QThread running (napari's `dangling_qthreads`)."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medgemma_desktop.core.tiny_checkpoint import TinyCheckpoint, write_tiny_checkpoint

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Keep the app's config, data, cache and log folders (platformdirs reads XDG_* on every call) out of HOME.
_HOME = tempfile.mkdtemp(prefix="medgemma-test-home-")
for _variable in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
    os.environ[_variable] = os.path.join(_HOME, _variable.lower())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint: TinyCheckpoint):
    """One loaded engine shared by the tests that only generate (loading costs ~2 s on the CPU)."""
    from medgemma_desktop.core.engine import Engine

    return Engine.load(tiny_checkpoint.model_dir, tiny_checkpoint.adapter_dir)


@pytest.fixture(autouse=True)
def no_dangling_qthreads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Record every QThread started during the test; fail if one is still running afterwards."""
    import shiboken6
    from PySide6.QtCore import QThread

    started: list[QThread] = []
    original = QThread.start

    def recording_start(self: QThread, *args) -> None:
        started.append(self)
        original(self, *args)

    monkeypatch.setattr(QThread, "start", recording_start)
    yield
    running = [thread for thread in started if shiboken6.isValid(thread) and thread.isRunning()]
    for thread in running:  # end them so later tests are not affected by this one's leak
        thread.quit()
        thread.wait(5000)
    assert not running, f"test left QThreads running: {[t.objectName() or repr(t) for t in running]}"


@pytest.fixture(autouse=True)
def qt_objects_freed_after_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test with Qt widgets: delete what pytest-qt closed and `deleteLater`-ed, then collect Python's
    garbage, on the UI thread while no event is being dispatched. Left to chance, those widgets are deleted by a
    later test's event loop and their Python wrappers by whichever thread next triggers a collection, which has
    crashed the suite (a segmentation fault inside an unrelated test, once in six runs)."""
    yield
    if "qtbot" not in request.fixturenames:
        return
    import gc

    from PySide6.QtCore import QCoreApplication, QEvent

    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()


@pytest.fixture
def tiny_settings_path(tmp_path: Path, tiny_checkpoint: TinyCheckpoint) -> Path:
    """A settings file pointing at the tiny checkpoint, with room for long answers (so Stop has work to stop)."""
    from medgemma_desktop.core.settings import Settings, save_settings

    path = tmp_path / "settings.json"
    save_settings(Settings(model_dir=str(tiny_checkpoint.model_dir), adapter_dir=str(tiny_checkpoint.adapter_dir),
                           max_new_tokens=2000), path)
    return path



@pytest.fixture
def ready_window(qtbot, tiny_settings_path: Path, tmp_path: Path) -> Iterator[object]:
    """The main window on the tiny checkpoint, shown, once its model is loaded (closed after the test)."""
    from medgemma_desktop.ui.main_window import MainWindow
    from medgemma_desktop.ui.worker import ModelState

    main = MainWindow(tiny_settings_path, data_folder=tmp_path / "data")
    qtbot.addWidget(main)
    main.show()
    qtbot.waitUntil(lambda: main.host.state is ModelState.READY, timeout=60_000)
    yield main
    main.close()


AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def write_mr_series(folder: Path) -> Path:
    """Four slices of pydicom's MR_small, axial, written out of order (2, 0, 3, 1) with distinct pixels."""
    folder.mkdir()
    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    pixels = dataset.pixel_array
    dataset.ImageOrientationPatient = AXIAL
    for number in (2, 0, 3, 1):
        dataset.ImagePositionPatient = [0.0, 0.0, float(number)]
        dataset.PixelData = (pixels + number * 10).astype(pixels.dtype).tobytes()
        dataset.save_as(folder / f"{number}.dcm")
    return folder


def write_ct_series(folder: Path, positions: list[float], orientation: list[float] = AXIAL,
                    offsets: list[int] | None = None, instance_numbers: list[int] | None = None) -> None:
    """Copies of pydicom's CT_small as one series (its own SeriesInstanceUID): slice i at positions[i] mm along
    the orientation's normal, its values raised by offsets[i] HU, numbered instance_numbers[i] (default i + 1).
    Written in shuffled order under random names, so neither the disk order nor the names say anything."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    normal = np.cross(orientation[:3], orientation[3:])
    order = list(range(len(positions)))
    random.Random(7).shuffle(order)
    for number in order:
        dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        dataset.SeriesInstanceUID = uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.ImageOrientationPatient = orientation
        dataset.ImagePositionPatient = [float(v) for v in np.array([10.0, -20.0, 5.0]) + positions[number] * normal]
        dataset.InstanceNumber = instance_numbers[number] if instance_numbers else number + 1
        if offsets:
            pixels = dataset.pixel_array
            dataset.PixelData = (pixels + offsets[number]).astype(pixels.dtype).tobytes()
        dataset.save_as(folder / f"{dataset.SOPInstanceUID}.dcm")


@pytest.fixture
def ct_slices() -> Callable[..., None]:
    """`write_ct_series`, for tests that place the slices themselves."""
    return write_ct_series


@pytest.fixture
def mr_series() -> Callable[[Path], Path]:
    """`write_mr_series`: four MR slices of one series in a folder, written out of order."""
    return write_mr_series


@pytest.fixture
def ct_series() -> Callable[[Path, list[int]], list[int]]:
    """Writes an axial CT series 2.5 mm apart whose slice i is raised by offsets[i] HU, numbered against the
    geometry (position must win); returns the offsets in slice order."""

    def write(folder: Path, offsets: list[int]) -> list[int]:
        count = len(offsets)
        write_ct_series(folder, [2.5 * i for i in range(count)], offsets=offsets,
                        instance_numbers=[count - i for i in range(count)])
        return offsets

    return write


@pytest.fixture
def viewer(qtbot):
    """The image viewer alone, shown at a size smaller than the test pictures (so fitting shrinks them)."""
    from medgemma_desktop.ui.viewer import ViewerPanel

    panel = ViewerPanel()
    qtbot.addWidget(panel)
    panel.resize(600, 500)
    panel.show()
    return panel


@pytest.fixture
def ask_and_wait(qtbot):
    """Type a question into a window, press Enter as a user does, and wait for the answer to finish."""
    from PySide6.QtCore import Qt

    def ask(window, question: str, timeout_ms: int = 60_000):
        with qtbot.waitSignal(window.answer_finished, timeout=timeout_ms) as finished:
            qtbot.keyClicks(window.chat.question, question)
            qtbot.keyClick(window.chat.question, Qt.Key.Key_Return)
        return finished.args[0]

    return ask


@pytest.fixture
def live_server() -> Iterator[Callable[..., str]]:
    """Serve an ASGI app with uvicorn on a free loopback port, in a thread: returns its base URL; stopped after."""
    import threading
    import time

    import uvicorn

    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app) -> str:
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.01)
        return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(60)


LOCALIZATION_ANSWER = ('The lung is on the right of the image.\nFinal Answer: ```json[{"box_2d": [100, 200, 500, '
                       '600], "label": "left lung"}]```')


class ScriptedBackend:
    """A session backend whose answer text is given (the tiny model writes noise): the real engine counts and
    names the weights; `failure`, if set, is raised after the text streamed (as a GPU out of memory would)."""

    def __init__(self, engine, text: str, failure: Exception | None = None) -> None:
        self.engine, self.text, self.failure = engine, text, failure
        self.context_limit, self.tokens_per_image = engine.context_limit, engine.tokens_per_image
        self.identity, self.counts_exactly = engine.identity, True

    def count_tokens(self, turns) -> int:
        return self.engine.count_tokens(turns)

    def generate(self, turns, settings, cancel=None):
        from medgemma_desktop.core.engine import Generation
        from medgemma_desktop.core.text_stream import TextChunk

        def chunks(generation: Generation):
            generation.stats.prompt_tokens = self.count_tokens(turns)
            generation.stats.stop_reason = "end"
            yield TextChunk(self.text)
            if self.failure is not None:
                raise self.failure

        return Generation(chunks)


@pytest.fixture
def scripted_backend(tiny_engine) -> Callable[..., ScriptedBackend]:
    """`scripted_backend(text, failure=None)`: a backend answering `text` (default: a localization answer)."""
    return lambda text=LOCALIZATION_ANSWER, failure=None: ScriptedBackend(tiny_engine, text, failure)
