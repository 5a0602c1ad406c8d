"""Picture files (PNG, JPEG, TIFF, BMP, WebP) into `ImageInput`s the model and the viewer share."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from medgemma_desktop.core.errors import InputFileError


@dataclass(frozen=True, eq=False)
class ImageInput:
    """One picture ready for the model: RGB pixels plus where they came from.

    `metadata` holds non-identifying facts (modality, size, window); `patient` holds identifying DICOM tags,
    kept apart so that they never reach logs or exports unless the user asks.
    """

    image: Image.Image
    source: Path
    sha256: str
    label: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    patient: Mapping[str, str] = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_image(path: Path | str) -> ImageInput:
    """Read a picture file as RGB, EXIF orientation applied; a bad file raises `InputFileError`."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError("no such file", path=path, fix="Check the path and try again.")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputFileError(f"not a readable image ({type(exc).__name__})", path=path,
                             fix="Use a PNG, JPEG, TIFF, BMP, WebP or DICOM file.") from exc
    return ImageInput(image=image, source=path, sha256=file_sha256(path), label=path.name,
                      metadata={"width": str(image.width), "height": str(image.height)})
