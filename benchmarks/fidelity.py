"""How close each attention method comes to exact attention on image tokens (design section 6).

    python benchmarks/fidelity.py [--images 05,08,09,12] [--size 128] [--budgets 64,256,1024]
        [--tokens patch,pca8] [--repeats 1] [--threads 2] [--plot docs/images/fidelity.png]
        [--out fidelity.json] [--shares 0.125,0.25,0.5,0.75] [--replot fidelity.json]

Tokens: the 5 x 5 patches of a ``size x size`` centre crop of each Set12 image (in [0, 1]), each
patch minus its own mean (centred), divided by its norm (floored at 0.02, so flat patches give
short vectors and near-uniform maps): ``q = k = x``, and the same after a PCA to 8 dimensions
(``pca8``).  With unit vectors ``q.k = 1 - |q - k|**2 / 2``, so softmax attention with scale
``beta`` weighs keys by patch similarity, like non-local means, and ``beta`` sets the
temperature: ``peaked`` (beta = 64: about 10 keys hold the mass of a row), ``medium`` (16: a few
hundred) and ``diffuse`` (4: thousands).  Values: the crop's pixels minus their mean, so that no
method gains from reproducing a constant.

Budgets: every method gets the same number of non-zeros plus random features per row, ``B``:

- ``local``: the (2r+1)^2 <= B window;  ``scram``: the B best keys alone (PatchMatch with
  k = B, window_radius = 0: per key, a match holds far more mass than a window around one);
- ``lsh``: n_hashes = 2 rounds of buckets of B // 2 keys;  ``performer``: B random features;
- ``scatterbrain``: m = share x B features plus a support of B - m keys: a (2r+1)^2 local
  window, LSH buckets (2 rounds, as ``lsh``) or the PatchMatch support (as ``scram``).  The
  share is set per temperature (:data:`FEATURE_SHARE`: 1/8 peaked, 1/4 medium, 3/4 diffuse,
  growing with the number of keys a row's mass spreads over): the sparse part is worth its
  keys only where the mass it can hold is large.  ``--shares 0.125,0.25,0.5,0.75`` runs every
  share at every temperature instead (labels ``scatterbrain-pm@0.25`` etc.), the sweep the
  table's choice comes from;
- ``fast`` and ``efficient`` have no budget (their cost is fixed by d): one row per temperature.

Metrics against ``exact`` (the blocked kernel): relative output error ||O' - O|| / ||O||, mean
row total variation and KL(exact || method) over 64 sampled query pixels, and time (median of
``--repeats``, after one warm-up call of every method on a small grid, so that no time
includes the JIT); the randomised methods are averaged over ``--seeds`` seeds.  Prints a table,
writes ``results/<out>`` and, with ``--plot``, a figure of error against budget, one panel per
temperature.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from _common import RESULTS, centre_crop, machine, median_time, set12_images, write_json

import nlattn
from nlattn.metrics import relative_error, row_kl, row_total_variation

TEMPERATURES = (("peaked", 64.0), ("medium", 16.0), ("diffuse", 4.0))
#: Scatterbrain's share of the budget spent on random features, per temperature (the rest buys
#: support keys): chosen from the ``--shares`` sweep, recorded in results/fidelity_shares.json.
FEATURE_SHARE = {"peaked": 0.125, "medium": 0.25, "diffuse": 0.75}
NORM_FLOOR = 0.02
N_QUERIES = 64


def tokens(image: np.ndarray, kind: str) -> np.ndarray:
    """Unit-normalised, per-patch centred 5 x 5 patch vectors (optionally PCA-8) of ``image``."""
    patches = nlattn.extract_patches(image.astype(np.float32), 2, centre=False)
    patches = patches - patches.mean(axis=-1, keepdims=True)
    if kind == "pca8":
        from nlattn.features import pca_reduce

        patches = pca_reduce(patches, 8)
    norms = np.sqrt((patches.astype(np.float64) ** 2).sum(-1, keepdims=True))
    return (patches / np.maximum(norms, NORM_FLOOR)).astype(np.float32)


def window_radius_for(budget: int) -> int:
    """The largest r with (2r + 1)^2 <= budget."""
    return max(0, (math.isqrt(budget) - 1) // 2)


def matches_for(budget: int) -> dict:
    """PatchMatch support within ``budget``: the ``budget`` best keys alone (k = budget, r = 0)."""
    return {"k": max(1, budget), "window_radius": 0}


def configurations(budget: int, share: float, suffix: str = "",
                   baselines: bool = True) -> list[tuple[str, str, dict]]:
    """(label, method, parameters) of each budgeted method at ``budget`` per row; Scatterbrain
    spends ``round(share * budget)`` on features and the rest on its support."""
    n_features = max(1, round(share * budget))
    sparse = max(1, budget - n_features)
    half = budget // 2
    runs = [
        ("local", "local", {"window_radius": window_radius_for(budget)}),
        ("scram", "scram", matches_for(budget)),
        ("lsh", "lsh", {"n_hashes": 2, "bucket_size": max(1, half)}),
        ("performer", "performer", {"n_features": budget}),
    ] if baselines else []
    return runs + [
        ("scatterbrain" + suffix, "scatterbrain",
         {"support": "local", "window_radius": window_radius_for(sparse),
          "n_features": n_features}),
        ("scatterbrain-lsh" + suffix, "scatterbrain",
         {"support": "lsh", "n_hashes": 2, "bucket_size": max(1, sparse // 2),
          "n_features": n_features}),
        ("scatterbrain-pm" + suffix, "scatterbrain",
         {"support": "patchmatch", **matches_for(sparse), "n_features": n_features}),
    ]


FIXED = [("fast", "fast", {"p": 2}), ("efficient", "efficient", {})]


RANDOMISED = ("lsh", "performer", "scatterbrain")


def warm_up(kind: str) -> None:
    """Compile (or load) every method's kernels on a small grid of the same types, so that no
    timing includes the JIT."""
    rng = np.random.default_rng(0)
    q = tokens(rng.random((24, 24)), kind)
    values = rng.random((24, 24, 1)).astype(np.float32)
    positions = np.array([[3, 4]])
    for _, method, params in configurations(16, 0.5) + FIXED + [("exact", "exact", {})]:
        small = {key: min(value, 4) if key in ("k", "bucket_size") else value
                 for key, value in params.items()}
        nlattn.attention(q, q, values, method, scale=4.0, **small)
        nlattn.attention_rows(q, q, positions, method, scale=4.0, **small)


def measure(q, values, positions, beta, method, params, exact, exact_rows, repeats,
            n_seeds) -> dict:
    """Errors averaged over ``n_seeds`` seeds (randomised methods; 1 for the others)."""
    errors, tvs, kls, times = [], [], [], []
    for seed in range(n_seeds if method in RANDOMISED else 1):
        def run(seed=seed):
            return nlattn.attention(q, q, values, method, scale=beta, seed=seed, **params)

        seconds, out = median_time(run, repeats)
        rows = nlattn.attention_rows(q, q, positions, method, scale=beta, seed=seed, **params)
        errors.append(relative_error(out, exact))
        tvs.append(float(np.mean(row_total_variation(rows, exact_rows))))
        kls.append(float(np.mean(row_kl(exact_rows, rows))))
        times.append(seconds)
    return {
        "relative_error": float(np.mean(errors)),
        "relative_error_seeds": errors,
        "row_tv": float(np.mean(tvs)),
        "row_kl": float(np.mean(kls)),
        "seconds": float(np.median(times)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="05,08,09,12")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--budgets", default="64,256,1024")
    parser.add_argument("--tokens", default="patch,pca8")
    parser.add_argument("--methods", default=None,
                        help="labels to run (default: all), e.g. local,performer,scatterbrain")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds averaged for the randomised methods (lsh, performer, "
                             "scatterbrain)")
    parser.add_argument("--shares", default=None,
                        help="Scatterbrain's feature shares of the budget to sweep, e.g. "
                             "0.25,0.5,0.75 (default: FEATURE_SHARE's one per temperature)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--out", default="fidelity.json")
    parser.add_argument("--replot", default=None, metavar="RESULTS",
                        help="only redraw --plot from a results file (e.g. fidelity.json)")
    args = parser.parse_args()
    if args.replot:
        import json
        from pathlib import Path

        path = Path(args.replot)
        if not path.is_absolute() and not path.exists():
            path = RESULTS / path
        plot(json.loads(path.read_text())["summary"], args.plot or "fidelity.png")
        return

    import numba

    numba.set_num_threads(args.threads)
    images = set12_images()
    budgets = [int(b) for b in args.budgets.split(",")]
    wanted = None if args.methods is None else set(args.methods.split(","))
    rng = np.random.default_rng(0)
    results = []
    for kind in args.tokens.split(","):
        warm_up(kind)
        for name in args.images.split(","):
            crop = centre_crop(images[name] / 255.0, args.size)
            q = tokens(crop, kind)
            values = (crop - crop.mean())[:, :, None].astype(np.float32)
            positions = np.stack([rng.integers(0, args.size, N_QUERIES),
                                  rng.integers(0, args.size, N_QUERIES)], axis=1)
            for temperature, beta in TEMPERATURES:
                start = time.perf_counter()
                exact = nlattn.attention(q, q, values, "exact", scale=beta)
                exact_seconds = time.perf_counter() - start
                exact_rows = nlattn.attention_rows(q, q, positions, "exact", scale=beta)
                support = 1.0 / (exact_rows.reshape(N_QUERIES, -1).astype(np.float64) ** 2).sum(1)
                if args.shares is None:
                    runs = [(b, cfg) for b in budgets
                            for cfg in configurations(b, FEATURE_SHARE[temperature])]
                else:
                    shares = [float(x) for x in args.shares.split(",")]
                    runs = [(b, cfg) for b in budgets for index, share in enumerate(shares)
                            for cfg in configurations(b, share, f"@{share:g}", index == 0)]
                runs += [(None, cfg) for cfg in FIXED]
                for budget, (label, method, params) in runs:
                    if wanted is not None and label.split("@")[0] not in wanted:
                        continue
                    if method not in nlattn.METHODS:
                        continue
                    try:
                        row = measure(q, values, positions, beta, method, params, exact,
                                      exact_rows, args.repeats, args.seeds)
                    except (ImportError, ValueError, TypeError) as exc:
                        print(f"{label}: skipped ({exc})")
                        continue
                    row.update(tokens=kind, image=name, temperature=temperature, beta=beta,
                               budget=budget, label=label, method=method, params=params,
                               exact_seconds=exact_seconds,
                               exact_effective_support=float(np.median(support)))
                    results.append(row)
                    print(f"{kind:5s} {name} {temperature:7s} B={budget!s:>5} {label:17s} "
                          f"err {row['relative_error']:7.4f} TV {row['row_tv']:.3f} "
                          f"KL {row['row_kl']:7.3f} {row['seconds']:.3f} s", flush=True)
    summary = summarise(results)
    print_table(summary)
    path = write_json(args.out, {"machine": machine(), "args": vars(args), "rows": results,
                                 "summary": summary})
    print(f"wrote {path}")
    if args.plot:
        plot(summary, args.plot)
        print(f"wrote {args.plot}")


def summarise(results: list[dict]) -> list[dict]:
    """Mean over images of each (tokens, temperature, budget, label)."""
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        key = (row["tokens"], row["temperature"], row["budget"], row["label"])
        groups.setdefault(key, []).append(row)
    summary = []
    for (kind, temperature, budget, label), rows in groups.items():
        summary.append({
            "tokens": kind, "temperature": temperature, "budget": budget, "label": label,
            "relative_error": float(np.mean([r["relative_error"] for r in rows])),
            "row_tv": float(np.mean([r["row_tv"] for r in rows])),
            "row_kl": float(np.mean([r["row_kl"] for r in rows])),
            "seconds": float(np.mean([r["seconds"] for r in rows])),
            "exact_seconds": float(np.mean([r["exact_seconds"] for r in rows])),
            "n_images": len(rows),
        })
    return summary


def print_table(summary: list[dict]) -> None:
    """Markdown table: relative output error per method (rows) and budget (columns)."""
    for kind in sorted({s["tokens"] for s in summary}):
        budgets = sorted({s["budget"] for s in summary if s["budget"] is not None})
        labels = list(dict.fromkeys(s["label"] for s in summary if s["tokens"] == kind))
        print(f"\nRelative output error against exact, {kind} tokens (mean over images):\n")
        header = "| method | " + " | ".join(
            f"{t} B={b}" for t, _ in TEMPERATURES for b in budgets) + " |"
        print(header)
        print("|---" * (1 + len(TEMPERATURES) * len(budgets)) + "|")
        for label in labels:
            cells = []
            for temperature, _ in TEMPERATURES:
                for budget in budgets:
                    match = [s for s in summary if s["tokens"] == kind and s["label"] == label
                             and s["temperature"] == temperature
                             and (s["budget"] == budget or s["budget"] is None)]
                    cells.append(f"{match[0]['relative_error']:.3f}" if match else "")
            print(f"| {label} | " + " | ".join(cells) + " |")


def plot(summary: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({s["tokens"] for s in summary})
    fig, axes = plt.subplots(len(kinds), len(TEMPERATURES), figsize=(12, 3.6 * len(kinds)),
                             squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    labels = list(dict.fromkeys(s["label"] for s in summary))
    for row, kind in enumerate(kinds):
        for col, (temperature, beta) in enumerate(TEMPERATURES):
            ax = axes[row, col]
            for index, label in enumerate(labels):
                points = sorted(
                    (s["budget"], s["relative_error"]) for s in summary
                    if s["tokens"] == kind and s["temperature"] == temperature
                    and s["label"] == label and s["budget"] is not None)
                fixed = [s["relative_error"] for s in summary
                         if s["tokens"] == kind and s["temperature"] == temperature
                         and s["label"] == label and s["budget"] is None]
                if points:
                    budgets, errors = zip(*points, strict=True)
                    ax.plot(budgets, errors, marker="o", color=colours(index), label=label)
                elif fixed:
                    ax.axhline(fixed[0], linestyle="--", color=colours(index), label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{kind} tokens, {temperature} (scale {beta:g})")
            ax.set_xlabel("budget per row (non-zeros + features)")
            if col == 0:
                ax.set_ylabel("relative output error vs exact")
            ax.grid(True, which="both", alpha=0.3)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 9), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
