"""Tune the presets of ``nl_means(method="nlm2")`` on Set12, and measure the noise estimator.

    python benchmarks/tune_nlm2.py --sigmas 25 --images 01,02,04,05,09,11 \\
        --grid "pilot_h_over_sigma=0.5,0.6,0.7;k=8,16"
    python benchmarks/tune_nlm2.py --colour --sigmas 25 --grid "pilot_patch_radius=1,2"
    python benchmarks/tune_nlm2.py --sigma-only

Protocol (design section 6): clean Set12 images in [0, 255] (float64), noise
``add_noise(clean, sigma, seed=i)`` with ``i`` the image's index in the sorted full Set12 list,
not clipped; PSNR (data range 255) of the output clipped to [0, 255].  Colour (``--colour``):
scikit-image's ``chelsea`` and ``rocket`` (kept apart from ``astronaut`` and ``coffee``, on which
``benchmarks/denoise_peers.py`` reports), seeds 100 and 101.

The grid: ``field=v1,v2;field=v1`` over the fields of ``nlattn.denoise.presets.NLM2Preset``, every
combination, each starting from the preset the library uses at that sigma (``--base`` names
another starting point: ``field=value;...``).  The pilot (stage 1) is computed once per distinct
pilot setting.  Results: ``benchmarks/results/tune_nlm2[_colour]_sigma<sigma>.json`` (every
row, the per-image PSNRs and seconds), the best row printed per sigma.

``--sigma-only`` measures :func:`nlattn.estimate_sigma` on all of Set12 at sigma 5, 10, 15, 25,
35, 50 (relative error per image) and writes ``benchmarks/results/tune_nlm2_sigma_estimation.json``.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from _common import add_noise, machine, psnr, set12_images, write_json

import nlattn
from nlattn.denoise.nlm import nlm_windowed
from nlattn.denoise.nlm2 import channel_transform, collaborative_wiener
from nlattn.denoise.presets import NLM2Preset, nlm2_preset

INT_FIELDS = {"pilot_patch_radius", "pilot_search_radius", "block", "step", "search_radius", "k",
              "n_coefs"}


def parse_grid(text: str) -> dict[str, list]:
    grid: dict[str, list] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, values = part.partition("=")
        name = name.strip()
        if name not in NLM2Preset._fields:
            raise SystemExit(f"unknown field {name!r}; fields: {NLM2Preset._fields}")
        cast = int if name in INT_FIELDS else float
        grid[name] = [cast(v) for v in values.split(",") if v.strip()]
    return grid


def colour_images() -> dict[str, np.ndarray]:
    from skimage import data

    return {"chelsea": data.chelsea().astype(np.float64),
            "rocket": data.rocket().astype(np.float64)}


def decorrelate(noisy: np.ndarray) -> np.ndarray:
    planar = noisy[None] if noisy.ndim == 2 else np.moveaxis(noisy, -1, 0)
    if planar.shape[0] > 1:
        planar = np.tensordot(channel_transform(planar.shape[0]), planar, axes=1)
    return np.ascontiguousarray(planar, np.float32)


def restore(planar: np.ndarray, like: np.ndarray) -> np.ndarray:
    if planar.shape[0] > 1:
        planar = np.tensordot(channel_transform(planar.shape[0]).T, planar, axes=1)
    return planar[0] if like.ndim == 2 else np.moveaxis(planar, 0, -1)


def tune(sigma: float, images: dict, seeds: dict, grid: dict, base: dict, colour: bool) -> list:
    preset = nlm2_preset(sigma, 3 if colour else 1)._replace(**base)
    names = list(grid)
    configs = [preset._replace(**dict(zip(names, values, strict=True)))
               for values in itertools.product(*(grid[n] for n in names))]
    noisy = {name: decorrelate(add_noise(clean, sigma, seeds[name])) for name, clean in
             images.items()}
    rows = []
    pilots: dict = {}
    for cfg in configs:
        key = (cfg.pilot_patch_radius, cfg.pilot_search_radius, cfg.pilot_h_over_sigma)
        scores, seconds = {}, {}
        for name, x in noisy.items():
            sig = np.full(x.shape[0], sigma)
            start = time.perf_counter()
            if (key, name) not in pilots:
                pilots[(key, name)] = nlm_windowed(x, cfg.pilot_patch_radius,
                                                   cfg.pilot_search_radius,
                                                   cfg.pilot_h_over_sigma * sigma, sigma, "patch")
            out = collaborative_wiener(x, pilots[(key, name)], sig, cfg.block, cfg.step,
                                       cfg.search_radius, cfg.k, cfg.n_coefs, cfg.tau, cfg.beta)
            seconds[name] = time.perf_counter() - start
            scores[name] = psnr(images[name], restore(out, images[name]))
        row = dict(cfg._asdict(), sigma=sigma, psnr=float(np.mean(list(scores.values()))),
                   per_image=scores, seconds=seconds)
        rows.append(row)
        changed = " ".join(f"{n}={getattr(cfg, n)}" for n in names)
        print(f"sigma {sigma:g} {changed}  PSNR {row['psnr']:.3f}", flush=True)
    best = max(rows, key=lambda r: r["psnr"])
    print(f"best at sigma {sigma:g}: " + ", ".join(f"{f}={best[f]}" for f in NLM2Preset._fields)
          + f"  PSNR {best['psnr']:.3f}", flush=True)
    return rows


def sigma_only() -> None:
    images = set12_images()
    rows = []
    worst = 0.0
    for sigma in (5.0, 10.0, 15.0, 25.0, 35.0, 50.0):
        errors = {}
        for i, (name, clean) in enumerate(images.items()):
            errors[name] = nlattn.estimate_sigma(add_noise(clean, sigma, i)) / sigma - 1.0
        worst_here = max(abs(e) for e in errors.values())
        worst = max(worst, worst_here)
        rows.append({"sigma": sigma, "relative_error": errors, "max_abs": worst_here,
                     "mean": float(np.mean(list(errors.values())))})
        print(f"sigma {sigma:4g}: " + " ".join(f"{100 * e:+5.1f}" for e in errors.values())
              + f"  max |error| {100 * worst_here:.1f} %", flush=True)
    print(f"largest |relative error| over Set12, sigma 5..50: {100 * worst:.1f} %")
    write_json("tune_nlm2_sigma_estimation.json", {"machine": machine(), "rows": rows,
                                                   "max_abs": worst})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", default="25")
    parser.add_argument("--images", default=None, help="Set12 stems (default: all)")
    parser.add_argument("--grid", default="", help="field=v1,v2;field=v1 (NLM2Preset fields)")
    parser.add_argument("--base", default="", help="field=value;... replacing the preset's")
    parser.add_argument("--colour", action="store_true", help="chelsea and rocket, colour presets")
    parser.add_argument("--sigma-only", action="store_true", help="noise estimation errors only")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = parser.parse_args()
    if args.sigma_only:
        sigma_only()
        return
    grid = parse_grid(args.grid)
    base = {k: v[0] for k, v in parse_grid(args.base).items()}
    if args.colour:
        images = colour_images()
        seeds = {name: 100 + i for i, name in enumerate(images)}
    else:
        full = set12_images()
        seeds = {name: i for i, name in enumerate(full)}
        chosen = list(full) if args.images is None else args.images.split(",")
        images = {name: full[name] for name in chosen}
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        rows = tune(sigma, images, seeds, grid, base, args.colour)
        name = f"tune_nlm2{'_colour' if args.colour else ''}_sigma{sigma:g}{args.tag}.json"
        write_json(name, {"machine": machine(), "images": list(images), "grid": args.grid,
                          "base": args.base, "rows": rows})


if __name__ == "__main__":
    main()
