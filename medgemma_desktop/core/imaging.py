"""Picture and DICOM files into `ImageInput`s the model and the viewer share, and the square padding MedGemma expects.

Every mode Pillow can open ends up as 8-bit RGB the way a reader would expect to see it: 16-bit and float images
stretched over their actual range, transparency flattened onto black, CMYK and tagged RGB through their ICC profile,
EXIF orientation applied.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from medgemma_desktop.core.dicom import (
    DicomImage,
    DicomSeries,
    dicom_image_from_dataset,
    is_dicom_file,
    load_dicom,
    read_dataset,
)
from medgemma_desktop.core.errors import InputFileError
from medgemma_desktop.core.user_files import MAX_PICTURE_BYTES, open_user_file
from medgemma_desktop.core.windowing import (
    MAX_MODEL_SLICES,
    ct_rgb_slice,
    mri_rgb_volume,
    normalize_to_uint8,
    sample_slice_indices,
)

_PICTURE_FIX = "Use a PNG, JPEG, TIFF, BMP, WebP or DICOM file."
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
# Modes with more than 8 bits per sample: Pillow's convert("RGB") would clip them at 255.
_WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


@dataclass(frozen=True, eq=False)
class ImageInput:
    """One picture ready for the model: RGB pixels plus where they came from.

    `metadata` holds non-identifying facts (modality, size, window); `patient` holds identifying DICOM tags,
    kept apart (and out of the repr) so that they never reach logs or exports unless the user asks. `dicom` keeps
    the measured values of a DICOM source for window/level and the pixel readout in the viewer.
    """

    image: Image.Image
    source: Path
    sha256: str
    label: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    patient: Mapping[str, str] = field(default_factory=dict, repr=False)
    dicom: DicomImage | None = field(default=None, repr=False)


@dataclass(frozen=True)
class PaddingInfo:
    """Where the original image sits inside its zero-padded square, to map model boxes back onto it."""

    width: int
    height: int
    left: int
    top: int
    side: int

    def to_original(self, y0: float, x0: float, y1: float, x1: float) -> tuple[float, float, float, float]:
        """A box normalised to 0..1000 over the padded square -> (y0, x0, y1, x1) in original pixels, clamped."""
        scale = self.side / 1000.0

        def along(value: float, offset: int, limit: int) -> float:
            return min(max(value * scale - offset, 0.0), float(limit))

        return (along(y0, self.top, self.height), along(x0, self.left, self.width),
                along(y1, self.top, self.height), along(x1, self.left, self.width))


def _stream_sha256(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    handle.seek(0)
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def pixels_sha256(image: Image.Image) -> str:
    """Hash of what the model sees, for inputs rendered from DICOM values (one file can give many pictures)."""
    digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def pad_to_square(image: Image.Image) -> tuple[Image.Image, PaddingInfo]:
    """Centre the image on a black square (extra pixel bottom/right), as Google's notebooks do before resizing."""
    side = max(image.width, image.height)
    left, top = (side - image.width) // 2, (side - image.height) // 2
    padded = Image.new(image.mode, (side, side))
    padded.paste(image, (left, top))
    return padded, PaddingInfo(width=image.width, height=image.height, left=left, top=top, side=side)


def load_image(path: Path | str) -> ImageInput:
    """Read a picture file as RGB, EXIF orientation applied; a bad file raises `InputFileError`."""
    path = Path(path)
    with open_user_file(path, MAX_PICTURE_BYTES) as handle:
        try:
            with Image.open(handle) as opened:
                _refuse_bomb(opened, path)
                opened.load()
                image = to_rgb(ImageOps.exif_transpose(opened))
        except Image.DecompressionBombError as exc:
            raise _bomb_error(path) from exc
        except UnidentifiedImageError as exc:
            raise InputFileError("not a picture format this app reads", path=path, fix=_PICTURE_FIX) from exc
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, ZeroDivisionError,
                MemoryError) as exc:  # how Pillow's format plugins report damaged files
            raise InputFileError(f"the picture is cut short or damaged ({type(exc).__name__})", path=path,
                                 fix="Copy it again from the source, or save it again as PNG.") from exc
        sha256 = _stream_sha256(handle)
    return ImageInput(image=image, source=path, sha256=sha256, label=path.name,
                      metadata={"width": str(image.width), "height": str(image.height)})


def _refuse_bomb(image: Image.Image, path: Path) -> None:
    """Refuse what Pillow only warns about (more than MAX_IMAGE_PIXELS), before decoding a single pixel.

    Checked here instead of turning DecompressionBombWarning into an error with `warnings` filters, which are
    process-wide and not thread-safe.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        raise _bomb_error(path)


def _bomb_error(path: Path) -> InputFileError:
    return InputFileError(f"the picture claims to be larger than {Image.MAX_IMAGE_PIXELS or 0:,} pixels and was "
                          "refused (possible decompression bomb)", path=path,
                          fix="Reduce it to a normal size in an image editor first.")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, keeping what the pixels mean.

    Transparent areas become black, like the zero padding the model was trained with and the dark background of
    most medical images; white would put bright frames around X-rays and CT slices.
    """
    if image.mode in _WIDE_MODES:
        return Image.fromarray(np.repeat(normalize_to_uint8(np.asarray(image))[..., np.newaxis], 3, axis=-1))
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    icc = image.info.get("icc_profile")
    if icc and image.mode in ("CMYK", "RGB"):
        try:
            converted = ImageCms.profileToProfile(image, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                                  ImageCms.createProfile("sRGB"), outputMode="RGB")
            return cast(Image.Image, converted)  # None only for inPlace=True
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken embedded profile: fall back to Pillow's plain conversion below
    return image.convert("RGB")


def dicom_image_input(image: DicomImage, frame: int = 0) -> ImageInput:
    """One frame of a DICOM image as the model sees a photo: 8-bit RGB through the image's default window."""
    picture = Image.fromarray(image.frame_rgb(frame))
    label = image.source.name if image.frame_count == 1 else f"{image.source.name} frame {frame + 1}"
    metadata = {**image.metadata, "width": str(picture.width), "height": str(picture.height),
                "window_center": f"{image.window.center:g}", "window_width": f"{image.window.width:g}"}
    return ImageInput(image=picture, source=image.source, sha256=pixels_sha256(picture), label=label,
                      metadata=metadata, patient=image.patient, dicom=image)


def volume_image_inputs(series: DicomSeries, max_slices: int = MAX_MODEL_SLICES) -> list[ImageInput]:
    """A CT or MRI series as the model's slice images, sampled evenly, encoded the way Google's notebooks do.

    CT: three HU windows in R, G, B. MR: min-max over the whole volume, grey in all three channels. Other
    modalities: each slice through its own default window.
    """
    volume = series.volume()
    indices = sample_slice_indices(volume.shape[0], max_slices)
    first = series.images[0]
    if series.modality == "CT" and volume.ndim == 3:
        slices = [ct_rgb_slice(volume[index]) for index in indices]
    elif series.modality == "MR" and volume.ndim == 3:
        slices = list(mri_rgb_volume(volume)[indices])
    else:
        frames = [(image, frame) for image in series.images for frame in range(image.frame_count)]
        slices = [frames[index][0].frame_rgb(frames[index][1]) for index in indices]
    inputs = []
    for index, pixels in zip(indices, slices, strict=True):
        picture = Image.fromarray(pixels)
        inputs.append(ImageInput(image=picture, source=first.source.parent, sha256=pixels_sha256(picture),
                                 label=f"{series.description or series.modality} slice {index + 1}/{len(volume)}",
                                 metadata={**first.metadata, "slice_index": str(index)}, patient=first.patient))
    return inputs


def load_any(path: Path | str) -> ImageInput:
    """Open a picture or a single DICOM file: DICOM by its 'DICM' preamble, else Pillow, else pydicom's reader.

    A file named like DICOM (.dcm) that neither reader takes is reported as damaged DICOM, not as an unknown
    picture format.
    """
    path = Path(path)
    if is_dicom_file(path):
        return dicom_image_input(load_dicom(path))
    try:
        return load_image(path)
    except InputFileError as picture_error:
        if not isinstance(picture_error.__cause__, UnidentifiedImageError):
            raise
        try:
            dataset = read_dataset(path)
        except InputFileError:
            if path.suffix.lower() in DICOM_SUFFIXES:
                raise InputFileError("named as DICOM but has no readable DICOM header: the file is damaged or "
                                     "not DICOM", path=path, fix="Copy it again from the source.") from None
            raise picture_error from None
        return dicom_image_input(dicom_image_from_dataset(dataset, path))
