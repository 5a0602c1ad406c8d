"""Images sent in a request (data URLs) into the pictures the model sees, through the same `core.imaging` /
`core.dicom` readers as a file the user opens: same colour handling, same DICOM window, same refusals.

The readers take files, so the bytes go to a private temporary folder (0700) for the moment of decoding and are
deleted at once. Sizes are checked first from the headers alone, so that a small file claiming a huge picture
(an image bomb) is refused before any pixel is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import tempfile
from pathlib import Path

import pydicom
from PIL import Image, UnidentifiedImageError

from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.imaging import ImageInput, load_any
from medgemma_desktop.server.api_errors import bad_request, from_user_error, too_large

# What a client may send, and the suffix the readers see (they sniff the contents anyway).
SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/webp": ".webp",
            "application/dicom": ".dcm"}
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000  # a mammogram is ~20 MP, a chest X-ray ~9 MP
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)(?P<params>(;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII)


def decode_data_url(url: str, where: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageInput:
    """`data:<type>;base64,<bytes>` -> an `ImageInput`; `where` names the part of the request in any error."""
    header = _DATA_URL.match(url)
    if header is None:
        if re.match(r"[a-z]+://", url, re.IGNORECASE):
            raise bad_request(f"{where}: the server works offline and does not fetch URLs; send the image as a "
                              "data URL (data:image/png;base64,...)", param=where, code="invalid_image_url")
        raise bad_request(f"{where}: not a base64 data URL; send data:image/png;base64,..., data:image/jpeg;base64,"
                          "... or data:application/dicom;base64,...", param=where, code="invalid_image_url")
    mime = header["mime"].lower()
    if mime not in SUFFIXES:
        raise bad_request(f"{where}: images of type {mime} are not accepted; send PNG, JPEG, WebP or DICOM "
                          "(application/dicom)", param=where, code="invalid_image_type")
    try:
        data = base64.b64decode("".join(url[header.end():].split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where}: the image data is not valid base64", param=where,
                          code="invalid_base64") from None
    if not data:
        raise bad_request(f"{where}: the image data is empty", param=where, code="invalid_image")
    _refuse_oversized(data, mime, where, max_pixels)
    with tempfile.TemporaryDirectory(prefix="medgemma-request-") as folder:
        path = Path(folder) / f"image{SUFFIXES[mime]}"
        path.write_bytes(data)
        try:
            return load_any(path)
        except UserFacingError as exc:
            raise from_user_error(exc, where) from None


def _refuse_oversized(data: bytes, mime: str, where: str, max_pixels: int) -> None:
    """Read only the header's size; a header too broken to say is left to the full reader's own message."""
    pixels = _dicom_pixels(data) if mime == "application/dicom" else _picture_pixels(data)
    if pixels is not None and pixels > max_pixels:
        raise too_large(f"{where}: the image claims {pixels:,} pixels, more than this server accepts "
                        f"({max_pixels:,}; possible decompression bomb); send it at a normal size", param=where)


def _picture_pixels(data: bytes) -> int | None:
    try:
        with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header, decodes nothing
            return image.width * image.height
    except Image.DecompressionBombError:  # Pillow's own refusal, at twice its limit: larger than ours
        return 2 * (Image.MAX_IMAGE_PIXELS or 0) + 1
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def _dicom_pixels(data: bytes) -> int | None:
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        return int(dataset.Rows) * int(dataset.Columns) * max(frames, 1)
    except Exception:  # any header pydicom cannot read: the full reader names the problem
        return None
