"""Hostile files: pipes, devices, sparse giants, folders, long and multi-line names, unreadable files, empty pixel
data. Each gets one line naming the file and what to do, quickly, through every reader."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medgemma_desktop.core.dicom import load_dicom, read_dataset
from medgemma_desktop.core.errors import InputFileError
from medgemma_desktop.core.imaging import load_any, load_image
from medgemma_desktop.core.user_files import MAX_PICTURE_BYTES, check_user_file, read_user_file

READERS: list[Callable[[Path], object]] = [load_any, load_image, load_dicom, read_dataset, read_user_file]


def _refusal(reader: Callable[[Path], object], path: Path, within_s: float = 10.0) -> str:
    """The one-line message `reader` refuses `path` with, failing the test if it takes longer than `within_s`."""
    outcome: list[BaseException | object] = []
    worker = threading.Thread(target=lambda: outcome.append(_call(reader, path)), daemon=True)
    worker.start()
    worker.join(within_s)
    assert outcome, f"{reader.__name__} did not return within {within_s} s (blocked reading {path.name!r})"
    error = outcome[0]
    assert isinstance(error, InputFileError), f"{reader.__name__} gave {error!r}"
    message = str(error)
    assert "\n" not in message and "\r" not in message
    return message


def _call(reader: Callable[[Path], object], path: Path) -> BaseException | object:
    try:
        return reader(path)
    except BaseException as exc:  # handed back to the test thread to check
        return exc


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are a POSIX feature")
@pytest.mark.parametrize("reader", READERS, ids=lambda reader: reader.__name__)
def test_a_fifo_named_like_a_picture_is_refused_without_blocking(tmp_path: Path, reader) -> None:
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    assert "named pipe" in _refusal(reader, fifo)


def test_a_device_is_refused() -> None:
    assert "device" in _refusal(load_any, Path("/dev/zero"))


@pytest.mark.parametrize("reader", READERS, ids=lambda reader: reader.__name__)
def test_a_huge_sparse_file_is_refused_by_its_size(tmp_path: Path, reader) -> None:
    sparse = tmp_path / "zeros.png"
    with sparse.open("wb") as handle:
        handle.truncate(300 * 1024 * 1024)  # 300 MB of zeros that take no disk space
    message = _refusal(reader, sparse, within_s=5.0)
    assert "300 MB" in message or "not a DICOM file" in message


def test_a_picture_over_the_cap_says_how_big_it_is_and_the_limit(tmp_path: Path) -> None:
    big = tmp_path / "scan.tiff"
    with big.open("wb") as handle:
        handle.truncate(MAX_PICTURE_BYTES + 5 * 1024 * 1024)
    message = _refusal(load_any, big)
    assert "261 MB" in message and "256 MB" in message


@pytest.mark.parametrize("reader", READERS, ids=lambda reader: reader.__name__)
def test_a_file_name_too_long_for_the_system(tmp_path: Path, reader) -> None:
    assert "too long" in _refusal(reader, tmp_path / ("n" * 252 + ".png"))


@pytest.mark.parametrize("reader", READERS, ids=lambda reader: reader.__name__)
def test_a_folder_says_how_to_open_a_folder(tmp_path: Path, reader) -> None:
    folder = tmp_path / "study.png"
    folder.mkdir()
    message = _refusal(reader, folder)
    assert "is a folder" in message and "drop the folder onto the window" in message and "--open" in message


@pytest.mark.parametrize("reader", READERS, ids=lambda reader: reader.__name__)
def test_an_unreadable_file_says_permission_not_damage(tmp_path: Path, reader,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    picture = locked / "photo.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    locked.chmod(0o300)  # the folder can be entered by name but not listed or read from below...
    picture.chmod(0)
    if os.geteuid() == 0:  # ...except by root, who reads anything: make the open fail as it would for a user
        original = os.open

        def refusing_open(path, flags, *args, **kwargs):
            if Path(path) == picture:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return original(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)
    try:
        message = _refusal(reader, picture)
    finally:
        locked.chmod(0o700)
    assert "permission denied" in message and "damaged" not in message


def test_a_name_with_a_newline_stays_on_one_line_and_is_quoted(tmp_path: Path) -> None:
    odd = tmp_path / "chest\nx-ray.png"
    odd.write_text("not a picture")
    message = _refusal(load_any, odd)
    assert "chest\\nx-ray.png" in message and message.startswith("'")
    assert str(tmp_path / "missing.png") in _refusal(load_any, tmp_path / "missing.png")  # plain names unquoted


def test_an_empty_file_is_refused_as_empty(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "empty" in _refusal(load_any, tmp_path / "empty.jpg")


def test_check_user_file_never_opens_the_file(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"12345")
    assert check_user_file(photo).st_size == 5


def test_a_dicom_whose_pixel_data_is_empty_says_so(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.PixelData = b""
    path = tmp_path / "empty_pixels.dcm"
    dataset.save_as(path)
    assert "DICOM instance missing PixelData" in _refusal(load_any, path)


def test_a_damaged_dicom_file_is_not_called_an_unknown_picture_format(tmp_path: Path) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # type: ignore[arg-type]
    damaged = tmp_path / "scan.dcm"
    damaged.write_bytes(bytes(64) + data[200:])  # preamble and file meta overwritten
    message = _refusal(load_any, damaged)
    assert "not a picture format" not in message and "DICOM" in message and "damaged" in message


def test_a_dicomdir_pointing_outside_its_folder_is_refused(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file as testdata
    from pydicom.fileset import FileSet

    from medgemma_desktop.core.dicom import load_dicomdir

    disc = tmp_path / "disc"
    disc.mkdir()
    fileset = FileSet()
    fileset.add(pydicom.dcmread(testdata("CT_small.dcm")))
    fileset.write(disc)
    dicomdir = pydicom.dcmread(disc / "DICOMDIR")
    for record in dicomdir.DirectoryRecordSequence:
        if "ReferencedFileID" in record:
            record.ReferencedFileID = ["..", "..", "secret.dcm"]
    dicomdir.save_as(disc / "DICOMDIR")
    with pytest.raises(InputFileError, match="outside its own folder"):
        load_dicomdir(disc / "DICOMDIR")
