"""How files become the viewer's pictures, off the UI thread: whatever `session.inputs` opens (pictures, DICOM
files grouped by series, folders, DICOMDIRs), and the pictures of a reopened conversation.

A reopened conversation's images come back as the PNGs the model saw; where their DICOM files are still on disk,
the viewer shows the DICOM again (window/level presets, tags, values under the cursor, slices of a series) while
the conversation keeps sending exactly what it sent before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from medgemma_desktop.core.dicom import is_dicom_file, load_dicom, load_dicom_folder
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.imaging import ImageInput
from medgemma_desktop.session.inputs import ImageLoader, read_inputs, series_item
from medgemma_desktop.ui.pictures import Picture, render_item, render_picture

__all__ = ["OPEN_FILTER", "ImageLoader", "LoadResult", "load_pictures", "reopened_pictures"]

# No suffix filter by default: DICOM files from CDs and PACS exports often have none.
OPEN_FILTER = ("Images and DICOM, with or without a suffix (*);;"
               "Pictures (*.png *.jpg *.jpeg *.tif *.tiff *.bmp *.webp);;DICOM (*.dcm *.dicom DICOMDIR)")


@dataclass(frozen=True)
class LoadResult:
    pictures: list[Picture]
    errors: list[str]


def load_pictures(paths: list[Path], loader: ImageLoader) -> LoadResult:
    """Runs off the UI thread: `session.inputs.read_inputs` (series grouped however the files came), rendered."""
    opened = read_inputs(paths, loader)
    return LoadResult([render_item(item) for item in opened.items], [str(error) for error in opened.errors])


def _dicom_again(image: ImageInput) -> Picture | None:
    """The stored picture shown from its DICOM source again, or None when that is gone or was not DICOM."""
    series_uid = image.patient.get("SeriesInstanceUID")
    try:
        if image.source.is_file() and is_dicom_file(image.source):
            return render_picture(replace(image, dicom=load_dicom(image.source)))
        if image.source.is_dir() and series_uid:
            series = next((item for item in load_dicom_folder(image.source) if item.uid == series_uid), None)
            return render_item(series_item(series)) if series is not None else None
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
