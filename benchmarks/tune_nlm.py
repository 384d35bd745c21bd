"""Tune the windowed-NLM presets on Set12 (design section 6 protocol).

For each noise level, sweeps patch radius, search radius and h/sigma of ``nl_means`` (patch-wise
aggregation) and reports the average PSNR; the best row per sigma is what
``nlattn/denoise/presets.py`` uses.  Results:
``benchmarks/results/tune_nlm_<aggregation>_sigma<sigmas>.json``.

    python benchmarks/tune_nlm.py --sigmas 15,25,50
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
from _common import add_noise, machine, psnr, set12_images, write_json

import nlattn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", default="15,25,50")
    parser.add_argument("--patch-radii", default="1,2,3,4")
    parser.add_argument("--search-radii", default="7,10")
    parser.add_argument("--ratios", default="0.3,0.35,0.4,0.45,0.5,0.55")
    parser.add_argument("--aggregation", default="patch")
    args = parser.parse_args()
    images = set12_images()
    rows = []
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        noisy = {name: add_noise(clean, sigma, seed=i)
                 for i, (name, clean) in enumerate(images.items())}
        best = None
        grid = itertools.product(
            [int(v) for v in args.patch_radii.split(",")],
            [int(v) for v in args.search_radii.split(",")],
            [float(v) for v in args.ratios.split(",")],
        )
        for patch_radius, search_radius, ratio in grid:
            scores = [
                psnr(images[name], nlattn.nl_means(noisy[name], sigma=sigma, h=ratio * sigma,
                                                   patch_radius=patch_radius,
                                                   search_radius=search_radius,
                                                   aggregation=args.aggregation))
                for name in images
            ]
            row = dict(sigma=sigma, patch_radius=patch_radius, search_radius=search_radius,
                       h_over_sigma=ratio, psnr=float(np.mean(scores)))
            rows.append(row)
            if best is None or row["psnr"] > best["psnr"]:
                best = row
            print(f"sigma {sigma:4.0f}  f {patch_radius}  s {search_radius:2d}  h/sigma {ratio:.2f}"
                  f"  PSNR {row['psnr']:.3f}", flush=True)
        print(f"best for sigma {sigma:.0f}: {best}", flush=True)
    name = f"tune_nlm_{args.aggregation}_sigma{args.sigmas.replace(',', '_')}.json"
    write_json(name, {"machine": machine(), "aggregation": args.aggregation, "rows": rows})


if __name__ == "__main__":
    main()
