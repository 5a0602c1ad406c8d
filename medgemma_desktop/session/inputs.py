"""Every path a user gives, however it arrives (drop, paste, File > Open, Open folder, `--open`, `ask --image`,
a batch folder, an API request), as the items a question can carry: one picture, one DICOM image, or one series.

DICOM files are grouped by series whatever the route: twenty slices chosen in a file dialog become one series,
as a folder or a DICOMDIR of them does. A DICOM file is recognised by its content, not its name (files on CDs
and PACS exports often have no suffix). Each failure is one line naming the path (`UserFacingError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from medgemma_desktop.core.dicom import DicomSeries, group_series, load_dicom_folder, load_dicomdir
from medgemma_desktop.core.errors import InputFileError, UserFacingError
from medgemma_desktop.core.imaging import ImageInput, dicom_image_input, load_any
from medgemma_desktop.core.user_files import os_error

ImageLoader = Callable[[Path], ImageInput]
# Files taken from a folder of pictures; anything else there (notes, hidden files) is skipped. A folder with none
# of these is read as DICOM.
PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})


@dataclass(frozen=True, eq=False)
class InputItem:
    """One thing a question can carry. For a series, `input` is its middle slice through the default window (what
    a thumbnail shows) and `series` holds every slice; what the model sees is rendered from `series`."""

    input: ImageInput
    series: DicomSeries | None = None

    @property
    def label(self) -> str:
        return self.input.label

    @property
    def slice_count(self) -> int:
        return self.series.slice_count if self.series is not None else 1


@dataclass(frozen=True)
class OpenedInputs:
    items: list[InputItem]
    errors: list[UserFacingError] = field(default_factory=list)


def picture_files(folder: Path) -> list[Path]:
    """The folder's picture files, sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES and not p.name.startswith("."))


def series_item(series: DicomSeries) -> InputItem:
    """A series as one item (a one-slice series is just its DICOM image)."""
    if series.slice_count == 1:
        return InputItem(dicom_image_input(series.images[0]))
    frames = [(image, frame) for image in series.images for frame in range(image.frame_count)]
    image, frame = frames[series.slice_count // 2]
    name = series.description or f"{series.modality} series"
    face = replace(dicom_image_input(image, frame), label=f"{name} ({series.slice_count} slices)",
                   source=image.source.parent)
    return InputItem(face, series)


def _grouped(loaded: Iterable[ImageInput]) -> list[InputItem]:
    """Pictures as they are; DICOM images of one series given together become that series, in slice order, at
    the place of its first file."""
    loaded = list(loaded)
    members: dict[str, list[ImageInput]] = {}
    for item in loaded:
        if item.dicom is not None and item.dicom.series_uid:
            members.setdefault(item.dicom.series_uid, []).append(item)
    items: list[InputItem] = []
    placed: set[str] = set()
    for item in loaded:
        uid = item.dicom.series_uid if item.dicom is not None else ""
        if uid not in members or len(members[uid]) == 1:
            items.append(InputItem(item))
        elif uid not in placed:
            placed.add(uid)
            (series,) = group_series(member.dicom for member in members[uid] if member.dicom is not None)
            items.append(series_item(series))
    return items


def read_inputs(paths: Sequence[Path], loader: ImageLoader = load_any) -> OpenedInputs:
    """Read every path, going on past bad ones: files (pictures, DICOM with or without suffix), folders (their
    pictures, else their DICOM series) and DICOMDIRs. Slow: run it off a UI thread."""
    loaded: list[ImageInput] = []
    items: list[InputItem] = []
    errors: list[UserFacingError] = []

    def flush() -> None:
        items.extend(_grouped(loaded))
        loaded.clear()

    for path in map(Path, paths):
        try:
            if path.is_dir():
                files = picture_files(path)
                if files:
                    for file in files:
                        try:
                            loaded.append(loader(file))
                        except UserFacingError as exc:
                            errors.append(exc)
                else:
                    flush()
                    items.extend(series_item(series) for series in load_dicom_folder(path))
            elif path.name.upper() == "DICOMDIR":
                flush()
                items.extend(series_item(series) for series in load_dicomdir(path))
            elif not path.exists():
                raise InputFileError("no such file or folder", path=path, fix="Check the path and try again.")
            else:
                loaded.append(loader(path))
        except UserFacingError as exc:
            errors.append(exc)
        except OSError as exc:  # a name too long, a folder that cannot be listed, ...
            errors.append(os_error(exc, path))
    flush()
    return OpenedInputs(items, errors)


def open_inputs(paths: Sequence[Path], loader: ImageLoader = load_any) -> list[InputItem]:
    """`read_inputs` for front ends that stop at the first bad path (`ask`, batch, the API): raises its line."""
    opened = read_inputs(paths, loader)
    if opened.errors:
        raise opened.errors[0]
    return opened.items
