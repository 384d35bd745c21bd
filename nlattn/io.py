"""Read and write images: PNG, JPEG, TIFF, BMP and WebP.

The dtype policy
----------------
:func:`read_image` returns the pixels in the file's own sample type, never rescaled:

* 1- to 8-bit samples -> ``uint8`` (1-bit images become 0/255, 2- and 4-bit greys are scaled to
  8 bits by Pillow; palette images become RGB, or RGBA when the palette has transparency);
* 16-bit samples -> ``uint16`` (16-bit colour PNGs are decoded with ``pypng`` because Pillow
  reduces them to 8 bits; 16-bit grey PNGs are decoded by Pillow);
* 32-bit float TIFF -> ``float32``; 16- and 64-bit float TIFF -> ``float32`` (values beyond the
  float32 range become +-inf); NaN and inf are returned as they are;
* signed integer TIFF (8, 16 bits) -> ``float32`` (exact); 32- and 64-bit integer TIFF ->
  ``float32`` when every sample is within +-2**24 (exact), otherwise :class:`ImageReadError`.

The array is ``(H, W)`` for grey and ``(H, W, 3)`` for colour, C-contiguous and writeable. An alpha
channel is split off into :attr:`ImageMeta.alpha` (same dtype as the image) so that the pixels can
go straight to the denoiser, and :func:`write_image` re-attaches it; so is a TIFF's extra channel
that is not alpha, with :attr:`ImageMeta.extra_sample` saying what the file tags it as, so that
it is written back with the same tag. The EXIF orientation is applied on read (to the image and
its alpha alike). WebP cannot store grey images, so a WebP whose colour channels are all equal is
returned as grey; this is exact and makes grey WebP round trips give back what was written.

Errors
------
Everything that makes a file unreadable (missing, a directory or another file that is not a regular
file, such as a FIFO or a device, empty, not an image, unsupported, truncated, corrupt, a zero
dimension, more than :data:`MAX_PIXELS` pixels) raises :class:`ImageReadError`, a
``ValueError`` whose message is one line naming the file and the reason. Truncated files are never
accepted: the PNG chunk structure, the JPEG end-of-image marker and the WebP RIFF size are checked
before decoding (Pillow decodes a JPEG that lost only its last bytes without complaint), and
Pillow's ``LOAD_TRUNCATED_IMAGES`` is left alone (False unless someone changes it).

Writes are atomic: the image goes to a hidden temporary file in the target's directory, which is
flushed, synced and renamed onto the target, so a reader never sees a half-written file and an
existing file is replaced only when the new one is complete.

This module imports neither Numba nor any other part of nlattn, so it is cheap to import.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import png
import tifffile

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None
from PIL import (
    BmpImagePlugin,
    Image,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "ImageMeta",
    "ImageReadError",
    "is_image_path",
    "read_image",
    "write_image",
]

#: Largest number of pixels (width x height) :func:`read_image` accepts; larger images are
#: refused as possible decompression bombs before any pixel is decoded. Read at call time, so it
#: can be changed (``nlattn.io.MAX_PIXELS = ...``). Pillow's own, smaller limit
#: (``PIL.Image.MAX_IMAGE_PIXELS``) is not used: this one applies to every format alike.
MAX_PIXELS: int = 2**28

#: Lower-case file extensions that :func:`read_image` and :func:`write_image` handle.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
)

_EXT_FORMAT = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".webp": "WEBP",
}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ORIENTATION_TAG = 0x0112  # EXIF / TIFF Orientation
_ICC_TAG = 34675  # TIFF InterColorProfile
_EXTRA_SAMPLES_TAG = 338  # TIFF ExtraSamples
#: TIFF ExtraSamples codes: unspecified data, associated (premultiplied) alpha, unassociated alpha.
_UNSPECIFIED_SAMPLE, _ASSOCIATED_ALPHA, _UNASSOCIATED_ALPHA = 0, 1, 2
_EXTRA_SAMPLE_CODES = (_UNSPECIFIED_SAMPLE, _ASSOCIATED_ALPHA, _UNASSOCIATED_ALPHA)
_JPEG_QUALITY = 95
_MODES = {(1, False): "L", (1, True): "LA", (3, False): "RGB", (3, True): "RGBA"}


class ImageReadError(ValueError):
    """An image file cannot be read; the message is one line naming the file and the reason."""


@dataclass(eq=False)
class ImageMeta:
    """What :func:`read_image` learnt about a file, and what :func:`write_image` needs back.

    Attributes
    ----------
    path : str
        The path the image was read from.
    format : str
        The file's format, from its content (not its extension): ``'PNG'``, ``'JPEG'``,
        ``'TIFF'``, ``'BMP'`` or ``'WEBP'``.
    mode : str
        ``'L'``, ``'LA'``, ``'RGB'`` or ``'RGBA'``: the channels of the file after palette, CMYK
        and bilevel conversions, alpha included.
    dtype : numpy.dtype
        The dtype of the returned array (``uint8``, ``uint16`` or ``float32``).
    bit_depth : int
        Bits per sample of the returned array: 8, 16 or 32.
    alpha : numpy.ndarray or None
        The alpha channel, ``(H, W)`` with the image's dtype, oriented like the image; None when
        the file has none. For a TIFF, the extra channel (second of grey, fourth of RGB),
        whatever :attr:`extra_sample` says it is.
    icc_profile : bytes or None
        The embedded ICC colour profile, kept as it is.
    orientation : int
        The EXIF/TIFF orientation (1-8) that was applied on read; 1 when none.
    extra_sample : int or None
        TIFF only: how the file tags the channel kept in ``alpha`` (its ExtraSamples code): 0
        unspecified data (not alpha), 1 associated (premultiplied) alpha, 2 unassociated alpha.
        None for other formats, for images without that channel and for codes the TIFF
        specification does not define. :func:`write_image` tags the channel so in a TIFF.
    """

    path: str
    format: str
    mode: str
    dtype: np.dtype
    bit_depth: int
    alpha: np.ndarray | None = None
    icc_profile: bytes | None = None
    orientation: int = 1
    extra_sample: int | None = None


class _Unreadable(Exception):
    """Internal: the reason a file cannot be read (turned into ImageReadError with its name)."""


# Exceptions that decoders raise on bad data. Pillow itself treats SyntaxError, IndexError,
# TypeError and struct.error as "not this format".
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    zlib.error,
    png.Error,
    Image.DecompressionBombError,
)


# --------------------------------------------------------------------------------------------
# helpers shared by reading and writing
# --------------------------------------------------------------------------------------------


def _path_str(path: Any, what: str = "path") -> str:
    """Return ``path`` as a str, or raise TypeError naming the argument."""
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"{what} must be a str or os.PathLike, got {type(path).__name__}") from None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def is_image_path(path: str | os.PathLike) -> bool:
    """Tell whether a path names an image this module handles, by its extension.

    Parameters
    ----------
    path : str or os.PathLike
        A file name or path; the file need not exist.

    Returns
    -------
    bool
        True when the extension, in any case, is in :data:`IMAGE_EXTENSIONS`.

    Raises
    ------
    TypeError
        If ``path`` is not a str, bytes or os.PathLike.

    Notes
    -----
    Only the name is looked at (O(len(path))): :func:`read_image` itself identifies files by
    their content.
    """
    return os.path.splitext(_path_str(path))[1].lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _sniff(head: bytes) -> str | None:
    """Identify the format from the first bytes of a file."""
    if head.startswith(_PNG_SIGNATURE):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _check_size(width: int, height: int) -> None:
    """Refuse zero-sized images and images above MAX_PIXELS (decompression bombs)."""
    if width <= 0 or height <= 0:
        raise _Unreadable(f"image has a zero dimension ({width} x {height} pixels)")
    if width * height > MAX_PIXELS:
        raise _Unreadable(
            f"image too large ({width} x {height} = {width * height} pixels, more than "
            f"MAX_PIXELS = {MAX_PIXELS}): possible decompression bomb"
        )


@dataclass
class _PngInfo:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    icc_profile: bytes | None
    exif: bytes | None


def _scan_png(f: IO[bytes], file_size: int) -> _PngInfo:
    """Walk the PNG chunk structure without decoding pixels.

    Reads IHDR (size, depth, colour type), iCCP and eXIf, and checks that the chunks end with a
    complete IEND inside the file, so truncated files are caught whatever the decoder does.
    """
    f.seek(len(_PNG_SIGNATURE))
    header = f.read(8 + 13)
    if len(header) < 21:
        raise _Unreadable("truncated PNG file")
    length, kind = struct.unpack(">I4s", header[:8])
    if kind != b"IHDR" or length != 13:
        raise _Unreadable("corrupt PNG file: the first chunk is not a valid IHDR")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", header[8:18])
    _check_size(width, height)
    icc = exif = None
    pos = len(_PNG_SIGNATURE) + 8 + 13 + 4
    while True:
        f.seek(pos)
        chunk_head = f.read(8)
        if len(chunk_head) < 8:
            raise _Unreadable("truncated PNG file (no IEND chunk)")
        length, kind = struct.unpack(">I4s", chunk_head)
        end = pos + 8 + length + 4
        if end > file_size:
            raise _Unreadable(f"truncated PNG file (chunk {kind.decode('latin-1')!r} cut short)")
        if kind == b"IEND":
            break
        if kind == b"iCCP" and icc is None:
            data = f.read(length)
            name_end = data.find(b"\x00")
            if 0 <= name_end < len(data) - 1:
                try:
                    icc = zlib.decompress(data[name_end + 2 :])
                except zlib.error:
                    icc = None  # a broken profile does not make the pixels unreadable
        elif kind == b"eXIf" and exif is None:
            exif = f.read(length)
        pos = end
    return _PngInfo(width, height, bit_depth, colour_type, icc or None, exif)


def _exif_orientation(exif: Image.Exif | bytes | None) -> int:
    """The EXIF orientation 1-8 (1 when absent or invalid)."""
    if exif is None:
        return 1
    try:
        if isinstance(exif, bytes):
            parsed = Image.Exif()
            parsed.load(exif)
            exif = parsed
        value = exif.get(_ORIENTATION_TAG, 1)
        value = int(value)
    except (*_DECODE_ERRORS, ArithmeticError):
        return 1
    return value if 1 <= value <= 8 else 1


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W, ...) array, as PIL.ImageOps.exif_transpose does."""
    if orientation == 2:  # mirrored horizontally
        return a[:, ::-1]
    if orientation == 3:  # rotated 180
        return a[::-1, ::-1]
    if orientation == 4:  # mirrored vertically
        return a[::-1]
    if orientation == 5:  # transpose
        return a.swapaxes(0, 1)
    if orientation == 6:  # stored rotated 90 counter-clockwise: turn clockwise
        return np.rot90(a, -1)
    if orientation == 7:  # transverse
        return a[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:  # stored rotated 90 clockwise: turn counter-clockwise
        return np.rot90(a, 1)
    return a


def _normalise_dtype(a: np.ndarray) -> np.ndarray:
    """Apply the dtype policy of the module docstring (native byte order, float32 for floats)."""
    dt = a.dtype
    if dt == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if dt.kind == "u" and dt.itemsize in (1, 2):
        return a.astype(dt.newbyteorder("="), copy=False)
    if dt.kind == "f" and dt.itemsize == 4:
        return a.astype(np.float32, copy=False)
    if dt.kind == "f" and dt.itemsize in (2, 8):
        with np.errstate(over="ignore"):
            return a.astype(np.float32)
    if dt.kind in "iu" and dt.itemsize <= 2:  # int8, int16
        return a.astype(np.float32)
    if dt.kind in "iu":
        if a.size and (int(a.min()) < -(2**24) or int(a.max()) > 2**24):
            raise _Unreadable(
                f"unsupported sample type {dt.name}: values beyond +-2**24 cannot be converted "
                "to float32 exactly"
            )
        return a.astype(np.float32)
    raise _Unreadable(f"unsupported sample type {dt.name}")


def _split_channels(a: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W[, C]) with C in 1-4 -> image (H, W) or (H, W, 3) and alpha (H, W) or None."""
    if a.ndim == 2:
        return a, None
    channels = a.shape[2]
    if channels == 1:
        return a[:, :, 0], None
    if channels == 2:
        return a[:, :, 0], a[:, :, 1]
    if channels == 3:
        return a, None
    if channels == 4:
        return a[:, :, :3], a[:, :, 3]
    raise _Unreadable(f"unsupported {what} with {channels} channels")


def _transparency_alpha(a: np.ndarray, key: Any) -> np.ndarray | None:
    """Alpha from a PNG-style single transparent colour (tRNS), or None when it does not apply."""
    maximum = np.iinfo(a.dtype).max if a.dtype.kind == "u" else 1
    try:
        if a.ndim == 2 and isinstance(key, int):
            mask = a == key
        elif a.ndim == 3 and isinstance(key, tuple) and len(key) == a.shape[2]:
            mask = np.all(a == np.asarray(key, dtype=np.int64), axis=2)
        else:
            return None
    except (TypeError, ValueError):
        return None
    return np.where(mask, 0, maximum).astype(a.dtype)


def _from_pil(im: Image.Image, fmt: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels of a loaded Pillow image -> (image, alpha) under the dtype policy."""
    mode = im.mode
    transparency = im.info.get("transparency")
    if mode == "1":
        im, mode = im.convert("L"), "L"
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or transparency is not None
        mode = "RGBA" if has_alpha else "RGB"
        im, transparency = im.convert(mode), None
    elif mode in ("CMYK", "YCbCr", "RGBX"):
        im, mode, transparency = im.convert("RGB"), "RGB", None
    elif mode in ("RGBa", "La"):
        mode = mode.upper()
        im = im.convert(mode)
    if mode in ("L", "LA", "RGB", "RGBA", "F") or mode.startswith("I"):
        a = np.asarray(im)
    else:
        raise _Unreadable(f"unsupported {fmt} image mode {mode!r}")
    if mode == "I" and fmt == "PNG":
        a = a.astype(np.uint16)  # older Pillow opens 16-bit grey PNGs as 32-bit "I"
    a = _normalise_dtype(a)
    image, alpha = _split_channels(a, f"{fmt} image")
    if alpha is None and transparency is not None and (mode in ("L", "RGB") or mode[0] == "I"):
        alpha = _transparency_alpha(image, transparency)
    return image, alpha


def _pil_open(factory: Callable[..., Any], f: IO[bytes], name: str) -> Image.Image:
    """Open with one Pillow plugin (no format guessing, no Pillow bomb limit), check size, load.

    The plugin class is called directly rather than through ``Image.open`` so that our own
    :data:`MAX_PIXELS` check applies before decoding, instead of Pillow's global limit and its
    warning.
    """
    f.seek(0)
    im = factory(f, name)
    _check_size(*im.size)
    im.load()
    return im


def _pil_orientation(im: Image.Image) -> int:
    try:
        return _exif_orientation(im.getexif())
    except (*_DECODE_ERRORS, ArithmeticError):
        return 1


def _read_png(f: IO[bytes], name: str, file_size: int):
    info = _scan_png(f, file_size)
    if info.bit_depth == 16 and info.colour_type != 0:
        # Pillow reduces 16-bit colour (and grey+alpha) PNGs to 8 bits: decode with pypng.
        f.seek(0)
        reader = png.Reader(file=f)
        width, height, rows, meta = reader.read()
        planes = int(meta["planes"])
        a = np.array([np.asarray(row, dtype=np.uint16) for row in rows], dtype=np.uint16)
        a = a.reshape(height, width, planes)
        image, alpha = _split_channels(a, "PNG image")
        if alpha is None and meta.get("transparent") is not None:
            key = meta["transparent"]
            key = tuple(int(v) for v in key) if len(key) > 1 else int(key[0])
            alpha = _transparency_alpha(image, key)
        return image, alpha, info.icc_profile, _exif_orientation(info.exif), None
    im = _pil_open(PngImagePlugin.PngImageFile, f, name)
    image, alpha = _from_pil(im, "PNG")
    icc = im.info.get("icc_profile") or info.icc_profile
    return image, alpha, icc, _pil_orientation(im), None


def _jpeg_has_end(data: bytes) -> bool:
    """Walk a JPEG's markers (skipping entropy-coded scans) and tell whether EOI is reached.

    Pillow decodes a JPEG that lost only its last bytes without complaint; this walk catches it.
    Markers inside APPn segments (an EXIF thumbnail's own EOI) are skipped with their segment.
    """
    n = len(data)
    pos = 2  # after SOI
    while pos + 1 < n:
        if data[pos] != 0xFF:  # stray bytes between segments: skip them, as libjpeg does
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return False
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            return True
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        if pos + 4 > n:
            return False
        end = pos + 2 + ((data[pos + 2] << 8) | data[pos + 3])
        if marker != 0xDA:  # not SOS: skip the segment
            pos = end
            continue
        # SOS: skip the entropy-coded data up to the next real marker
        pos = end
        while True:
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= n:
                return False
            following = data[pos + 1]
            if following == 0x00 or following == 0xFF or 0xD0 <= following <= 0xD7:
                pos += 1
                continue
            break
    return False


def _read_jpeg(f: IO[bytes], name: str, file_size: int):
    f.seek(0)
    if not _jpeg_has_end(f.read()):
        raise _Unreadable("truncated JPEG file (no end-of-image marker)")
    im = _pil_open(JpegImagePlugin.JpegImageFile, f, name)
    image, alpha = _from_pil(im, "JPEG")
    return image, alpha, im.info.get("icc_profile"), _pil_orientation(im), None


def _read_webp(f: IO[bytes], name: str, file_size: int):
    f.seek(4)
    (riff_size,) = struct.unpack("<I", f.read(4))
    if 8 + riff_size > file_size:
        raise _Unreadable("truncated WEBP file")
    im = _pil_open(WebPImagePlugin.WebPImageFile, f, name)
    image, alpha = _from_pil(im, "WEBP")
    # WebP has no grey mode: give back grey what was (almost surely) written as grey.
    if (
        image.ndim == 3
        and np.array_equal(image[:, :, 0], image[:, :, 1])
        and np.array_equal(image[:, :, 0], image[:, :, 2])
    ):
        image = image[:, :, 0]
    return image, alpha, im.info.get("icc_profile"), _pil_orientation(im), None


def _read_pil(factory: Callable[..., Any], fmt: str):
    def reader(f: IO[bytes], name: str, file_size: int):
        im = _pil_open(factory, f, name)
        image, alpha = _from_pil(im, fmt)
        return image, alpha, im.info.get("icc_profile"), _pil_orientation(im), None

    return reader


def _read_tiff(f: IO[bytes], name: str, file_size: int):
    """First page of a TIFF with tifffile; Pillow for what tifffile cannot decode here.

    Pillow handles palette, CMYK, YCbCr and the compressions that tifffile needs the optional
    ``imagecodecs`` package for (LZW, JPEG); its result is refused when it would lose bits.
    """
    f.seek(0)
    with tifffile.TiffFile(f) as tif:
        if not tif.pages:
            raise _Unreadable("TIFF file has no image")
        page = tif.pages[0]
        if not isinstance(page, tifffile.TiffPage):  # a frame of a uniform series
            page = page.keyframe
        _check_size(int(page.imagewidth), int(page.imagelength))
        if int(page.imagedepth) > 1:
            raise _Unreadable("unsupported volumetric TIFF (image depth > 1)")
        icc_tag = page.tags.get(_ICC_TAG)
        icc = bytes(icc_tag.value) if icc_tag is not None and icc_tag.value else None
        orientation_tag = page.tags.get(274)
        orientation = int(orientation_tag.value) if orientation_tag is not None else 1
        orientation = orientation if 1 <= orientation <= 8 else 1
        extra_tag = page.tags.get(_EXTRA_SAMPLES_TAG)
        extra_codes = () if extra_tag is None else tuple(np.atleast_1d(extra_tag.value))
        photometric = int(page.photometric)
        bits = page.bitspersample
        bits = max(bits) if isinstance(bits, tuple) else int(bits)
        axes = page.axes
        data = None
        if photometric in (0, 1, 2):  # MINISWHITE, MINISBLACK, RGB
            try:
                data = page.asarray()
            except ValueError as exc:
                if "imagecodecs" not in str(exc):
                    raise
    if data is None:
        im = _pil_open(TiffImagePlugin.TiffImageFile, f, name)
        image, alpha = _from_pil(im, "TIFF")
        if bits > 8 and image.dtype == np.uint8:
            raise _Unreadable(
                f"cannot decode this {bits}-bit TIFF without losing bits (its compression or "
                "colour space needs the optional 'imagecodecs' package)"
            )
        # Pillow keeps an extra sample only when it is alpha, and un-premultiplies associated
        # alpha: what it returns is unassociated alpha. Recent Pillow applies the TIFF
        # orientation on load and drops the tag; older does not.
        extra = None if alpha is None else _UNASSOCIATED_ALPHA
        return image, alpha, icc, _pil_orientation(im), extra
    if axes == "SYX":
        data = np.moveaxis(data, 0, -1)
    elif axes not in ("YX", "YXS"):
        raise _Unreadable(f"unsupported TIFF layout (axes {axes!r}, shape {data.shape})")
    if photometric == 0:  # MINISWHITE: 0 is white
        if data.dtype == np.bool_:
            data = ~data
        elif data.dtype.kind == "u":
            data = np.iinfo(data.dtype).max - data
        else:
            raise _Unreadable(f"unsupported min-is-white TIFF with {data.dtype.name} samples")
    data = _normalise_dtype(data)
    base = 3 if photometric == 2 else 1
    channels = 1 if data.ndim == 2 else data.shape[2]
    if channels not in (base, base + 1):
        raise _Unreadable(f"unsupported TIFF with {channels} samples per pixel")
    image, alpha = _split_channels(data, "TIFF image")
    extra = None
    if alpha is not None:
        # The file's own tag of the extra sample, kept for write_image; none means unspecified
        # (the TIFF specification: only declared extra samples are alpha).
        code = int(extra_codes[0]) if extra_codes else _UNSPECIFIED_SAMPLE
        extra = code if code in _EXTRA_SAMPLE_CODES else None
    return image, alpha, icc, orientation, extra


_READERS = {
    "PNG": _read_png,
    "JPEG": _read_jpeg,
    "TIFF": _read_tiff,
    "BMP": _read_pil(BmpImagePlugin.BmpImageFile, "BMP"),
    "WEBP": _read_webp,
}


def _decode_reason(fmt: str, exc: BaseException) -> str:
    message = _one_line(str(exc)) or type(exc).__name__
    lowered = message.lower()
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large, possible decompression bomb ({message})"
    if isinstance(exc, EOFError) or any(
        word in lowered for word in ("truncated", "failed to read", "too short", "no more chunks")
    ):
        return f"truncated {fmt} file ({message})"
    return f"corrupt or unsupported {fmt} file ({message})"


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO or pipe"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _open_regular(name: str) -> IO[bytes]:
    """Open a regular file for binary reading; refuse anything else without blocking.

    The file is opened non-blocking, so that a FIFO without a writer is refused at once instead
    of blocking the open forever; pipes, devices and sockets are refused as well (the readers
    seek, and a device may never end). Raises IsADirectoryError for a directory and
    :class:`_Unreadable` for other special files. The file object's ``name`` is ``name``
    (tifffile uses it).
    """

    def opener(path: str, flags: int) -> int:
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0))
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if not stat.S_ISREG(mode):
                raise _Unreadable(f"not a regular file ({_special_kind(mode)})")
            if os.name == "posix":
                os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    return open(name, "rb", opener=opener)


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """Read an image file into an array in its own dtype, alpha split off.

    Parameters
    ----------
    path : str or os.PathLike
        A PNG, JPEG, TIFF, BMP or WebP file; the format is recognised from the content, not the
        extension.

    Returns
    -------
    image : numpy.ndarray
        ``(H, W)`` grey or ``(H, W, 3)`` colour, C-contiguous and writeable, in the file's own
        sample type: ``uint8``, ``uint16`` or ``float32`` (see the module docstring for the exact
        policy). The EXIF orientation is applied.
    meta : ImageMeta
        Format, mode (``'L'``, ``'LA'``, ``'RGB'``, ``'RGBA'``), dtype, bit depth, the alpha
        channel (or None), the ICC profile (or None) and the orientation that was applied.

    Raises
    ------
    ImageReadError
        (a ``ValueError``) with a one-line message ``cannot read '<path>': <reason>`` when the file
        is missing, unreadable, a directory or not a regular file (a FIFO, a device: refused at
        once, never waited on), empty, not a supported image, truncated or corrupt, has a zero
        dimension, or has more than :data:`MAX_PIXELS` pixels.
    TypeError
        If ``path`` is not a str or os.PathLike.

    Notes
    -----
    Time O(H*W) for decoding, plus O(number of chunks) to check a PNG's structure. 16-bit colour
    PNGs are decoded by ``pypng`` in pure Python, several times slower than Pillow's C decoder
    (about 0.3 s a megapixel-channel for Paeth-filtered rows). Multi-page TIFFs: the first page.
    Float TIFFs are returned with NaN and inf as they are; the denoiser validates them.

    Examples
    --------
    >>> image, meta = read_image("photo.png")  # doctest: +SKIP
    >>> image.dtype, meta.mode  # doctest: +SKIP
    (dtype('uint8'), 'RGBA')
    """
    name = _path_str(path)
    try:
        with _open_regular(name) as f:
            file_size = os.fstat(f.fileno()).st_size
            head = f.read(16)
            if not head:
                raise _Unreadable("empty file (0 bytes)")
            fmt = _sniff(head)
            if fmt is None:
                raise _Unreadable("not a supported image file (PNG, JPEG, TIFF, BMP or WebP)")
            try:
                image, alpha, icc, orientation, extra = _READERS[fmt](f, name, file_size)
            except _Unreadable:
                raise
            except _DECODE_ERRORS as exc:
                raise _Unreadable(_decode_reason(fmt, exc)) from exc
    except _Unreadable as exc:
        raise ImageReadError(f"cannot read {name!r}: {exc}") from exc.__cause__
    except IsADirectoryError:
        raise ImageReadError(f"cannot read {name!r}: is a directory") from None
    except OSError as exc:  # missing, permission denied, I/O error
        reason = exc.strerror or _one_line(str(exc)) or type(exc).__name__
        raise ImageReadError(f"cannot read {name!r}: {reason}") from None

    if orientation != 1:
        image = _orient(image, orientation)
        alpha = None if alpha is None else _orient(alpha, orientation)
    image = np.require(image, requirements=["C", "W"])
    if alpha is not None:
        alpha = np.require(alpha, dtype=image.dtype, requirements=["C", "W"])
    meta = ImageMeta(
        path=name,
        format=fmt,
        mode=_MODES[(1 if image.ndim == 2 else 3, alpha is not None)],
        dtype=image.dtype,
        bit_depth=image.dtype.itemsize * 8,
        alpha=alpha,
        icc_profile=bytes(icc) if icc else None,
        orientation=orientation,
        extra_sample=extra,
    )
    return image, meta


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------

_FORMAT_LIMITS = {
    # format: (dtypes it can hold, whether it can hold alpha)
    "PNG": ({"uint8", "uint16"}, True),
    "JPEG": ({"uint8"}, False),
    "TIFF": ({"uint8", "uint16", "float32"}, True),
    "BMP": ({"uint8"}, False),
    "WEBP": ({"uint8"}, True),
}


def _prepare(
    name: str, fmt: str, image: Any, meta: ImageMeta | None
) -> tuple[np.ndarray, int | None]:
    """Validate the image/meta/format combination.

    Returns the (H, W, C) data and the TIFF ExtraSamples code of its extra channel (None when it
    has none): ``meta.extra_sample`` when given, else unspecified data for the second of two
    channels of ``image``, unassociated alpha for ``meta.alpha`` and the fourth of four channels.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy.ndarray, got {type(image).__name__}")
    if meta is not None and not isinstance(meta, ImageMeta):
        raise TypeError(f"meta must be an ImageMeta or None, got {type(meta).__name__}")
    fail = f"cannot write {name!r}:"
    if image.dtype.name not in ("uint8", "uint16", "float32"):
        raise ValueError(
            f"{fail} image dtype {image.dtype} is not supported (use uint8, uint16 or float32)"
        )
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 2, 3, 4))):
        raise ValueError(
            f"{fail} image must have shape (H, W) or (H, W, C) with C in 1-4, got {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{fail} image has a zero dimension (shape {image.shape})")
    data = image if image.ndim == 3 else image[:, :, None]
    has_alpha = data.shape[2] in (2, 4)
    alpha = None if meta is None else meta.alpha
    code = None if meta is None else meta.extra_sample
    if code is not None and (
        isinstance(code, (bool, np.bool_))
        or not isinstance(code, (int, np.integer))
        or code not in _EXTRA_SAMPLE_CODES
    ):
        raise ValueError(f"{fail} meta.extra_sample must be None, 0, 1 or 2, got {code!r}")
    if code is not None:
        extra = int(code)
    elif alpha is not None or data.shape[2] == 4:
        extra = _UNASSOCIATED_ALPHA
    else:
        extra = _UNSPECIFIED_SAMPLE  # two channels of data are not grey + alpha
    if alpha is not None:
        if has_alpha:
            raise ValueError(
                f"{fail} image already has an alpha channel ({data.shape[2]} channels) and "
                "meta.alpha is given too"
            )
        if not isinstance(alpha, np.ndarray) or alpha.shape != data.shape[:2]:
            shape = getattr(alpha, "shape", type(alpha).__name__)
            raise ValueError(f"{fail} meta.alpha has shape {shape}, the image is {data.shape[:2]}")
        if alpha.dtype != image.dtype:
            raise ValueError(
                f"{fail} meta.alpha has dtype {alpha.dtype}, the image has {image.dtype}"
            )
        data = np.concatenate([data, alpha[:, :, None]], axis=2)
        has_alpha = True
    dtypes, alpha_ok = _FORMAT_LIMITS[fmt]
    if image.dtype.name not in dtypes:
        where = ".tif/.tiff" if image.dtype == np.float32 else ".png or .tif"
        raise ValueError(f"{fail} {fmt} cannot store {image.dtype} images (use {where})")
    if has_alpha and not alpha_ok:
        raise ValueError(
            f"{fail} {fmt} cannot store an alpha channel (use .png, .tif or .webp, or drop "
            "the alpha)"
        )
    data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("="))
    return data, extra if has_alpha else None


def _pil_image(data: np.ndarray) -> Image.Image:
    """(H, W, C) uint8/uint16-grey data -> Pillow image (L, LA, RGB, RGBA or I;16)."""
    return Image.fromarray(data[:, :, 0] if data.shape[2] == 1 else data)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def _write_png16(f: IO[bytes], data: np.ndarray, icc: bytes | None) -> None:
    """16-bit PNG with pypng (any channels), the ICC profile spliced in after IHDR."""
    height, width, channels = data.shape
    writer = png.Writer(
        width,
        height,
        greyscale=channels <= 2,
        alpha=channels in (2, 4),
        bitdepth=16,
    )
    packed = data.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)
    buffer = _BytesSink()
    writer.write_packed(buffer, packed)
    encoded = b"".join(buffer.parts)
    if icc:
        split = len(_PNG_SIGNATURE) + 8 + 13 + 4  # after IHDR
        iccp = _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
        encoded = encoded[:split] + iccp + encoded[split:]
    f.write(encoded)


class _BytesSink:
    """A minimal write-only file collecting bytes."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, b: bytes) -> None:
        self.parts.append(bytes(b))


def _encode(
    f: IO[bytes], fmt: str, data: np.ndarray, extra_sample: int | None, icc: bytes | None
):
    """Encode (H, W, C) data; ``extra_sample``: the TIFF ExtraSamples code of its extra channel.

    PNG and WebP have no other kind of extra channel than alpha.
    """
    extra: dict[str, Any] = {"icc_profile": icc} if icc else {}
    if fmt == "TIFF":
        channels = data.shape[2]
        tifffile.imwrite(
            f,
            data[:, :, 0] if channels == 1 else data,
            photometric="rgb" if channels >= 3 else "minisblack",
            extrasamples=None if extra_sample is None else [extra_sample],
            compression="zlib",
            predictor=bool(data.dtype != np.float32),  # horizontal differencing for integers
            iccprofile=icc or None,
            metadata=None,
        )
    elif fmt == "PNG" and data.dtype == np.uint16 and data.shape[2] > 1:
        _write_png16(f, data, icc)
    elif fmt == "PNG":
        _pil_image(data).save(f, "PNG", **extra)
    elif fmt == "JPEG":
        _pil_image(data).save(f, "JPEG", quality=_JPEG_QUALITY, subsampling=0, **extra)
    elif fmt == "WEBP":
        _pil_image(data).save(f, "WEBP", lossless=True, exact=True, **extra)
    else:  # BMP holds no ICC profile
        _pil_image(data).save(f, "BMP")


#: Name of the temporary file of an atomic write: ``.<target name, first 96 characters>.<12 hex
#: digits>.tmp<target extension>``.  Hidden (leading dot), so folder scans never take it for an
#: input; see :func:`temporary_target`.
_TEMP_NAME = re.compile(r"\.(?P<base>.+)\.[0-9a-f]{12}\.tmp(?P<ext>(?:\.[^.]*)?)\Z", re.DOTALL)
_TEMP_BASE_MAX = 96


def temporary_target(name: str) -> str | None:
    """Tell whether a file name is that of an atomic write's temporary file, and for which target.

    Parameters
    ----------
    name : str
        A file name (no folder part).

    Returns
    -------
    str or None
        The name of the file the temporary file was to become, or None when ``name`` is not such
        a temporary file.  Names of more than 96 characters are cut to 96 in temporary names:
        then the first 96 characters of the target's name are returned.

    Notes
    -----
    A write interrupted by ``kill -9`` or a power cut leaves its temporary file behind (the
    target itself is untouched: it is replaced only by the final rename).  Batch runs use this
    function to remove the leftovers of the outputs they are about to write.  O(len(name)).
    """
    match = _TEMP_NAME.match(name)
    if match is None:
        return None
    base = match.group("base")
    if len(base) < _TEMP_BASE_MAX and os.path.splitext(base)[1] != match.group("ext"):
        return None
    return base


def _open_temp(directory: str, base: str, ext: str) -> tuple[IO[bytes], str]:
    """Create and open a new hidden file ``.<base>.<random>.tmp<ext>`` in ``directory``.

    Like ``tempfile.mkstemp`` (exclusive creation, random name), but opened with ``open(..., 'xb')``
    so that the file gets the usual permissions (0o666 less the umask) rather than 0o600, and a
    real file name (tifffile needs one).
    """
    for _ in range(100):
        tmp = os.path.join(
            directory, f".{base[:_TEMP_BASE_MAX]}.{secrets.token_hex(6)}.tmp{ext}"
        )
        try:
            return open(tmp, "xb"), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file in {directory!r}")


def _folder_error(exc: OSError, name: str) -> OSError:
    """The error of creating the temporary file beside ``name``, naming the user's folder or path.

    The temporary file's own name means nothing to the user: a missing folder is named as such
    (``no such folder``), a path component that is a file as ``not a folder``, a folder that
    refuses new files (permissions, read-only file system) by its name, anything else by the
    target's name.  Errors without an errno (no free temporary name) are returned as they are.
    """
    if exc.errno is None:
        return exc
    folder = os.path.dirname(name) or os.path.dirname(os.path.abspath(name))
    if exc.errno == errno.ENOENT:
        return FileNotFoundError(errno.ENOENT, "no such folder", folder)
    if exc.errno == errno.ENOTDIR:
        blocker = probe = folder
        while probe:  # the nearest ancestor that exists is the file in the way
            if os.path.lexists(probe):
                blocker = probe
                break
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        return NotADirectoryError(errno.ENOTDIR, "not a folder", blocker)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OSError(exc.errno, exc.strerror, folder)
    return OSError(exc.errno, exc.strerror, name)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, replace: bool = True) -> Iterator[IO[bytes]]:
    """Open a hidden temporary file beside ``path`` for binary writing; on success it is flushed,
    synced and renamed onto ``path``, on any error removed (``path`` is then untouched).

    File-system errors name what the user gave, never the temporary file: a missing folder
    (``FileNotFoundError``, ``no such folder``), a path component that is a file
    (``NotADirectoryError``, ``not a folder``), a folder that refuses new files (by the folder's
    name), or ``path`` itself (a folder in the way of the rename, disk full...); their ``errno``
    and ``strerror`` are the system's.  With ``replace=False`` the final rename never replaces
    a file at ``path`` (``FileExistsError`` instead), even one made meanwhile by another process.
    """
    name = _path_str(path)
    ext = os.path.splitext(name)[1]
    try:
        f, tmp = _open_temp(os.path.dirname(os.path.abspath(name)), os.path.basename(name), ext)
    except OSError as exc:
        raise _folder_error(exc, name) from None
    lock = _hold(tmp)  # until the rename: another batch must not take it for a leftover
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _rename(tmp, name, replace)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if (
            isinstance(exc, OSError)
            and exc.errno is not None
            and tmp in (exc.filename, exc.filename2)
        ):
            raise OSError(exc.errno, exc.strerror, name) from None
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _rename(tmp: str, name: str, replace: bool) -> None:
    """``os.replace``, or with ``replace=False`` a rename that never replaces a file: a hard link
    (which fails when ``name`` exists, atomically) and the temporary name removed; where the
    file system has no hard links, a check just before ``os.replace``."""
    if replace:
        os.replace(tmp, name)
        return
    try:
        os.link(tmp, name)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "exists already", name) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if os.path.lexists(name):
            raise FileExistsError(errno.EEXIST, "exists already", name) from None
        os.replace(tmp, name)
        return
    os.unlink(tmp)


#: A temporary file younger than this is never taken for a leftover (seconds): it covers the
#: moment between the file's creation and its lock.
STALE_AFTER_SECONDS = 2.0


def _hold(tmp: str) -> int | None:
    """An open descriptor holding an exclusive ``flock`` on ``tmp`` (None where there is none)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(tmp, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_stale_temporary(path: str | os.PathLike) -> bool:
    """Remove an atomic write's temporary file if it is a leftover; whether it was removed.

    Parameters
    ----------
    path : str or os.PathLike
        A temporary file (see :func:`temporary_target`).

    Returns
    -------
    bool
        True when the file was removed: a regular file (not a link), no longer being written,
        at least ``STALE_AFTER_SECONDS`` old.

    Notes
    -----
    A file being written is locked (``flock``) by its writer until it is renamed, so a second
    batch writing into the same folder never removes the temporary file of a write that is
    still going on in the first: only those of writes that were killed.  Where ``flock`` does
    not exist, age alone decides.
    """
    path = os.fspath(path)
    try:
        info = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or time.time() - info.st_mtime < STALE_AFTER_SECONDS:
        return False
    lock = _hold(path)
    if lock is None and fcntl is not None:
        return False  # being written (or unreadable)
    try:
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        if lock is not None:
            os.close(lock)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data)


def write_image(
    path: str | os.PathLike,
    image: np.ndarray,
    meta: ImageMeta | None = None,
    *,
    replace: bool = True,
) -> None:
    """Write an image atomically, in its own dtype, re-attaching the alpha channel.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; its extension (any case) chooses the format: ``.png``, ``.jpg`` /
        ``.jpeg``, ``.tif`` / ``.tiff``, ``.bmp``, ``.webp``. An existing file is replaced
        unless ``replace`` is False.
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 1)`` grey, ``(H, W, 3)`` RGB, ``(H, W, 2)`` two channels or
        ``(H, W, 4)`` RGB with alpha as the last channel; ``uint8``, ``uint16`` or ``float32``.
        PNG and WebP can store a second channel only as alpha (LA); a TIFF tags it as
        unspecified data (ExtraSamples 0), not as alpha, and the fourth channel as unassociated
        alpha (ExtraSamples 2), unless ``meta.extra_sample`` says otherwise.
    meta : ImageMeta, optional
        From :func:`read_image`. Its ``alpha`` (``(H, W)``, the image's dtype) is attached to the
        image (grey -> LA, RGB -> RGBA), as unassociated alpha in a TIFF unless
        ``extra_sample`` says otherwise; its ``extra_sample`` (None, 0, 1 or 2) tags the extra
        channel of a TIFF, so that a TIFF read and written back keeps its own tagging; its
        ``icc_profile`` is embedded (not in BMP). Its other fields are not used: the format
        comes from ``path``, the dtype from ``image``.
    replace : bool, default True
        False: never replace a file, not even one that appears at ``path`` while the image is
        encoded (another process writing the same name); ``FileExistsError`` then.

    Raises
    ------
    TypeError
        If ``path``, ``image`` or ``meta`` has the wrong type.
    ValueError
        Naming the file and why, when the extension is not supported, the shape or dtype is not
        one above, ``meta.alpha`` does not match the image (shape, dtype, or the image already
        has alpha), ``meta.extra_sample`` is not None, 0, 1 or 2, or the format cannot hold the
        data: 16-bit only in PNG and TIFF, float32 only in TIFF, alpha not in JPEG and BMP.
        Nothing is written then.
    OSError
        From the file system, naming the user's path, never the temporary file:
        ``FileNotFoundError`` ``no such folder`` with the missing folder, ``NotADirectoryError``
        ``not a folder`` with the file in the way, ``PermissionError`` with the folder that
        refuses new files, or the error (a folder in the way, disk full...) with ``path``. No
        temporary file is left behind and an existing target is untouched.

    Notes
    -----
    Time and memory O(H*W). Encodings: PNG (Pillow; 16-bit with alpha or colour with pypng),
    JPEG quality 95 without chroma subsampling, TIFF with deflate compression (plus horizontal
    differencing for integers), WebP lossless keeping the colour under transparent pixels, BMP
    uncompressed. Every format but JPEG is exact. The temporary file is
    ``.<name>.<random>.tmp<ext>`` beside the target; it is flushed and fsynced before
    ``os.replace``.
    """
    name = _path_str(path)
    ext = os.path.splitext(name)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(
            f"cannot write {name!r}: unsupported extension {ext or '(none)'!r} "
            f"(use one of {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    fmt = _EXT_FORMAT[ext]
    data, extra_sample = _prepare(name, fmt, image, meta)
    icc = meta.icc_profile if meta is not None and meta.icc_profile else None

    with atomic_file(name, replace=replace) as f:
        _encode(f, fmt, data, extra_sample, icc)
