"""Picture files into RGB the way a reader expects, refusing bombs, and square padding whose boxes map back."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageCms
from pydicom.data import get_testdata_file

from medgemma_desktop.core.errors import InputFileError
from medgemma_desktop.core.imaging import PaddingInfo, load_any, load_image, pad_to_square


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares `width` x `height` 8-bit grey pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + _png_chunk(b"IEND", b""))


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_16_bit_greyscale_is_stretched_over_its_range_not_clipped(tmp_path: Path, suffix: str) -> None:
    ramp = np.linspace(1000, 3000, 64, dtype=np.uint16).reshape(8, 8)
    path = tmp_path / f"ramp{suffix}"
    Image.fromarray(ramp).save(path)
    pixels = np.asarray(load_image(path).image)
    assert pixels.shape == (8, 8, 3)
    assert pixels[..., 0].min() == 0 and pixels[..., 0].max() == 255
    assert np.all(np.diff(pixels[..., 0].ravel().astype(int)) >= 0)  # still a ramp, not a white block
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_cmyk_jpeg_becomes_the_right_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cyan.jpg"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(path, quality=95)
    assert np.abs(np.asarray(load_image(path).image)[8, 8].astype(int) - [0, 255, 255]).max() <= 3


def test_an_embedded_icc_profile_is_applied(tmp_path: Path) -> None:
    icc = Path(get_testdata_file("crayons.icc")).read_bytes()  # type: ignore[arg-type]
    source = Image.new("RGB", (4, 4), (200, 120, 40))
    source.save(tmp_path / "tagged.png", icc_profile=icc)
    expected = ImageCms.profileToProfile(source, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                         ImageCms.createProfile("sRGB"), outputMode="RGB")
    assert expected is not None
    assert load_image(tmp_path / "tagged.png").image.getpixel((1, 1)) == expected.getpixel((1, 1))


def test_palette_png_keeps_its_colours(tmp_path: Path) -> None:
    picture = Image.new("P", (2, 1))
    picture.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    picture.putpixel((1, 0), 1)
    picture.save(tmp_path / "palette.png")
    image = load_image(tmp_path / "palette.png").image
    assert image.mode == "RGB"
    assert [image.getpixel((0, 0)), image.getpixel((1, 0))] == [(10, 20, 30), (200, 100, 50)]


@pytest.mark.parametrize(("mode", "colour", "expected"), [
    ("RGBA", (255, 0, 0, 128), (128, 0, 0)),  # half-transparent red over black
    ("RGBA", (255, 255, 255, 0), (0, 0, 0)),  # fully transparent: black, like the padding
    ("LA", (200, 255), (200, 200, 200)),
])
def test_transparency_is_flattened_onto_black(tmp_path: Path, mode: str, colour: tuple[int, ...],
                                              expected: tuple[int, int, int]) -> None:
    Image.new(mode, (4, 4), colour).save(tmp_path / "alpha.png")
    assert load_image(tmp_path / "alpha.png").image.getpixel((2, 2)) == expected


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    picture = Image.new("RGB", (40, 20), (0, 0, 255))
    picture.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    picture.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "rotated.jpg").image
    assert image.size == (20, 40)
    top, bottom = np.asarray(image)[5, 10], np.asarray(image)[35, 10]
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # the red half is now on top


@pytest.mark.parametrize("suffix", [".bmp", ".webp"])
def test_bmp_and_lossless_webp_load(tmp_path: Path, suffix: str) -> None:
    Image.new("RGB", (5, 3), (12, 34, 56)).save(tmp_path / f"plain{suffix}", lossless=True)
    item = load_image(tmp_path / f"plain{suffix}")
    assert item.image.getpixel((4, 2)) == (12, 34, 56)
    assert item.metadata == {"width": "5", "height": "3"}


def test_a_png_declaring_a_gigantic_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(100_000, 100_000))
    with pytest.raises(InputFileError, match="decompression bomb") as caught:
        load_image(path)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_pillows_warning_zone_is_refused_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("L", (12, 12)).save(tmp_path / "big.png")  # 144 pixels: over a limit of 100, under Pillow's 2x error
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(InputFileError, match="decompression bomb"):
        load_image(tmp_path / "big.png")


def test_bad_pictures_raise_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(InputFileError, match="not a picture format"):
        load_image(tmp_path / "notes.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    with pytest.raises(InputFileError, match="cut short or damaged"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(InputFileError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_load_any_sends_dicom_to_pydicom_and_pictures_to_pillow(tmp_path: Path) -> None:
    Image.new("RGB", (3, 3)).save(tmp_path / "photo.png")
    assert load_any(tmp_path / "photo.png").dicom is None
    ct = load_any(Path(get_testdata_file("CT_small.dcm")))  # type: ignore[arg-type]
    assert ct.dicom is not None and ct.metadata["Modality"] == "CT"
    assert "CompressedSamples" not in repr(ct)  # the patient name stays out of the repr


def test_load_any_reads_dicom_without_the_preamble_by_content(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(Path(get_testdata_file("CT_small.dcm")))  # type: ignore[arg-type]
    lowest_hu = int(dataset.pixel_array.min()) - 1024
    dataset.preamble = None
    del dataset.file_meta
    raw = tmp_path / "no_preamble.img"  # a bare dataset: no preamble, no file meta, no telling extension
    pydicom.dcmwrite(raw, dataset, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert raw.read_bytes()[128:132] != b"DICM"
    item = load_any(raw)
    assert item.dicom is not None and item.dicom.modality == "CT"
    assert item.dicom.values.min() == lowest_hu


def test_pad_to_square_centres_on_black_like_the_notebook() -> None:
    image = Image.new("RGB", (30, 11), (255, 255, 255))
    padded, info = pad_to_square(image)
    assert padded.size == (30, 30)
    assert info == PaddingInfo(width=30, height=11, left=0, top=9, side=30)  # 19 rows: 9 above, 10 below
    rows = np.asarray(padded)[:, 0, 0]
    assert rows[:9].max() == 0 and rows[9:20].min() == 255 and rows[20:].max() == 0


def test_boxes_on_the_padding_are_clamped_to_the_image() -> None:
    _, info = pad_to_square(Image.new("RGB", (200, 100)))  # 50 rows of padding above and below
    assert info.to_original(0, 0, 1000, 1000) == (0.0, 0.0, 100.0, 200.0)
    assert info.to_original(250, 100, 500, 500) == (0.0, 20.0, 50.0, 100.0)


@given(width=st.integers(1, 3000), height=st.integers(1, 3000), corners=st.tuples(*[st.floats(0, 1)] * 4))
def test_box_round_trip_through_the_padded_square(width: int, height: int,
                                                  corners: tuple[float, float, float, float]) -> None:
    _, info = pad_to_square(Image.new("L", (width, height)))
    y0, y1 = sorted((corners[0] * height, corners[1] * height))
    x0, x1 = sorted((corners[2] * width, corners[3] * width))
    # what the model would answer for this box: 0..1000 over the padded square
    normalised = [(y0 + info.top) / info.side * 1000, (x0 + info.left) / info.side * 1000,
                  (y1 + info.top) / info.side * 1000, (x1 + info.left) / info.side * 1000]
    assert info.to_original(*normalised) == pytest.approx((y0, x0, y1, x1), abs=1e-6)
