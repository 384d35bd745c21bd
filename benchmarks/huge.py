"""Huge images in bounded memory: tiled windowed NLM (``nlattn.tiling``), measured.

    python benchmarks/huge.py [--size 16384] [--sigma 25] [--max-memory 1.5] [--threads 2]
        [--repeats 3] [--skip-huge] [--out results/huge.json]

equality   A 2048 x 2048 image (uint8, and float32, where any rounding difference shows):
           ``nl_means`` untiled against ``nl_means_tiled`` with budgets small enough to force
           many column bands, and row cuts as well; ``numpy.array_equal``.
modes      The same 2048^2 image in column bands, denoised one band at a time with all threads
           against as many bands at once as threads, one thread each (``run_tiles``); median
           of --repeats.
reference  Untiled ``nl_means`` on a 1024 x 1024 image of the same kind, in the child process
           right before and right after the huge run: median wall and CPU seconds of
           --repeats; the huge run is compared with pixels x the mean rate of the two (the CPU
           time too, which other processes on a shared machine disturb less).
huge       In a child process (so that its peak resident memory is its own): a --size^2 grey
           uint8 image is generated band by band (no full-size float temporary), denoised by
           ``nl_means_tiled`` (sigma given, --max-memory GiB) into a preallocated output, then
           its noise level is estimated in the same budget (``estimate_sigma_bounded``).  Peak
           resident set size from ``getrusage`` (and ``/usr/bin/time -v`` when present).
           Three 256 x 256 output crops (a corner, the centre across a band boundary, the
           opposite corner) are compared with ``nl_means`` run untiled on the input around each
           crop: 512 rows of context above and below (rows start on multiples of 128, the
           kernel's strip height, and the crop holds over 1024 rows, as the kernel's strips
           need) and 64 columns left and right (more than the 2 f + s halo).
           The time is compared with pixels x (seconds per pixel at 1024^2).

Images: 128 + 50 sin(2 pi x / 97) cos(2 pi y / 131) + 40 sign(sin(2 pi x / 613) sin(2 pi y / 419))
plus Gaussian noise of --sigma (rounded, clipped to 8 bits), generated 512 rows at a time with
``numpy.random.default_rng([seed, band])``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, machine, write_json_at

BAND = 512
GiB = 1 << 30
CROP = 256


def synthetic_rows(y0: int, y1: int, width: int, sigma: float, seed: int = 0) -> np.ndarray:
    """Rows ``[y0, y1)`` (``y0`` a multiple of ``BAND``) of the synthetic image, uint8."""
    out = np.empty((y1 - y0, width), np.uint8)
    x = np.arange(width, dtype=np.float64)
    for b0 in range(y0, y1, BAND):
        b1 = min(y1, b0 + BAND)
        y = np.arange(b0, b1, dtype=np.float64)[:, None]
        clean = (128.0 + 50.0 * np.sin(2 * np.pi * x / 97.0) * np.cos(2 * np.pi * y / 131.0)
                 + 40.0 * np.sign(np.sin(2 * np.pi * x / 613.0) * np.sin(2 * np.pi * y / 419.0)))
        noise = np.random.default_rng([seed, b0 // BAND]).normal(0.0, sigma, (b1 - b0, width))
        out[b0 - y0 : b1 - y0] = np.clip(np.rint(clean + noise), 0, 255)
    return out


def synthetic(size: int, sigma: float, seed: int = 0) -> np.ndarray:
    return synthetic_rows(0, size, size, sigma, seed)


def _medians_interleaved(fns, repeats: int) -> list[float]:
    """Median times of several functions run in turn (load changes hit them alike)."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def section_equality(sigma: float, threads: int) -> dict:
    import nlattn
    from nlattn import tiling

    rows = []
    image8 = synthetic(2048, sigma, seed=1)
    image32 = image8.astype(np.float32) + np.float32(0.25)
    for label, image in (("uint8", image8), ("float32", image32)):
        expected = nlattn.nl_means(image, "nlm", sigma=sigma, n_threads=threads)
        for budget in (64 << 20, 8 << 20):
            start = time.perf_counter()
            got = tiling.nl_means_tiled(image, sigma=sigma, max_memory=budget, n_threads=threads)
            seconds = time.perf_counter() - start
            plan = tiling.plan_tiles(image.shape, image.dtype.itemsize, 4, 7, "patch",
                                     budget // threads, 1)
            row = {
                "dtype": label,
                "max_memory": budget,
                "tiles": len(plan),
                "row_blocks": len({t.out_rows for t in plan}),
                "equal": bool(np.array_equal(got, expected)),
                "seconds": seconds,
            }
            rows.append(row)
            print(f"equality {label} max_memory {budget >> 20} MiB: {row['tiles']} tiles, "
                  f"{row['row_blocks']} row blocks, equal={row['equal']}", flush=True)
    return {"image": "2048 x 2048", "sigma": sigma, "rows": rows}


def section_modes(sigma: float, threads: int, repeats: int) -> dict:
    from nlattn import tiling

    image = synthetic(2048, sigma, seed=2)
    params = {"sigma": sigma, "h": 0.5 * sigma, "patch_radius": 4, "search_radius": 7,
              "aggregation": "patch"}
    plan = tiling.plan_tiles(image.shape, 1, 4, 7, "patch", 40 << 20, 1, multiple=threads)
    out = np.empty_like(image)
    tiling.run_tiles(image, plan[:1], params, out, 1, threads)  # load the kernels
    sequential, parallel = _medians_interleaved(
        [lambda: tiling.run_tiles(image, plan, params, out, 1, threads),
         lambda: tiling.run_tiles(image, plan, params, out, threads, 1)], repeats)
    print(f"modes: {len(plan)} bands of 2048^2: one at a time with {threads} threads "
          f"{sequential:.3f} s, {threads} at a time with 1 thread {parallel:.3f} s", flush=True)
    return {"tiles": len(plan), "sequential_all_threads_seconds": sequential,
            "parallel_one_thread_each_seconds": parallel, "speedup": sequential / parallel}


def _cpu() -> float:
    """CPU seconds (user + system) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reference(image: np.ndarray, sigma: float, threads: int, repeats: int) -> dict:
    """Untiled ``nl_means`` on a 1024^2 image: median wall and CPU seconds of ``repeats``."""
    import nlattn

    nlattn.nl_means(image, "nlm", sigma=sigma, n_threads=threads)
    walls, cpus = [], []
    for _ in range(repeats):
        cpu = _cpu()
        start = time.perf_counter()
        nlattn.nl_means(image, "nlm", sigma=sigma, n_threads=threads)
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    return {"seconds": statistics.median(walls), "cpu_seconds": statistics.median(cpus)}


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _crops(size: int, plan) -> list[tuple[int, int]]:
    """Top-left corners of the checked output crops: a corner, the centre across a band
    boundary, the opposite corner (rows on multiples of 128)."""
    boundaries = sorted({t.out_cols[0] for t in plan if t.out_cols[0] > 0})
    middle = boundaries[len(boundaries) // 2] if boundaries else size // 2
    centre_row = (size // 2) // 128 * 128
    return [(0, 0), (centre_row, max(0, middle - CROP // 2)), (size - CROP, size - CROP)]


def child(args) -> None:
    """Run in a fresh process: generate, denoise tiled, keep crops, report JSON on stdout."""
    import numba

    from nlattn import tiling

    numba.set_num_threads(args.threads)
    budget = int(args.max_memory * GiB)
    start = time.perf_counter()
    image = synthetic(args.size, args.sigma, seed=0)
    generate = time.perf_counter() - start
    small = synthetic(1024, args.sigma, seed=3)
    before = _reference(small, args.sigma, args.threads, args.repeats)
    rss_before = _rss()
    out = np.empty_like(image)
    out[:] = 0  # touch the output: it is resident during the run either way
    cpu = _cpu()
    start = time.perf_counter()
    tiling.nl_means_tiled(image, sigma=args.sigma, max_memory=budget, n_threads=args.threads,
                          out=out)
    seconds = time.perf_counter() - start
    cpu_seconds = _cpu() - cpu
    peak_denoise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    after = _reference(small, args.sigma, args.threads, args.repeats)
    plan = tiling.plan_tiles(image.shape, 1, 4, 7, "patch", budget // args.threads, 1,
                             multiple=args.threads)
    crops = {}
    for i, (y0, x0) in enumerate(_crops(args.size, plan)):
        r0, r1 = max(0, y0 - 512), min(args.size, y0 + CROP + 512)
        if r1 - r0 < 1152:  # at an edge: keep over 1024 rows (the kernel's strips need them)
            r0, r1 = (0, min(args.size, 1152)) if r0 == 0 else (max(0, r1 - 1152) // 128 * 128,
                                                                 r1)
        c0, c1 = max(0, x0 - 64), min(args.size, x0 + CROP + 64)
        crops[f"input{i}"] = image[r0:r1, c0:c1].copy()
        crops[f"output{i}"] = out[y0 : y0 + CROP, x0 : x0 + CROP].copy()
        crops[f"where{i}"] = np.array([y0, x0, r0, r1, c0, c1])
    np.savez(args.crops, **crops)
    start = time.perf_counter()
    sigma_estimate = tiling.estimate_sigma_bounded(image, budget)
    sigma_seconds = time.perf_counter() - start
    peak_all = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "size": args.size,
        "max_memory": budget,
        "threads": args.threads,
        "tiles": len(plan),
        "generate_seconds": generate,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "reference_1024_before": before,
        "reference_1024_after": after,
        "rss_before_denoise": rss_before,
        "peak_rss_denoise": peak_denoise,
        "sigma_estimate": sigma_estimate,
        "sigma_estimate_seconds": sigma_seconds,
        "peak_rss_with_sigma_estimate": peak_all,
    }))


def section_huge(args) -> dict:
    import nlattn

    with tempfile.TemporaryDirectory() as tmp:
        crops_path = os.path.join(tmp, "crops.npz")
        command = [sys.executable, __file__, "--child", "--size", str(args.size), "--sigma",
                   str(args.sigma), "--max-memory", str(args.max_memory), "--threads",
                   str(args.threads), "--repeats", str(args.repeats), "--crops", crops_path]
        timed = os.path.exists("/usr/bin/time")
        if timed:
            command = ["/usr/bin/time", "-v", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        if timed:
            for line in done.stderr.splitlines():
                if "Maximum resident set size" in line:
                    report["time_v_max_rss"] = int(line.split(":")[1]) * 1024
        checks = []
        with np.load(crops_path) as crops:
            for i in range(3):
                y0, x0, r0, r1, c0, c1 = (int(v) for v in crops[f"where{i}"])
                reference = nlattn.nl_means(crops[f"input{i}"], "nlm", sigma=args.sigma,
                                            n_threads=args.threads)
                reference = reference[y0 - r0 : y0 - r0 + CROP, x0 - c0 : x0 - c0 + CROP]
                equal = bool(np.array_equal(reference, crops[f"output{i}"]))
                checks.append({"crop": [y0, x0, CROP, CROP], "context_rows": [r0, r1],
                               "context_cols": [c0, c1], "equal": equal})
                print(f"huge crop at ({y0}, {x0}): equal to untiled = {equal}", flush=True)
    report["crops"] = checks
    for key in ("reference_1024_before", "reference_1024_after"):
        ref = report[key]
        print(f"{key}: {ref['seconds']:.3f} s wall, {ref['cpu_seconds']:.3f} s CPU", flush=True)
    print(f"huge {args.size}^2: {report['seconds']:.1f} s ({report['cpu_seconds']:.1f} s CPU), "
          f"peak RSS "
          f"{report['peak_rss_denoise'] / 1e9:.2f} GB ({report['tiles']} tiles); sigma "
          f"estimate {report['sigma_estimate']:.3f} in {report['sigma_estimate_seconds']:.1f} s, "
          f"peak RSS with it {report['peak_rss_with_sigma_estimate'] / 1e9:.2f} GB", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--sigma", type=float, default=25.0)
    parser.add_argument("--max-memory", type=float, default=1.5, help="GiB")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-huge", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "huge.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--crops", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import numba

    numba.set_num_threads(args.threads)
    results = {"machine": machine(), "threads": args.threads, "sigma": args.sigma}
    results["equality"] = section_equality(args.sigma, args.threads)
    results["modes"] = section_modes(args.sigma, args.threads, args.repeats)
    if not args.skip_huge:
        huge = results["huge"] = section_huge(args)
        pixels = args.size**2 / 1024**2
        ref = [huge["reference_1024_before"], huge["reference_1024_after"]]
        wall = pixels * statistics.mean(r["seconds"] for r in ref)
        cpu = pixels * statistics.mean(r["cpu_seconds"] for r in ref)
        results["bars"] = {
            "peak_rss_gb": huge["peak_rss_denoise"] / 1e9,
            "peak_rss_at_most_3gb": huge["peak_rss_denoise"] <= 3e9,
            "crops_equal": all(c["equal"] for c in huge["crops"]),
            "expected_seconds_from_1024": wall,
            "time_ratio_to_1024_rate": huge["seconds"] / wall,
            "time_within_1.2x": huge["seconds"] <= 1.2 * wall,
            "cpu_time_ratio_to_1024_rate": huge["cpu_seconds"] / cpu,
        }
        print(json.dumps(results["bars"], indent=1), flush=True)
    path = write_json_at(Path(args.out), results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
