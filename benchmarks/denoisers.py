"""Which methods of ``nl_means`` denoise: PSNR gain of every method on held-out images.

    python benchmarks/denoisers.py [--sizes 128,256] [--sigmas 15,25,50] [--draws 3]
        [--images text,camera,...] [--methods nlm2,nlm,...] [--out denoisers.json]

Images: none of them is Set12 or was used to tune any preset.  scikit-image's samples ``text``,
``camera``, ``coins``, ``moon``, ``page``, ``astronaut`` (the mean of its RGB channels),
``brick`` and ``grass``, and ``shapes``, a generated image of flat shapes, a gradient and text
(``zero_tokens.shapes_image``); each as float64 grey levels in [0, 255], its centred crop of
at most ``size x size`` pixels for each of ``--sizes`` (small enough that the quadratic
``"exact"`` finishes; the global approximations degrade as the image grows, so two sizes are
measured).

Noise: ``add_noise(crop, sigma, seed=i + 100 draw)`` (Gaussian, not clipped) with ``i`` the
image's index in :data:`IMAGES` and ``draw`` 0 to ``--draws - 1`` (independent noise draws: a
verdict near the threshold must not hang on one draw); every method gets the same noisy array.
Each method runs as a user would call it, ``nlattn.nl_means(noisy, method, sigma=sigma)`` with
every other parameter at its default (the randomised methods with seed 0); the attention
methods that ``nl_means`` no longer offers are run as it ran them (:func:`denoise`), so that the
table can be measured again.  PSNR (data range 255) of the noisy input and of the output, both
clipped to [0, 255]; the gain is their difference.

The rule (:data:`MIN_WORST_GAIN`): a method is a denoiser when its *worst* gain over every
image, crop size, sigma and noise draw is at least +1 dB: it never leaves an image barely
better, let alone worse, than it found it.  The table gives per method the median and the worst
gain, where the worst one happened, the median per crop size and sigma, and the verdict;
``results/<out>`` holds every number.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _common import add_noise, machine, psnr, write_json
from zero_tokens import load

import nlattn
from nlattn.denoise import resolve_nlm_parameters

METHODS = ("nlm2", "nlm", "scram", "exact", "local", "performer", "lsh", "scatterbrain",
           "fast", "efficient")
IMAGES = ("text", "camera", "coins", "moon", "page", "astronaut", "brick", "grass", "shapes")
#: Patch vectors of the attention methods run as denoisers are reduced to this many principal
#: components (what ``nl_means`` used when it offered them).
ATTENTION_PCA = 16
#: Least gain in dB, on every image and sigma, of a method offered as a denoiser.
MIN_WORST_GAIN = 1.0


def crop(image: np.ndarray, size: int) -> np.ndarray:
    """The centred crop of at most ``size x size`` pixels of ``image``."""
    height, width = min(size, image.shape[0]), min(size, image.shape[1])
    y, x = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return image[y:y + height, x:x + width]


def denoise(noisy: np.ndarray, method: str, sigma: float) -> np.ndarray:
    """``nl_means(noisy, method, sigma=sigma)``; for an attention method that ``nl_means`` does
    not offer, the same computation spelled out: softmax attention (``scale=1``) over the NLM
    tokens of the image, PCA-16 patch vectors, the windowed-NLM preset's patch radius and h."""
    if method in nlattn.DENOISE_METHODS:
        return nlattn.nl_means(noisy, method, sigma=sigma)
    _, patch_radius, _, h = resolve_nlm_parameters(noisy, sigma, None, None, None)
    queries, keys, values = nlattn.nlm_tokens(
        noisy, patch_radius, h, pca=min(ATTENTION_PCA, (2 * patch_radius + 1) ** 2))
    return nlattn.attention(queries, keys, values, method, scale=1.0, seed=0)[..., 0]


def run(names, methods, sigmas, sizes, draws):
    rows = []
    images = {name: load(name) for name in names}
    for method in methods:  # compile (or load) every kernel outside the timed calls
        denoise(crop(images[names[0]], 32), method, 25.0)
    for size, sigma in ((size, sigma) for size in sizes for sigma in sigmas):
        for (i, name), draw in ((item, draw) for item in enumerate(names)
                                for draw in range(draws)):
            clean = crop(images[name], size)
            seed = i + 100 * draw
            noisy = add_noise(clean, sigma, seed=seed)
            before = psnr(clean, noisy)
            for method in methods:
                start = time.perf_counter()
                out = denoise(noisy, method, sigma)
                seconds = time.perf_counter() - start
                after = psnr(clean, out)
                rows.append({"image": name, "size": size, "sigma": sigma, "method": method,
                             "seed": seed,
                             "psnr_noisy": before, "psnr_denoised": after,
                             "gain": after - before, "seconds": seconds})
                print(f"{size} sigma {sigma:>4g} {name:>10} seed {seed:>3} {method:>12} "
                      f"noisy {before:6.2f} denoised {after:6.2f} gain {after - before:+6.2f} "
                      f"({seconds:.2f} s)", flush=True)
    return rows


def summary(rows, methods):
    table = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        worst = min(mine, key=lambda r: r["gain"])
        table[method] = {
            "median_gain": statistics.median(r["gain"] for r in mine),
            "worst_gain": worst["gain"],
            "worst_at": f"{worst['image']}@{worst['size']} s{worst['sigma']:g} #{worst['seed']}",
            "median_seconds": statistics.median(r["seconds"] for r in mine),
            "denoiser": worst["gain"] >= MIN_WORST_GAIN,
        }
    return table


def report(rows, table, sigmas, sizes):
    print(f"\nPSNR gain in dB (denoised - noisy); denoiser: worst gain >= {MIN_WORST_GAIN:+g} dB")
    cases = [(size, sigma) for size in sizes for sigma in sigmas]
    head = "".join(f"{f'{size}/s{sigma:g}':>9}" for size, sigma in cases)
    print(f"{'method':>12} {'median':>7} {'worst':>7}  {'worst at':<24}{head}  verdict")
    for method, t in table.items():
        medians = [statistics.median(r["gain"] for r in rows if r["method"] == method
                                     and r["size"] == size and r["sigma"] == sigma)
                   for size, sigma in cases]
        verdict = "denoiser" if t["denoiser"] else "attention operator only"
        print(f"{method:>12} {t['median_gain']:>+7.2f} {t['worst_gain']:>+7.2f}  "
              f"{t['worst_at']:<24}" + "".join(f"{m:>+9.2f}" for m in medians) + f"  {verdict}")
    print("(columns after 'worst at': median gain at each crop size / sigma)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--sigmas", default="15,25,50")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--images", default=",".join(IMAGES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default="denoisers.json")
    args = parser.parse_args()
    sigmas = [float(s) for s in args.sigmas.split(",")]
    names = args.images.split(",")
    methods = args.methods.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    start = time.perf_counter()
    rows = run(names, methods, sigmas, sizes, args.draws)
    table = summary(rows, methods)
    report(rows, table, sigmas, sizes)
    path = write_json(args.out, {"machine": machine(), "sizes": sizes, "sigmas": sigmas,
                                 "draws": args.draws,
                                 "images": names, "min_worst_gain": MIN_WORST_GAIN,
                                 "nlattn": nlattn.__version__,
                                 "seconds": time.perf_counter() - start,
                                 "summary": table, "rows": rows})
    print(f"\nwrote {path} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
