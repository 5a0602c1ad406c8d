"""Garbage collection held off while the process imports and loads (`core.collection`), and always resumed."""

from __future__ import annotations

import gc

import pytest

from medgemma_desktop.cli import main
from medgemma_desktop.core import collection


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def _collections_during(action) -> list[int]:
    generations: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            generations.append(info["generation"])

    gc.callbacks.append(count)
    try:
        action()
    finally:
        gc.callbacks.remove(count)
    return generations


def test_no_automatic_collection_inside_and_what_was_made_is_frozen_after() -> None:
    frozen_before = gc.get_freeze_count()
    kept: list[_Cycle] = []

    def make() -> None:
        with collection.deferred():
            kept.extend(_Cycle() for _ in range(50_000))  # far past every generation's threshold

    try:
        assert _collections_during(make) == []
        assert gc.isenabled() and gc.get_freeze_count() >= frozen_before + len(kept)
    finally:
        gc.unfreeze()


def test_a_failure_resumes_collection_and_freezes_nothing() -> None:
    frozen_before = gc.get_freeze_count()
    with pytest.raises(RuntimeError), collection.deferred():
        raise RuntimeError("load failed")
    assert gc.isenabled() and gc.get_freeze_count() == frozen_before


def test_the_command_line_leaves_collection_on() -> None:
    with pytest.raises(SystemExit):
        main(["ask", "--help"])  # the commands' modules are imported, then argparse exits
    assert gc.isenabled()
    gc.unfreeze()


def test_ask_loads_with_collection_held_off_and_answers_with_it_on(tiny_checkpoint, capsys, monkeypatch,
                                                                   tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    gc.unfreeze()
    try:
        status = main(["ask", "--model", str(tiny_checkpoint.model_dir), "--max-new-tokens", "4", "--no-history",
                       "Hello"])
        assert status == 0, capsys.readouterr().err
        assert gc.isenabled() and gc.get_freeze_count() > 0  # the loaded model is out of later collections' way
    finally:
        gc.unfreeze()
