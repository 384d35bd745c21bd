"""Performer attention (method ``"performer"``): low rank through positive random features.

Definition (the naive twins ``favor_estimates`` and ``weighted_attention`` in
``tests/naive.py`` implement it given the same projections): with the features of
:mod:`nlattn.attention._random_features`, ``exp(scale q_i.k_j)`` is estimated by
``phi(q_i).phi(k_j)`` (unbiased over the seeds), and

    out_i = phi(q_i) . (sum_j phi(k_j) v_j^T) / phi(q_i) . (sum_j phi(k_j))

so the n x n matrix is never formed: one pass over the keys builds the ``m`` and ``m x dv``
sums (float64), one pass over the queries applies them.  Every feature is positive, so each
output is a convex combination of the values: the estimate of the normaliser can be small but
never negative.  Key features are shifted by one global maximum (log-space stabilisation), and
each query combines its log-features with the logs of the key sums, ``out_i = sum_f w_f
(kv_f / z_f) / sum_f w_f`` with ``w_f = exp(log phi_f(q_i) + log z_f - max_f)``: the largest
weight is 1, so the ratio neither underflows nor overflows however large the scores.  A query
gets uniform weights, the mean of the values, only when no feature has any key mass (every key
feature underflowed below the global maximum, which takes score differences beyond ~700).

Good for diffuse maps, poor for peaked ones: the relative variance of one feature grows like
``exp(|x + y|^2)`` for the balanced tokens ``x``, ``y`` (FAVOR++'s optimal ``A`` lowers it but
does not change that), and ``|x + y|^2`` grows with the temperature.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from nlattn._jit import jit
from nlattn.attention import _random_features as rf

#: Defaults of the method's parameters.
DEFAULTS = {"n_features": 256}


@jit
def _clip_into(out, low, high):
    for c in range(out.shape[0]):
        out[c] = min(max(out[c], low[c]), high[c])


@jit(parallel=True)
def _performer_attend(queries, mean, token_map, projections, log_z, kv_mean, mean_value, low,
                      high, chunk, out):
    """``out[i] = phi(q_i).kv / phi(q_i).z`` for flat float32 ``queries`` (n, d); ``out`` (n, dv)
    float32.

    Formed in log space: with ``l_f`` the query's log-features, ``log_z`` (m,) the log key sums
    (``-inf`` where a feature has no key mass) and ``kv_mean`` (m, dv) = ``kv / z``, the output
    is ``sum_f w_f kv_mean_f / sum_f w_f`` with ``w_f = exp(l_f + log z_f - max)``: the largest
    weight is 1, so nothing underflows however far the query's features lie from the keys'.
    ``low``/``high`` are the per-channel range of the values (the output is a convex combination
    of them: clipping only removes rounding), ``mean_value`` their mean (the output when no
    feature has key mass)."""
    n, d = queries.shape
    m, dv = kv_mean.shape
    n_chunks = (n + chunk - 1) // chunk
    for c in prange(n_chunks):
        centred = np.empty(d)
        mapped = np.empty(token_map.shape[1])
        logs = np.empty(m)
        acc = np.empty(dv)
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            rf.log_features(queries[i], mean, token_map, projections, 0.0, centred, mapped,
                            logs)
            best = -np.inf
            for f in range(m):
                logs[f] += log_z[f]
                best = max(best, logs[f])
            if best == -np.inf:  # no feature has key mass: uniform weights
                for a in range(dv):
                    acc[a] = mean_value[a]
            else:
                den = 0.0
                acc[:] = 0.0
                for f in range(m):
                    w = math.exp(logs[f] - best)
                    den += w
                    row = kv_mean[f]
                    for a in range(dv):
                        acc[a] += w * row[a]
                for a in range(dv):
                    acc[a] /= den
            _clip_into(acc, low, high)
            o = out[i]
            for a in range(dv):
                o[a] = np.float32(acc[a])


@jit(parallel=True)
def _performer_rows(phi_q, keys, mean, token_map, projections, key_weight, shift, chunk, out):
    """Unnormalised rows ``out[r, j] = phi~(q_r).phi~(k_j)`` (rows, n) float64 for the query
    features ``phi_q`` (rows, m) float64, the key features computed on the fly per chunk of
    keys; returns the row sums (float64, reduced in chunk order).  Float64, because a row's
    entries can all lie below float32's range while its sum is still positive."""
    n, d = keys.shape
    n_rows, m = phi_q.shape
    n_chunks = (n + chunk - 1) // chunk
    sums = np.zeros((n_chunks, n_rows))
    for c in prange(n_chunks):
        centred = np.empty(d)
        mapped = np.empty(token_map.shape[1])
        phi = np.empty(m)
        part = sums[c]
        for j in range(c * chunk, min(n, (c + 1) * chunk)):
            rf.shifted_key_features(keys[j], mean, token_map, projections, key_weight, shift,
                                    centred, mapped, phi)
            for r in range(n_rows):
                value = rf.dot(phi_q[r], phi)
                out[r, j] = value
                part[r] += value
    totals = np.zeros(n_rows)
    for c in range(n_chunks):
        for r in range(n_rows):
            totals[r] += sums[c, r]
    return totals


def selected_query_features(queries: np.ndarray, positions: np.ndarray, fmap: rf.FeatureMap,
                            n_features: int):
    """Features of the query pixels ``positions`` (y, x): ``(phi, log_scale)``, the features
    ``(rows, m)`` float64 shifted by their maximum and that shift plus the query's exact offset
    ``beta_i`` (float64 ``(rows,)``)."""
    d = queries.shape[2]
    phi = np.empty((positions.shape[0], n_features))
    log_scale = np.empty(positions.shape[0])
    centred = np.empty(d)
    mapped = np.empty(fmap.query_map.shape[1])
    for r, (y, x) in enumerate(positions):
        token = queries[y, x]
        log_scale[r] = rf.query_features(token, fmap.query_mean, fmap.query_map,
                                         fmap.projections, centred, mapped, phi[r])
        log_scale[r] += rf.dot(token, fmap.query_offset) - fmap.offset
    return phi, log_scale


def value_stats(values: np.ndarray):
    """Per-channel mean, minimum and maximum of the values (float64)."""
    flat = values.reshape(-1, values.shape[-1])
    return (flat.mean(axis=0, dtype=np.float64), flat.min(axis=0).astype(np.float64),
            flat.max(axis=0).astype(np.float64))


def attend(queries: np.ndarray, keys: np.ndarray, values: np.ndarray, scale: float, seed: int,
           *, n_features: int = 256) -> np.ndarray:
    """Performer attention of float32 C-contiguous ``(H, W, d)`` / ``(H, W, dv)`` arrays.

    Returns ``(H, W, dv)`` float32.  O(n m d) time, O(n d + m dv) memory: neither the key
    features nor the n x n matrix are stored.
    """
    height, width, d = queries.shape
    dv = values.shape[2]
    q = queries.reshape(-1, d)
    k = keys.reshape(-1, d)
    v = values.reshape(-1, dv)
    fmap = rf.feature_map(q, k, scale, n_features, seed)
    shift = rf.key_shift(k, fmap, n_features)
    z = np.empty(n_features)
    kv = np.empty((n_features, dv))
    rf.key_sums(k, v, fmap.key_mean, fmap.key_map, fmap.projections, fmap.key_weight, shift,
                n_features, rf.CHUNK, z, kv)
    mean_value, low, high = value_stats(values)
    with np.errstate(divide="ignore"):
        log_z = np.log(z)  # -inf for a feature without key mass, whose kv row is all zero
    kv_mean = kv / np.where(z > 0.0, z, 1.0)[:, None]
    out = np.empty((height * width, dv), np.float32)
    _performer_attend(q, fmap.query_mean, fmap.query_map, fmap.projections, log_z, kv_mean,
                      mean_value, low, high, rf.CHUNK, out)
    return out.reshape(height, width, dv)


def rows(queries: np.ndarray, keys: np.ndarray, positions: np.ndarray, scale: float, seed: int,
         *, n_features: int = 256) -> np.ndarray:
    """Performer rows of the query pixels ``positions`` (m, 2) as ``(m, H, W)`` float32.

    Row ``r`` is ``phi(q_r).phi(k_j)`` over every key ``j``, divided by its sum: non-negative
    (positive features), summing to 1; uniform where the estimated normaliser underflows.
    O(n m d) time plus O(n m) per row; no key features are stored.
    """
    height, width, d = queries.shape
    n = height * width
    q = queries.reshape(-1, d)
    k = keys.reshape(-1, d)
    fmap = rf.feature_map(q, k, scale, n_features, seed)
    shift = rf.key_shift(k, fmap, n_features)
    phi_q, _ = selected_query_features(queries, positions, fmap, n_features)
    weights = np.empty((positions.shape[0], n))
    if positions.shape[0]:
        totals = _performer_rows(phi_q, k, fmap.key_mean, fmap.key_map, fmap.projections,
                                 fmap.key_weight, shift, rf.CHUNK, weights)
        normalise_rows(weights, totals)
    return weights.astype(np.float32).reshape(-1, height, width)


def normalise_rows(weights: np.ndarray, totals: np.ndarray) -> None:
    """Divide each row of ``weights`` (rows, n) float64 by its total in place; a row whose
    total is not positive (or whose reciprocal overflows) becomes uniform."""
    with np.errstate(over="ignore", divide="ignore"):
        inverses = 1.0 / totals
    for r, inverse in enumerate(inverses):
        if totals[r] > 0.0 and np.isfinite(inverse):
            weights[r] *= inverse
        else:
            weights[r] = 1.0 / weights.shape[1]
