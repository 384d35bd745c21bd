"""Tests for nlattn.io: round trips, conversions, orientation, atomic writes and errors.

Every file is made on the fly under tmp_path; the images are tiny so the suite runs in seconds.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import io
import os
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
import tifffile
from PIL import Image, ImageOps

import nlattn.io as nio
from nlattn.io import (
    IMAGE_EXTENSIONS,
    ImageMeta,
    ImageReadError,
    is_image_path,
    read_image,
    write_image,
)

H, W = 12, 17  # deliberately not square, so transposes show
MODE_OF = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _random(dtype, channels: int, seed: int = 0) -> np.ndarray:
    """A random image of full range; (H, W) when channels == 1."""
    rng = np.random.default_rng(seed)
    shape = (H, W) if channels == 1 else (H, W, channels)
    if np.dtype(dtype).kind == "f":
        a = rng.normal(0.0, 1000.0, shape).astype(dtype)
        a.flat[:3] = [0.0, -1e-30, 3.4e38]
        return a
    info = np.iinfo(dtype)
    a = rng.integers(info.min, int(info.max) + 1, shape, dtype=dtype)
    a.flat[:2] = [info.min, info.max]
    return a


def _smooth_rgb() -> np.ndarray:
    """A smooth, structured uint8 RGB image (JPEG-friendly, orientation-revealing)."""
    y, x = np.mgrid[0:24, 0:40].astype(np.float64)
    r = 255 * x / 39
    g = 255 * y / 23
    b = 128 + 100 * np.sin(x / 7) * np.cos(y / 5)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).round().astype(np.uint8)


def _split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, C) with alpha last -> (image, alpha) as read_image returns them."""
    if a.ndim == 2:
        return a, None
    if a.shape[2] == 2:
        return a[..., 0], a[..., 1]
    if a.shape[2] == 4:
        return a[..., :3], a[..., 3]
    return a, None


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bytes(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A PNG whose IHDR says width x height, with a tiny IDAT (for size checks)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _chunk(b"IEND", b"")
    )


def _splice_after_ihdr(data: bytes, chunk: bytes) -> bytes:
    split = 8 + 8 + 13 + 4
    return data[:split] + chunk + data[split:]


def _tiff_bytes(width: int, height: int) -> bytes:
    """A minimal little-endian 8-bit grey TIFF whose header claims width x height."""
    n_entries = 9
    data_offset = 8 + 2 + 12 * n_entries + 4
    entries = [
        (256, 4, width),  # ImageWidth, LONG
        (257, 4, height),  # ImageLength
        (258, 3, 8),  # BitsPerSample, SHORT
        (259, 3, 1),  # Compression: none
        (262, 3, 1),  # Photometric: min-is-black
        (273, 4, data_offset),  # StripOffsets
        (277, 3, 1),  # SamplesPerPixel
        (278, 4, height),  # RowsPerStrip
        (279, 4, 4),  # StripByteCounts
    ]
    ifd = struct.pack("<H", n_entries)
    ifd += b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in entries)
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4


def _pil_bytes(a: np.ndarray, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _check_read_error(path: Path, *words: str) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith(f"cannot read {str(path)!r}: "), message
    assert "\n" not in message
    for word in words:
        assert word in message.lower(), message
    return message


def _check_array(a: np.ndarray, dtype) -> None:
    assert a.dtype == np.dtype(dtype)
    assert a.flags.c_contiguous
    assert a.flags.writeable


# --------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------

EXACT_CASES = (
    [(np.uint8, ext, c) for ext in ("png", "tif", "tiff", "webp") for c in (1, 2, 3, 4)]
    + [(np.uint8, "bmp", c) for c in (1, 3)]
    + [(np.uint16, ext, c) for ext in ("png", "tif") for c in (1, 2, 3, 4)]
    + [(np.float32, ext, c) for ext in ("tif", "tiff") for c in (1, 2, 3, 4)]
)


@pytest.mark.parametrize(
    ("dtype", "ext", "channels"),
    EXACT_CASES,
    ids=[f"{np.dtype(d).name}-{e}-{MODE_OF[c]}" for d, e, c in EXACT_CASES],
)
def test_round_trip_exact(tmp_path, dtype, ext, channels):
    data = _random(dtype, channels, seed=channels)
    image, alpha = _split(data)
    path = tmp_path / f"image.{ext}"
    write_image(path, image, ImageMeta(str(path), "", MODE_OF[channels], data.dtype, 0, alpha))
    got, meta = read_image(path)
    _check_array(got, dtype)
    np.testing.assert_array_equal(got, image)
    assert meta.mode == MODE_OF[channels]
    assert meta.dtype == np.dtype(dtype)
    assert meta.bit_depth == np.dtype(dtype).itemsize * 8
    assert meta.format == {"tif": "TIFF", "tiff": "TIFF"}.get(ext, ext.upper())
    assert meta.path == str(path)
    if alpha is None:
        assert meta.alpha is None
    else:
        _check_array(meta.alpha, dtype)
        np.testing.assert_array_equal(meta.alpha, alpha)


@pytest.mark.parametrize("ext", ["png", "tif", "webp"])
def test_alpha_as_last_channel_equals_alpha_in_meta(tmp_path, ext):
    rgba = _random(np.uint8, 4, seed=3)
    write_image(tmp_path / f"a.{ext}", rgba)
    got, meta = read_image(tmp_path / f"a.{ext}")
    np.testing.assert_array_equal(got, rgba[..., :3])
    np.testing.assert_array_equal(meta.alpha, rgba[..., 3])
    # and back again through the meta
    write_image(tmp_path / f"b.{ext}", got, meta)
    again, meta2 = read_image(tmp_path / f"b.{ext}")
    np.testing.assert_array_equal(again, got)
    np.testing.assert_array_equal(meta2.alpha, meta.alpha)


def test_uint16_keeps_bits_below_256(tmp_path):
    """16-bit colour must not go through 8 bits: low bytes survive."""
    a = (np.arange(H * W * 3, dtype=np.uint16) * 257 + 1).reshape(H, W, 3)
    write_image(tmp_path / "x.png", a)
    got, meta = read_image(tmp_path / "x.png")
    assert meta.bit_depth == 16
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_round_trip_within_tolerance(tmp_path, channels):
    rgb = _smooth_rgb()
    image = rgb if channels == 3 else rgb[..., 1]
    for ext in ("jpg", "JPEG"):
        write_image(tmp_path / f"x.{ext}", image)
        got, meta = read_image(tmp_path / f"x.{ext}")
        _check_array(got, np.uint8)
        assert got.shape == image.shape
        assert meta.format == "JPEG"
        assert meta.mode == ("RGB" if channels == 3 else "L")
        error = np.abs(got.astype(np.int16) - image)
        assert error.mean() < 1.5
        assert error.max() < 16


@pytest.mark.parametrize("ext", ["png", "tif", "bmp", "webp", "jpg"])
def test_single_channel_axis_written_as_grey(tmp_path, ext):
    grey = _smooth_rgb()[..., 0]
    write_image(tmp_path / f"x.{ext}", grey[:, :, None])
    got, meta = read_image(tmp_path / f"x.{ext}")
    assert got.shape == grey.shape
    assert meta.mode == "L"


def test_float_tiff_nan_and_inf_read_as_they_are(tmp_path):
    a = _random(np.float32, 3)
    a[0, 0, 0], a[1, 1, 1], a[2, 2, 2] = np.nan, np.inf, -np.inf
    write_image(tmp_path / "x.tif", a)
    got, _ = read_image(tmp_path / "x.tif")
    np.testing.assert_array_equal(got, a)  # NaN == NaN for assert_array_equal


def test_non_contiguous_and_big_endian_input(tmp_path):
    a = _random(np.uint16, 3)
    view = a.astype(">u2")[:, ::-1]
    assert not view.flags.c_contiguous and view.dtype.byteorder == ">"
    for ext in ("png", "tif"):
        write_image(tmp_path / f"x.{ext}", view)
        got, _ = read_image(tmp_path / f"x.{ext}")
        np.testing.assert_array_equal(got, a[:, ::-1])


@pytest.mark.parametrize(
    "options", [{"progressive": True}, {"restart_marker_blocks": 1}, {"optimize": True}]
)
def test_jpeg_variants_read(tmp_path, options):
    """Progressive scans and restart markers pass the end-marker walk."""
    rgb = _smooth_rgb()
    (tmp_path / "x.jpg").write_bytes(_pil_bytes(rgb, "JPEG", quality=95, **options))
    got, _ = read_image(tmp_path / "x.jpg")
    np.testing.assert_array_equal(got, np.asarray(Image.open(tmp_path / "x.jpg")))


@pytest.mark.parametrize(
    ("ext", "dtype", "channels"),
    [
        ("png", np.uint8, 3),
        ("png", np.uint16, 3),
        ("png", np.uint16, 1),
        ("jpg", np.uint8, 3),
        ("webp", np.uint8, 4),
        ("tif", np.float32, 1),
    ],
)
def test_icc_profile_round_trip(tmp_path, ext, dtype, channels):
    icc = b"not a real profile, but bytes to carry " * 5
    data = _random(dtype, channels)
    image, alpha = _split(data)
    meta = ImageMeta("", "", MODE_OF[channels], data.dtype, 0, alpha, icc_profile=icc)
    write_image(tmp_path / f"x.{ext}", image, meta)
    _, got = read_image(tmp_path / f"x.{ext}")
    assert got.icc_profile == icc


def test_bmp_drops_icc_profile(tmp_path):
    meta = ImageMeta("", "", "RGB", np.dtype(np.uint8), 8, icc_profile=b"icc")
    write_image(tmp_path / "x.bmp", _random(np.uint8, 3), meta)
    assert read_image(tmp_path / "x.bmp")[1].icc_profile is None


# --------------------------------------------------------------------------------------------
# files from other writers: conversions
# --------------------------------------------------------------------------------------------


def test_palette_png_becomes_rgb_or_rgba(tmp_path):
    index = (np.arange(H * W) % 4).reshape(H, W).astype(np.uint8)
    palette = [10, 20, 30, 200, 0, 0, 0, 200, 0, 0, 0, 200]
    im = Image.fromarray(index).convert("P")
    im.putpalette(palette)
    im.save(tmp_path / "p.png")
    im.save(tmp_path / "pt.png", transparency=2)
    expected = np.asarray(palette, dtype=np.uint8).reshape(4, 3)[index]

    got, meta = read_image(tmp_path / "p.png")
    assert meta.mode == "RGB" and meta.alpha is None
    np.testing.assert_array_equal(got, expected)

    got, meta = read_image(tmp_path / "pt.png")
    assert meta.mode == "RGBA"
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(meta.alpha, np.where(index == 2, 0, 255))


def test_bilevel_png_and_bmp_become_uint8(tmp_path):
    bits = _random(np.uint8, 1) > 127
    for ext in ("png", "bmp"):
        Image.fromarray(bits).save(tmp_path / f"b.{ext}")
        got, meta = read_image(tmp_path / f"b.{ext}")
        _check_array(got, np.uint8)
        assert meta.mode == "L" and meta.bit_depth == 8
        np.testing.assert_array_equal(got, bits * np.uint8(255))


@pytest.mark.parametrize(("dtype", "channels"), [(np.uint8, 1), (np.uint8, 3), (np.uint16, 1)])
def test_png_with_transparent_colour_gets_alpha(tmp_path, dtype, channels):
    image = _random(dtype, channels)
    key = image[3, 4]
    key = int(key) if channels == 1 else tuple(int(v) for v in key)
    Image.fromarray(image).save(tmp_path / "t.png", transparency=key)
    got, meta = read_image(tmp_path / "t.png")
    assert meta.mode == MODE_OF[channels + 1]
    np.testing.assert_array_equal(got, image)
    transparent = image == key if channels == 1 else np.all(image == key, axis=-1)
    np.testing.assert_array_equal(meta.alpha, np.where(transparent, 0, np.iinfo(dtype).max))


def test_16bit_png_written_by_pypng_with_transparent_colour_and_interlace(tmp_path):
    rgb = _random(np.uint16, 3)
    key = tuple(int(v) for v in rgb[5, 6])
    writer = png.Writer(W, H, greyscale=False, bitdepth=16, transparent=key, interlace=True)
    with open(tmp_path / "x.png", "wb") as f:
        writer.write(f, rgb.reshape(H, -1))
    got, meta = read_image(tmp_path / "x.png")
    _check_array(got, np.uint16)
    np.testing.assert_array_equal(got, rgb)
    assert meta.mode == "RGBA"
    np.testing.assert_array_equal(meta.alpha, np.where(np.all(rgb == key, -1), 0, 65535))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk = np.dstack([_smooth_rgb(), _smooth_rgb()[..., :1]])
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", quality=95)
    got, meta = read_image(tmp_path / "c.jpg")
    expected = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"))
    assert meta.mode == "RGB" and got.shape == cmyk.shape[:2] + (3,)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("compression", ["tiff_lzw", "packbits", "tiff_deflate"])
def test_tiff_written_by_pillow(tmp_path, compression):
    """LZW needs imagecodecs in tifffile: without it Pillow decodes; exact either way."""
    rgb = _random(np.uint8, 3)
    Image.fromarray(rgb).save(tmp_path / "x.tif", compression=compression)
    got, meta = read_image(tmp_path / "x.tif")
    np.testing.assert_array_equal(got, rgb)
    assert meta.mode == "RGB"


def test_palette_tiff_becomes_rgb(tmp_path):
    rgb = np.repeat(np.repeat(np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8), 4, 0), 5, 1)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.tif")
    got, meta = read_image(tmp_path / "p.tif")
    assert meta.mode == "RGB"
    np.testing.assert_array_equal(got, rgb)


def test_tiff_dtype_conversions(tmp_path):
    f64 = _random(np.float64, 1).astype(np.float64) / 7
    tifffile.imwrite(tmp_path / "f64.tif", f64)
    got, meta = read_image(tmp_path / "f64.tif")
    _check_array(got, np.float32)
    assert meta.bit_depth == 32
    np.testing.assert_array_equal(got, f64.astype(np.float32))

    i16 = _random(np.int16, 1)
    tifffile.imwrite(tmp_path / "i16.tif", i16)
    got, _ = read_image(tmp_path / "i16.tif")
    _check_array(got, np.float32)
    np.testing.assert_array_equal(got.astype(np.int16), i16)

    u32 = (_random(np.uint16, 3).astype(np.uint32) * 256) % (2**24)
    tifffile.imwrite(tmp_path / "u32.tif", u32, photometric="rgb")
    got, _ = read_image(tmp_path / "u32.tif")
    np.testing.assert_array_equal(got.astype(np.uint32), u32)

    i32 = np.full((H, W), 2**24 + 1, np.int32)
    tifffile.imwrite(tmp_path / "i32.tif", i32)
    _check_read_error(tmp_path / "i32.tif", "int32", "float32")


def _extrasamples(path) -> tuple[int, ...]:
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags.get(338)
        return () if tag is None else tuple(int(v) for v in np.atleast_1d(tag.value))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_two_channel_tiff_is_data_not_alpha(tmp_path, dtype):
    two = _random(dtype, 2, seed=5)
    write_image(tmp_path / "two.tif", two)
    assert _extrasamples(tmp_path / "two.tif") == (0,)  # unspecified, not alpha
    got, meta = read_image(tmp_path / "two.tif")
    assert meta.extra_sample == 0
    np.testing.assert_array_equal(np.dstack([got, meta.alpha]), two)
    # and back again through the meta: still unspecified
    write_image(tmp_path / "again.tif", got, meta)
    assert _extrasamples(tmp_path / "again.tif") == (0,)


@pytest.mark.parametrize(("kind", "code"), [("unassalpha", 2), ("assocalpha", 1)])
@pytest.mark.parametrize("channels", [2, 4])
def test_tiff_alpha_keeps_its_tag_on_a_round_trip(tmp_path, kind, code, channels):
    data = _random(np.uint8, channels, seed=6)
    photometric = "rgb" if channels == 4 else "minisblack"
    tifffile.imwrite(tmp_path / "in.tif", data, photometric=photometric, extrasamples=[kind])
    got, meta = read_image(tmp_path / "in.tif")
    assert meta.extra_sample == code
    assert meta.mode == MODE_OF[channels]
    write_image(tmp_path / "out.tif", got, meta)
    assert _extrasamples(tmp_path / "out.tif") == (code,)
    again, meta2 = read_image(tmp_path / "out.tif")
    np.testing.assert_array_equal(again, got)
    np.testing.assert_array_equal(meta2.alpha, meta.alpha)


def test_tiff_alpha_from_other_formats_is_unassociated(tmp_path):
    la = _random(np.uint8, 2, seed=7)
    write_image(tmp_path / "la.png", la)
    got, meta = read_image(tmp_path / "la.png")
    assert meta.extra_sample is None
    write_image(tmp_path / "la.tif", got, meta)  # PNG alpha is alpha
    assert _extrasamples(tmp_path / "la.tif") == (2,)
    write_image(tmp_path / "rgba.tif", _random(np.uint8, 4, seed=7))  # RGBA arrays: alpha too
    assert _extrasamples(tmp_path / "rgba.tif") == (2,)


@pytest.mark.parametrize("compression", ["tiff_lzw", "tiff_deflate"])
def test_tiff_alpha_decoded_by_pillow_keeps_its_tag(tmp_path, compression):
    """LZW needs imagecodecs in tifffile: without it Pillow decodes, alpha unassociated."""
    la = _random(np.uint8, 2, seed=8)
    Image.fromarray(la, "LA").save(tmp_path / "la.tif", compression=compression)
    assert _extrasamples(tmp_path / "la.tif") == (2,)
    got, meta = read_image(tmp_path / "la.tif")
    assert meta.extra_sample == 2
    np.testing.assert_array_equal(np.dstack([got, meta.alpha]), la)
    write_image(tmp_path / "out.tif", got, meta)
    assert _extrasamples(tmp_path / "out.tif") == (2,)


@pytest.mark.parametrize("code", [3, -1, 1.0, True, "0"])
def test_bad_extra_sample_is_refused(tmp_path, code):
    meta = ImageMeta("", "", "LA", np.dtype(np.uint8), 8, _random(np.uint8, 1), extra_sample=code)
    with pytest.raises(ValueError, match="extra_sample") as info:
        write_image(tmp_path / "x.tif", _random(np.uint8, 1), meta)
    assert str(info.value).startswith(f"cannot write {str(tmp_path / 'x.tif')!r}: ")
    assert list(tmp_path.iterdir()) == []


def test_tiff_layouts(tmp_path):
    rgb = _random(np.uint16, 3)
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate"
    )
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif")[0], rgb)

    grey = _random(np.uint8, 1)
    tifffile.imwrite(tmp_path / "white.tif", grey, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(tmp_path / "white.tif")[0], 255 - grey)

    bits = grey > 100
    tifffile.imwrite(tmp_path / "bits.tif", bits, photometric="minisblack")
    got, meta = read_image(tmp_path / "bits.tif")
    np.testing.assert_array_equal(got, bits * np.uint8(255))
    assert meta.dtype == np.uint8

    tifffile.imwrite(tmp_path / "pages.tif", np.stack([grey, 255 - grey]))
    np.testing.assert_array_equal(read_image(tmp_path / "pages.tif")[0], grey)


# --------------------------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------------------------


def test_jpeg_exif_orientation_6_is_applied(tmp_path):
    rgb = _smooth_rgb()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "o.jpg", quality=95, subsampling=0, exif=exif)
    got, meta = read_image(tmp_path / "o.jpg")
    assert got.shape == (rgb.shape[1], rgb.shape[0], 3)
    assert meta.orientation == 6
    expected = np.rot90(rgb, -1)  # orientation 6: turn clockwise to display
    assert np.abs(got.astype(np.int16) - expected).mean() < 1.5
    assert np.abs(got.astype(np.int16) - np.rot90(rgb, 1)).mean() > 20  # not the other way


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    la = _random(np.uint8, 2, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(la).save(tmp_path / "o.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    got, meta = read_image(tmp_path / "o.png")
    _check_array(got, np.uint8)
    np.testing.assert_array_equal(got, expected[..., 0])
    np.testing.assert_array_equal(meta.alpha, expected[..., 1])
    assert meta.orientation == orientation


def test_16bit_colour_png_orientation_from_exif_chunk(tmp_path):
    rgb = _random(np.uint16, 3)
    write_image(tmp_path / "x.png", rgb)
    exif = Image.Exif()
    exif[0x0112] = 8
    data = _splice_after_ihdr((tmp_path / "x.png").read_bytes(), _chunk(b"eXIf", exif.tobytes()))
    (tmp_path / "o.png").write_bytes(data)
    got, meta = read_image(tmp_path / "o.png")
    np.testing.assert_array_equal(got, np.rot90(rgb, 1))
    assert meta.orientation == 8


def test_tiff_orientation_tag(tmp_path):
    rgb = _random(np.float32, 3)
    tifffile.imwrite(tmp_path / "o.tif", rgb, photometric="rgb", extratags=[(274, 3, 1, 3, True)])
    got, meta = read_image(tmp_path / "o.tif")
    np.testing.assert_array_equal(got, rgb[::-1, ::-1])
    assert meta.orientation == 3


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------


def test_write_replaces_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "out.png"
    write_image(target, _random(np.uint8, 3, seed=1))
    write_image(target, _random(np.uint8, 3, seed=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    np.testing.assert_array_equal(read_image(target)[0], _random(np.uint8, 3, seed=2))


def test_failed_encode_keeps_existing_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "out.tif"
    write_image(target, _random(np.uint8, 1, seed=1))
    before = target.read_bytes()

    def broken(f, *args):
        f.write(b"half an image")
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(nio, "_encode", broken)
    with pytest.raises(RuntimeError, match="encoder exploded"):
        write_image(target, _random(np.uint8, 1, seed=2))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_failed_rename_cleans_up(tmp_path):
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(OSError):
        write_image(tmp_path / "taken.png", _random(np.uint8, 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.png"]
    with pytest.raises(FileNotFoundError):
        write_image(tmp_path / "missing" / "x.png", _random(np.uint8, 1))


def _check_write_os_error(exc_type, path, named: str, *words: str) -> None:
    """write_image to ``path`` raises ``exc_type`` naming ``named``, never a temporary file."""
    with pytest.raises(exc_type) as info:
        write_image(path, _random(np.uint8, 1))
    message = str(info.value)
    assert "\n" not in message
    assert ".tmp" not in message, message
    assert info.value.filename == named and info.value.filename2 is None
    assert repr(named) in message, message
    for word in words:
        assert word in message, message


def test_write_into_a_missing_folder_names_the_folder(tmp_path):
    folder = os.path.join(str(tmp_path), "missing", "deeper")
    _check_write_os_error(
        FileNotFoundError, os.path.join(folder, "x.png"), folder, "no such folder"
    )
    assert list(tmp_path.iterdir()) == []


def test_write_into_a_missing_relative_folder_names_it_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _check_write_os_error(
        FileNotFoundError, os.path.join("nope", "x.png"), "nope", "no such folder"
    )


def test_write_below_a_file_names_that_file(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_bytes(b"not a folder")
    for path in (blocker / "x.png", blocker / "sub" / "deeper" / "x.png"):
        _check_write_os_error(NotADirectoryError, str(path), str(blocker), "not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_write_into_a_read_only_folder_names_the_folder(tmp_path, monkeypatch):
    # root ignores permissions: fail the temporary file's creation as the OS would
    real_open = open

    def denied(file, mode="r", *args, **kwargs):
        if mode == "xb":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(nio, "open", denied, raising=False)
    _check_write_os_error(
        PermissionError, str(tmp_path / "x.png"), str(tmp_path), os.strerror(errno.EACCES)
    )


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions"
)
def test_write_into_a_really_read_only_folder_names_the_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o555)
    try:
        _check_write_os_error(PermissionError, str(folder / "x.png"), str(folder), "denied")
    finally:
        os.chmod(folder, 0o755)


def test_write_onto_a_folder_names_the_target(tmp_path):
    (tmp_path / "taken.png").mkdir()
    target = str(tmp_path / "taken.png")
    _check_write_os_error(IsADirectoryError, target, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.png"]


def test_write_bytes_errors_name_the_target(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder") as info:
        nio.write_bytes(tmp_path / "missing" / "x.json", b"{}")
    assert info.value.filename == str(tmp_path / "missing")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_written_file_has_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        write_image(tmp_path / "x.png", _random(np.uint8, 1))
    finally:
        os.umask(old)
    assert (tmp_path / "x.png").stat().st_mode & 0o777 == 0o640


# --------------------------------------------------------------------------------------------
# read errors
# --------------------------------------------------------------------------------------------


def test_missing_empty_directory_text_and_unsupported(tmp_path):
    _check_read_error(tmp_path / "missing.png", "no such file")
    (tmp_path / "empty.png").write_bytes(b"")
    _check_read_error(tmp_path / "empty.png", "empty")
    (tmp_path / "dir.png").mkdir()
    _check_read_error(tmp_path / "dir.png", "directory")
    (tmp_path / "text.png").write_text("this is not an image\n")
    _check_read_error(tmp_path / "text.png", "not a supported image")
    Image.fromarray(_random(np.uint8, 1)).save(tmp_path / "gif.png", format="GIF")
    _check_read_error(tmp_path / "gif.png", "not a supported image")


@contextlib.contextmanager
def fifo_rescued(path):
    """While the block runs, keep giving the FIFO ``path`` a writer: a reader that blocks on it
    (the defect under test) then fails instead of hanging the suite."""
    done = threading.Event()

    def rescue():
        while not done.wait(0.1):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    rescuer = threading.Thread(target=rescue, daemon=True)
    rescuer.start()
    try:
        yield
    finally:
        done.set()
        rescuer.join()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    start = time.monotonic()
    with fifo_rescued(fifo):
        _check_read_error(fifo, "not a regular file", "fifo")
    assert time.monotonic() - start < 5


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_device_is_refused(tmp_path):
    _check_read_error(Path("/dev/null"), "not a regular file", "character device")


def _cuts(n: int) -> list[int]:
    return [20, n // 2, n - 12, n - 1]


@pytest.mark.parametrize("kind", ["png8", "png16", "jpg", "tif", "webp", "bmp"])
def test_truncated_files_are_refused(tmp_path, kind):
    if kind == "png16":
        path = tmp_path / "full.png"
        write_image(path, _random(np.uint16, 3))
        data, ext = path.read_bytes(), "png"
    elif kind == "tif":
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, _random(np.uint8, 3), photometric="rgb")
        data, ext = buffer.getvalue(), "tif"
    else:
        fmt = {"png8": "PNG", "jpg": "JPEG", "webp": "WEBP", "bmp": "BMP"}[kind]
        data = _pil_bytes(_smooth_rgb(), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        ext = "png" if kind == "png8" else kind
    for cut in _cuts(len(data)):
        path = tmp_path / f"cut{cut}.{ext}"
        path.write_bytes(data[:cut])
        _check_read_error(path)


def test_truncation_messages_say_truncated(tmp_path):
    data = _pil_bytes(_smooth_rgb(), "PNG")
    (tmp_path / "x.png").write_bytes(data[: len(data) // 2])
    _check_read_error(tmp_path / "x.png", "truncated png")
    data = _pil_bytes(_smooth_rgb(), "JPEG")
    (tmp_path / "x.jpg").write_bytes(data[: len(data) // 2])
    _check_read_error(tmp_path / "x.jpg", "truncated jpeg")
    data = _pil_bytes(_smooth_rgb(), "WEBP")
    (tmp_path / "x.webp").write_bytes(data[: len(data) // 2])
    _check_read_error(tmp_path / "x.webp", "truncated webp")


def test_jpeg_missing_only_its_end_marker_is_refused(tmp_path):
    """Pillow decodes it without complaint; the marker walk does not accept it."""
    data = _pil_bytes(_smooth_rgb(), "JPEG", exif=Image.Exif().tobytes())
    assert data.endswith(b"\xff\xd9")
    (tmp_path / "x.jpg").write_bytes(data[:-2])
    _check_read_error(tmp_path / "x.jpg", "truncated jpeg")
    (tmp_path / "y.jpg").write_bytes(data + b"trailing bytes after EOI are fine")
    assert read_image(tmp_path / "y.jpg")[0].shape == _smooth_rgb().shape


def test_corrupt_png_crc(tmp_path):
    data = bytearray(_pil_bytes(_random(np.uint8, 3), "PNG"))
    data[60] ^= 0xFF  # inside the IDAT data: the CRC no longer matches
    (tmp_path / "x.png").write_bytes(bytes(data))
    _check_read_error(tmp_path / "x.png")


def test_decompression_bomb_png_header(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_bytes(100_000, 100_000))
    _check_read_error(tmp_path / "bomb.png", "too large", "100000 x 100000")
    (tmp_path / "bomb16.png").write_bytes(_png_bytes(100_000, 100_000, bit_depth=16, colour_type=2))
    _check_read_error(tmp_path / "bomb16.png", "too large")


def test_zero_dimension_png(tmp_path):
    (tmp_path / "zero.png").write_bytes(_png_bytes(0, 10))
    _check_read_error(tmp_path / "zero.png", "zero dimension")


def test_decompression_bomb_tiff_header(tmp_path):
    (tmp_path / "small.tif").write_bytes(_tiff_bytes(2, 2))
    assert read_image(tmp_path / "small.tif")[0].shape == (2, 2)  # the crafted file is valid
    (tmp_path / "bomb.tif").write_bytes(_tiff_bytes(100_000, 100_000))
    _check_read_error(tmp_path / "bomb.tif", "too large")


@pytest.mark.parametrize("ext", ["png", "jpg", "tif", "bmp", "webp"])
def test_max_pixels_applies_to_every_format(tmp_path, monkeypatch, ext):
    path = tmp_path / f"x.{ext}"
    write_image(path, _random(np.uint8, 3))
    monkeypatch.setattr(nio, "MAX_PIXELS", H * W - 1)
    _check_read_error(path, "too large")
    monkeypatch.setattr(nio, "MAX_PIXELS", H * W)
    assert read_image(path)[0].shape == (H, W, 3)


def test_pillow_limit_is_not_ours(tmp_path, monkeypatch):
    """Pillow's global bomb limit (and its warning) does not apply: MAX_PIXELS does."""
    write_image(tmp_path / "x.png", _random(np.uint8, 3))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        assert read_image(tmp_path / "x.png")[0].shape == (H, W, 3)


# --------------------------------------------------------------------------------------------
# write errors
# --------------------------------------------------------------------------------------------

_RGBA_META_ALPHA = np.zeros((H, W), np.uint8)

WRITE_ERRORS = [
    ("x.jpg", _random(np.uint16, 3), None, "uint16"),
    ("x.bmp", _random(np.uint16, 1), None, "uint16"),
    ("x.webp", _random(np.uint16, 3), None, "uint16"),
    ("x.png", _random(np.float32, 1), None, "float32"),
    ("x.jpg", _random(np.float32, 3), None, "float32"),
    ("x.webp", _random(np.float32, 3), None, "float32"),
    ("x.tif", _random(np.float32, 1).astype(np.float64), None, "float64"),
    ("x.png", _random(np.int32, 1), None, "int32"),
    ("x.png", _random(np.uint8, 1) > 5, None, "bool"),
    ("x.jpg", _random(np.uint8, 4), None, "alpha"),
    ("x.bmp", _random(np.uint8, 2), None, "alpha"),
    (
        "x.jpg",
        _random(np.uint8, 3),
        ImageMeta("", "", "RGBA", np.dtype(np.uint8), 8, _RGBA_META_ALPHA),
        "alpha",
    ),
    ("x.gif", _random(np.uint8, 3), None, "extension"),
    ("noextension", _random(np.uint8, 3), None, "extension"),
    ("x.png", np.zeros(5, np.uint8), None, "shape"),
    ("x.png", np.zeros((4, 4, 5), np.uint8), None, "shape"),
    ("x.png", np.zeros((4, 4, 3, 1), np.uint8), None, "shape"),
    ("x.png", np.zeros((0, 4), np.uint8), None, "zero"),
    (
        "x.png",
        _random(np.uint8, 3),
        ImageMeta("", "", "RGBA", np.dtype(np.uint8), 8, np.zeros((H, W + 1), np.uint8)),
        "shape",
    ),
    (
        "x.png",
        _random(np.uint16, 3),
        ImageMeta("", "", "RGBA", np.dtype(np.uint16), 16, _RGBA_META_ALPHA),
        "dtype",
    ),
    (
        "x.png",
        _random(np.uint8, 4),
        ImageMeta("", "", "RGBA", np.dtype(np.uint8), 8, _RGBA_META_ALPHA),
        "already has an alpha",
    ),
]


@pytest.mark.parametrize(("name", "image", "meta", "word"), WRITE_ERRORS)
def test_unsupported_writes_raise_value_error_and_write_nothing(tmp_path, name, image, meta, word):
    path = tmp_path / name
    with pytest.raises(ValueError) as info:
        write_image(path, image, meta)
    message = str(info.value)
    assert message.startswith(f"cannot write {str(path)!r}: "), message
    assert word in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_write_type_errors(tmp_path):
    with pytest.raises(TypeError, match="image"):
        write_image(tmp_path / "x.png", [[0, 1], [2, 3]])
    with pytest.raises(TypeError, match="meta"):
        write_image(tmp_path / "x.png", _random(np.uint8, 1), {"alpha": None})
    with pytest.raises(TypeError, match="path"):
        write_image(None, _random(np.uint8, 1))
    with pytest.raises(TypeError, match="path"):
        read_image(3.5)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# names and module hygiene
# --------------------------------------------------------------------------------------------


def test_image_extensions():
    assert IMAGE_EXTENSIONS == frozenset(
        {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
    )
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.png", True),
        ("A.PNG", True),
        ("dir/b.JpEg", True),
        (Path("x/y.tiff"), True),
        ("c.webp", True),
        ("d.bmp", True),
        ("e.gif", False),
        ("png", False),
        ("f.png.txt", False),
        ("archive.tar.gz", False),
        ("", False),
    ],
)
def test_is_image_path(path, expected):
    assert is_image_path(path) is expected


def test_read_error_is_a_value_error():
    assert issubclass(ImageReadError, ValueError)


def test_io_module_does_not_import_numba_or_other_nlattn_modules():
    tree = ast.parse(Path(nio.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert not any(name.split(".")[0] in ("numba", "nlattn", "") for name in imported), imported


def test_write_without_replace_never_replaces(tmp_path):
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    target = tmp_path / "a.png"
    nio.write_image(target, image, replace=False)
    before = target.read_bytes()
    with pytest.raises(FileExistsError, match="exists already"):
        nio.write_image(target, image + 1, replace=False)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary file left
    nio.write_image(target, image + 1)  # the default replaces
    assert target.read_bytes() != before


def test_a_write_in_progress_is_never_taken_for_a_leftover(tmp_path):
    target = tmp_path / "a.png"
    with nio.atomic_file(target) as f:
        f.write(b"partial")
        (tmp,) = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
        hour_ago = time.time() - 3600
        os.utime(tmp, (hour_ago, hour_ago))
        assert not nio.remove_stale_temporary(tmp) and tmp.exists()  # locked by this write
    assert target.read_bytes() == b"partial"
    left = tmp_path / ".b.png.0123456789ab.tmp.png"
    left.write_bytes(b"partial")
    assert not nio.remove_stale_temporary(left)  # too young to tell
    os.utime(left, (hour_ago, hour_ago))
    assert nio.remove_stale_temporary(left) and not left.exists()
