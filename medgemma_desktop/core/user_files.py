"""The one door every user file comes through before it is decoded: what it is, how big, and why it cannot be read.

A picture or DICOM reader handed a named pipe blocks for ever, one handed a 300 MB sparse file of zeros reads for
minutes, and a bare `OSError` reaches the user as a traceback. Here the file is opened without blocking, checked to
be a regular file of sane size (on the open descriptor, so a file swapped after the check cannot slip through),
and every failure becomes one `InputFileError` line naming the file, the cause and what to do.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from medgemma_desktop.core.errors import InputFileError

MiB = 1 << 20
# A picture (PNG, JPEG, TIFF, ...) larger than this is not a photo or a scan; a DICOM file can hold a thousand
# frames, so it gets more room. Both are far below what would fill memory once decoded.
MAX_PICTURE_BYTES = 256 * MiB
MAX_DICOM_BYTES = 2048 * MiB

OPEN_FOLDER_FIX = ("To read a folder of DICOM images, drop the folder onto the window or pass the folder itself "
                   "(medgemma-desktop --open FOLDER).")
_CHECK_PATH = "Check the path and try again."
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # POSIX; Windows has no FIFOs to block on
_OPEN_FLAGS = os.O_RDONLY | _NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)


def _size_text(size: int) -> str:
    return f"{size / MiB:,.0f} MB" if size >= MiB else f"{size:,} bytes"


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def os_error(exc: OSError, path: Path) -> InputFileError:
    """An `OSError` met while reading `path` as one line saying what happened and what to do."""
    number = exc.errno
    if number == errno.ENOENT or isinstance(exc, FileNotFoundError):
        return InputFileError("no such file", path=path, fix=_CHECK_PATH)
    if number == errno.EISDIR or isinstance(exc, IsADirectoryError):
        return InputFileError("this is a folder, not a file", path=path, fix=OPEN_FOLDER_FIX)
    if number in (errno.EACCES, errno.EPERM) or isinstance(exc, PermissionError):
        return InputFileError("permission denied: this user account may not read it (or the folder it is in)",
                              path=path, fix="Change its permissions, or copy it to a folder you can read.")
    if number == errno.ENAMETOOLONG:
        return InputFileError("the file name is too long for this system", path=path,
                              fix="Rename it (or a folder above it) to a shorter name.")
    if number == errno.ELOOP:
        return InputFileError("the path is a loop of symbolic links", path=path, fix="Open the file itself.")
    if number == errno.ENOTDIR:
        return InputFileError("a part of the path is a file, not a folder", path=path, fix=_CHECK_PATH)
    cause = os.strerror(number) if number else str(exc) or type(exc).__name__
    return InputFileError(f"cannot be read ({cause})", path=path,
                          fix="Copy it to a local disk and try again.")


def check_user_file(path: Path | str, max_bytes: int = MAX_PICTURE_BYTES) -> os.stat_result:
    """Stat `path` without opening it: a regular file of at most `max_bytes`, else `InputFileError`."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise os_error(exc, path) from exc
    except ValueError as exc:  # a NUL byte in the name
        raise InputFileError("the file name is not valid", path=path, fix=_CHECK_PATH) from exc
    _check_stat(info, path, max_bytes)
    return info


def _check_stat(info: os.stat_result, path: Path, max_bytes: int) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise InputFileError("this is a folder, not a file", path=path, fix=OPEN_FOLDER_FIX)
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(f"this is {_kind(info.st_mode)}, not an image file", path=path,
                             fix="Open the image file itself.")
    if info.st_size > max_bytes:
        raise InputFileError(f"the file is {_size_text(info.st_size)}, more than the {_size_text(max_bytes)} an "
                             "image file may have here", path=path,
                             fix="Open the image itself, not an archive or disk image; reduce or split it first.")
    if info.st_size == 0:
        raise InputFileError("the file is empty (0 bytes)", path=path, fix="Copy it again from the source.")


@contextmanager
def open_user_file(path: Path | str, max_bytes: int = MAX_PICTURE_BYTES) -> Iterator[BinaryIO]:
    """Open a user's file for reading, checked by `check_user_file` on the opened descriptor itself.

    The open never blocks (O_NONBLOCK: a FIFO opens at once and is then refused). Errors while decoding inside
    the `with` block are the reader's to explain: Pillow reports damaged pictures as `OSError`s too.
    """
    path = Path(path)
    check_user_file(path, max_bytes)
    try:
        descriptor = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise os_error(exc, path) from exc
    try:
        _check_stat(os.fstat(descriptor), path, max_bytes)
        if _NONBLOCK:
            os.set_blocking(descriptor, True)  # a regular file: reads behave as usual
        handle = os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    with handle:
        yield handle


def read_user_file(path: Path | str, max_bytes: int = MAX_PICTURE_BYTES) -> bytes:
    """The whole content of a checked user file."""
    with open_user_file(path, max_bytes) as handle:
        return handle.read()
