"""Scatterbrain attention (method ``"scatterbrain"``): sparse + low rank (Chen et al. 2021).

Definition (the naive twin ``scatterbrain_attention`` in ``tests/naive.py`` implements
it given the same features and support): with the positive random features ``phi`` of
:mod:`nlattn.attention._random_features` (``phi(q_i).phi(k_j)`` estimates ``exp(s_ij)``,
``s_ij = scale q_i.k_j``, without bias) and a support ``S_i`` of keys for each query, the
unnormalised weights are

    w_ij = phi(q_i).phi(k_j) + 1[j in S_i] (exp(s_ij) - phi(q_i).phi(k_j))

that is, exact on the support and the low-rank estimate elsewhere: the correction uses the *same*
features as the low-rank term, so the estimate stays unbiased and is exact wherever the support
reaches (a support covering every key gives exact attention).  Then
``out_i = sum_j w_ij v_j / sum_j w_ij``.  Since the features are positive, every ``w_ij`` is
positive: the rows (:func:`rows`) have no negative entries and sum to 1.

Supports (``support``):

- ``"local"``: the ``(2r+1) x (2r+1)`` window around the query pixel, ``r = window_radius``
  (default 3), clipped to the grid.  The reference code's local support is a 1-D band of the
  sequence; on an image the neighbours of a pixel are a 2-D window.
- ``"lsh"``: the union of the query's LSH buckets over ``n_hashes`` rounds of ``bucket_size``
  keys, as the ``"lsh"`` method (:mod:`nlattn.attention.lsh`).
- ``"patchmatch"``: SCRAM's support, the union of the ``(2r+1)^2`` windows (``r =
  window_radius``, default 1) around the ``k`` best keys found by PatchMatch (``n_iters``
  iterations), as the ``"scram"`` method.

Algorithm: the key features are computed once (``n x m`` float32, shifted by one global
maximum) with their sums ``z = sum_j phi(k_j)`` and ``KV = sum_j phi(k_j) v_j^T`` (float64).  For
each query: its support and exact scores ``s_ij``; its features (shifted by their own maximum:
log-scale ``l_i``); the low-rank mass and value sum off the support, as the totals minus the
support's part, ``B = phi.z - sum_S phi.phi_j`` and ``N = phi.KV - sum_S (phi.phi_j) v_j``
(float64); then everything is put on one per-query shift ``c_i = max(max_S s_ij, l_i +
log B)``:

    out_i = (sum_S exp(s_ij - c_i) v_j + exp(l_i - c_i) N) / (sum_S exp(s_ij - c_i)
             + exp(l_i - c_i) B)

The off-support mass ``B`` is a sum of positive terms, but computed as a difference it can go
slightly below zero by rounding when the support holds almost all of the features' mass (for
instance a support covering everything): like the reference code, which clamps it at
``1e-24`` before taking its log, we clamp ``B`` at 0, and then drop ``N`` too.  ``N / B`` is a
weighted average of the values off the support, so it is clipped into their range, which
removes the rounding of the subtraction when ``B`` is small.  The denominator is at least 1.

References
----------
.. [1] B. Chen, T. Dao, E. Winsor, Z. Song, A. Rudra, C. Re, "Scatterbrain: unifying sparse and
   low-rank attention approximation", NeurIPS 2021 (reference code: HazyResearch/fly,
   ``SBLocalAttention``).
.. [2] K. Choromanski et al., "Rethinking attention with Performers", ICLR 2021.
.. [3] N. Kitaev, L. Kaiser, A. Levskaya, "Reformer: the efficient Transformer", ICLR 2020.
.. [4] D. Calian, P. Roelants, J. Cali, B. Carr, K. Dubba, J. Reid, D. Zhang, "SCRAM:
   spatially coherent randomized attention maps", arXiv:1905.10308, 2019.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from nlattn._jit import jit
from nlattn._validate import check_choice
from nlattn.attention import _random_features as rf
from nlattn.attention import lsh, scram
from nlattn.attention.performer import selected_query_features, value_stats

#: Defaults of the method's parameters (``window_radius`` None: 3 for the local support, 1 for
#: the PatchMatch support).
DEFAULTS = {"n_features": 128, "support": "local", "window_radius": None, "n_hashes": 2,
            "bucket_size": 64, "k": 16, "n_iters": None}
#: The supports, in the order of their kernel codes.
SUPPORTS = ("local", "lsh", "patchmatch")
#: Default window radius per support.
WINDOW_RADIUS = {"local": 3, "lsh": 0, "patchmatch": 1}
#: Queries per work item of the parallel loop.
QUERY_CHUNK = 256


# ---------------------------------------------------------------------------------------------
# Kernels


@jit
def _window(i, height, width, r, buffer):
    """Flat indices (sorted) of the ``(2r+1)^2`` window around flat pixel ``i``, clipped."""
    y = i // width
    x = i - y * width
    count = 0
    for yy in range(max(0, y - r), min(height, y + r + 1)):
        for xx in range(max(0, x - r), min(width, x + r + 1)):
            buffer[count] = yy * width + xx
            count += 1
    return count


@jit
def support_of(kind, i, height, width, window_radius, matches, query_bucket, orders,
               bucket_size, buffer, scratch):
    """Sorted, duplicate-free support of flat query ``i`` into ``buffer``; returns its size.

    ``kind`` is the index of the support in :data:`SUPPORTS`; the arrays of the other kinds
    are not read.  ``scratch`` is a second buffer of the same size.
    """
    if kind == 0:
        return _window(i, height, width, window_radius, buffer)
    if kind == 1:
        return lsh.bucket_union(i, query_bucket, orders, bucket_size, buffer, scratch)
    y = i // width
    x = i - y * width
    return scram._support(y, x, matches[y, x], height, width, window_radius, -1, buffer)


@jit
def _support_features(phi, phi_k, support, count, products):
    """``products[t] = phi . phi_k[support[t]]`` (float64); returns their sum."""
    m = phi.shape[0]
    total = 0.0
    for t in range(count):
        key = phi_k[support[t]]
        acc = 0.0
        for f in range(m):
            acc += phi[f] * key[f]
        products[t] = acc
        total += acc
    return total


@jit(parallel=True)
def _scatterbrain_attend(queries, keys, values, phi_k, z, kv, q_mean, q_map, projections,
                         query_offset, offset, key_shift, scale, kind, height, width,
                         window_radius, matches, query_bucket, orders, bucket_size, capacity,
                         low, high, query_order, chunk, out):
    """Scatterbrain output ``out`` (n, dv) float32 of flat float32 queries/keys/values, the
    queries visited in ``query_order`` (LSH: by first-round bucket, so that neighbours in the
    loop share keys in cache)."""
    n, d = queries.shape
    m, dv = kv.shape
    n_chunks = (n + chunk - 1) // chunk
    for c in prange(n_chunks):
        support = np.empty(capacity, np.int64)
        scratch = np.empty(capacity, np.int64)
        scores = np.empty(capacity)
        products = np.empty(capacity)
        centred = np.empty(d)
        mapped = np.empty(q_map.shape[1])
        phi = np.empty(m)
        exact = np.empty(dv)
        rest = np.empty(dv)
        for e in range(c * chunk, min(n, (c + 1) * chunk)):
            i = query_order[e]
            count = support_of(kind, i, height, width, window_radius, matches, query_bucket,
                               orders, bucket_size, support, scratch)
            best = lsh.support_scores(queries[i], keys, support, count, scale, scores)
            log_scale = rf.query_features(queries[i], q_mean, q_map, projections, centred,
                                          mapped, phi)
            log_scale += key_shift + rf.dot(queries[i], query_offset) - offset
            # low-rank mass and value sum off the support: totals minus the support's part
            mass = -_support_features(phi, phi_k, support, count, products)
            for a in range(dv):
                rest[a] = 0.0
            for t in range(count):
                p = products[t]
                v = values[support[t]]
                for a in range(dv):
                    rest[a] -= p * v[a]
            for f in range(m):
                p = phi[f]
                mass += p * z[f]
                row = kv[f]
                for a in range(dv):
                    rest[a] += p * row[a]
            shift = best
            if mass > 0.0:
                log_mass = log_scale + math.log(mass)
                shift = max(best, log_mass)
                for a in range(dv):  # a weighted average of values: inside their range
                    rest[a] = min(max(rest[a] / mass, low[a]), high[a])
                low_rank = math.exp(log_mass - shift)
            else:  # clamped (rounding of the subtraction): no mass off the support
                low_rank = 0.0
            total = low_rank
            for a in range(dv):
                exact[a] = low_rank * rest[a]
            for t in range(count):
                w = math.exp(scores[t] - shift)
                total += w
                v = values[support[t]]
                for a in range(dv):
                    exact[a] += w * v[a]
            o = out[i]
            for a in range(dv):
                o[a] = np.float32(exact[a] / total)


@jit(parallel=True)
def _scatterbrain_rows(queries, keys, phi_q, log_scales, phi_k, flat_positions, scale, kind,
                       height, width, window_radius, matches, query_bucket, orders, bucket_size,
                       capacity, chunk, out):
    """Rows ``out[p]`` (n,) float32 of the flat queries ``flat_positions[p]``: exact weights on
    the support, the features' estimate elsewhere, divided by their sum.  ``phi_q`` (rows, m)
    and ``log_scales`` (rows,) are the queries' shifted features and full log-scales.  A row's
    low-rank products are kept in float64 until they are normalised: they can all lie below
    float32's range while their sum is still positive."""
    n = phi_k.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    products_row = np.empty(n)
    support = np.empty(capacity, np.int64)
    scratch = np.empty(capacity, np.int64)
    scores = np.empty(capacity)
    products = np.empty(capacity)
    sums = np.empty(n_chunks)
    for p in range(flat_positions.shape[0]):
        i = flat_positions[p]
        phi = phi_q[p]
        row = out[p]
        for c in prange(n_chunks):  # low-rank estimate over every key
            total = 0.0
            for j in range(c * chunk, min(n, (c + 1) * chunk)):
                key = phi_k[j]
                acc = 0.0
                for f in range(phi.shape[0]):
                    acc += phi[f] * key[f]
                products_row[j] = acc
                total += acc
            sums[c] = total
        mass = 0.0
        for c in range(n_chunks):
            mass += sums[c]
        count = support_of(kind, i, height, width, window_radius, matches, query_bucket,
                           orders, bucket_size, support, scratch)
        best = lsh.support_scores(queries[i], keys, support, count, scale, scores)
        mass -= _support_features(phi, phi_k, support, count, products)
        shift = best
        low_rank = 0.0  # the features' mass off the support, on the common shift
        if mass > 0.0:
            log_mass = log_scales[p] + math.log(mass)
            shift = max(best, log_mass)
            low_rank = math.exp(log_mass - shift)
        total = low_rank
        for t in range(count):
            scores[t] = math.exp(scores[t] - shift)
            total += scores[t]
        share = low_rank / total  # of the row, off the support: each product / mass of it
        if share > 0.0:
            for c in prange(n_chunks):
                for j in range(c * chunk, min(n, (c + 1) * chunk)):
                    row[j] = np.float32(products_row[j] / mass * share)
        else:
            row[:] = 0.0
        for t in range(count):
            row[support[t]] = np.float32(scores[t] / total)


# ---------------------------------------------------------------------------------------------
# Python layer


def _prepare(queries, keys, scale, seed, n_features, support, window_radius, n_hashes,
             bucket_size, k, n_iters):
    """Check ``support``; the support's arrays, capacity and radius for the kernels."""
    check_choice("support", support, SUPPORTS)
    height, width, d = queries.shape
    n = height * width
    if window_radius is None:
        window_radius = WINDOW_RADIUS[support]
    matches = np.full((1, 1, 1), -1, np.int32)
    query_bucket = np.zeros((1, 1), np.int64)
    orders = np.zeros((1, 1), np.int64)
    if support == "local":
        side = 2 * window_radius + 1
        capacity = min(side, height) * min(side, width)
    elif support == "lsh":
        query_bucket, orders = lsh.hash_rounds(queries.reshape(n, d), keys.reshape(n, d),
                                               scale, seed, n_hashes, bucket_size)
        capacity = min(n_hashes * bucket_size, n)
    else:
        matches = scram._field(queries, keys, scale, seed, k, n_iters)
        capacity = scram._capacity(matches.shape[2], window_radius, -1)
    return (SUPPORTS.index(support), window_radius, matches, query_bucket, orders,
            min(bucket_size, n), capacity)


def attend(queries: np.ndarray, keys: np.ndarray, values: np.ndarray, scale: float, seed: int,
           *, n_features: int = 128, support: str = "local", window_radius: int | None = None,
           n_hashes: int = 2, bucket_size: int = 64, k: int = 16,
           n_iters: int | None = None) -> np.ndarray:
    """Scatterbrain attention of float32 C-contiguous ``(H, W, d)`` / ``(H, W, dv)`` arrays.

    ``support`` is ``"local"``, ``"lsh"`` or ``"patchmatch"`` (ValueError otherwise); the
    parameters of the other supports are ignored.  Returns ``(H, W, dv)`` float32.

    Notes
    -----
    O(n m d) for the features, O(n s (d + m + dv)) for the support of ``s`` keys a query (plus
    the LSH hashing or PatchMatch), O(n m) memory for the stored key features.
    """
    height, width, d = queries.shape
    dv = values.shape[2]
    n = height * width
    kind, radius, matches, query_bucket, orders, bucket, capacity = _prepare(
        queries, keys, scale, seed, n_features, support, window_radius, n_hashes, bucket_size,
        k, n_iters)
    q = queries.reshape(n, d)
    k_flat = keys.reshape(n, d)
    v = values.reshape(n, dv)
    fmap = rf.feature_map(q, k_flat, scale, n_features, seed)
    phi_k, shift = rf.stored_key_features(k_flat, fmap, n_features)
    z = np.empty(n_features)
    kv = np.empty((n_features, dv))
    rf.stored_key_sums(phi_k, v, rf.CHUNK, z, kv)
    _, low, high = value_stats(values)
    if support == "lsh":
        query_order = np.argsort(query_bucket[0], kind="stable")
    else:
        query_order = np.arange(n)
    out = np.empty((n, dv), np.float32)
    _scatterbrain_attend(q, k_flat, v, phi_k, z, kv, fmap.query_mean, fmap.query_map,
                         fmap.projections, fmap.query_offset, fmap.offset, shift, float(scale),
                         kind, height, width, radius, matches, query_bucket, orders, bucket,
                         capacity, low, high, query_order, QUERY_CHUNK, out)
    return out.reshape(height, width, dv)


def rows(queries: np.ndarray, keys: np.ndarray, positions: np.ndarray, scale: float, seed: int,
         *, n_features: int = 128, support: str = "local", window_radius: int | None = None,
         n_hashes: int = 2, bucket_size: int = 64, k: int = 16,
         n_iters: int | None = None) -> np.ndarray:
    """Scatterbrain rows of the query pixels ``positions`` (m, 2) as ``(m, H, W)`` float32.

    Exact softmax weights on the query's support, the random features' estimate on every other
    key, divided by their sum: every entry is >= 0 (positive features) and each row sums to 1.
    O(n m) per row after the O(n m d) key features.
    """
    height, width, d = queries.shape
    n = height * width
    kind, radius, matches, query_bucket, orders, bucket, capacity = _prepare(
        queries, keys, scale, seed, n_features, support, window_radius, n_hashes, bucket_size,
        k, n_iters)
    q = queries.reshape(n, d)
    k_flat = keys.reshape(n, d)
    fmap = rf.feature_map(q, k_flat, scale, n_features, seed)
    phi_k, shift = rf.stored_key_features(k_flat, fmap, n_features)
    phi_q, log_scales = selected_query_features(queries, positions, fmap, n_features)
    flat = np.ascontiguousarray(positions[:, 0] * width + positions[:, 1], dtype=np.int64)
    out = np.empty((positions.shape[0], n), np.float32)
    if positions.shape[0]:
        _scatterbrain_rows(q, k_flat, phi_q, log_scales + shift, phi_k, flat, float(scale), kind,
                           height, width, radius, matches, query_bucket, orders, bucket,
                           capacity, rf.CHUNK, out)
    return out.reshape(-1, height, width)
