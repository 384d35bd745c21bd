"""Make the README's gallery of attention maps: exact against the approximations on Set12.

For two Set12 pictures (Barbara, 09.png, and the butterfly, 05.png) and three query pixels each
(a texture, an edge, a flat region), draws the attention map of every query by every method of
``nlattn.METHODS`` (exact first) over NLM tokens of the clean image, and writes one figure per
picture to ``docs/images/`` (palette PNGs about 1200 pixels wide).  Prints each method's errors
against exact.

Usage::

    python examples/attention_gallery.py [--data DIR] [--out DIR] [--h H]

``--data`` defaults to ``$NLATTN_SET12`` or ``../shared/data/set12`` next to the repository.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

import nlattn
from nlattn.maps import attention_maps
from nlattn.render import figure_to_array, render_maps

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = os.environ.get("NLATTN_SET12", str(REPO.parent / "shared" / "data" / "set12"))

#: (file, output name, queries as (x, y, what)).
GALLERY = (
    ("09.png", "attnmap_barbara.png", ((60, 250, "tablecloth"), (330, 200, "scarf"),
                                        (220, 60, "flat wall"))),
    ("05.png", "attnmap_butterfly.png", ((118, 178, "vein edge"), (40, 200, "flowers"),
                                          (200, 20, "flat background"))),
)  # fmt: skip

#: Filter strength of the NLM tokens (grey levels): the preset for a clean image (h ~ 1.5)
#: makes maps of a handful of pixels; this shows which patches resemble the query's.
H_DEFAULT = 10.0

#: Panel width in inches at 100 dpi: three methods make a figure about 1200 pixels wide.
PANEL_INCHES = 3.3


def palette_image(picture: np.ndarray, n_greys: int = 64) -> Image.Image:
    """An RGB figure as a 256-colour image: ``n_greys`` grey levels, the rest for the colours.

    The figures are mostly grey (the image under a dark heatmap, the white page) with a few
    coloured regions, so an even grey ramp plus a median-cut palette of the coloured pixels
    keeps both the picture and the colormap smooth at a third of the RGB PNG's size.
    """
    flat = picture.reshape(-1, 3)
    chroma = flat.max(axis=1).astype(int) - flat.min(axis=1)
    coloured = flat[chroma > 10]
    n_colours = 256 - n_greys
    greys = np.repeat(np.linspace(0, 255, n_greys).round().astype(int), 3).tolist()
    colours: list[int] = []
    if len(coloured):
        strip = Image.fromarray(np.ascontiguousarray(coloured[None]))
        colours = strip.quantize(n_colours, method=Image.Quantize.MEDIANCUT).getpalette()
        colours = colours[: 3 * n_colours]
    palette = Image.new("P", (1, 1))
    palette.putpalette(greys + colours)
    return Image.fromarray(picture).quantize(palette=palette, dither=Image.Dither.NONE)


def write_png(path: Path, picture: np.ndarray) -> int:
    """Write a figure as a palette PNG atomically; return its size in bytes."""
    tmp = path.with_name(f".{path.name}.tmp")
    palette_image(picture).save(tmp, "PNG", optimize=True)
    os.replace(tmp, path)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder of the Set12 PNGs")
    parser.add_argument("--out", default=str(REPO / "docs" / "images"), help="output folder")
    parser.add_argument("--h", type=float, default=H_DEFAULT, help="NLM tokens' filter strength")
    parser.add_argument("--patch-radius", type=int, default=2)
    args = parser.parse_args(argv)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = ["exact"] + [name for name in nlattn.METHODS if name != "exact"]
    for file_name, out_name, queries in GALLERY:
        image, _ = nlattn.read_image(Path(args.data) / file_name)
        positions = np.array([(y, x) for x, y, _ in queries])
        start = time.perf_counter()
        result = attention_maps(image, positions, methods, patch_radius=args.patch_radius,
                                h=args.h)  # fmt: skip
        seconds = time.perf_counter() - start
        height, width = image.shape[:2]
        title = f"Set12 {file_name} ({width}x{height}), {result.description}"
        figure = render_maps(result, title=title, panel_inches=PANEL_INCHES, dpi=100)
        size = write_png(out_dir / out_name, figure_to_array(figure))
        print(f"{out_dir / out_name}: {size / 1024:.0f} KB ({seconds:.1f} s)")
        for i, (x, y, what) in enumerate(queries):
            cells = []
            for j, name in enumerate(result.methods):
                cells.append(
                    f"{name} TV {result.tv[i, j]:.3f} R@{result.k} {result.recall[i, j]:.2f} "
                    f"support {np.count_nonzero(result.rows[i, j]):,}"
                )
            print(f"  ({x}, {y}) {what}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
