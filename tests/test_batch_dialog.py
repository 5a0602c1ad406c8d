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
