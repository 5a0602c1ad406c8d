"""Shared fixtures: one tiny MedGemma-shaped checkpoint per test session, loaded through the real code."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from medgemma_desktop.testing import TinyCheckpoint, write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint: TinyCheckpoint):
    """One loaded engine shared by the tests that only generate (loading costs ~2 s on the CPU)."""
    from medgemma_desktop.core.engine import Engine

    return Engine.load(tiny_checkpoint.model_dir, tiny_checkpoint.adapter_dir)
