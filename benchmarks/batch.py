"""Batch throughput: ``nlattn denoise DIR -j 2`` and on a Dask cluster, against a scikit-image loop.

    python benchmarks/batch.py [--images 200] [--skimage-images 20] [--repeats 3]
        [--methods nlm,nlm2] [--out results/batch.json]

Data    The five 512x512 Set12 images (08-12) with Gaussian noise sigma = 25 (seeds 0, 1, ...;
        rounded and clipped to uint8), ``--images`` PNG files in a temporary folder.
skimage A Python loop over the files: read the PNG, ``skimage.restoration.denoise_nl_means`` at
        its defaults (patch_size 7, patch_distance 11, h = 0.1, fast_mode=True) on the float
        image in [0, 1], write the result as an 8-bit PNG.  Timed on the first
        ``--skimage-images`` files, in ``--repeats`` chunks run between the nlattn runs (the
        machine's load is shared alike), and scaled to all of them (its time per image hardly
        varies: the per-image times are reported); the denoising time alone is reported too.
-j 2    ``nlattn denoise DIR -o OUT -j 2 --method M`` in a fresh process (start-up, worker
        spawn, reading and writing included), sigma estimated per image (the default) and given
        (``--sigmas``: skimage's defaults take a fixed h); median of ``--repeats`` runs, each
        into an empty folder.
Dask    The same command with ``--scheduler`` on a ``distributed.LocalCluster`` of 2 worker
        processes with 1 task thread each, started before timing (an existing cluster) and
        warmed by one 2-image batch (its workers load the compiled kernels once in their life);
        median of ``--repeats`` runs (the order of the -j 2 and Dask runs alternates).
Bars    throughput(-j 2) >= 5 x throughput(skimage loop); time(Dask) <= 1.3 x time(-j 2): the
        medians of the ratios of runs made next to each other (the machine is shared: its load
        changes between repeats), and the ratios of the medians.  The outputs of the two nlattn
        paths are checked to be identical.  CPU seconds per image (nlattn: the command and its
        workers; skimage: the loop) are reported as a load-independent check.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from _common import SET12, machine, psnr, write_json_at
from PIL import Image

import nlattn

NOISE = 25.0
SIZE = 512


def make_images(folder: str, count: int) -> list[str]:
    """``count`` noisy 512x512 uint8 PNGs from the five 512x512 Set12 images."""
    cleans = []
    for path in sorted(SET12.glob("*.png")):
        image = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
        if image.shape == (SIZE, SIZE):
            cleans.append((path.stem, image))
    if len(cleans) != 5:
        raise SystemExit(f"expected five {SIZE}x{SIZE} Set12 images in {SET12}, got {len(cleans)}")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        stem, clean = cleans[i % len(cleans)]
        noisy = clean + np.random.default_rng(i).normal(0.0, NOISE, clean.shape)
        path = os.path.join(folder, f"{stem}_{i:04d}.png")
        Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def skimage_loop(paths: list[str], out_dir: str) -> dict:
    """The peer: read, denoise_nl_means at its defaults, write; per-image times."""
    from skimage.restoration import denoise_nl_means

    os.makedirs(out_dir, exist_ok=True)
    totals, denoise_only = [], []
    cpu = time.process_time()
    for path in paths:
        start = time.perf_counter()
        image = np.asarray(Image.open(path), dtype=np.float64) / 255.0
        t0 = time.perf_counter()
        result = denoise_nl_means(image, patch_size=7, patch_distance=11, h=0.1, fast_mode=True)
        denoise_only.append(time.perf_counter() - t0)
        out = np.clip(np.rint(result * 255.0), 0, 255).astype(np.uint8)
        Image.fromarray(out).save(os.path.join(out_dir, os.path.basename(path)))
        totals.append(time.perf_counter() - start)
    return {"per_image": totals, "denoise_per_image": denoise_only,
            "cpu_seconds": time.process_time() - cpu}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from nlattn_cli.main import cli; sys.exit(cli())",
            *args]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_cli(args: list[str]) -> tuple[float, float]:
    """Wall seconds of one command, and the CPU seconds of it and its (waited-for) workers."""
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(cli(*args), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"nlattn {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return seconds, _children_cpu() - cpu


def same_outputs(a: str, b: str) -> bool:
    names = sorted(os.listdir(a))
    if names != sorted(os.listdir(b)):
        return False
    return all(
        np.array_equal(nlattn.read_image(os.path.join(a, n))[0],
                       nlattn.read_image(os.path.join(b, n))[0])
        for n in names
    )


def mean_psnr(paths: list[str], out_dir: str, suffix: str) -> float:
    values = []
    for path in paths:
        stem = os.path.basename(path).split("_")[0]
        clean = np.asarray(Image.open(SET12 / f"{stem}.png").convert("L"), dtype=np.float64)
        name = os.path.basename(path)
        out_name = name[: -len(".png")] + suffix + ".png"
        result = nlattn.read_image(os.path.join(out_dir, out_name))[0].astype(np.float64)
        values.append(psnr(clean, result))
    return float(np.mean(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--skimage-images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default="nlm,nlm2")
    parser.add_argument("--sigmas", default="auto,25",
                        help="--sigma values to run nlattn with (auto: estimated per image)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "batch.json"))
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m in nlattn.DENOISE_METHODS]
    # (name, method, --sigma) of each nlattn configuration timed
    variants = [(m if sigma == "auto" else f"{m} --sigma {sigma}", m, sigma)
                for m in methods for sigma in args.sigmas.split(",")]
    skipped = [m for m in args.methods.split(",") if m not in nlattn.DENOISE_METHODS]

    import distributed

    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="nlattn-batch-")
    report: dict = {
        "machine": machine(),
        "images": args.images,
        "size": SIZE,
        "noise_sigma": NOISE,
        "repeats": args.repeats,
        "methods_not_available": skipped,
    }
    try:
        inputs = os.path.join(work, "in")
        paths = make_images(inputs, args.images)

        subset = paths[: args.skimage_images]
        chunks = [subset[r :: args.repeats] for r in range(args.repeats)]
        peer: dict[str, list[float]] = {"per_image": [], "denoise_per_image": [], "cpu": []}
        runs = {v[0]: {"j2": [], "dask": [], "j2_cpu": [], "peer_per_image": []} for v in variants}

        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster:
            address = cluster.scheduler_address
            warm_dir = os.path.join(work, "warm")
            os.makedirs(warm_dir)
            for path in paths[:2]:
                shutil.copy(path, warm_dir)
            timed_cli(["denoise", warm_dir, "-o", os.path.join(work, "warm_out"),
                       "--scheduler", address, "-q"])
            # interleaved: a chunk of the peer's loop next to each pair of nlattn runs (whose
            # order alternates), so that each ratio compares runs made under the same load
            for r in range(args.repeats):
                for number, (name, method, sigma) in enumerate(variants):
                    chunk = skimage_loop(chunks[r], os.path.join(work, "skimage"))
                    peer["per_image"].extend(chunk["per_image"])
                    peer["denoise_per_image"].extend(chunk["denoise_per_image"])
                    peer["cpu"].append(chunk["cpu_seconds"] / len(chunks[r]))
                    runs[name]["peer_per_image"].append(float(np.mean(chunk["per_image"])))
                    order = ("j2", "dask") if r % 2 == 0 else ("dask", "j2")
                    for kind in order:
                        out = os.path.join(work, f"v{number}_{kind}_{r}")
                        extra = ["-j", "2"] if kind == "j2" else ["--scheduler", address]
                        extra += [] if sigma == "auto" else ["--sigma", sigma]
                        seconds, cpu = timed_cli(["denoise", inputs, "-o", out, "--method",
                                                  method, "-q", *extra])
                        runs[name][kind].append(seconds)
                        if kind == "j2":
                            runs[name]["j2_cpu"].append(cpu)
                        print(f"{name} {kind} run {r}: {seconds:.2f} s", flush=True)
                    print(f"  skimage loop next to it: {np.mean(chunk['per_image']):.3f} s/image"
                          f" x {args.images} = {np.mean(chunk['per_image']) * args.images:.1f} s",
                          flush=True)

        per_image = float(np.median(peer["per_image"]))
        report["skimage"] = {
            "timed_images": len(peer["per_image"]),
            "per_image_seconds": peer["per_image"],
            "denoise_per_image_seconds": peer["denoise_per_image"],
            "median_per_image": per_image,
            "seconds_scaled_to_all": per_image * args.images,
            "denoise_seconds_scaled_to_all": float(np.median(peer["denoise_per_image"]))
            * args.images,
            "cpu_seconds_per_image": float(np.median(peer["cpu"])),
            "psnr": mean_psnr(subset, os.path.join(work, "skimage"), ""),
        }
        print(f"skimage loop: median {per_image:.3f} s/image ({len(peer['per_image'])} timed) "
              f"-> {per_image * args.images:.1f} s for {args.images}", flush=True)
        report["methods"] = {}
        for number, (name, method, sigma) in enumerate(variants):
            m = runs[name]
            j2, dask = statistics.median(m["j2"]), statistics.median(m["dask"])
            pairs = zip(m["peer_per_image"], m["j2"], strict=True)
            paired_speedup = [p * args.images / t for p, t in pairs]
            paired_dask = [d / t for d, t in zip(m["dask"], m["j2"], strict=True)]
            identical = same_outputs(os.path.join(work, f"v{number}_j2_0"),
                                     os.path.join(work, f"v{number}_dask_0"))
            entry = {
                "j2_seconds": m["j2"],
                "dask_seconds": m["dask"],
                "j2_median": j2,
                "dask_median": dask,
                "j2_images_per_second": args.images / j2,
                "dask_images_per_second": args.images / dask,
                "speedup_j2_vs_skimage_loop": per_image * args.images / j2,
                "speedup_j2_vs_skimage_loop_paired": paired_speedup,
                "speedup_j2_vs_skimage_loop_paired_median": statistics.median(paired_speedup),
                "speedup_j2_vs_skimage_denoise_only":
                    report["skimage"]["denoise_seconds_scaled_to_all"] / j2,
                "dask_over_j2": dask / j2,
                "dask_over_j2_paired": paired_dask,
                "dask_over_j2_paired_median": statistics.median(paired_dask),
                "j2_cpu_seconds_per_image": statistics.median(m["j2_cpu"]) / args.images,
                "outputs_identical": identical,
                "method": method,
                "sigma": sigma,
                "psnr": mean_psnr(subset, os.path.join(work, f"v{number}_j2_0"), "_denoised"),
            }
            entry["bar_speedup_5x"] = entry["speedup_j2_vs_skimage_loop_paired_median"] >= 5.0
            entry["bar_dask_within_1_3x"] = entry["dask_over_j2_paired_median"] <= 1.3
            report["methods"][name] = entry
            print(f"{name}: -j 2 median {j2:.1f} s, {entry['speedup_j2_vs_skimage_loop']:.1f}x "
                  f"the skimage loop (paired median "
                  f"{entry['speedup_j2_vs_skimage_loop_paired_median']:.1f}x); Dask median "
                  f"{dask:.1f} s, {entry['dask_over_j2']:.2f}x -j 2 (paired median "
                  f"{entry['dask_over_j2_paired_median']:.2f}x); CPU s/image: nlattn "
                  f"{entry['j2_cpu_seconds_per_image']:.3f}, skimage "
                  f"{report['skimage']['cpu_seconds_per_image']:.3f}; identical outputs: "
                  f"{identical}; PSNR {entry['psnr']:.2f} dB (skimage "
                  f"{report['skimage']['psnr']:.2f})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["load_average_before_after"] = [load_before, os.getloadavg()]
    path = write_json_at(args.out, report)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
