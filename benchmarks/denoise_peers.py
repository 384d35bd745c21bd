"""Denoising quality and speed of nlattn against its peers on Set12 (design section 6 protocol).

    python benchmarks/denoise_peers.py [--sigmas 15,25,50] [--images 01,02,...] [--repeats 3]
        [--threads 2] [--no-bm3d] [--sizes-2048] [--fresh-jit-cache] [--quiet]
        [--out results/denoise_peers.json]

(``--sigmas ''`` with ``--sizes-2048`` runs the 2048x2048 section alone.)

Data.  Set12 (``../shared/data/set12``: seven 256x256 and five 512x512 grey images), clean images
as float64 in [0, 255].  Noisy input: ``add_noise(clean, sigma, seed=i)`` with ``i`` the image's
index in the sorted full Set12 list (01 -> 0, ..., 12 -> 11, also when ``--images`` picks a
subset), Gaussian noise from ``numpy.random.default_rng(i)``, *not* clipped.  Every method gets
the same noisy array.  PSNR (data range 255) and SSIM (``skimage.metrics``) are measured on the
output clipped to [0, 255].

Rows (sigma is the true noise level, given to every method that takes one):

- ``nlattn nlm2``: ``nlattn.nl_means(noisy, "nlm2", sigma=sigma)``: the two-stage denoiser (NLM
  pilot, then collaborative Wiener filtering of block groups), parameters from its preset for
  sigma (``nlattn.denoise.presets.NLM2_GREY``; recorded in the JSON).
- ``nlattn nlm2 sigma auto``: the same without ``sigma`` (estimated by ``nlattn.estimate_sigma``
  inside the timed call); the estimate of every image is recorded (``sigma_estimate``).
- ``nlattn nlm``: ``nlattn.nl_means(noisy, "nlm", sigma=sigma)``, one-stage windowed NLM:
  patch-wise aggregation, patch radius, search radius and h from its preset for sigma.
- ``nlattn nlm pixel 7/21`` and ``nlattn nlm patch 7/21``: ``nlattn.nl_means(noisy, sigma=sigma,
  h=0.4 sigma, patch_radius=3, search_radius=10, aggregation="pixel" | "patch")``: OpenCV's
  patch (7x7) and search window (21x21), for a speed comparison at equal work.  h = 0.4 sigma is
  the tuned ratio of the presets at sigma <= 30 (``benchmarks/tune_nlm.py``); the PSNR is reported
  but it is not what these rows are for.
- ``nlattn drop-in 5/5`` and ``skimage 5/5``: ``nlattn.denoise_nl_means`` and
  ``skimage.restoration.denoise_nl_means`` with identical arguments on ``noisy / 255``:
  ``fast_mode=True, patch_size=5, patch_distance=5, h=0.7 sigma / 255, sigma=sigma / 255``
  (design section 6: the best setting of a sweep of scikit-image's parameters); output times 255.
- ``nlattn drop-in 7/11`` and ``skimage 7/11``: the same with scikit-image's default window
  (``patch_size=7, patch_distance=11``) and the h its documentation recommends for fast mode when
  sigma is given: ``h=0.8 sigma / 255, sigma=sigma / 255, fast_mode=True``.  (scikit-image's
  literal default ``h=0.1, sigma=0`` ignores the noise level; the timing does not depend on h.)
  For both drop-in settings the largest and mean absolute difference between nlattn's and
  scikit-image's outputs (in grey levels) are reported: nlattn computes the exact ``exp`` where
  scikit-image uses an approximation, so small differences are expected.
- ``OpenCV 7/21``: ``cv2.fastNlMeansDenoising(u8, None, h=sigma, templateWindowSize=7,
  searchWindowSize=21)`` on ``u8 = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)``.
- ``BM3D``: ``bm3d.bm3d(noisy, sigma_psd=sigma)`` (default profile, on the [0, 255] image), when
  the ``bm3d`` package is installed and ``--no-bm3d`` is not given.  A quality reference only
  (non-commercial licence, never a dependency of nlattn); slow, so it is timed ONCE per image
  (one run, not the median of ``--repeats``).  Its library (libbm4d) runs its own threads.

Threads: ``numba.set_num_threads(threads)`` (nlattn, also passed as ``n_threads`` to
``nl_means``) and ``cv2.setNumThreads(threads)``; scikit-image's NLM is single-threaded Cython.

Timing: every method is first called once, untimed for the medians, on a 64x64 crop of the first
image (for nlattn that call compiles the kernels or loads them from Numba's on-disk cache: its
time is reported separately as "first call"; ``--fresh-jit-cache`` points Numba at an empty cache
directory so that it is a true compile time).  Then each image is run ``--repeats`` times and the
median wall time kept (``time.perf_counter``; conversions such as ``/ 255`` and the uint8
quantisation are outside the timed call).  Per sigma and method: PSNR and SSIM averaged over the
chosen images (and per size in the JSON), the median over the 256x256 images and over the
512x512 images of the per-image median times, and speed ratios ``peer time / method time``
(> 1: faster than the peer) from those medians, against OpenCV, scikit-image and BM3D timed in
the same run (``×BM3D`` = BM3D's median time / the method's: the two-stage denoiser's target is
10 or more on 512x512 images).

Colour (unless ``--no-colour``): scikit-image's ``astronaut`` (512x512) and ``coffee``
(400x600), as float64 in [0, 255], noise ``add_noise(clean, sigma, seed=200 + i)`` (``i``: 0, 1)
on every channel, not clipped; PSNR over all channels and SSIM with ``channel_axis=-1``, on the
output clipped to [0, 255].  Rows: ``nlattn nlm2`` and ``nlattn nlm`` (``nl_means`` with
``sigma``; colour presets), ``OpenCV colored 7/21`` (``cv2.fastNlMeansDenoisingColored(u8, None,
h=sigma, hColor=sigma, 7, 21)`` on the uint8-quantised input) and ``CBM3D``
(``bm3d.bm3d_rgb(noisy, sigma)``, opponent colour space, timed once).

``--sizes-2048`` adds a speed-only section on a 2048x2048 image made by tiling the first chosen
512x512 image 4x4 (``np.tile``; the first 512x512 Set12 image if none is chosen) plus noise of
sigma 25 (seed: that image's index): nlattn pixel-/patch-wise 7/21 and the default, OpenCV 7/21,
and nlattn's drop-in against scikit-image at 7/11 (scikit-image timed once there: ~13 s).

Output: one Markdown table per sigma on stdout, and a JSON file (``benchmarks/results/
denoise_peers.json`` by default; relative paths are taken from ``benchmarks/``) with the machine,
threads, versions, every row's parameters and every per-image number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import (
    RESULTS,
    ROOT,
    add_noise,
    machine,
    median_time,
    psnr,
    set12_images,
    ssim,
    write_json,
    write_json_at,
)

OPENCV = "OpenCV 7/21"
BM3D = "BM3D"
NLM2 = "nlattn nlm2"
NLM2_AUTO = "nlattn nlm2 sigma auto"
NLM1 = "nlattn nlm"
OPENCV_COLOUR = "OpenCV colored 7/21"
CBM3D = "CBM3D"
SKIMAGE_55 = "skimage 5/5"
SKIMAGE_711 = "skimage 7/11"
DROPIN_PEER = {"nlattn drop-in 5/5": SKIMAGE_55, "nlattn drop-in 7/11": SKIMAGE_711}
SIGMA_2048 = 25.0


def _identity(noisy: np.ndarray) -> np.ndarray:
    return noisy


def _as_float64(out) -> np.ndarray:
    return np.asarray(out, np.float64)


@dataclass
class Method:
    """One row: a denoiser ``fn(noisy, sigma) -> output`` with its inputs prepared outside."""

    name: str
    params: str
    run: Callable[[np.ndarray, float], np.ndarray]
    prepare: Callable[[np.ndarray], object] = _identity
    finish: Callable[[object], np.ndarray] = _as_float64
    once: bool = False  # timed once per image (BM3D), not the median of --repeats
    jit: bool = False  # an nlattn row: its first call compiles
    notes: list[str] = field(default_factory=list)


def build_methods(threads: int, use_bm3d: bool, skip: list[str]) -> list[Method]:
    import nlattn

    def nlm(**kw):
        return lambda x, s: nlattn.nl_means(x, sigma=s, n_threads=threads, **kw)

    def nlm_721(aggregation):
        return lambda x, s: nlattn.nl_means(x, "nlm", sigma=s, h=0.4 * s, patch_radius=3,
                                            search_radius=10, aggregation=aggregation,
                                            n_threads=threads)

    def unit(noisy):
        return noisy / 255.0

    def from_unit(out):
        return np.asarray(out, np.float64) * 255.0

    def sk_args(size, distance, ratio):
        return lambda s: dict(patch_size=size, patch_distance=distance, h=ratio * s / 255.0,
                              sigma=s / 255.0, fast_mode=True)

    args55 = sk_args(5, 5, 0.7)
    args711 = sk_args(7, 11, 0.8)
    methods = [
        Method(NLM2, "nl_means(noisy, 'nlm2', sigma=s): two stages, preset for sigma",
               nlm(method="nlm2"), jit=True),
        Method(NLM2_AUTO, "nl_means(noisy, 'nlm2'): sigma estimated inside the call",
               lambda x, s: nlattn.nl_means(x, "nlm2", n_threads=threads), jit=True),
        Method(NLM1, "nl_means(noisy, 'nlm', sigma=s): preset f/s/h, patch-wise",
               nlm(method="nlm"), jit=True),
        Method("nlattn nlm pixel 7/21", "nl_means(h=0.4s, patch_radius=3, search_radius=10, "
               "aggregation='pixel')", nlm_721("pixel"), jit=True),
        Method("nlattn nlm patch 7/21", "nl_means(h=0.4s, patch_radius=3, search_radius=10, "
               "aggregation='patch')", nlm_721("patch"), jit=True),
        Method("nlattn drop-in 5/5", "denoise_nl_means(noisy/255, fast_mode=True, patch_size=5, "
               "patch_distance=5, h=0.7s/255, sigma=s/255)",
               lambda x, s: nlattn.denoise_nl_means(x, **args55(s)), unit, from_unit, jit=True),
        Method("nlattn drop-in 7/11", "denoise_nl_means(noisy/255, fast_mode=True, patch_size=7, "
               "patch_distance=11, h=0.8s/255, sigma=s/255)",
               lambda x, s: nlattn.denoise_nl_means(x, **args711(s)), unit, from_unit, jit=True),
    ]
    from skimage.restoration import denoise_nl_means as sk_nlm

    methods += [
        Method(SKIMAGE_55, "skimage.restoration.denoise_nl_means, same arguments as the drop-in",
               lambda x, s: sk_nlm(x, **args55(s)), unit, from_unit),
        Method(SKIMAGE_711, "skimage.restoration.denoise_nl_means, same arguments as the drop-in",
               lambda x, s: sk_nlm(x, **args711(s)), unit, from_unit),
    ]
    try:
        import cv2
    except ImportError as exc:
        skip.append(f"{OPENCV}: skipped, cv2 not importable ({exc})")
    else:
        cv2.setNumThreads(threads)
        methods.append(Method(
            OPENCV, "cv2.fastNlMeansDenoising(u8, None, h=s, templateWindowSize=7, "
            "searchWindowSize=21), u8 = clip(rint(noisy), 0, 255) as uint8",
            lambda x, s: cv2.fastNlMeansDenoising(x, None, h=float(s), templateWindowSize=7,
                                                  searchWindowSize=21),
            lambda noisy: np.clip(np.rint(noisy), 0, 255).astype(np.uint8)))
    if not use_bm3d:
        skip.append("BM3D: skipped (--no-bm3d)")
    else:
        try:
            import bm3d
        except ImportError as exc:
            skip.append(f"BM3D: skipped, bm3d not importable ({exc}); pip install bm3d")
        else:
            methods.append(Method(
                BM3D, "bm3d.bm3d(noisy, sigma_psd=s), default profile; timed once per image",
                lambda x, s: bm3d.bm3d(x, sigma_psd=s),
                finish=lambda out: np.asarray(out, np.float64).reshape(out.shape[:2]),
                once=True))
    return methods


def colour_images() -> dict[str, np.ndarray]:
    """scikit-image's astronaut and coffee, float64 in [0, 255]."""
    from skimage import data

    return {"astronaut": data.astronaut().astype(np.float64),
            "coffee": data.coffee().astype(np.float64)}


def colour_ssim(clean: np.ndarray, estimate: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(clean, np.clip(estimate, 0, 255), data_range=255,
                                       channel_axis=-1))


def build_colour_methods(threads: int, use_bm3d: bool, skip: list[str]) -> list[Method]:
    import nlattn

    methods = [
        Method(NLM2, "nl_means(noisy, 'nlm2', sigma=s): colour preset", lambda x, s:
               nlattn.nl_means(x, "nlm2", sigma=s, n_threads=threads), jit=True),
        Method(NLM1, "nl_means(noisy, 'nlm', sigma=s): colour preset", lambda x, s:
               nlattn.nl_means(x, "nlm", sigma=s, n_threads=threads), jit=True),
    ]
    try:
        import cv2
    except ImportError as exc:
        skip.append(f"{OPENCV_COLOUR}: skipped, cv2 not importable ({exc})")
    else:
        cv2.setNumThreads(threads)
        methods.append(Method(
            OPENCV_COLOUR, "cv2.fastNlMeansDenoisingColored(u8, None, h=s, hColor=s, 7, 21), "
            "u8 = clip(rint(noisy), 0, 255) as uint8",
            lambda x, s: cv2.fastNlMeansDenoisingColored(x, None, float(s), float(s), 7, 21),
            lambda noisy: np.clip(np.rint(noisy), 0, 255).astype(np.uint8)))
    if use_bm3d:
        try:
            import bm3d
        except ImportError as exc:
            skip.append(f"{CBM3D}: skipped, bm3d not importable ({exc})")
        else:
            methods.append(Method(
                CBM3D, "bm3d.bm3d_rgb(noisy, sigma_psd=s), opponent colour space; timed once",
                lambda x, s: bm3d.bm3d_rgb(x, s), once=True))
    return methods


def run_colour(methods, runner, sigmas, log) -> tuple[list[dict], dict]:
    images = colour_images()
    records: list[dict] = []
    summaries = {}
    for sigma in sigmas:
        rows = []
        for i, (name, clean) in enumerate(images.items()):
            noisy = add_noise(clean, sigma, seed=200 + i)
            for method in methods:
                seconds, out = runner.time(method, noisy, sigma)
                rec = {"sigma": sigma, "image": name, "shape": list(clean.shape),
                       "method": method.name, "psnr": psnr(clean, out),
                       "ssim": colour_ssim(clean, out), "seconds": seconds,
                       "runs": 1 if method.once else runner.repeats}
                rows.append(rec)
                log(f"colour sigma {sigma:g} {name} {method.name:22s} PSNR {rec['psnr']:.2f} "
                    f"SSIM {rec['ssim']:.4f} {seconds:.3f} s")
        records += rows
        summary = {}
        for method in methods:
            mine = [r for r in rows if r["method"] == method.name]
            summary[method.name] = {
                "psnr": _mean([r["psnr"] for r in mine]),
                "ssim": _mean([r["ssim"] for r in mine]),
                "per_image": {r["image"]: {"psnr": r["psnr"], "ssim": r["ssim"],
                                           "seconds": r["seconds"]} for r in mine},
                "seconds": _median([r["seconds"] for r in mine])}
        for entry in summary.values():
            entry["speedup_vs"] = {peer: _ratio(summary[peer]["seconds"], entry["seconds"])
                                   for peer in (OPENCV_COLOUR, CBM3D) if peer in summary}
        summaries[f"{sigma:g}"] = summary
    return records, summaries


def colour_table(summaries: dict) -> str:
    lines = ["### colour (astronaut 512x512, coffee 400x600)", "",
             "| sigma | method | PSNR astronaut | PSNR coffee | mean PSNR | mean SSIM | "
             "median s | ×CBM3D |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for sigma, summary in summaries.items():
        for name, e in summary.items():
            once = " (1 run)" if name == CBM3D else ""
            per = e["per_image"]
            lines.append(
                f"| {sigma} | {name}{once} | {_fmt(per.get('astronaut', {}).get('psnr'), '.2f')} "
                f"| {_fmt(per.get('coffee', {}).get('psnr'), '.2f')} | {_fmt(e['psnr'], '.2f')} "
                f"| {_fmt(e['ssim'], '.4f')} | {_fmt_s(e['seconds'])} | "
                f"{_fmt(e['speedup_vs'].get(CBM3D), '.1f')} |")
    return "\n".join(lines)


def sigma_table(records: list[dict]) -> str:
    """Estimated sigma against the true one (the ``sigma auto`` row)."""
    rows = [r for r in records if "sigma_estimate" in r]
    if not rows:
        return ""
    lines = ["### noise estimate (nlattn.estimate_sigma) and the cost of sigma auto", "",
             "| sigma | mean estimate | largest relative error | PSNR sigma given | "
             "PSNR sigma auto |", "|---:|---:|---:|---:|---:|"]
    for sigma in sorted({r["sigma"] for r in rows}):
        here = [r for r in rows if r["sigma"] == sigma]
        given = [r for r in records if r["sigma"] == sigma and r["method"] == NLM2]
        errors = [r["sigma_estimate"] / sigma - 1.0 for r in here]
        lines.append(f"| {sigma:g} | {np.mean([r['sigma_estimate'] for r in here]):.2f} | "
                     f"{100 * max(errors, key=abs):+.1f} % | "
                     f"{_fmt(_mean([r['psnr'] for r in given]), '.2f')} | "
                     f"{np.mean([r['psnr'] for r in here]):.2f} |")
    return "\n".join(lines)


class Runner:
    """Calls methods: one untimed warm-up per method per process, then timed runs."""

    def __init__(self, repeats: int, warm_image: np.ndarray):
        self.repeats = repeats
        self.warm_image = warm_image
        self.first_call: dict[str, float] = {}

    def warm(self, method: Method, sigma: float) -> None:
        if method.name in self.first_call:
            return
        x = method.prepare(self.warm_image)
        start = time.perf_counter()
        method.run(x, sigma)
        self.first_call[method.name] = time.perf_counter() - start

    def time(self, method: Method, noisy: np.ndarray, sigma: float,
             repeats: int | None = None) -> tuple[float, np.ndarray]:
        self.warm(method, sigma)
        x = method.prepare(noisy)
        n = 1 if method.once else (repeats or self.repeats)
        seconds, out = median_time(lambda: method.run(x, sigma), n)
        return seconds, method.finish(out)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _ratio(peer: float | None, mine: float | None) -> float | None:
    return peer / mine if peer and mine else None


def summarise(records: list[dict], names: list[str]) -> dict[str, dict]:
    """Per method: mean PSNR/SSIM (all, per size), median time per size, speed ratios."""
    summary = {}
    for name in names:
        rows = [r for r in records if r["method"] == name]
        if not rows:
            continue
        entry = {"n_images": len(rows), "psnr": _mean([r["psnr"] for r in rows]),
                 "ssim": _mean([r["ssim"] for r in rows])}
        for size in (256, 512):
            sized = [r for r in rows if r["size"] == size]
            entry[f"n_{size}"] = len(sized)
            entry[f"psnr_{size}"] = _mean([r["psnr"] for r in sized])
            entry[f"ssim_{size}"] = _mean([r["ssim"] for r in sized])
            entry[f"seconds_{size}"] = _median([r["seconds"] for r in sized])
        diffs = [r["max_abs_diff_vs_skimage"] for r in rows if "max_abs_diff_vs_skimage" in r]
        if diffs:
            entry["max_abs_diff_vs_skimage"] = max(diffs)
            entry["mean_abs_diff_vs_skimage"] = _mean(
                [r["mean_abs_diff_vs_skimage"] for r in rows])
        summary[name] = entry
    for entry in summary.values():
        entry["speedup_vs"] = {
            peer: {str(size): _ratio(summary[peer][f"seconds_{size}"], entry[f"seconds_{size}"])
                   for size in (256, 512)}
            for peer in (OPENCV, SKIMAGE_55, SKIMAGE_711, BM3D, CBM3D) if peer in summary
        }
    return summary


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def markdown_table(sigma: float, summary: dict[str, dict]) -> str:
    lines = [f"### sigma = {sigma:g}", "",
             "| method | PSNR | SSIM | median s 256² | median s 512² | ×OpenCV (512²) | "
             "×BM3D (512²) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, e in summary.items():
        ratio = e["speedup_vs"].get(OPENCV, {}).get("512")
        vs_bm3d = e["speedup_vs"].get(BM3D, {}).get("512")
        once = " (1 run)" if name == BM3D else ""
        lines.append(f"| {name}{once} | {_fmt(e['psnr'], '.2f')} | {_fmt(e['ssim'], '.4f')} | "
                     f"{_fmt_s(e['seconds_256'])} | {_fmt_s(e['seconds_512'])} | "
                     f"{_fmt(ratio, '.2f')} | {_fmt(vs_bm3d, '.1f')} |")
    pairs = [(d, p) for d, p in DROPIN_PEER.items() if d in summary and p in summary]
    if pairs:
        lines += ["", "nlattn drop-in vs scikit-image, same arguments:", "",
                  "| setting | skimage s 256² | nlattn s 256² | × | skimage s 512² | "
                  "nlattn s 512² | × | max abs diff | mean abs diff |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for dropin, peer in pairs:
            d, p = summary[dropin], summary[peer]
            lines.append(
                f"| {dropin.split()[-1]} | {_fmt_s(p['seconds_256'])} | "
                f"{_fmt_s(d['seconds_256'])} | "
                f"{_fmt(d['speedup_vs'][peer]['256'], '.2f')} | {_fmt_s(p['seconds_512'])} | "
                f"{_fmt_s(d['seconds_512'])} | {_fmt(d['speedup_vs'][peer]['512'], '.2f')} | "
                f"{d['max_abs_diff_vs_skimage']:.2e} | {d['mean_abs_diff_vs_skimage']:.2e} |")
    return "\n".join(lines)


def run_set12(methods, runner, images, chosen, sigmas, log) -> tuple[list[dict], dict]:
    index = {name: i for i, name in enumerate(images)}
    records: list[dict] = []
    summaries = {}
    for sigma in sigmas:
        sigma_records = []
        for name in chosen:
            clean = images[name]
            noisy = add_noise(clean, sigma, seed=index[name])
            outputs = {}
            for method in methods:
                seconds, out = runner.time(method, noisy, sigma)
                outputs[method.name] = out
                rec = {"sigma": sigma, "image": name, "size": int(clean.shape[0]),
                       "method": method.name, "psnr": psnr(clean, out), "ssim": ssim(clean, out),
                       "seconds": seconds, "runs": 1 if method.once else runner.repeats}
                if method.name == NLM2_AUTO:
                    import nlattn

                    rec["sigma_estimate"] = float(nlattn.estimate_sigma(noisy))
                sigma_records.append(rec)
                log(f"sigma {sigma:g} image {name} {method.name:22s} PSNR {rec['psnr']:.2f} "
                    f"SSIM {rec['ssim']:.4f} {seconds:.3f} s")
            for dropin, peer in DROPIN_PEER.items():
                if dropin in outputs and peer in outputs:
                    diff = np.abs(outputs[dropin] - outputs[peer])
                    rec = next(r for r in sigma_records
                               if r["method"] == dropin and r["image"] == name)
                    rec["max_abs_diff_vs_skimage"] = float(diff.max())
                    rec["mean_abs_diff_vs_skimage"] = float(diff.mean())
        records += sigma_records
        summaries[f"{sigma:g}"] = summarise(sigma_records, [m.name for m in methods])
    return records, summaries


def run_2048(methods, runner, images, chosen, repeats, log) -> dict:
    names = [n for n in chosen if images[n].shape[0] == 512] or \
        [n for n in images if images[n].shape[0] == 512]
    source = names[0]
    clean = np.tile(images[source], (4, 4))
    noisy = add_noise(clean, SIGMA_2048, seed=list(images).index(source))
    wanted = [NLM2, NLM1, "nlattn nlm pixel 7/21", "nlattn nlm patch 7/21", OPENCV,
              "nlattn drop-in 7/11", SKIMAGE_711]
    rows, outputs = {}, {}
    for method in [m for m in methods if m.name in wanted]:
        n = 1 if method.name == SKIMAGE_711 else repeats
        seconds, out = runner.time(method, noisy, SIGMA_2048, repeats=n)
        outputs[method.name] = out
        rows[method.name] = {"seconds": seconds, "runs": n}
        log(f"2048² {method.name:22s} {seconds:.3f} s ({n} run{'s' if n > 1 else ''})")
    for row in rows.values():
        row["speedup_vs"] = {peer: _ratio(rows[peer]["seconds"], row["seconds"])
                             for peer in (OPENCV, SKIMAGE_711) if peer in rows}
    if "nlattn drop-in 7/11" in outputs and SKIMAGE_711 in outputs:
        diff = np.abs(outputs["nlattn drop-in 7/11"] - outputs[SKIMAGE_711])
        rows["nlattn drop-in 7/11"]["max_abs_diff_vs_skimage"] = float(diff.max())
    return {"image": f"np.tile(Set12 {source}, (4, 4)) -> 2048x2048", "sigma": SIGMA_2048,
            "rows": rows}


def table_2048(section: dict) -> str:
    lines = [f"### 2048² speed ({section['image']}, sigma {section['sigma']:g})", "",
             "| method | median s | runs | ×OpenCV | ×skimage 7/11 |", "|---|---:|---:|---:|---:|"]
    for name, row in section["rows"].items():
        lines.append(f"| {name} | {_fmt_s(row['seconds'])} | {row['runs']} | "
                     f"{_fmt(row['speedup_vs'].get(OPENCV), '.2f')} | "
                     f"{_fmt(row['speedup_vs'].get(SKIMAGE_711), '.2f')} |")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("nlattn", "numba", "numpy", "scikit-image", "opencv-python-headless",
                 "opencv-python", "bm3d", "bm4d"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", default="15,25,50", help="noise levels (default 15,25,50)")
    parser.add_argument("--images", default=None,
                        help="comma-separated Set12 stems (default: all 12), e.g. 01,09")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per image (median)")
    parser.add_argument("--threads", type=int, default=2, help="Numba and OpenCV threads")
    parser.add_argument("--no-bm3d", action="store_true", help="skip BM3D")
    parser.add_argument("--no-colour", action="store_true",
                        help="skip the colour images (astronaut, coffee)")
    parser.add_argument("--sizes-2048", action="store_true",
                        help="also time a 2048x2048 image (speed only)")
    parser.add_argument("--fresh-jit-cache", action="store_true",
                        help="use an empty Numba cache so 'first call' is a real compile time")
    parser.add_argument("--out", default="results/denoise_peers.json",
                        help="JSON output (relative paths from benchmarks/)")
    parser.add_argument("--quiet", action="store_true", help="no per-image progress on stderr")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    try:
        sigmas = [float(s) for s in args.sigmas.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sigmas must be comma-separated numbers, got {args.sigmas!r}")
    if any(s <= 0 for s in sigmas):
        parser.error("--sigmas must be > 0")
    if args.fresh_jit_cache:
        if "numba" in sys.modules:
            parser.error("--fresh-jit-cache: numba was imported before the cache could be set")
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="nlattn-bench-jit-")

    import numba

    if args.threads > numba.config.NUMBA_NUM_THREADS:
        parser.error(f"--threads must be <= {numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS)")
    numba.set_num_threads(args.threads)

    images = set12_images()
    chosen = list(images) if args.images is None else \
        [s.strip() for s in args.images.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in images]
    if unknown:
        parser.error(f"--images: unknown {unknown}; Set12 has {list(images)}")

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    notes: list[str] = []
    methods = build_methods(args.threads, not args.no_bm3d, notes)
    warm_image = np.ascontiguousarray(add_noise(images[chosen[0]], 25.0, seed=0)[:64, :64])
    runner = Runner(args.repeats, warm_image)
    for method in methods:  # warm-ups first, so first-call times are not mixed with the runs
        runner.warm(method, 25.0)
    records, summaries = run_set12(methods, runner, images, chosen, sigmas, log)
    colour_records, colour_summaries = [], {}
    if not args.no_colour:
        colour_methods = build_colour_methods(args.threads, not args.no_bm3d, notes)
        colour_runner = Runner(args.repeats, np.ascontiguousarray(
            add_noise(colour_images()["astronaut"][:64, :64], 25.0, seed=200)))
        for method in colour_methods:
            colour_runner.warm(method, 25.0)
        colour_records, colour_summaries = run_colour(colour_methods, colour_runner, sigmas, log)
    section_2048 = run_2048(methods, runner, images, chosen, args.repeats, log) \
        if args.sizes_2048 else None

    from nlattn.denoise.presets import nlm2_preset, nlm_preset

    threads = {"numba": numba.get_num_threads(), "nlattn n_threads": args.threads,
               "skimage": "1 (single-threaded Cython)", "bm3d": "libbm4d's own (not settable)"}
    if any(m.name == OPENCV for m in methods):
        import cv2

        threads["opencv"] = cv2.getNumThreads()
    first_call = {m.name: runner.first_call[m.name] for m in methods if m.jit}
    payload = {
        "machine": machine(),
        "threads": threads,
        "versions": _versions(),
        "protocol": "design section 6; see the docstring of benchmarks/denoise_peers.py",
        "sigmas": sigmas,
        "images": chosen,
        "repeats": args.repeats,
        "numba_cache": "fresh (first call = compile)" if args.fresh_jit_cache
        else "default (first call = compile or on-disk cache load)",
        "first_call_seconds_64x64": first_call,
        "methods": {m.name: {"call": m.params,
                             "runs_per_image": 1 if m.once else args.repeats} for m in methods},
        "nlattn_nlm_presets": {
            f"{s:g}": dict(zip(("patch_radius", "search_radius", "h_over_sigma"),
                               nlm_preset(s, 1), strict=True))
            for s in sigmas + ([SIGMA_2048] if args.sizes_2048 else [])},
        "nlattn_nlm2_presets": {f"{s:g}": nlm2_preset(s, 1)._asdict() for s in sigmas},
        "nlattn_nlm2_colour_presets": {f"{s:g}": nlm2_preset(s, 3)._asdict() for s in sigmas},
        "notes": notes,
        "summary": summaries,
        "per_image": records,
        "colour_summary": colour_summaries,
        "colour_per_image": colour_records,
    }
    if section_2048 is not None:
        payload["size_2048"] = section_2048

    print(f"Set12 images {','.join(chosen)}; threads: numba {threads['numba']}, OpenCV "
          f"{threads.get('opencv', '–')}, scikit-image 1; median of {args.repeats} warm run(s) "
          "per image (BM3D: 1 run).")
    print("nlattn first call on a 64x64 crop (JIT compile or cache load): " +
          ", ".join(f"{k} {v:.2f} s" for k, v in first_call.items()))
    for note in notes:
        print(f"Note: {note}")
    for sigma in sigmas:
        print()
        print(markdown_table(sigma, summaries[f"{sigma:g}"]))
    if sigma_table(records):
        print()
        print(sigma_table(records))
    if colour_summaries:
        print()
        print(colour_table(colour_summaries))
    if section_2048 is not None:
        print()
        print(table_2048(section_2048))
    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    path = write_json(out.name, payload) if out.parent.resolve() == RESULTS.resolve() \
        else write_json_at(out, payload)
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
