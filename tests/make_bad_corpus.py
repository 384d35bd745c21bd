"""Make the bad-input corpus: broken, odd and good image files side by side.

Run as a script to write the corpus into a folder (nothing is committed: the files are made on
demand, at test time into a temporary folder)::

    python tests/make_bad_corpus.py tests/data/bad

or import :func:`make_corpus` and call it on a folder.  Every file gets an entry in the returned
table saying what ``nlattn denoise`` must do with it when the folder is denoised:

- ``"ok"``: a valid image, however unusual (1x1, 1xN, palette, CMYK JPEG, grey + alpha, 16-bit
  grey, float TIFF, content that does not match its extension): it is denoised and written in
  its own dtype and mode;
- ``"error"``: an unreadable or unusable file (truncated, empty, text, decompression bomb, float
  TIFF with NaN or inf): one error line naming the file and the reason, exit status 1, the
  other files still done;
- ``"skipped"``: a file in the folder that is not an image by its extension: one warning line,
  no error.

This module imports nothing from nlattn.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from dataclasses import dataclass

import numpy as np
import tifffile
from PIL import Image


@dataclass(frozen=True)
class Expect:
    """What the batch must do with one corpus file.

    Attributes
    ----------
    outcome : str
        ``"ok"``, ``"error"`` or ``"skipped"``.
    reason : str
        For errors and skips, a regular expression the one-line reason must match; for valid
        images a short description.
    dtype : str
        For valid images, the dtype ``read_image`` gives (``uint8``, ``uint16``, ``float32``).
    mode : str
        For valid images, the mode ``read_image`` gives (``L``, ``LA``, ``RGB``, ``RGBA``).
    """

    outcome: str
    reason: str
    dtype: str = ""
    mode: str = ""


def _noisy(shape: tuple[int, ...], seed: int, high: int = 255) -> np.ndarray:
    """A smooth ramp plus noise, as integers in [0, high]."""
    rng = np.random.default_rng(seed)
    height, width = shape[:2]
    ramp = np.linspace(0.2, 0.8, width)[None, :] * np.ones((height, width))
    if len(shape) == 3:
        ramp = ramp[:, :, None] * np.linspace(0.7, 1.0, shape[2])[None, None, :]
    noisy = ramp * high + rng.normal(0.0, 0.06 * high, shape)
    return np.clip(np.rint(noisy), 0, high)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_bomb(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims ``width x height`` grey pixels.

    The compressed data holds only a few rows, so the file is tiny; a reader that allocated the
    claimed size before decoding would ask for width * height bytes.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_bomb(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to claim ``width x height`` pixels."""
    data = bytearray(_encoded(Image.fromarray(np.zeros((8, 8), np.uint8)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack" if array.ndim == 2 else "rgb")
    return buffer.getvalue()


def make_corpus(folder: str | os.PathLike) -> dict[str, Expect]:
    """Write the corpus into ``folder`` (created if needed) and say what each file must give.

    Parameters
    ----------
    folder : str or os.PathLike
        Where to write the files; existing files of the same names are replaced.

    Returns
    -------
    dict of str to Expect
        File name -> expected outcome (see the module docstring).
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    files: dict[str, tuple[bytes, Expect]] = {}

    def add(name: str, data: bytes, expect: Expect) -> None:
        files[name] = (data, expect)

    grey = _noisy((24, 32), 0).astype(np.uint8)
    rgb = _noisy((24, 32, 3), 1).astype(np.uint8)
    png_grey = _encoded(Image.fromarray(grey), "PNG")
    jpeg_rgb = _encoded(Image.fromarray(rgb), "JPEG", quality=95)
    tiff_grey = _tiff(grey)

    # --- good images, ordinary and unusual: all must be denoised --------------------------
    add("good_grey.png", png_grey, Expect("ok", "8-bit grey PNG", "uint8", "L"))
    add("good_rgb.png", _encoded(Image.fromarray(rgb), "PNG"), Expect("ok", "RGB", "uint8", "RGB"))
    add("good_rgb.jpg", jpeg_rgb, Expect("ok", "RGB JPEG", "uint8", "RGB"))
    add("good_grey.tif", tiff_grey, Expect("ok", "8-bit grey TIFF", "uint8", "L"))
    tiny = np.array([[137]], np.uint8)
    add("pixel_1x1.png", _encoded(Image.fromarray(tiny), "PNG"), Expect("ok", "1x1", "uint8", "L"))
    row = _noisy((1, 40), 2).astype(np.uint8)
    add("row_1x40.png", _encoded(Image.fromarray(row), "PNG"), Expect("ok", "1xN", "uint8", "L"))
    column = _noisy((40, 1), 3).astype(np.uint8)
    add("column_40x1.png", _encoded(Image.fromarray(column), "PNG"),
        Expect("ok", "Nx1", "uint8", "L"))
    palette = Image.fromarray(rgb).quantize(colors=16, method=Image.Quantize.MEDIANCUT)
    add("palette.png", _encoded(palette, "PNG"), Expect("ok", "palette -> RGB", "uint8", "RGB"))
    palette_alpha = palette.copy()
    palette_alpha.info["transparency"] = 0
    add("palette_transparent.png", _encoded(palette_alpha, "PNG", transparency=0),
        Expect("ok", "palette with transparency -> RGBA", "uint8", "RGBA"))
    cmyk = Image.fromarray(rgb).convert("CMYK")
    add("cmyk.jpg", _encoded(cmyk, "JPEG", quality=95), Expect("ok", "CMYK JPEG", "uint8", "RGB"))
    alpha = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (24, 1))
    la = Image.fromarray(np.stack([grey, alpha], axis=-1), "LA")
    add("grey_alpha.png", _encoded(la, "PNG"), Expect("ok", "grey + alpha", "uint8", "LA"))
    grey16 = _noisy((24, 32), 4, high=65535).astype(np.uint16)
    add("grey16.png", _encoded(Image.fromarray(grey16), "PNG"),
        Expect("ok", "16-bit grey PNG", "uint16", "L"))
    float_grey = (_noisy((24, 32), 5) / 255.0).astype(np.float32)
    add("float.tif", _tiff(float_grey), Expect("ok", "float32 TIFF", "float32", "L"))
    # content and extension disagree: the reader goes by the content, the writer by the name
    add("jpeg_named.png", jpeg_rgb, Expect("ok", "JPEG data named .png", "uint8", "RGB"))
    add("png_named.tif", png_grey, Expect("ok", "PNG data named .tif", "uint8", "L"))

    # --- bad files: one error line each ----------------------------------------------------
    add("truncated.png", png_grey[: len(png_grey) // 2], Expect("error", r"truncated PNG"))
    add("truncated.jpg", jpeg_rgb[: len(jpeg_rgb) * 2 // 3], Expect("error", r"truncated JPEG"))
    tiff_big = _tiff(_noisy((64, 64), 6).astype(np.uint8))
    add("truncated.tif", tiff_big[: len(tiff_big) // 2],
        Expect("error", r"truncated TIFF"))
    add("empty.png", b"", Expect("error", r"empty file"))
    add("empty.jpg", b"", Expect("error", r"empty file"))
    add("empty.tif", b"", Expect("error", r"empty file"))
    add("text.png", b"this is not a picture\n" * 4, Expect("error", r"not a supported image"))
    add("html.jpg", b"<!doctype html><title>404</title>\n",
        Expect("error", r"not a supported image"))
    add("bomb.png", _png_bomb(200_000, 200_000), Expect("error", r"decompression bomb"))
    add("bomb.jpg", _jpeg_bomb(60_000, 60_000), Expect("error", r"decompression bomb"))
    nan_image = float_grey.copy()
    nan_image[3, 4] = np.nan
    add("float_nan.tif", _tiff(nan_image), Expect("error", r"NaN or infinite"))
    inf_image = float_grey.copy()
    inf_image[5, 6] = np.inf
    add("float_inf.tif", _tiff(inf_image), Expect("error", r"NaN or infinite"))

    # --- not images by their name: skipped with a warning ----------------------------------
    add("notes.txt", b"denoise these\n", Expect("skipped", r"not an image file"))
    add("image.png.bak", png_grey, Expect("skipped", r"not an image file"))

    for name, (data, _) in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return {name: expect for name, (_, expect) in files.items()}


def main(argv: list[str]) -> int:
    """``python tests/make_bad_corpus.py FOLDER``: write the corpus, list it on stdout."""
    if len(argv) != 1:
        print("usage: python tests/make_bad_corpus.py FOLDER", file=sys.stderr)
        return 2
    corpus = make_corpus(argv[0])
    for name, expect in sorted(corpus.items()):
        print(f"{expect.outcome:8s} {name:26s} {expect.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
