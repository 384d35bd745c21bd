"""SCRAM: softmax attention on a sparse support found by PatchMatch (Calian et al. 2019).

Attention maps of natural images are sparse and spatially coherent, so each query's mass sits
around a few keys.  PatchMatch finds the ``k`` keys of largest score for every query in
O(n log n) (:func:`nlattn.knn_patchmatch`); the softmax is then taken exactly over the union of the
``(2r + 1)**2`` windows around those matches (and, optionally, the query's own window), with a
float64 log-sum-exp.  The paper gives no code and no support size: ``k``, ``window_radius``,
``local_radius`` and ``n_iters`` are parameters (their effect is measured in
``benchmarks/scram.py``).

Ties: the ``k`` matches are the ``k`` best keys in PatchMatch's total order, a higher score
first and, on equal scores, the smaller flat key index first (:func:`nlattn.knn_patchmatch`).
When many keys tie at the top (a flat sky, duplicated tokens, zero tokens whose scores are all
0), the support holds ``k`` of them (the smallest indices among the tied keys PatchMatch met)
while exact attention spreads the mass evenly over all of them; ``local_radius`` adds the
query's own neighbourhood in such regions.
:func:`nlattn.metrics.recall_at_k` counts any ``k`` of the tied keys as a perfect answer.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from nlattn._jit import jit

#: Defaults of the method's parameters.
DEFAULTS = {"k": 16, "window_radius": 1, "local_radius": None, "n_iters": None}


@jit
def _support(y, x, matches, height, width, window_radius, local_radius, buffer):
    """Sorted, duplicate-free flat indices of a query's support; returns their count."""
    n = 0
    r = window_radius
    for m in range(matches.shape[0]):
        j = matches[m]
        if j < 0:
            continue
        jy = j // width
        jx = j - jy * width
        for yy in range(max(0, jy - r), min(height, jy + r + 1)):
            for xx in range(max(0, jx - r), min(width, jx + r + 1)):
                buffer[n] = yy * width + xx
                n += 1
    if local_radius >= 0:
        for yy in range(max(0, y - local_radius), min(height, y + local_radius + 1)):
            for xx in range(max(0, x - local_radius), min(width, x + local_radius + 1)):
                buffer[n] = yy * width + xx
                n += 1
    buffer[:n].sort()
    unique = 0
    for t in range(n):
        if t == 0 or buffer[t] != buffer[t - 1]:
            buffer[unique] = buffer[t]
            unique += 1
    return unique


@jit
def _scores(q, keys_flat, support, n, scale, out):
    """``out[t] = scale * q . keys[support[t]]`` (float64); returns the maximum."""
    best = -np.inf
    d = q.shape[0]
    for t in range(n):
        key = keys_flat[support[t]]
        acc = 0.0
        for c in range(d):
            acc += q[c] * key[c]
        s = scale * acc
        out[t] = s
        best = max(best, s)
    return best


def _capacity(k: int, window_radius: int, local_radius: int) -> int:
    side = 2 * window_radius + 1
    local = (2 * local_radius + 1) ** 2 if local_radius >= 0 else 0
    return k * side * side + local


@jit(parallel=True)
def _scram_attend(queries, keys_flat, values_flat, matches, scale, window_radius, local_radius,
                  capacity, out):
    height, width = queries.shape[0], queries.shape[1]
    dv = values_flat.shape[1]
    for y in prange(height):
        support = np.empty(capacity, np.int64)
        scores = np.empty(capacity, np.float64)
        acc = np.empty(dv, np.float64)
        for x in range(width):
            n = _support(y, x, matches[y, x], height, width, window_radius, local_radius, support)
            best = _scores(queries[y, x], keys_flat, support, n, scale, scores)
            acc[:] = 0.0
            total = 0.0
            for t in range(n):
                w = np.exp(scores[t] - best)
                total += w
                v = values_flat[support[t]]
                for c in range(dv):
                    acc[c] += w * v[c]
            for c in range(dv):
                out[y, x, c] = acc[c] / total


@jit(parallel=True)
def _scram_rows(queries, keys_flat, matches, positions, scale, window_radius, local_radius,
                capacity, out):
    height, width = queries.shape[0], queries.shape[1]
    for m in prange(positions.shape[0]):
        y, x = positions[m, 0], positions[m, 1]
        support = np.empty(capacity, np.int64)
        scores = np.empty(capacity, np.float64)
        n = _support(y, x, matches[y, x], height, width, window_radius, local_radius, support)
        best = _scores(queries[y, x], keys_flat, support, n, scale, scores)
        total = 0.0
        for t in range(n):
            scores[t] = np.exp(scores[t] - best)
            total += scores[t]
        out[m, :, :] = 0.0
        for t in range(n):
            j = support[t]
            out[m, j // width, j % width] = scores[t] / total


def _field(queries, keys, scale, seed, k, n_iters):
    from nlattn.patchmatch import knn_patchmatch

    n_keys = keys.shape[0] * keys.shape[1]
    return knn_patchmatch(queries, keys, k=min(k, n_keys), n_iters=n_iters, seed=seed,
                          exclude_self=False, scale=scale).indices


def attend(queries, keys, values, scale, seed, k=16, window_radius=1, local_radius=None,
           n_iters=None):
    """SCRAM attention output ``(H, W, dv)`` float32 (arguments validated by the caller).

    ``k`` matches per query (PatchMatch, ``n_iters`` iterations: None for its default), each
    contributing the ``(2 window_radius + 1)**2`` keys around it; ``local_radius`` (None: off)
    adds the query's own window.

    Notes
    -----
    O(n log n d) for PatchMatch plus O(n k (2r+1)^2 d) for the sparse softmax; O(n k) memory.
    """
    local_radius = -1 if local_radius is None else local_radius
    matches = _field(queries, keys, scale, seed, k, n_iters)
    height, width, d = keys.shape
    out = np.empty(queries.shape[:2] + (values.shape[2],), np.float32)
    _scram_attend(queries, keys.reshape(-1, d), values.reshape(-1, values.shape[2]), matches,
                  np.float64(scale), window_radius, local_radius,
                  _capacity(matches.shape[2], window_radius, local_radius), out)
    return out


def rows(queries, keys, positions, scale, seed, k=16, window_radius=1, local_radius=None,
         n_iters=None):
    """SCRAM attention rows ``(m, H, W)`` float32 for the query ``positions`` (validated)."""
    local_radius = -1 if local_radius is None else local_radius
    matches = _field(queries, keys, scale, seed, k, n_iters)
    height, width, d = keys.shape
    out = np.empty((positions.shape[0], height, width), np.float32)
    _scram_rows(queries, keys.reshape(-1, d), matches, np.ascontiguousarray(positions, np.int64),
                np.float64(scale), window_radius, local_radius,
                _capacity(matches.shape[2], window_radius, local_radius), out)
    return out
