"""Attention methods on tokens with exact zero vectors, against the same tokens made non-zero.

    python benchmarks/zero_tokens.py [--size 128] [--scales 4,8,16] [--seeds 3]
        [--images astronaut,page,...] [--out zero_tokens.json]

Tokens: the 5 x 5 patches of a ``size x size`` crop of each image (grey levels in [0, 255]),
each patch minus its own mean and divided by its norm; a flat patch stays an exact zero vector
(flat skies, paper, backgrounds, saturated areas, padding-like silhouettes).  Values: the crop's
pixels minus their mean.  Each image is run twice: with its zero vectors (``zeros``) and with
them replaced by Gaussian noise of norm ~5e-3 (``noise``), the control in which no token is
zero.  A method handles zero vectors when its ``zeros`` error is no worse than ``1.1 x noise +
0.02``.  Every method runs with its defaults (``scale`` given); the randomised ones are averaged
over ``--seeds`` seeds.

Images: none of them is Set12 or was used to tune any method.  scikit-image's samples
(``astronaut`` as the mean of its RGB channels; ``page``, ``rocket``, ``cell``, ``logo``,
``horse``, ``shepp_logan_phantom``, ``colorwheel``), cropped at the window of ``size x size``
with the most zero tokens on a coarse grid (``NAME@centre``: the centre crop;
``astronaut@centre`` is the case where Performer's output collapsed to the mean of the values),
and ``shapes``, a generated image of flat shapes, gradients and text (:func:`shapes_image`).

Prints one table (relative output error ||O' - O|| / ||O|| against ``exact``) per scale and the
ratio of each pair; writes ``results/<out>``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import centre_crop, machine, write_json

import nlattn
from nlattn.metrics import relative_error

METHODS = ("local", "scram", "performer", "lsh", "scatterbrain", "fast", "efficient")
RANDOMISED = ("performer", "lsh", "scatterbrain")
IMAGES = ("astronaut@centre", "astronaut", "page", "rocket", "cell", "logo", "horse",
          "shepp_logan_phantom", "colorwheel", "shapes")
NOISE = 1e-3


def shapes_image(size: int = 256, seed: int = 0) -> np.ndarray:
    """A generated grey image in [0, 255] with large flat areas: rectangles and discs of
    constant grey, a linear gradient, text, on a flat background (8-bit levels)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("L", (size, size), 200)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.integers(0, size - 40, 2)
        w, h = rng.integers(20, size // 2, 2)
        level = int(rng.integers(0, 256))
        if rng.random() < 0.5:
            draw.rectangle([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=level)
        else:
            draw.ellipse([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=level)
    for row in range(0, size, 24):
        draw.text((4, row + 4), "non-local means 0123", fill=int(rng.integers(0, 80)))
    array = np.asarray(image, np.float64).copy()
    array[size // 2:, : size // 4] = np.linspace(0, 255, size // 4)[None, :]
    return array


def load(name: str) -> np.ndarray:
    """The image ``name`` as float64 grey levels in [0, 255]."""
    if name == "shapes":
        return shapes_image()
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)(), np.float64)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=-1)
    if image.max() <= 1.0:
        image = image * 255.0
    return image


def patch_tokens(crop: np.ndarray) -> np.ndarray:
    """Per-patch centred 5 x 5 patches divided by their norm; flat patches stay zero."""
    patches = nlattn.extract_patches(crop.astype(np.float32), 2, centre=False)
    patches = patches - patches.mean(axis=-1, keepdims=True)
    norms = np.sqrt((patches.astype(np.float64) ** 2).sum(-1, keepdims=True))
    return np.where(norms > 0, patches / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)


def zero_mask(tokens: np.ndarray) -> np.ndarray:
    """Where the token grid holds exact zero vectors."""
    return np.abs(tokens).max(axis=-1) == 0


def richest_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The ``size x size`` crop, on a grid of step ``size // 4``, holding the most zero tokens
    (the centre crop when that is as good)."""
    zero = zero_mask(patch_tokens(image)).astype(np.int64)
    height, width = image.shape
    cy, cx = (height - size) // 2, (width - size) // 2
    best, where = zero[cy:cy + size, cx:cx + size].sum(), (cy, cx)
    step = max(1, size // 4)
    for y in range(0, height - size + 1, step):
        for x in range(0, width - size + 1, step):
            count = zero[y:y + size, x:x + size].sum()
            if count > best:
                best, where = count, (y, x)
    y, x = where
    return image[y:y + size, x:x + size]


def run(names, size, scales, seeds):
    rows = []
    for name in names:
        base, _, where = name.partition("@")
        image = load(base)
        crop = centre_crop(image, size) if where == "centre" else richest_crop(image, size)
        tokens = patch_tokens(crop)
        zero = zero_mask(tokens)
        rng = np.random.default_rng(0)
        noisy = tokens.copy()
        noisy[zero] = NOISE * rng.standard_normal((int(zero.sum()), tokens.shape[-1]))
        values = (crop - crop.mean())[..., None].astype(np.float32)
        for scale in scales:
            for variant, t in (("zeros", tokens), ("noise", noisy)):
                exact = nlattn.attention(t, t, values, "exact", scale=scale)
                record = {"image": name, "scale": scale, "variant": variant,
                          "zero_tokens": int(zero.sum()), "n": int(zero.size),
                          "exact_norm": float(np.linalg.norm(exact))}
                for method in METHODS:
                    runs = range(seeds) if method in RANDOMISED else range(1)
                    start = time.perf_counter()
                    errors = [relative_error(nlattn.attention(t, t, values, method, scale=scale,
                                                              seed=seed), exact)
                              for seed in runs]
                    record[method] = float(np.mean(errors))
                    record[method + "_seconds"] = (time.perf_counter() - start) / len(errors)
                rows.append(record)
                print(f"{name:>20} scale {scale:>4} {variant:>5} zero {record['zero_tokens']:>6}"
                      + "".join(f" {m} {record[m]:.3f}" for m in METHODS), flush=True)
    return rows


def report(rows, scales):
    for scale in scales:
        print(f"\nscale {scale}: relative error, zeros / noise (pass: zeros <= 1.1 noise + 0.02)")
        print(f"{'image':>20} {'zeros':>6} " + " ".join(f"{m:>17}" for m in METHODS))
        by = {(r["image"], r["variant"]): r for r in rows if r["scale"] == scale}
        for image in dict.fromkeys(r["image"] for r in rows):
            z, c = by[(image, "zeros")], by[(image, "noise")]
            cells = []
            for m in METHODS:
                ok = z[m] <= 1.1 * c[m] + 0.02
                cells.append(f"{z[m]:.3f}/{c[m]:.3f}{' ' if ok else '!'}".rjust(17))
            print(f"{image:>20} {z['zero_tokens']:>6} " + " ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--scales", default="4,8,16")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images", default=",".join(IMAGES))
    parser.add_argument("--out", default="zero_tokens.json")
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",")]
    names = args.images.split(",")
    start = time.perf_counter()
    rows = run(names, args.size, scales, args.seeds)
    report(rows, scales)
    path = write_json(args.out, {"machine": machine(), "size": args.size, "seeds": args.seeds,
                                 "noise": NOISE, "seconds": time.perf_counter() - start,
                                 "rows": rows})
    print(f"\nwrote {path} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
