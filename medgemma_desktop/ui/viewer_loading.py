"""How files become the viewer's pictures, off the UI thread: picture files, folders of them, DICOM folders and
DICOMDIRs (one item per series), and the pictures of a reopened conversation.

A reopened conversation's images come back as the PNGs the model saw; where their DICOM files are still on disk,
the viewer shows the DICOM again (window/level presets, tags, values under the cursor, slices of a series) while
the conversation keeps sending exactly what it sent before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from medgemma_desktop.core.dicom import DicomSeries, is_dicom_file, load_dicom, load_dicom_folder, load_dicomdir
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.imaging import ImageInput, dicom_image_input
from medgemma_desktop.ui.pictures import Picture, render_picture, render_series

ImageLoader = Callable[[Path], ImageInput]
# Files taken from a dropped folder; anything else in the folder (notes, hidden files) is skipped. A folder with
# none of these is read as DICOM (files there often have no suffix at all).
PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
OPEN_FILTER = ("Images and DICOM (*.png *.jpg *.jpeg *.tif *.tiff *.bmp *.webp *.dcm *.dicom DICOMDIR);;"
               "All files (*)")


@dataclass(frozen=True)
class LoadResult:
    pictures: list[Picture]
    errors: list[str]


def picture_files(folder: Path) -> list[Path]:
    """The folder's picture files, sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES and not p.name.startswith("."))


def series_pictures(series: Iterable[DicomSeries]) -> list[Picture]:
    """One item per series; a one-slice series is just a DICOM picture."""
    return [render_series(item) if item.slice_count > 1 else render_picture(dicom_image_input(item.images[0]))
            for item in series]


def load_pictures(paths: list[Path], loader: ImageLoader) -> LoadResult:
    """Runs off the UI thread: decode each file, folder or DICOMDIR; keep going past bad ones and say which
    failed. A folder of pictures opens its pictures; any other folder is read as DICOM series."""
    pictures, errors = [], []

    def attempt(load: Callable[[], list[Picture]]) -> None:
        try:
            pictures.extend(load())
        except UserFacingError as exc:
            errors.append(str(exc))

    for path in paths:
        if path.is_dir():
            files = picture_files(path)
            if files:
                for file in files:
                    attempt(lambda file=file: [render_picture(loader(file))])
            else:
                attempt(lambda path=path: series_pictures(load_dicom_folder(path)))
        elif path.name.upper() == "DICOMDIR":
            attempt(lambda path=path: series_pictures(load_dicomdir(path)))
        else:
            attempt(lambda path=path: [render_picture(loader(path))])
    return LoadResult(pictures, errors)


def _dicom_again(image: ImageInput) -> Picture | None:
    """The stored picture shown from its DICOM source again, or None when that is gone or was not DICOM."""
    series_uid = image.patient.get("SeriesInstanceUID")
    try:
        if image.source.is_file() and is_dicom_file(image.source):
            return render_picture(replace(image, dicom=load_dicom(image.source)))
        if image.source.is_dir() and series_uid:
            series = next((item for item in load_dicom_folder(image.source) if item.uid == series_uid), None)
            return render_series(series) if series is not None else None
    except UserFacingError:
        return None
    return None


def reopened_pictures(images: Iterable[ImageInput]) -> list[Picture]:
    """Runs off the UI thread: a stored conversation's images for the viewer, each once; the slices of a series
    become that series again while its files are where they were."""
    pictures: list[Picture] = []
    seen: set[str] = set()
    for image in images:
        key = f"{image.source}|{image.patient.get('SeriesInstanceUID')}" if image.source.is_dir() else image.sha256
        if key in seen:
            continue
        seen.add(key)
        pictures.append(_dicom_again(image) or render_picture(image))
    return pictures
