"""File > Batch… driven as a user does: Start fills the table and the progress bar from the real engine, Cancel
stops after the item being answered and leaves a results file that a second Start continues."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from medgemma_desktop.core.engine import GenerationSettings
from medgemma_desktop.session.batch_results import read_results
from medgemma_desktop.ui.batch_dialog import BatchDialog


def _pictures(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for index in range(count):
        paths.append(folder / f"{index}.png")
        Image.new("RGB", (40, 30), (index * 40, 90, 120)).save(paths[-1])
    return paths


def test_batch_dialog_runs_cancels_and_continues(qtbot, tiny_engine, tmp_path: Path) -> None:
    dialog = BatchDialog(tiny_engine, GenerationSettings(max_new_tokens=3))
    qtbot.addWidget(dialog)
    dialog.add_inputs(_pictures(tmp_path / "pictures", 4))
    out = tmp_path / "results.csv"
    dialog.out.setText(str(out))

    dialog.start()
    assert dialog.running and not dialog.start_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.table.rowCount() >= 1, timeout=120_000)
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: not dialog.running, timeout=120_000)
    assert dialog.summary is not None and dialog.summary.stopped
    stopped_at = len(read_results(out))
    assert 1 <= stopped_at < 4 and dialog.table.rowCount() == stopped_at

    dialog.start()  # the same file: only what is left
    qtbot.waitUntil(lambda: not dialog.running, timeout=120_000)
    assert dialog.summary is not None and not dialog.summary.stopped
    assert dialog.summary.answered == 4 - stopped_at
    rows = read_results(out)
    assert sorted(Path(row["input"]).name for row in rows) == ["0.png", "1.png", "2.png", "3.png"]
    assert all(row["answer"] is not None and row["error"] == "" for row in rows)
    assert dialog.progress.value() == dialog.progress.maximum() and dialog.open_button.isEnabled()


def test_file_batch_opens_on_the_loaded_model_and_says_why_not_before(qtbot, tiny_settings_path: Path,
                                                                      tmp_path: Path) -> None:
    from medgemma_desktop.core.imaging import load_any
    from medgemma_desktop.ui.main_window import MainWindow
    from medgemma_desktop.ui.worker import ModelState

    window = MainWindow(tiny_settings_path, loader=load_any, data_folder=tmp_path / "data")
    qtbot.addWidget(window)
    file_menu = window.menuBar().actions()[0].menu()
    [batch] = [action for action in file_menu.actions() if action.text() == "&Batch…"]
    assert batch.shortcut().toString() == "Ctrl+B"
    if window.host.state is not ModelState.READY:  # still loading: one line, no dialog
        batch.trigger()
        assert window.findChild(BatchDialog) is None
        assert "Load the model" in window.statusBar().currentMessage()
    window.show()
    qtbot.waitUntil(lambda: window.host.state is ModelState.READY, timeout=120_000)
    batch.trigger()
    dialog = window.findChild(BatchDialog)
    assert dialog is not None and dialog.isVisible()
    dialog.add_inputs(_pictures(tmp_path / "pictures", 1))
    dialog.out.setText(str(tmp_path / "results.jsonl"))
    dialog.start()
    qtbot.waitUntil(lambda: not dialog.running, timeout=120_000)
    [row] = read_results(tmp_path / "results.jsonl")
    assert row["error"] == "" and row["answer"] is not None
    dialog.close()
    window.close()
