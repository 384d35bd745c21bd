"""How low Scatterbrain's error can go with the best possible support (an oracle experiment).

    python benchmarks/scatterbrain_oracle.py [--images 05,08,09] [--budgets 256,1024]
        [--beta 4] [--seeds 3] [--threads 2] [--out scatterbrain_oracle.json]

Same tokens, values and temperature as ``benchmarks/fidelity.py`` (128 x 128 centre crops,
unit-norm centred 5 x 5 patches, ``beta = 4`` is its diffuse temperature).  Scatterbrain's
support is replaced by the *exact* top-``s`` keys of every row (found by brute force, which no
real method has), at three splits of the budget ``B = s + m`` between the support (``s``) and the
random features (``m``); ``performer`` gets all ``B`` features.  The support is the only thing a
sparse part can choose, so the best of these errors bounds what any support (local, LSH,
PatchMatch) can reach with these features: if it stays above half of ``performer``'s, the
"half the error of the better baseline" claim cannot be met on these tokens by choosing the
support.  The oracle is wired in by substituting the exact matches for PatchMatch's field
(``support="patchmatch"``, ``window_radius=0``).  Writes ``results/<out>``.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import centre_crop, machine, set12_images, write_json
from fidelity import tokens

import nlattn
from nlattn.attention import scram
from nlattn.metrics import relative_error


def exact_top(flat: np.ndarray, count: int) -> np.ndarray:
    """Each row's ``count`` keys of largest ``q . k`` (best first), by blocks of 1024 rows."""
    n = flat.shape[0]
    top = np.empty((n, count), np.int32)
    for lo in range(0, n, 1024):
        s = flat[lo:lo + 1024] @ flat.T
        idx = np.argpartition(-s, count - 1, axis=1)[:, :count]
        order = np.argsort(-np.take_along_axis(s, idx, 1), axis=1)
        top[lo:lo + 1024] = np.take_along_axis(idx, order, 1)
    return top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="05,08,09")
    parser.add_argument("--budgets", default="256,1024")
    parser.add_argument("--beta", type=float, default=4.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="scatterbrain_oracle.json")
    args = parser.parse_args()
    import numba

    numba.set_num_threads(args.threads)
    images = set12_images()
    budgets = [int(b) for b in args.budgets.split(",")]
    field = scram._field
    rows = []
    try:
        for name in args.images.split(","):
            crop = centre_crop(images[name] / 255.0, 128)
            q = tokens(crop, "patch")
            height, width, _ = q.shape
            values = (crop - crop.mean())[:, :, None].astype(np.float32)
            exact = nlattn.attention(q, q, values, "exact", scale=args.beta)
            top = exact_top(q.reshape(height * width, -1), 3 * max(budgets) // 4)
            for budget in budgets:
                splits = [("performer", None, budget)]
                splits += [(f"oracle s={s} m={budget - s}", s, budget - s)
                           for s in (budget // 4, budget // 2, 3 * budget // 4)]
                for label, support, n_features in splits:
                    if support is None:
                        method, params = "performer", {"n_features": n_features}
                    else:
                        method = "scatterbrain"
                        params = {"support": "patchmatch", "window_radius": 0, "k": support,
                                  "n_features": n_features}
                        matches = top[:, :support].reshape(height, width, support).copy()
                        scram._field = lambda *a, matches=matches: matches
                    errors = [relative_error(nlattn.attention(q, q, values, method,
                                                              scale=args.beta, seed=seed,
                                                              **params), exact)
                              for seed in range(args.seeds)]
                    rows.append({"image": name, "budget": budget, "label": label,
                                 "support": support, "n_features": n_features,
                                 "relative_error": float(np.mean(errors))})
                    print(f"{name} B={budget:5d} {label:22s} {np.mean(errors):.3f}", flush=True)
    finally:
        scram._field = field
    summary = {}
    for budget in budgets:
        mean = {}
        for row in rows:
            if row["budget"] == budget:
                mean.setdefault(row["label"], []).append(row["relative_error"])
        mean = {label: float(np.mean(v)) for label, v in mean.items()}
        best = min((v, k) for k, v in mean.items() if k != "performer")
        summary[budget] = {"mean": mean, "best_oracle": best[1],
                           "best_oracle_over_performer": best[0] / mean["performer"]}
        print(f"B={budget}: performer {mean['performer']:.3f}, best oracle {best[1]} "
              f"{best[0]:.3f} = {best[0] / mean['performer']:.2f} of performer's error")
    path = write_json(args.out, {"machine": machine(), "args": vars(args), "rows": rows,
                                 "summary": summary})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
