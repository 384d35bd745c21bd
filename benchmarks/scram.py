"""SCRAM on Set12: PatchMatch recall and speed, attention fidelity, scaling (design section 6).

    python benchmarks/scram.py [--sections recall,fidelity,scaling,matmul,barbara,largek]
        [--images 09,10] [--n-iters 1,2,3,4,6] [--n-trees 0,8] [--sizes 64,128,256,512,1024]
        [--exact-max 256] [--ks 16,32,64,128,256] [--repeats 3] [--threads 2] [--out scram.json]

--out names a file in benchmarks/results/.

recall    On 512x512 Set12 images, 5x5 patch vectors (centred, d = 25) and their PCA-8
          reduction: recall@16 of ``knn_patchmatch`` (squared Euclidean distance through the
          augmented vectors q = [p, 1], k = [2p, -|p|^2], self excluded) per forest size
          (``n_trees``, 0: random start) and iteration count, against brute-force top-16 on
          2000 sampled queries; the fastest setting at recall >= 0.95 and its time as a
          fraction of brute force's (faiss flat when installed, else NumPy).  A found neighbour
          counts when its distance is within the exact 16th distance (ties in flat regions make
          the exact set ambiguous).  Brute-force time: numpy on the sample, extrapolated to all
          queries, and ``faiss.IndexFlatL2`` on all queries when faiss is installed.  faiss HNSW
          (M = 32, efConstruction 64, build + search of all queries) at several efSearch for
          comparison.
fidelity  On 128x128 centre crops of three Set12 images with noise sigma = 25, NLM tokens
          (``nlm_tokens``, 5x5 patches) at three temperatures h = sigma (peaked), 2 sigma,
          4 sigma (diffuse); values: the noisy pixels minus their mean (the mean would only add
          a constant to every output).  Relative output error ||O' - O|| / ||O|| of ``local``
          and ``scram`` against ``exact``, mean row total variation on 64 sampled queries, time.
scaling   Time of exact / local (r = 3) / scram (k = 16, r = 1) attention on NLM tokens of
          n = size^2 pixels (Set12 08 tiled or cropped to size; 2x upsampled for 1024), and the
          fitted exponent a of time ~ n^a (scram and local from 128^2 up, exact up to
          --exact-max).
matmul    ``exact`` at n = 128^2, d = dv = 64 (random tokens): its flop rate (4 n^2 d) against a
          4096^3 float32 numpy matmul in the same run.
barbara   ``nl_means(method="scram")`` against the windowed ``nlm`` preset on Barbara (Set12 09),
          sigma = 25.
largek    Time and recall@k of ``knn_patchmatch(q, q, k)`` for each of ``--ks`` on the unit,
          centred 5x5 patch vectors of 128x128 centre crops of ``--fidelity-images`` (the
          tokens of ``fidelity.py``, self kept), against the exact top-k of every query (BLAS
          products); with enrichment reading whole lists (``ENRICH_MATCHES`` set to k) and
          capped lists (the default) in the same run.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from _common import add_noise, centre_crop, machine, median_time, psnr, set12_images, write_json

import nlattn
from nlattn.features import augmented_tokens, extract_patches, pca_reduce
from nlattn.metrics import recall_at_k
from nlattn.patchmatch import knn_patchmatch


def _exact_knn(flat: np.ndarray, sample: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exact k-th neighbour distance of each sampled query (self excluded), and seconds."""
    start = time.perf_counter()
    norms = np.einsum("ij,ij->i", flat, flat)
    kth = np.empty(sample.size)
    for lo in range(0, sample.size, 256):
        rows = sample[lo : lo + 256]
        dist = norms[rows, None] + norms[None, :] - 2.0 * (flat[rows] @ flat.T)
        dist[np.arange(rows.size), rows] = np.inf
        kth[lo : lo + 256] = np.partition(dist, k - 1, axis=1)[:, k - 1]
    return kth, time.perf_counter() - start


def _recall(flat: np.ndarray, sample: np.ndarray, found: np.ndarray, kth: np.ndarray) -> float:
    """Fraction of found neighbours (k per sampled query) within the exact k-th distance."""
    hits = 0
    total = 0
    for row, i in enumerate(sample):
        ids = found[row]
        ids = ids[(ids >= 0) & (ids != i)]
        d = np.sum((flat[ids] - flat[i]) ** 2, axis=1)
        hits += int(np.sum(d <= kth[row] * (1 + 1e-5) + 1e-9))
        total += found.shape[1]
    return hits / total


def section_recall(images, args) -> dict:
    rng = np.random.default_rng(0)
    results = {}
    k = 16
    try:
        import faiss
    except ImportError:
        faiss = None
    for name in args.images:
        clean = images[name]
        for label, feats in (("d25", extract_patches(clean, 2, centre=True)),):
            variants = [(label, feats), ("pca8", pca_reduce(feats, 8))]
            for vlabel, p in variants:
                height, width, d = p.shape
                n = height * width
                flat = p.reshape(n, d).astype(np.float64)
                sample = rng.choice(n, 2000, replace=False)
                kth, t_sample = _exact_knn(flat, sample, k)
                brute_s = t_sample * n / sample.size
                q, kk = augmented_tokens(p)
                rows = []
                for n_trees in args.n_trees:
                    for n_iters in args.n_iters:
                        t, field = median_time(
                            lambda n_iters=n_iters, n_trees=n_trees, q=q, kk=kk: knn_patchmatch(
                                q, kk, k=k, n_iters=n_iters, n_trees=n_trees, seed=0,
                                exclude_self=True, n_threads=args.threads), args.repeats)
                        found = field.indices.reshape(n, k)[sample]
                        rec = _recall(flat, sample, found, kth)
                        rows.append({"n_trees": n_trees, "n_iters": n_iters, "seconds": t,
                                     "recall": rec})
                        print(f"{name} {vlabel} PatchMatch n_trees {n_trees} n_iters {n_iters}: "
                              f"recall@16 {rec:.4f} {t:.3f} s", flush=True)
                good = [row for row in rows if row["recall"] >= 0.95]
                fastest = min(good, key=lambda row: row["seconds"]) if good else None
                entry = {"n": n, "d": d, "brute_force_numpy_s": brute_s, "patchmatch": rows}
                print(f"{name} {vlabel} brute force (numpy, extrapolated): {brute_s:.1f} s",
                      flush=True)
                if faiss is not None:
                    faiss.omp_set_num_threads(args.threads)
                    xb = flat.astype(np.float32)
                    start = time.perf_counter()
                    index = faiss.IndexFlatL2(d)
                    index.add(xb)
                    index.search(xb, k + 1)
                    entry["brute_force_faiss_flat_s"] = time.perf_counter() - start
                    print(f"{name} {vlabel} brute force (faiss flat, all queries): "
                          f"{entry['brute_force_faiss_flat_s']:.1f} s", flush=True)
                if fastest is not None:
                    brute = entry.get("brute_force_faiss_flat_s", brute_s)
                    entry["fastest_at_0.95"] = {**fastest, "brute_force_over_it": brute
                                                / fastest["seconds"]}
                    print(f"{name} {vlabel} fastest PatchMatch at recall >= 0.95: n_trees "
                          f"{fastest['n_trees']} n_iters {fastest['n_iters']} "
                          f"{fastest['seconds']:.3f} s = 1/{brute / fastest['seconds']:.1f} of "
                          "brute force", flush=True)
                    hnsw = []
                    for ef in (16, 32, 64, 128):
                        start = time.perf_counter()
                        index = faiss.IndexHNSWFlat(d, 32)
                        index.hnsw.efConstruction = 64
                        index.add(xb)
                        index.hnsw.efSearch = ef
                        _, ids = index.search(xb, k + 1)
                        seconds = time.perf_counter() - start
                        found = np.array([[j for j in ids[i] if j != i][:k] for i in sample])
                        rec = _recall(flat, sample, found, kth)
                        hnsw.append({"ef_search": ef, "seconds": seconds, "recall": rec})
                        print(f"{name} {vlabel} faiss HNSW ef {ef}: recall@16 {rec:.4f} "
                              f"{seconds:.2f} s (build + search)", flush=True)
                    entry["faiss_hnsw"] = hnsw
                results[f"{name}/{vlabel}"] = entry
    return results


def _rows_tv(queries, keys, positions, method, exact_rows, **params):
    rows = nlattn.attention_rows(queries, keys, positions, method, scale=1.0, **params)
    return float(np.mean(0.5 * np.abs(rows - exact_rows).sum(axis=(1, 2))))


def section_fidelity(images, args) -> dict:
    sigma = 25.0
    results = []
    methods = [("local", {"window_radius": 3}), ("local", {"window_radius": 7}),
               ("scram", {"k": 8, "window_radius": 1}), ("scram", {"k": 16, "window_radius": 1}),
               ("scram", {"k": 16, "window_radius": 1, "local_radius": 3})]
    rng = np.random.default_rng(1)
    for index, name in enumerate(args.fidelity_images):
        crop = centre_crop(add_noise(images[name], sigma, seed=index), 128)
        values = (crop - crop.mean())[:, :, None].astype(np.float32)
        positions = np.stack([rng.integers(0, 128, 64), rng.integers(0, 128, 64)], axis=1)
        for label, h in (("peaked", sigma), ("medium", 2 * sigma), ("diffuse", 4 * sigma)):
            q, k, _ = nlattn.nlm_tokens(crop, patch_radius=2, h=h)
            t_exact, exact = median_time(lambda q=q, k=k, values=values: nlattn.attention(
                q, k, values, "exact", scale=1.0), 1)
            exact_rows = nlattn.attention_rows(q, k, positions, "exact", scale=1.0)
            for method, params in methods:
                def run(q=q, k=k, m=method, p=params, values=values):
                    return nlattn.attention(q, k, values, m, scale=1.0, **p)

                t, out = median_time(run, args.repeats)
                err = float(np.linalg.norm(out - exact) / np.linalg.norm(exact))
                tv = _rows_tv(q, k, positions, method, exact_rows, **params)
                row = {"image": name, "temperature": label, "h": h, "method": method,
                       "params": params, "relative_error": err, "row_tv": tv, "seconds": t,
                       "exact_seconds": t_exact}
                results.append(row)
                print(f"{name} {label:7s} {method:6s} {params}: rel. error {err:.4f} "
                      f"row TV {tv:.3f} {t:.3f} s (exact {t_exact:.3f} s)", flush=True)
    return {"rows": results}


def _tokens_for_size(base: np.ndarray, size: int):
    if size <= base.shape[0]:
        image = base[:size, :size]
    else:
        factor = math.ceil(size / base.shape[0])
        image = np.kron(base, np.ones((factor, factor)))[:size, :size]
    return nlattn.nlm_tokens(image, patch_radius=2, h=25.0)


def _fit_exponent(sizes, seconds) -> float:
    n = np.array([s * s for s in sizes], np.float64)
    return float(np.polyfit(np.log(n), np.log(np.array(seconds)), 1)[0])


def section_scaling(images, args) -> dict:
    base = images["08"]
    runs = {"exact": {}, "local": {}, "scram": {}}
    params = {"exact": {}, "local": {"window_radius": 3}, "scram": {"k": 16, "window_radius": 1}}
    for size in args.sizes:
        q, k, v = _tokens_for_size(base, size)
        for method in runs:
            if method == "exact" and size > args.exact_max:
                continue
            repeats = args.repeats if size <= 256 else 1
            fn = lambda m=method, q=q, k=k, v=v: nlattn.attention(  # noqa: E731
                q, k, v, m, scale=1.0, **params[m])
            fn()  # warm (compile)
            t, _ = median_time(fn, repeats)
            runs[method][size] = t
            print(f"scaling {method:6s} n = {size}^2: {t:.3f} s", flush=True)
    fits = {}
    for method, times in runs.items():
        sizes = sorted(s for s in times if s >= (64 if method == "exact" else 128))
        if len(sizes) >= 2:
            fits[method] = _fit_exponent(sizes, [times[s] for s in sizes])
            print(f"scaling {method}: time ~ n^{fits[method]:.2f} over sizes {sizes}", flush=True)
    return {"seconds": {m: {str(s): t for s, t in r.items()} for m, r in runs.items()},
            "exponent": fits, "params": params}


def section_matmul(args) -> dict:
    rng = np.random.default_rng(2)
    n_side, d = 128, 64
    q = rng.normal(size=(n_side, n_side, d)).astype(np.float32)
    k = rng.normal(size=(n_side, n_side, d)).astype(np.float32)
    v = rng.normal(size=(n_side, n_side, d)).astype(np.float32)
    nlattn.attention(q[:8], k[:8], v[:8], "exact")
    t_att, _ = median_time(lambda: nlattn.attention(q, k, v, "exact"), args.repeats)
    n = n_side * n_side
    rate_att = 4.0 * n * n * d / t_att
    a = rng.normal(size=(4096, 4096)).astype(np.float32)
    b = rng.normal(size=(4096, 4096)).astype(np.float32)
    a @ b
    t_mm, _ = median_time(lambda: a @ b, args.repeats)
    rate_mm = 2.0 * 4096**3 / t_mm
    print(f"matmul: exact attention n = 128^2, d = 64: {t_att:.3f} s, {rate_att / 1e9:.1f} GFLOP/s;"
          f" numpy 4096^3 matmul {rate_mm / 1e9:.1f} GFLOP/s; ratio {rate_att / rate_mm:.2f}",
          flush=True)
    return {"exact_seconds": t_att, "exact_gflops": rate_att / 1e9,
            "numpy_matmul_gflops": rate_mm / 1e9, "ratio": rate_att / rate_mm}


def section_barbara(images, args) -> dict:
    clean = images["09"]
    noisy = add_noise(clean, 25.0, seed=8)
    out = {}
    for method in ("nlm", "scram"):
        nlattn.nl_means(noisy[:64, :64], method=method, sigma=25.0)
        t, result = median_time(lambda m=method: nlattn.nl_means(noisy, method=m, sigma=25.0),
                                args.repeats)
        out[method] = {"psnr": psnr(clean, result), "seconds": t}
        print(f"barbara sigma 25 {method}: PSNR {out[method]['psnr']:.3f} dB {t:.2f} s",
              flush=True)
    return out


def section_largek(images, args) -> dict:
    from fidelity import tokens
    from scatterbrain_oracle import exact_top

    import nlattn.patchmatch as patchmatch

    cap = patchmatch.ENRICH_MATCHES
    out = {}
    try:
        for name in args.fidelity_images:
            q = tokens(centre_crop(images[name] / 255.0, 128), "patch")
            top = exact_top(q.reshape(-1, q.shape[2]), max(args.ks))
            for k in args.ks:
                for label, limit in (("capped", cap), ("whole lists", k)):
                    if label == "whole lists" and k <= cap:
                        continue
                    patchmatch.ENRICH_MATCHES = limit

                    def run(q=q, k=k):
                        return knn_patchmatch(q, q, k, exclude_self=False)

                    run()
                    seconds, field = median_time(run, args.repeats)
                    recall = recall_at_k(field.indices.reshape(-1, k), top, k)
                    out[f"{name} k={k} {label}"] = {"seconds": seconds, "recall": recall}
                    print(f"largek {name} k={k:4d} {label:11s} {seconds:7.3f} s "
                          f"recall@k {recall:.4f}", flush=True)
    finally:
        patchmatch.ENRICH_MATCHES = cap
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="recall,fidelity,scaling,matmul,barbara")
    parser.add_argument("--images", default="09,10")
    parser.add_argument("--fidelity-images", default="05,08,09")
    parser.add_argument("--n-iters", default="1,2,3,4,6")
    parser.add_argument("--n-trees", default="0,8")
    parser.add_argument("--sizes", default="64,128,256,512,1024")
    parser.add_argument("--exact-max", type=int, default=256)
    parser.add_argument("--ks", default="16,32,64,128,256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="scram.json")
    args = parser.parse_args()
    args.images = args.images.split(",")
    args.fidelity_images = args.fidelity_images.split(",")
    args.n_iters = [int(v) for v in args.n_iters.split(",")]
    args.n_trees = [int(v) for v in args.n_trees.split(",")]
    args.sizes = [int(v) for v in args.sizes.split(",")]
    args.ks = [int(v) for v in args.ks.split(",")]
    import numba

    numba.set_num_threads(args.threads)
    images = set12_images()
    results = {"machine": machine(), "threads": args.threads}
    for section in args.sections.split(","):
        if section == "recall":
            results["recall"] = section_recall(images, args)
        elif section == "fidelity":
            results["fidelity"] = section_fidelity(images, args)
        elif section == "scaling":
            results["scaling"] = section_scaling(images, args)
        elif section == "matmul":
            results["matmul"] = section_matmul(args)
        elif section == "barbara":
            results["barbara"] = section_barbara(images, args)
        elif section == "largek":
            results["largek"] = section_largek(images, args)
        else:
            raise SystemExit(f"unknown section {section!r}")
    print(f"JSON: {write_json(args.out, results)}")


if __name__ == "__main__":
    main()
