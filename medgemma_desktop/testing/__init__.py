"""The tiny-checkpoint factory for tests, doctor and demo mode."""

from medgemma_desktop.testing.tiny_checkpoint import TinyCheckpoint, write_tiny_checkpoint

__all__ = ["TinyCheckpoint", "write_tiny_checkpoint"]
