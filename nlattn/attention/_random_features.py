"""Positive orthogonal random features of ``exp(scale q.k)``, shared by performer and scatterbrain.

Performer's FAVOR+ estimator (Choromanski et al. 2021), here in its variance-optimal FAVOR++
form (step 4 below): for ``w ~ N(0, I)``,

    E_w[ exp(w.x - |x|^2/2) exp(w.y - |y|^2/2) ] = exp(x.y),

so with ``m`` draws, ``phi(x)_f = exp(w_f.x - |x|^2/2) / sqrt(m)`` gives positive features whose
dot product ``phi(x).phi(y)`` is an unbiased estimate of ``exp(x.y)``.  Its relative variance is
``exp(|x + y|^2) - 1`` per draw, so it depends on how the vectors are presented, not only on
their dot product.  Before drawing features we therefore rewrite the scores exactly (the softmax
of every query is unchanged):

1. **Centring.**  With ``c`` the mean query and ``c'`` the mean key,
   ``scale q_i.k_j = scale (q_i - c).(k_j - c') + u_j + beta_i`` where ``u_j = scale c.k_j``
   depends on the key alone (an exact per-key log-weight, folded into the key features) and
   ``beta_i = scale (q_i.c' - c.c')`` on the query alone (it cancels in the normalisation).
   The tokens of :func:`nlattn.nlm_tokens`, ``q = [p, 1]`` and ``k = [2p, -|p|^2] / h^2``, are
   the case that matters: the large augmented coordinates (``1`` and ``-|p|^2 / h^2``) leave the
   random part entirely, which takes the estimator from useless (relative error about 1 on
   Set12 NLM tokens) to useful.
2. **Balancing.**  For any invertible ``A``, ``x.y = (A x).(A^-T y)``.  We take the ``A`` that
   minimises ``E|A x|^2 + E|A^-T y|^2`` over the centred queries ``x`` and keys ``y`` (its square
   is the matrix geometric mean of ``C_q^-1`` and ``C_k`` [3]_, ``C`` the second-moment
   matrices), which makes both sides equally large and so shrinks ``|x + y|^2``.  It is taken
   on the directions both sides span (:func:`shared_basis`): directions along which either
   side is constant carry no score (for NLM tokens the key's augmented coordinate, which the
   centred query never multiplies; for patches centred one by one the all-ones direction, which
   holds only float32 rounding) and are dropped exactly, so that neither second moment is
   singular where the square roots are taken; directions of the balanced tokens carrying less
   than :data:`DROP_RELATIVE` of the largest energy are projected out too.
3. ``scale`` is split as ``sqrt(scale)`` on each side.
4. **Optimal positive features** (FAVOR++, Likhosherstov et al. 2022 [4]_).  For ``A < 1/4``,
   ``f_A(w, x) = (1 - 4A)^(r/4) exp(A |w|^2 + sqrt(1 - 4A) w.x - |x|^2 / 2)`` also satisfies
   ``E_w[f_A(w, x) f_A(w, y)] = exp(x.y)`` (``w ~ N(0, I_r)`` in the ``r`` directions the
   rewritten tokens span; ``A = 0`` is FAVOR+).  Its second moment is smallest at the root
   ``A < 1/8`` of ``16 A^2 + (4 rho - 2) A - rho = 0`` for a mean ``|x + y|^2 / r = rho``
   (:func:`optimal_a`), which we take over all query-key pairs of the rewritten tokens
   (``rho = (E|x|^2 + E|y|^2) / r``, they are centred).  ``A`` is negative: large ``|w|``,
   whose features blow up on long vectors, are weighed down.  On the unit-norm patch tokens of
   ``benchmarks/fidelity.py`` this lowers Performer's error by 10-33 %, most at the diffuse
   temperature, and its error now falls with the number of features.

The projections are orthogonal Gaussian blocks (Gram-Schmidt by QR of Gaussian ``d x d``
blocks, Haar-distributed, each row rescaled by an independent chi(``d``) norm, so that every row
is marginally ``N(0, I)`` and the estimate stays unbiased), drawn from the counter-based
generator of :mod:`nlattn._rng` with Box-Muller, so a seed gives the same features anywhere.  As
in the reference code of Scatterbrain, each projection is used with both signs (``+w`` and ``-w``,
antithetic pairs: the ``cosh`` features), so ``n_features`` features use ``ceil(n_features / 2)``
projections; an odd count leaves the last projection with its ``+`` feature only.

Stabilisation is in log space: query features are shifted by their own maximum over features
(``log_scale_i``), key features by **one** global maximum over all keys and features, so that
``exp(scale q_i.k_j) ~ exp(log_scale_i + key_log_scale) phi~(q_i).phi~(k_j)`` with every
``phi~ <= 1``; keys whose features fall more than ~87 (float32) below the global maximum
underflow to zero.

References
----------
.. [1] K. Choromanski et al., "Rethinking attention with Performers", ICLR 2021.
.. [2] B. Chen, T. Dao, E. Winsor, Z. Song, A. Rudra, C. Re, "Scatterbrain: unifying sparse and
   low-rank attention approximation", NeurIPS 2021 (reference code: HazyResearch/fly).
.. [3] R. Bhatia, "Positive definite matrices", Princeton University Press 2007, ch. 4 (the
   geometric mean ``A # B``).
.. [4] V. Likhosherstov, K. Choromanski, A. Dubey, F. Liu, T. Sarlos, A. Weller, "Chefs' random
   tables: non-trigonometric random features", NeurIPS 2022 (FAVOR++).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import prange

from nlattn._jit import jit
from nlattn._rng import uniform

#: ``round`` counter of :func:`nlattn._rng.uniform` for the feature projections (keeps them
#: independent of any other random numbers drawn with the same seed).
FEATURE_STREAM = 0x5CA77E
#: Directions of the balanced tokens holding less than this fraction of the largest energy are
#: dropped (their contribution to the scores is below float32 rounding).
DROP_RELATIVE = 1e-7
#: Directions along which the centred queries (or keys) have less than this fraction of their
#: largest second moment are taken as constant: a spread below ``sqrt(RANK_RELATIVE)`` = 1e-5 of
#: the largest is float32 rounding of the computation that made the tokens (per-patch centring
#: leaves 1e-6 along the all-ones direction, for instance).
RANK_RELATIVE = 1e-10
#: Ridge of the balancing (both sides' eigenvalues are floored at this fraction of their largest
#: before the geometric mean): it bounds the condition number of ``A`` by
#: ``RIDGE_RELATIVE ** -0.5``, which keeps the matrix square roots accurate.  Any invertible
#: ``A`` rewrites the scores exactly; the ridge only makes ``A`` slightly less than
#: variance-optimal along directions that carry almost no energy.
RIDGE_RELATIVE = 1e-6
#: Tokens per work item of the parallel loops (fixed: results do not depend on the threads).
CHUNK = 2048


class FeatureMap(NamedTuple):
    """The exact rewriting of the scores and the random projections (all float64).

    ``x_i = (q_i - query_mean) @ query_map`` and ``y_j = (k_j - key_mean) @ key_map``
    (``sqrt(scale)`` included) satisfy ``scale q_i.k_j = x_i.y_j + k_j.key_weight +
    q_i.query_offset - offset``; ``projections`` is ``(d + 1, P)``, one projection per column:
    rows ``:d`` the scaled projections ``sqrt(1 - 4 A) w_p``, row ``d`` their log-offsets
    ``A |P w_p|^2 + (r / 4) log(1 - 4 A)`` (module docstring, step 4).
    """

    query_mean: np.ndarray
    key_mean: np.ndarray
    query_map: np.ndarray
    key_map: np.ndarray
    key_weight: np.ndarray
    query_offset: np.ndarray
    offset: float
    projections: np.ndarray


# ---------------------------------------------------------------------------------------------
# Kernels


@jit
def gaussians(seed, stream, out):
    """Fill ``out`` (1-D float64) with standard normals: Box-Muller on counter-based uniforms."""
    n = out.shape[0]
    for t in range((n + 1) // 2):
        u1 = 1.0 - uniform(seed, 2 * t, stream)  # in (0, 1]
        u2 = uniform(seed, 2 * t + 1, stream)
        radius = math.sqrt(-2.0 * math.log(u1))
        out[2 * t] = radius * math.cos(2.0 * math.pi * u2)
        if 2 * t + 1 < n:
            out[2 * t + 1] = radius * math.sin(2.0 * math.pi * u2)


@jit(parallel=True)
def _means(x, chunk, out):
    """Column means of ``x`` (n, d) float32 into ``out`` (d,) float64; chunked, fixed order."""
    n, d = x.shape
    n_chunks = (n + chunk - 1) // chunk
    parts = np.zeros((n_chunks, d))
    for c in prange(n_chunks):
        part = parts[c]
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            row = x[i]
            for a in range(d):
                part[a] += row[a]
    out[:] = 0.0
    for c in range(n_chunks):
        for a in range(d):
            out[a] += parts[c, a]
    for a in range(d):
        out[a] /= n


@jit(parallel=True)
def _centred_moments(x, mean, chunk, out):
    """``out = mean_i (x_i - mean)(x_i - mean)^T`` (d, d) float64; chunked, fixed order."""
    n, d = x.shape
    n_chunks = (n + chunk - 1) // chunk
    parts = np.zeros((n_chunks, d, d))
    for c in prange(n_chunks):
        part = parts[c]
        centred = np.empty(d)
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            row = x[i]
            for a in range(d):
                centred[a] = row[a] - mean[a]
            for a in range(d):
                ca = centred[a]
                for b in range(d):
                    part[a, b] += ca * centred[b]
    out[:, :] = 0.0
    for c in range(n_chunks):
        out += parts[c]
    out /= n


@jit
def log_features(token, mean, token_map, projections, log_weight, centred, mapped, out):
    """Log of the random features of one token into ``out`` (m,); returns their maximum.

    ``out[f] = s_f w_(f // 2).x + c_(f // 2) - |x|^2 / 2 - log(m) / 2 + log_weight`` with ``x =
    (token - mean) @ token_map``, ``s_f = +1`` for even ``f``, ``-1`` for odd ``f``, the
    projections ``w_p`` in the first rows of ``projections`` and their log-offsets ``c_p`` in its
    last row (:func:`feature_map`).  ``centred`` (d,) and ``mapped`` (d,) are scratch buffers
    (float64).
    """
    d = token.shape[0]
    d_out = token_map.shape[1]
    m = out.shape[0]
    n_proj = projections.shape[1]
    offsets = projections[d_out]
    for a in range(d):
        centred[a] = token[a] - mean[a]
    norm2 = 0.0
    for b in range(d_out):
        acc = 0.0
        for a in range(d):
            acc += centred[a] * token_map[a, b]
        mapped[b] = acc
        norm2 += acc * acc
    base = log_weight - 0.5 * norm2 - 0.5 * math.log(m)
    for p in range(n_proj):  # the projections w_p.x go to out[:n_proj] first (contiguous)
        out[p] = 0.0
    for b in range(d_out):  # dimensions outer, projections inner: vectorises
        xb = mapped[b]
        row = projections[b]
        for p in range(n_proj):
            out[p] += xb * row[p]
    best = -np.inf
    for p in range(n_proj - 1, -1, -1):  # then spread to out[2p], out[2p+1], backwards so
        t = out[p]                        # that no projection is overwritten before it is read
        centre = base + offsets[p]
        plus = centre + t
        out[2 * p] = plus
        best = max(best, plus)
        if 2 * p + 1 < m:
            minus = centre - t
            out[2 * p + 1] = minus
            best = max(best, minus)
    return best


@jit
def query_features(token, mean, token_map, projections, centred, mapped, out):
    """Features of one query, shifted by their maximum: ``out = exp(log_features - max)``
    (float64, largest entry 1); returns the shift (the query's log-scale)."""
    best = log_features(token, mean, token_map, projections, 0.0, centred, mapped, out)
    for f in range(out.shape[0]):
        out[f] = math.exp(out[f] - best)
    return best


@jit
def dot(a, b):
    """``a . b`` accumulated in float64."""
    acc = 0.0
    for c in range(a.shape[0]):
        acc += a[c] * b[c]
    return acc


@jit
def key_log_features(key, mean, token_map, projections, key_weight, centred, mapped, out):
    """:func:`log_features` of one key with its exact log-weight ``u_j = k_j.key_weight``;
    returns their maximum."""
    return log_features(key, mean, token_map, projections, dot(key, key_weight), centred,
                        mapped, out)


@jit
def shifted_key_features(key, mean, token_map, projections, key_weight, shift, centred, mapped,
                         out):
    """Features of one key, ``out = exp(key_log_features - shift)`` (float64)."""
    key_log_features(key, mean, token_map, projections, key_weight, centred, mapped, out)
    for f in range(out.shape[0]):
        out[f] = math.exp(out[f] - shift)


@jit(parallel=True)
def key_log_max(keys, mean, token_map, projections, key_weight, m, chunk):
    """The largest log-feature over all keys (``keys`` (n, d) float32): the one global shift
    of the key features."""
    n, d = keys.shape
    n_chunks = (n + chunk - 1) // chunk
    best = np.full(n_chunks, -np.inf)
    for c in prange(n_chunks):
        centred = np.empty(d)
        mapped = np.empty(token_map.shape[1])
        logs = np.empty(m)
        top = -np.inf
        for j in range(c * chunk, min(n, (c + 1) * chunk)):
            top = max(top, key_log_features(keys[j], mean, token_map, projections,
                                            key_weight, centred, mapped, logs))
        best[c] = top
    return best.max()


@jit(parallel=True)
def key_features(keys, mean, token_map, projections, key_weight, shift, chunk, out):
    """Key features ``out[j] = exp(log_features(k_j) + u_j - shift)`` (n, m) float32."""
    n, d = keys.shape
    m = out.shape[1]
    n_chunks = (n + chunk - 1) // chunk
    for c in prange(n_chunks):
        centred = np.empty(d)
        mapped = np.empty(token_map.shape[1])
        logs = np.empty(m)
        for j in range(c * chunk, min(n, (c + 1) * chunk)):
            shifted_key_features(keys[j], mean, token_map, projections, key_weight, shift,
                                 centred, mapped, logs)
            row = out[j]
            for f in range(m):
                row[f] = np.float32(logs[f])


@jit
def _add_outer(phi, value, z, kv):
    """``z += phi``; ``kv += phi value^T`` (float64 accumulators)."""
    m = phi.shape[0]
    dv = value.shape[0]
    for f in range(m):
        p = np.float64(phi[f])
        z[f] += p
        row = kv[f]
        for c in range(dv):
            row[c] += p * value[c]


@jit(parallel=True)
def key_sums(keys, values, mean, token_map, projections, key_weight, shift, m, chunk, z, kv):
    """``z = sum_j phi~(k_j)`` (m,) and ``kv = sum_j phi~(k_j) v_j^T`` (m, dv), float64, with
    the key features computed on the fly (never stored); chunked, reduced in a fixed order."""
    n, d = keys.shape
    dv = values.shape[1]
    n_chunks = (n + chunk - 1) // chunk
    z_parts = np.zeros((n_chunks, m))
    kv_parts = np.zeros((n_chunks, m, dv))
    for c in prange(n_chunks):
        centred = np.empty(d)
        mapped = np.empty(token_map.shape[1])
        logs = np.empty(m)
        for j in range(c * chunk, min(n, (c + 1) * chunk)):
            shifted_key_features(keys[j], mean, token_map, projections, key_weight, shift,
                                 centred, mapped, logs)
            _add_outer(logs, values[j], z_parts[c], kv_parts[c])
    z[:] = 0.0
    kv[:, :] = 0.0
    for c in range(n_chunks):
        z += z_parts[c]
        kv += kv_parts[c]


@jit(parallel=True)
def stored_key_sums(phi, values, chunk, z, kv):
    """``z`` and ``kv`` as :func:`key_sums`, from stored key features ``phi`` (n, m) float32."""
    n, m = phi.shape
    dv = values.shape[1]
    n_chunks = (n + chunk - 1) // chunk
    z_parts = np.zeros((n_chunks, m))
    kv_parts = np.zeros((n_chunks, m, dv))
    for c in prange(n_chunks):
        for j in range(c * chunk, min(n, (c + 1) * chunk)):
            _add_outer(phi[j], values[j], z_parts[c], kv_parts[c])
    z[:] = 0.0
    kv[:, :] = 0.0
    for c in range(n_chunks):
        z += z_parts[c]
        kv += kv_parts[c]


# ---------------------------------------------------------------------------------------------
# Python layer


def _symmetric(matrix: np.ndarray):
    """Eigenvalues and eigenvectors of the symmetric part of ``matrix``."""
    return np.linalg.eigh((matrix + matrix.T) / 2)


def _floored(matrix: np.ndarray, relative_floor: float = 0.0, floor: float = 0.0):
    """Eigenvalues and eigenvectors of the symmetric part of ``matrix``, the eigenvalues floored
    at the larger of ``relative_floor`` times the largest and ``floor``."""
    e, v = _symmetric(matrix)
    return np.maximum(e, max(relative_floor * e.max(), floor)), v


def _sqrtm(matrix: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Square root of a symmetric matrix, its eigenvalues floored at ``floor``."""
    e, v = _floored(matrix, floor=floor)
    return (v * np.sqrt(e)) @ v.T


def _geometric_mean_root(cq: np.ndarray, ck: np.ndarray) -> np.ndarray:
    """Symmetric ``A`` with ``A^2 = C_q^-1 # C_k`` (minimiser of ``tr(A C_q A) + tr(A^-1 C_k
    A^-1)``), both sides ridged by :data:`RIDGE_RELATIVE` of their largest eigenvalue."""
    tiny = np.finfo(np.float64).tiny
    e, v = _floored(cq, RIDGE_RELATIVE, tiny)
    root = (v * np.sqrt(e)) @ v.T
    inv_root = (v / np.sqrt(e)) @ v.T
    e, v = _floored(ck, RIDGE_RELATIVE, tiny)
    inner = root @ ((v * e) @ v.T) @ root
    return _sqrtm(inv_root @ _sqrtm(inner) @ inv_root, floor=tiny)


def _range(moments: np.ndarray) -> np.ndarray:
    """Orthonormal basis (columns) of the eigenvectors of the symmetric ``moments`` whose
    eigenvalue exceeds :data:`RANK_RELATIVE` of the largest; no column when it is zero."""
    e, v = _symmetric(moments)
    if not e.size or e.max() <= 0.0:
        return v[:, :0]
    return v[:, e > RANK_RELATIVE * e.max()]


def shared_basis(cq: np.ndarray, ck: np.ndarray) -> np.ndarray:
    """Orthonormal basis ``B`` (d, s) of the directions that carry the centred scores.

    The centred queries lie in the range of ``C_q``, so only the keys' component there counts;
    ``B`` spans the range of the keys' second moment within it (both with :data:`RANK_RELATIVE`),
    and ``(q - c).(k - c') = (q - c) B . (k - c') B`` for every pair.  On that basis both
    second moments are positive definite, which the balancing needs: rank-deficient tokens
    (per-patch centred patches, a constant coordinate, padding) would otherwise make it
    divide rounding errors by zero.
    """
    in_queries = _range(cq)
    return in_queries @ _range(in_queries.T @ ck @ in_queries)


def score_maps(queries: np.ndarray, keys: np.ndarray, scale: float):
    """The exact rewriting of the scores (module docstring, steps 1-3), without randomness.

    Parameters are flat ``(n, d)`` float32 C-contiguous arrays.  Returns ``(query_mean,
    key_mean, query_map, key_map, key_weight, query_offset, offset)`` (float64; the maps are
    ``(d, d)``: ``sqrt(scale) B A P B^T`` and ``sqrt(scale) B A^-1 P B^T`` with ``B`` the
    :func:`shared_basis` and ``P`` the orthogonal projector onto the balanced directions kept,
    zero when every score is a function of the key alone), the projector ``B P B^T`` and the
    mean energy ``E|x|^2 + E|y|^2`` of the rewritten tokens.
    """
    n, d = queries.shape
    query_mean = np.empty(d)
    key_mean = np.empty(d)
    _means(queries, CHUNK, query_mean)
    _means(keys, CHUNK, key_mean)
    cq = np.empty((d, d))
    ck = np.empty((d, d))
    _centred_moments(queries, query_mean, CHUNK, cq)
    _centred_moments(keys, key_mean, CHUNK, ck)
    basis = shared_basis(cq, ck)
    if basis.shape[1]:
        cx = basis.T @ cq @ basis
        cy = basis.T @ ck @ basis
        a = _geometric_mean_root(cx, cy)
        a_inv = np.linalg.inv(a)
        e, v = _symmetric(a @ cx @ a + a_inv @ cy @ a_inv)
        keep = v[:, e > DROP_RELATIVE * e.max()]
        kept = keep @ keep.T  # onto the directions kept (independent of eigh's signs)
        projector = basis @ kept @ basis.T
        query_map = basis @ a @ kept @ basis.T
        key_map = basis @ a_inv @ kept @ basis.T
        energy = scale * float(np.trace(query_map.T @ cq @ query_map)
                               + np.trace(key_map.T @ ck @ key_map))
    else:  # queries or keys all equal: the scores depend on the key alone
        projector = np.zeros((d, d))
        query_map = np.zeros((d, d))
        key_map = np.zeros((d, d))
        energy = 0.0
    root = math.sqrt(scale)
    return (query_mean, key_mean, np.ascontiguousarray(root * query_map),
            np.ascontiguousarray(root * key_map), scale * query_mean, scale * key_mean,
            float(scale * query_mean @ key_mean), projector, energy)


def orthogonal_projections(dim: int, count: int, seed: int) -> np.ndarray:
    """``count`` Gaussian projections in ``dim`` dimensions, orthogonal within blocks of ``dim``.

    Returns ``(dim, count)`` float64, one projection per column: each block of ``dim`` columns
    is a Haar-random orthonormal basis (QR of a Gaussian matrix with the signs of ``R``'s
    diagonal fixed), each column rescaled by the norm of an independent Gaussian vector (chi
    with ``dim`` degrees of freedom), so that every column is marginally ``N(0, I)``.
    Deterministic in ``seed``.
    """
    if dim == 0 or count == 0:
        return np.zeros((dim, count))
    n_blocks = -(-count // dim)
    draws = np.empty(n_blocks * dim * dim + count * dim)
    gaussians(seed, FEATURE_STREAM, draws)
    blocks = draws[: n_blocks * dim * dim].reshape(n_blocks, dim, dim)
    columns = []
    for block in blocks:
        basis, r = np.linalg.qr(block)
        signs = np.where(np.diag(r) < 0, -1.0, 1.0)
        columns.append(basis * signs)
    out = np.concatenate(columns, axis=1)[:, :count]
    norms = np.linalg.norm(draws[n_blocks * dim * dim :].reshape(count, dim), axis=1)
    return np.ascontiguousarray(out * norms)


def optimal_a(rho: float) -> float:
    """The ``A`` of the optimal positive random features (module docstring, step 4) for a mean
    ``|x + y|^2`` of ``rho`` per dimension: the root ``A < 1/8`` of ``16 A^2 + (4 rho - 2) A -
    rho = 0``; 0 (plain positive features) when ``rho = 0``, about ``-rho / 4`` when large."""
    return ((1.0 - 2.0 * rho) - math.sqrt((2.0 * rho + 1.0) ** 2 + 8.0 * rho)) / 16.0


def feature_map(queries: np.ndarray, keys: np.ndarray, scale: float, n_features: int,
                seed: int) -> FeatureMap:
    """The :class:`FeatureMap` of flat ``(n, d)`` float32 queries and keys: the exact rewriting
    of the scores and ``ceil(n_features / 2)`` orthogonal projections drawn from ``seed``,
    with the variance-optimal ``A`` of the rewritten tokens (module docstring, step 4)."""
    *maps, projector, energy = score_maps(queries, keys, scale)
    dim = maps[2].shape[1]
    w = orthogonal_projections(dim, (n_features + 1) // 2, seed)
    kept = int(round(float(np.trace(projector))))
    a = optimal_a(energy / kept) if kept else 0.0
    log_offsets = a * ((projector @ w) ** 2).sum(axis=0) + 0.25 * kept * math.log1p(-4.0 * a)
    projections = np.vstack([math.sqrt(1.0 - 4.0 * a) * w, log_offsets[None, :]])
    return FeatureMap(*maps, np.ascontiguousarray(projections))


def key_shift(keys: np.ndarray, fmap: FeatureMap, n_features: int) -> float:
    """The one global log-shift of the key features (their largest log-feature)."""
    return float(key_log_max(keys, fmap.key_mean, fmap.key_map, fmap.projections,
                             fmap.key_weight, n_features, CHUNK))


def stored_key_features(keys: np.ndarray, fmap: FeatureMap, n_features: int):
    """Key features ``(n, m)`` float32, shifted by the global maximum, and that shift."""
    shift = key_shift(keys, fmap, n_features)
    out = np.empty((keys.shape[0], n_features), np.float32)
    key_features(keys, fmap.key_mean, fmap.key_map, fmap.projections, fmap.key_weight, shift,
                 CHUNK, out)
    return out, shift


def feature_maps(queries: np.ndarray, keys: np.ndarray, scale: float, n_features: int,
                 seed: int):
    """Every feature, for inspection and tests (O(n m) memory).

    Parameters
    ----------
    queries, keys : ndarray, shape (H, W, d)
        Float32 C-contiguous token grids.
    scale : float
        Score scale (> 0).
    n_features : int
        Features per token, ``m``.
    seed : int
        Seed of the projections.

    Returns
    -------
    query_features : ndarray, shape (n, m), float64
        ``phi~(q_i)``, largest entry 1 in each row.
    query_log_scale : ndarray, shape (n,), float64
        The query's log-shift plus its exact offset ``beta_i``.
    key_features : ndarray, shape (n, m), float32
        ``phi~(k_j)`` with the key's exact log-weight ``u_j``, shifted by one global maximum.
    key_log_scale : float
        That global shift.

    Notes
    -----
    ``exp(query_log_scale[i] + key_log_scale) * query_features[i] . key_features[j]`` is an
    unbiased estimate of ``exp(scale q_i.k_j)`` (over the seeds).  O(n m d) time.
    """
    d = queries.shape[-1]
    q = queries.reshape(-1, d)
    k = keys.reshape(-1, d)
    fmap = feature_map(q, k, scale, n_features, seed)
    phi_k, shift = stored_key_features(k, fmap, n_features)
    n = q.shape[0]
    phi_q = np.empty((n, n_features))
    log_scale = np.empty(n)
    centred = np.empty(d)
    mapped = np.empty(fmap.query_map.shape[1])
    for i in range(n):
        log_scale[i] = query_features(q[i], fmap.query_mean, fmap.query_map, fmap.projections,
                                      centred, mapped, phi_q[i])
    log_scale += q.astype(np.float64) @ fmap.query_offset - fmap.offset
    return phi_q, log_scale, phi_k, shift
