"""Failures the user can act on: each renders as one line naming the file and the fix.

Anything that is not a `UserFacingError` is a bug: the CLI and the window log it with a traceback.
"""

from __future__ import annotations

from pathlib import Path


def display_path(path: Path | str) -> str:
    """A path as it can be shown on one line: as it is, or quoted with escapes when it holds a newline, a control
    character or bytes that are not valid in the file system's encoding."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def one_line(text: str) -> str:
    """Text (an exception's message, say) with its line breaks and control characters made visible escapes."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class UserFacingError(Exception):
    """An expected failure (bad file, wrong folder, too little memory) with a concrete next step."""

    kind = "error"

    def __init__(self, problem: str, *, path: Path | str | None = None, fix: str = "") -> None:
        self.problem = problem.rstrip(".")
        self.path = Path(path) if path is not None else None
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        """Always one line: the path quoted when it holds line breaks, any line break in the texts escaped."""
        where = f"{display_path(self.path)}: " if self.path is not None else ""
        fix = f" {one_line(self.fix)}" if self.fix else ""
        return f"{where}{one_line(self.problem)}.{fix}"


class ModelFolderError(UserFacingError):
    """The base model folder is missing, incomplete or not MedGemma-shaped."""

    kind = "model"


class AdapterFolderError(UserFacingError):
    """The LoRA adapter folder is missing, incomplete or made for another base model."""

    kind = "adapter"


class InputFileError(UserFacingError):
    """An image, DICOM file or series that cannot be read."""

    kind = "input"


class ContextTooLongError(UserFacingError):
    """The prompt (text plus 256 tokens per image) does not fit the context limit."""

    kind = "context"


class OutOfMemoryError(UserFacingError):
    """The GPU ran out of memory; the loaded model stays usable."""

    kind = "memory"


class VisionUnavailableError(UserFacingError):
    """The loaded model's image path does not work, so image questions are refused."""

    kind = "vision"


class LoadCancelled(UserFacingError):
    """The user cancelled loading a model."""

    kind = "cancelled"
