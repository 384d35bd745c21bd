"""LSH attention (method ``"lsh"``): exact softmax inside hashed buckets (Kitaev et al. 2020).

Definition (the naive twins ``lsh_supports`` and ``support_weights`` in
``tests/naive.py`` implement it given the same bucket assignment): for ``n_hashes``
rounds ``r``, every key gets a bucket ``key_bucket[r, j]`` and every query a bucket
``query_bucket[r, i]`` (:func:`bucket_assignment`); query ``i`` attends, with an exact softmax
(float64 log-sum-exp), to the union over rounds of the keys sharing its bucket,

    S_i = { j : key_bucket[r, j] == query_bucket[r, i] for some r },

each key counted once however many rounds bring it (duplicates are removed, which is what the
Reformer's count correction approximates).  Zero weight outside ``S_i``.

Hashing.  The Reformer shares queries and keys (``q = k``), so it can hash both with the same
angular LSH.  Here ``q != k`` in general (NLM tokens are ``[p, 1]`` and ``[2p, -|p|^2] / h^2``),
and the angle between ``q`` and ``k`` says little about ``q.k``.  We therefore turn the
maximum-inner-product search into a nearest-neighbour search with an asymmetric embedding
(the reduction of Bachrach et al. and Neyshabur & Srebro, applied to the residual only):

1. the scores are rewritten exactly as in :mod:`nlattn.attention._random_features` (centred,
   balanced tokens ``x_i``, ``y_j`` and a per-key log-weight ``u_j``): up to a term of the query
   alone, ``scale q_i.k_j = x_i.y_j + u_j = -|x_i - y_j|^2 / 2 + |x_i|^2 / 2 + r_j`` with the
   residual ``r_j = u_j + |y_j|^2 / 2``;
2. queries are embedded as ``Q_i = [x_i, 0]`` and keys as ``K_j = [y_j, sqrt(2 (max r - r_j))]``,
   so that ``-|Q_i - K_j|^2 / 2 = scale q_i.k_j - |x_i|^2 / 2 - max r + const_i``: for every
   query, the nearest keys are exactly its highest-scoring keys.  For NLM tokens ``r_j = 0``
   (the score *is* minus half the patch distance) and the embedding is the balanced patch
   vectors themselves; for dot-product attention (``q = k``) it is the classic MIPS transform;
3. a random hyperplane through the embedding of a random key separates two points with a
   probability that grows with their distance along its normal, so points that share the
   side of many such hyperplanes are near each other (a data-dependent Euclidean LSH, like the
   splits of a random projection tree).

A round draws ``b = ceil(log2(n / bucket_size))`` such hyperplanes (at most 30, normals
Gaussian, each through a key drawn at random, all from :mod:`nlattn._rng`) and one more Gaussian
direction; each point's sort value is its ``b``-bit code (most significant first) plus a
tie-break in ``(0, 1)`` from the extra projection.  Keys sorted by that value are cut into
equal-size buckets of ``bucket_size`` (the last one may be smaller); a query belongs to the
bucket where its own value falls among the sorted keys.  Every query thus sees ``bucket_size``
keys per round, ``<= n_hashes * bucket_size`` in all.  With ``bucket_size >= n`` there is one
bucket: exact attention.  Ties: keys with equal sort values (duplicated or zero tokens have equal
embeddings, hence equal values) keep their index order (a stable sort), so a bucket boundary
that falls inside a run of equal keys puts the smaller indices in the earlier bucket; a query
equal to them falls in the bucket where the run starts.

References
----------
.. [1] N. Kitaev, L. Kaiser, A. Levskaya, "Reformer: the efficient Transformer", ICLR 2020.
.. [2] B. Neyshabur, N. Srebro, "On symmetric and asymmetric LSHs for inner product search",
   ICML 2015.
.. [3] Y. Bachrach et al., "Speeding up the Xbox recommender system using a Euclidean
   transformation for inner-product spaces", RecSys 2014.
.. [4] S. Dasgupta, Y. Freund, "Random projection trees and low dimensional manifolds",
   STOC 2008.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from nlattn._jit import jit
from nlattn._rng import randint
from nlattn.attention import _random_features as rf

#: Defaults of the method's parameters.
DEFAULTS = {"n_hashes": 2, "bucket_size": 64}
#: ``round`` counter base of :mod:`nlattn._rng` for the hyperplanes' normals (round ``r`` uses
#: ``LSH_STREAM + r``, ``r < 256``), apart from the feature projections.
LSH_STREAM = 0x15B00
#: ``round`` counter base for the keys the hyperplanes pass through.
ANCHOR_STREAM = LSH_STREAM + 256
#: Most hyperplanes a round draws (the codes must fit a float64 with room for the tie-break).
MAX_BITS = 30


# ---------------------------------------------------------------------------------------------
# Kernels


@jit(parallel=True)
def _key_residuals(keys, mean, token_map, key_weight, chunk, out):
    """``out[j] = u_j + |y_j|^2 / 2`` (float64) for the flat keys: the part of the score
    ``x.y + u_j = -|x - y|^2 / 2 + |x|^2 / 2 + out[j]`` that an L2 distance does not carry."""
    n, d = keys.shape
    d_out = token_map.shape[1]
    n_chunks = (n + chunk - 1) // chunk
    for c in prange(n_chunks):
        centred = np.empty(d)
        for j in range(c * chunk, min(n, (c + 1) * chunk)):
            key = keys[j]
            u = 0.0
            for a in range(d):
                centred[a] = key[a] - mean[a]
                u += key[a] * key_weight[a]
            total = 0.0
            for b in range(d_out):
                y = 0.0
                for a in range(d):
                    y += centred[a] * token_map[a, b]
                total += y * y
            out[j] = u + 0.5 * total


@jit
def _embed(token, mean, token_map, extra, centred, out):
    """``out = [(token - mean) @ token_map, extra]``."""
    d = token.shape[0]
    d_out = token_map.shape[1]
    for a in range(d):
        centred[a] = token[a] - mean[a]
    for b in range(d_out):
        acc = 0.0
        for a in range(d):
            acc += centred[a] * token_map[a, b]
        out[b] = acc
    out[d_out] = extra


@jit
def _sort_value(point, planes, thresholds):
    """A point's sort value: its code over the first ``b`` hyperplanes (bit ``t`` set when
    ``point.planes[:, t] >= thresholds[t]``, most significant first) plus a tie-break in
    (0, 1) from the last column of ``planes``."""
    dim, n_planes = planes.shape
    code = 0.0
    for t in range(n_planes):
        acc = 0.0
        for a in range(dim):
            acc += point[a] * planes[a, t]
        if t < n_planes - 1:
            code = 2.0 * code + (1.0 if acc >= thresholds[t] else 0.0)
        else:
            code += 0.5 + math.atan(acc) / math.pi
    return code


@jit(parallel=True)
def _hash_values(tokens, mean, token_map, residuals, top, planes, thresholds, chunk, out):
    """Sort values of the flat tokens embedded as queries ``[x_i, 0]`` (``residuals`` empty)
    or as keys ``[y_j, sqrt(2 (top - r_j))]``."""
    n, d = tokens.shape
    dim = planes.shape[0]
    is_key = residuals.shape[0] == n
    n_chunks = (n + chunk - 1) // chunk
    for c in prange(n_chunks):
        centred = np.empty(d)
        point = np.empty(dim)
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            extra = math.sqrt(max(0.0, 2.0 * (top - residuals[i]))) if is_key else 0.0
            _embed(tokens[i], mean, token_map, extra, centred, point)
            out[i] = _sort_value(point, planes, thresholds)


@jit
def bucket_union(i, query_bucket, orders, bucket_size, buffer, scratch):
    """Sorted, duplicate-free flat key indices of query ``i``'s buckets over all rounds, into
    ``buffer``; returns their count.  Each bucket of ``orders`` is sorted by key index
    (:func:`hash_rounds`), so the rounds are merged, not sorted.  ``buffer`` and ``scratch``
    hold at least ``min(n_hashes * bucket_size, n)`` entries."""
    n_rounds, n = orders.shape
    count = 0
    for r in range(n_rounds):
        start = query_bucket[r, i] * bucket_size
        stop = min(n, start + bucket_size)
        run = orders[r, start:stop]
        a = 0
        b = 0
        merged = 0
        while a < count or b < run.shape[0]:
            if b >= run.shape[0] or (a < count and buffer[a] < run[b]):
                value = buffer[a]
                a += 1
            else:
                value = run[b]
                if a < count and buffer[a] == value:
                    a += 1
                b += 1
            scratch[merged] = value
            merged += 1
        for t in range(merged):
            buffer[t] = scratch[t]
        count = merged
    return count


@jit
def support_scores(query, keys, support, count, scale, out):
    """``out[t] = scale * query.keys[support[t]]`` (float64) for ``t < count``; returns the
    maximum."""
    d = query.shape[0]
    best = -np.inf
    for t in range(count):
        key = keys[support[t]]
        acc = 0.0
        for c in range(d):
            acc += np.float64(query[c]) * np.float64(key[c])
        s = scale * acc
        out[t] = s
        best = max(best, s)
    return best


@jit(parallel=True)
def _lsh_attend(queries, keys, values, query_bucket, orders, bucket_size, scale, query_order,
                chunk, out):
    """Softmax of each flat query over its bucket union; ``out`` (n, dv) float32.  Queries are
    visited in ``query_order`` (by first-round bucket: neighbours share keys in cache)."""
    n = queries.shape[0]
    dv = values.shape[1]
    capacity = min(orders.shape[0] * bucket_size, n)
    n_chunks = (n + chunk - 1) // chunk
    for c in prange(n_chunks):
        support = np.empty(capacity, np.int64)
        scratch = np.empty(capacity, np.int64)
        scores = np.empty(capacity)
        acc = np.empty(dv)
        for t in range(c * chunk, min(n, (c + 1) * chunk)):
            i = query_order[t]
            count = bucket_union(i, query_bucket, orders, bucket_size, support, scratch)
            best = support_scores(queries[i], keys, support, count, scale, scores)
            total = 0.0
            acc[:] = 0.0
            for e in range(count):
                w = math.exp(scores[e] - best)
                total += w
                v = values[support[e]]
                for a in range(dv):
                    acc[a] += w * v[a]
            o = out[i]
            for a in range(dv):
                o[a] = np.float32(acc[a] / total)


@jit(parallel=True)
def _lsh_rows(queries, keys, flat_positions, query_bucket, orders, bucket_size, scale, out):
    """Rows ``out[p]`` (n,), zero on entry, of the flat query ``flat_positions[p]``."""
    capacity = min(orders.shape[0] * bucket_size, keys.shape[0])
    for p in prange(flat_positions.shape[0]):
        i = flat_positions[p]
        support = np.empty(capacity, np.int64)
        scratch = np.empty(capacity, np.int64)
        scores = np.empty(capacity)
        count = bucket_union(i, query_bucket, orders, bucket_size, support, scratch)
        best = support_scores(queries[i], keys, support, count, scale, scores)
        total = 0.0
        for t in range(count):
            scores[t] = math.exp(scores[t] - best)
            total += scores[t]
        row = out[p]
        for t in range(count):
            row[support[t]] = np.float32(scores[t] / total)


# ---------------------------------------------------------------------------------------------
# Python layer


def _hyperplanes(dim: int, n_planes: int, seed: int, round_: int) -> np.ndarray:
    draws = np.empty(dim * n_planes)
    rf.gaussians(seed, LSH_STREAM + round_, draws)
    return draws.reshape(dim, n_planes)


def n_bits(n: int, bucket_size: int) -> int:
    """Hyperplanes per round: ``ceil(log2(n / bucket_size))`` (as many codes as buckets; finer
    codes measured worse recall), at most :data:`MAX_BITS`; 0 when one bucket holds every key."""
    n_buckets = -(-n // bucket_size)
    if n_buckets <= 1:
        return 0
    return min(MAX_BITS, math.ceil(math.log2(n_buckets)))


def hash_rounds(queries: np.ndarray, keys: np.ndarray, scale: float, seed: int, n_hashes: int,
                bucket_size: int):
    """Buckets of flat float32 ``(n, d)`` queries and keys: ``(query_bucket, orders)``.

    ``query_bucket`` (n_hashes, n) int64 is each query's bucket per round; ``orders``
    (n_hashes, n) int64 lists the keys by bucket, bucket ``b`` of round ``r`` being
    ``orders[r, b * bucket_size : (b + 1) * bucket_size]`` (sorted by key index).
    """
    n, d = keys.shape
    query_mean, key_mean, query_map, key_map, key_weight, *_ = rf.score_maps(queries, keys,
                                                                             scale)
    residuals = np.empty(n)
    _key_residuals(keys, key_mean, key_map, key_weight, rf.CHUNK, residuals)
    top = float(residuals.max())
    no_residuals = np.empty(0)
    dim = query_map.shape[1] + 1
    bits = n_bits(n, bucket_size)
    n_buckets = -(-n // bucket_size)
    query_bucket = np.empty((n_hashes, n), np.int64)
    orders = np.empty((n_hashes, n), np.int64)
    key_values = np.empty(n)
    query_values = np.empty(n)
    point = np.empty(dim)
    centred = np.empty(d)
    for r in range(n_hashes):
        planes = _hyperplanes(dim, bits + 1, seed, r)
        # each hyperplane passes through the embedding of a key drawn at random
        thresholds = np.empty(bits)
        for t in range(bits):
            j = int(randint(seed, t, ANCHOR_STREAM + r, n))
            extra = math.sqrt(max(0.0, 2.0 * (top - residuals[j])))
            _embed(keys[j], key_mean, key_map, extra, centred, point)
            thresholds[t] = point @ planes[:, t]
        _hash_values(keys, key_mean, key_map, residuals, top, planes, thresholds, rf.CHUNK,
                     key_values)
        _hash_values(queries, query_mean, query_map, no_residuals, top, planes, thresholds,
                     rf.CHUNK, query_values)
        order = np.argsort(key_values, kind="stable")
        position = np.searchsorted(key_values[order], query_values)
        full = (n // bucket_size) * bucket_size  # each bucket's keys by index, for merging
        order[:full] = np.sort(order[:full].reshape(-1, bucket_size), axis=1).ravel()
        order[full:] = np.sort(order[full:])
        orders[r] = order
        query_bucket[r] = np.minimum(position // bucket_size, n_buckets - 1)
    return query_bucket, orders


def bucket_assignment(queries: np.ndarray, keys: np.ndarray, scale: float, seed: int,
                      n_hashes: int = 2, bucket_size: int = 64):
    """The buckets of every query and key, round by round.

    Parameters
    ----------
    queries, keys : ndarray, shape (H, W, d)
        Float32 C-contiguous token grids.
    scale : float
        Score scale (> 0).
    seed : int
        Seed of the hyperplanes.
    n_hashes : int
        Rounds.
    bucket_size : int
        Keys per bucket.

    Returns
    -------
    query_bucket, key_bucket : ndarray, shape (n_hashes, n), int64
        Bucket of each flat query / key ``y * W + x`` in each round; query ``i`` attends to the
        keys ``j`` with ``key_bucket[r, j] == query_bucket[r, i]`` for some ``r``.

    Notes
    -----
    O(n_hashes n (d b + log n)) time for ``b`` hyperplanes (:func:`n_bits`), O(n_hashes n)
    memory.
    """
    d = queries.shape[-1]
    query_bucket, orders = hash_rounds(queries.reshape(-1, d), keys.reshape(-1, d), scale, seed,
                                       n_hashes, bucket_size)
    key_bucket = np.empty_like(orders)
    ranks = np.arange(orders.shape[1]) // bucket_size
    for r in range(orders.shape[0]):
        key_bucket[r, orders[r]] = ranks
    return query_bucket, key_bucket


def attend(queries: np.ndarray, keys: np.ndarray, values: np.ndarray, scale: float, seed: int,
           *, n_hashes: int = 2, bucket_size: int = 64) -> np.ndarray:
    """LSH attention of float32 C-contiguous ``(H, W, d)`` / ``(H, W, dv)`` arrays.

    Returns ``(H, W, dv)`` float32.  O(n_hashes n (d b + log n + bucket_size (d + dv))) time,
    O(n_hashes n) memory.
    """
    height, width, d = queries.shape
    dv = values.shape[2]
    q = queries.reshape(-1, d)
    k = keys.reshape(-1, d)
    query_bucket, orders = hash_rounds(q, k, scale, seed, n_hashes, bucket_size)
    out = np.empty((height * width, dv), np.float32)
    query_order = np.argsort(query_bucket[0], kind="stable")
    _lsh_attend(q, k, values.reshape(-1, dv), query_bucket, orders, min(bucket_size, q.shape[0]),
                float(scale), query_order, 256, out)
    return out.reshape(height, width, dv)


def rows(queries: np.ndarray, keys: np.ndarray, positions: np.ndarray, scale: float, seed: int,
         *, n_hashes: int = 2, bucket_size: int = 64) -> np.ndarray:
    """LSH rows of the query pixels ``positions`` (m, 2) as ``(m, H, W)`` float32: each query's
    softmax over its bucket union, zero elsewhere."""
    height, width, d = queries.shape
    q = queries.reshape(-1, d)
    k = keys.reshape(-1, d)
    query_bucket, orders = hash_rounds(q, k, scale, seed, n_hashes, bucket_size)
    out = np.zeros((positions.shape[0], height * width), np.float32)
    flat = np.ascontiguousarray(positions[:, 0] * width + positions[:, 1], dtype=np.int64)
    if positions.shape[0]:
        _lsh_rows(q, k, flat, query_bucket, orders, min(bucket_size, q.shape[0]), float(scale),
                  out)
    return out.reshape(-1, height, width)
