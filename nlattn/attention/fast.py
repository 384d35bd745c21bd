"""FAST's "fastmax" attention (method ``"fast"``; Gerami et al. 2024).

Fastmax replaces the exponential of softmax attention by its Taylor polynomial of order ``p``,

    out_i = sum_j f(s_ij) v_j / sum_j f(s_ij),    s_ij = scale * qn_i . kn_j,
    f(s) = 1 + s + s**2 / 2   (p = 2, the default)   or   f(s) = 1 + s   (p = 1),

on normalised queries ``qn`` and keys ``kn`` (``normalization``, below).  Because ``f`` is a
polynomial, the sums over keys factorise through key moments computed once,

    sum_j f(s_ij) v_j = M0 + scale qn_i . M1 + (scale**2 / 2) (qn_i (x) qn_i) . M2,
    M0 = sum_j v_j,   M1 = sum_j kn_j v_j^T,   M2 = sum_j (kn_j (x) kn_j) v_j^T,

and the normaliser is the same expression with ``v_j = 1``.  ``kn (x) kn`` is symmetric, so only its
``d (d + 1) / 2`` distinct products are kept (off-diagonal ones counted twice on the query side):
each key and each query is one feature vector ``phi`` of ``1 + d (+ d (d + 1) / 2)`` float64
entries, and the method is linear attention with those features.  No ``n x n`` quantity is ever
formed.

**A different operator, not an approximation of peaked softmax.**  With unit vectors and
``scale = 1`` the scores lie in ``[-1, 1]`` and the p = 2 weights in ``[f(-1), f(1)] = [0.5,
2.5]``: a dynamic range of at most 5:1 between the best and the worst key, where softmax
attention of image tokens spans many orders of magnitude.  A fastmax map is therefore a broad,
smooth reweighting of the uniform average (at the default ``scale = 1 / sqrt(d)`` of
:func:`nlattn.attention` the range is narrower still, 1.6:1 at d = 17).  It is good for what the
paper uses it for (a trainable, linear-cost attention layer) and poor as a stand-in for the peaked
maps of non-local means.

Normalisation (``normalization``)
---------------------------------
- ``"unit"`` (default): every query and every key is divided by its own Euclidean norm, so
  ``s_ij = scale * cos(q_i, k_j)`` lies in ``[-scale, scale]`` (the bounded scores the paper's
  analysis assumes; the 5:1 bound above).  A zero vector stays zero (score 0, weight
  ``f(0) = 1``).  The default here, though the reference code's is ``"none"``: it keeps the p = 1
  weights non-negative, and it gives every query, not only the longest one, the whole score
  range the operator allows.
- ``"max"``: all queries are divided by the largest query norm and all keys by the largest key
  norm (the reference code's ``normalize=1``): scores within ``[-scale, scale]``, relative norms
  kept.
- ``"centred"``: the mean query (over all pixels) is subtracted from every query and the mean key
  from every key, then ``"max"`` (the paper's experiment code: centring over tokens, then the
  per-tensor maximum norm).
- ``"none"``: raw vectors (the reference code's default, whose score ``q.k / sqrt(d)`` is
  :func:`nlattn.attention`'s default ``scale``).  Scores are unbounded, and ``1 + s + s**2 / 2``
  is not monotone: below ``s = -1`` it grows again, so strongly dissimilar keys regain weight
  (on the NLM tokens of :func:`nlattn.nlm_tokens`, whose scores are very negative, this
  averages the wrong pixels).

``scale`` multiplies the score of the normalised vectors (an inverse temperature, the reference
code's ``1 / temperature``); the paper's setting is ``scale = 1`` on normalised vectors.

Positivity.  For p = 2, ``f(s) = ((s + 1)**2 + 1) / 2 >= 1/2`` for every ``s``, so every weight is
positive whatever the normalisation.  For p = 1, ``1 + s`` is negative when ``s < -1``; the paper
keeps it non-negative by normalising, and so does this module: p = 1 requires a normalisation
other than ``"none"`` and ``scale <= 1`` (ValueError otherwise), which bounds ``s >= -1``.  At
``scale = 1`` a query whose every key points exactly away from it has all weights 0; it gets the
limit of ``scale -> 1-``, the uniform average (its row is uniform too).

Cost: O(n d^p dv) time for the moments and as much for the queries (p = 2: ``d (d + 1) / 2``
products per token and value channel, hence the paper's d^3 a token when ``dv = d``; reduce
``d`` first, e.g. PCA of patch vectors, since ``d = 64`` already means 2145 features per token);
memory O(d^p dv) for the moments plus the normalised copies of ``q`` and ``k``, O(n d).

Algorithm.  Keys are taken in blocks of :data:`MOMENT_CHUNK`, copied channels-first in float64
(``d x 256``: 35 KiB at d = 17, in L1/L2), so that every moment is a dot product along the block's
keys; four second moments ``(a, b..b+3)`` are summed at once, sharing the loads of ``k_a v`` and
hiding the latency of the float64 additions.  The blocks are dealt round-robin to at most
:data:`MOMENT_ITEMS` work items, whose float64 partial moments are added in item order.  Queries
are taken in blocks of :data:`QUERY_BLOCK`, channels-first too, and ``phi(q) . M`` is evaluated as
``sum_a q_a (M_a + sum_(b >= a) M_ab q_b)`` with vector updates along the block's queries.  The
work items depend on ``n`` only, and every query is evaluated by the same code, so the output is
the same at any thread count.  Rows (:func:`rows`) are formed key by key, ``O(n d)`` a query, with
per-chunk float64 sums reduced in chunk order.

References
----------
A. Gerami, M. Hoover, P. S. Dulepet, R. Duraiswami, "FAST: Factorizable Attention for Speeding up
Transformers", arXiv:2402.07901, 2024.  Reference code: github.com/armingerami/fastmax.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from nlattn._jit import jit
from nlattn._validate import check_choice, check_int
from nlattn.attention._blas1 import sum_chunks, vector_dot, vector_sum

#: Defaults of the method's parameters.
DEFAULTS = {"p": 2, "normalization": "unit"}
#: The accepted values of ``normalization``.
NORMALIZATIONS = ("unit", "max", "centred", "none")
#: Keys per chunk of the row kernels and of the normalisation sums.
KEY_CHUNK = 4096
#: Keys per block of the moment kernel (made channels-first: d x 256 float64 stays in L1/L2).
MOMENT_CHUNK = 256
#: Work items (partial moment sums) of the moment kernel, at most; fixed, so the summation order
#: never depends on the thread count.
MOMENT_ITEMS = 64
#: Queries per work item of the output kernel.
QUERY_BLOCK = 256
#: A normaliser below ``n * DEN_FLOOR`` means every weight is zero (p = 1 only, see above).
DEN_FLOOR = 1e-12


def n_features(d: int, p: int) -> int:
    """Length of a token's feature vector: ``1 + d`` (p = 1) or ``1 + d + d (d + 1) / 2``."""
    return 1 + d + (d * (d + 1) // 2 if p == 2 else 0)


# ---------------------------------------------------------------------------------------------
# Normalisation


@jit(parallel=True)
def _column_sums(x, chunk, partial):
    """``partial[c] = sum of the rows of chunk c of x`` (float64); x is (n, d) float32."""
    n, d = x.shape
    for c in prange(partial.shape[0]):
        acc = partial[c]
        acc[:] = 0.0
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            row = x[i]
            for a in range(d):
                acc[a] += row[a]


@jit(parallel=True)
def _row_norms(x, shift, out):
    """``out[i] = |x_i - shift|`` in float64."""
    n, d = x.shape
    for i in prange(n):
        row = x[i]
        total = 0.0
        for a in range(d):
            y = np.float64(row[a]) - shift[a]
            total += y * y
        out[i] = np.sqrt(total)


@jit(parallel=True)
def _shift_scale_rows(x, shift, inv, out):
    """``out[i] = (x_i - shift) * inv[i]`` rounded to float32."""
    n, d = x.shape
    for i in prange(n):
        row = x[i]
        o = out[i]
        f = inv[i]
        for a in range(d):
            o[a] = np.float32((np.float64(row[a]) - shift[a]) * f)


def normalize(x: np.ndarray, normalization: str) -> np.ndarray:
    """The normalised copy of the tokens ``x`` (n, d) float32 (see the module notes)."""
    if normalization == "none":
        return x
    n, d = x.shape
    shift = np.zeros(d)
    if normalization == "centred":
        partial = np.empty(((n + KEY_CHUNK - 1) // KEY_CHUNK, d))
        _column_sums(x, KEY_CHUNK, partial)
        shift = partial.sum(axis=0) / n
    norms = np.empty(n)
    _row_norms(x, shift, norms)
    if normalization == "unit":
        inv = np.zeros(n)
        np.divide(1.0, norms, out=inv, where=norms > 0.0)
    else:
        largest = float(norms.max())
        inv = np.full(n, 1.0 / largest if largest > 0.0 else 1.0)
    out = np.empty_like(x)
    _shift_scale_rows(x, shift, inv, out)
    return out


# ---------------------------------------------------------------------------------------------
# Kernels


@jit
def _transpose_block(x, i0, i1, out):
    """``out[a, t] = x[i0 + t, a]`` in float64 for ``t < i1 - i0`` (a block of tokens made
    channels-first, so that the inner loops run along tokens)."""
    d = x.shape[1]
    for t in range(i1 - i0):
        row = x[i0 + t]
        for a in range(d):
            out[a, t] = row[a]






@jit
def _product(x, y, out, m):
    """``out[:m] = x[:m] * y[:m]``."""
    for t in range(m):
        out[t] = x[t] * y[t]


@jit
def _dot4(w, x0, x1, x2, x3, m):
    """``(w . x0, w . x1, w . x2, w . x3)`` over ``[:m]``: four independent sums share the loads
    of ``w`` and hide the latency of the additions."""
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for t in range(m):
        wt = w[t]
        s0 += wt * x0[t]
        s1 += wt * x1[t]
        s2 += wt * x2[t]
        s3 += wt * x3[t]
    return s0, s1, s2, s3


@jit
def _axpy(y, a, x, m):
    """``y[:m] += a * x[:m]``."""
    for t in range(m):
        y[t] += a * x[t]


@jit
def _axpy4(y, a0, x0, a1, x1, a2, x2, a3, x3, m):
    """``y[:m] += a0 x0 + a1 x1 + a2 x2 + a3 x3`` (one load and store of ``y`` for four)."""
    for t in range(m):
        y[t] += (a0 * x0[t] + a1 * x1[t]) + (a2 * x2[t] + a3 * x3[t])


@jit
def _fma_into(y, x, z, m):
    """``y[:m] += x[:m] * z[:m]``."""
    for t in range(m):
        y[t] += x[t] * z[t]


@jit
def _chunk_moments(kc, vc, m, p, w, acc):
    """``acc[e] += sum_{j < m} vc[e, j] phi(kc[:, j])`` with ``phi(k) = [1, k, (k_a k_b for
    a <= b)]`` (the last part for p = 2 only); ``kc`` (d, B), ``vc`` (dv + 1, B) float64
    channels-first blocks of ``m <= B`` keys, ``w`` a (B,) buffer, ``acc`` (dv + 1, F)."""
    d = kc.shape[0]
    for e in range(vc.shape[0]):
        ve = vc[e]
        ae = acc[e]
        ae[0] += vector_sum(ve, m)
        t = 1 + d
        for a in range(d):
            _product(kc[a], ve, w, m)
            ae[1 + a] += vector_sum(w, m)
            if p == 2:
                b = a
                while b + 4 <= d:
                    s0, s1, s2, s3 = _dot4(w, kc[b], kc[b + 1], kc[b + 2], kc[b + 3], m)
                    ae[t] += s0
                    ae[t + 1] += s1
                    ae[t + 2] += s2
                    ae[t + 3] += s3
                    t += 4
                    b += 4
                while b < d:
                    ae[t] += vector_dot(w, kc[b], m)
                    t += 1
                    b += 1


@jit(parallel=True)
def _moments(k, v, p, chunk, partial):
    """Partial key moments: work item ``c`` sums ``v_je phi(k_j)`` over its keys (chunks of
    ``chunk`` keys, dealt round-robin to the ``partial.shape[0]`` items) into ``partial[c, e]``,
    for value channels ``e < dv`` and, as ``e = dv``, ``v_je = 1`` (the normaliser's moments).

    ``k`` (n, d) and ``v`` (n, dv) float32; ``partial`` (n_items, dv + 1, F) float64.
    """
    n, d = k.shape
    dv = v.shape[1]
    n_items = partial.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    for c in prange(n_items):
        acc = partial[c]
        acc[:] = 0.0
        kc = np.empty((d, chunk))
        vc = np.empty((dv + 1, chunk))
        vc[dv] = 1.0
        w = np.empty(chunk)
        for g in range(c, n_chunks, n_items):
            j0 = g * chunk
            j1 = min(n, j0 + chunk)
            _transpose_block(k, j0, j1, kc)
            _transpose_block(v, j0, j1, vc)
            _chunk_moments(kc, vc, j1 - j0, p, w, acc)




@jit
def _block_sums(qc, m, moments, p, num, y):
    """``num[e, i] = phi(qc[:, i]) . moments[e]`` for a block of ``m`` queries, ``qc`` (d, B)
    float64 channels-first, ``moments`` (dv + 1, F) with the query coefficients folded in."""
    d = qc.shape[0]
    for e in range(num.shape[0]):
        me = moments[e]
        ne = num[e]
        ne[:] = me[0]
        t = 1 + d
        for a in range(d):
            y[:] = me[1 + a]
            if p == 2:
                b = a
                while b + 4 <= d:
                    _axpy4(y, me[t], qc[b], me[t + 1], qc[b + 1], me[t + 2], qc[b + 2],
                           me[t + 3], qc[b + 3], m)
                    t += 4
                    b += 4
                while b < d:
                    _axpy(y, me[t], qc[b], m)
                    t += 1
                    b += 1
            _fma_into(ne, y, qc[a], m)


@jit(parallel=True)
def _fast_outputs(q, moments, p, block, out):
    """``out[i, e] = phi(q_i) . moments[e] / phi(q_i) . moments[dv]`` for every query; a query
    whose normaliser is below ``n * DEN_FLOOR`` gets the uniform average ``moments[e, 0] / n``.

    ``moments`` (dv + 1, F) holds the query coefficients ``[1, scale, (scale^2 / 2) c_ab]``
    (``c_ab`` = 1 on the diagonal, 2 off it) folded in, so ``phi(q)`` is the plain feature map.
    """
    n_q, d = q.shape
    dv = out.shape[1]
    n_keys = moments[dv, 0]
    floor = n_keys * DEN_FLOOR
    n_blocks = (n_q + block - 1) // block
    for b in prange(n_blocks):
        i0 = b * block
        i1 = min(n_q, i0 + block)
        qc = np.empty((d, block))
        num = np.empty((dv + 1, block))
        y = np.empty(block)
        _transpose_block(q, i0, i1, qc)
        _block_sums(qc, i1 - i0, moments, p, num, y)
        den = num[dv]
        for t in range(i1 - i0):
            o = out[i0 + t]
            if den[t] > floor:
                inv = 1.0 / den[t]
                for e in range(dv):
                    o[e] = np.float32(num[e, t] * inv)
            else:
                for e in range(dv):
                    o[e] = np.float32(moments[e, 0] / n_keys)


@jit
def _weight(qi, kj, p, scale):
    """``f(scale qi.kj)`` in float64, clamped at 0 (p = 1 rounding at ``s = -1``)."""
    s = 0.0
    for a in range(qi.shape[0]):
        s += np.float64(qi[a]) * np.float64(kj[a])
    s *= scale
    w = 1.0 + s
    if p == 2:
        w += 0.5 * s * s
    return max(w, 0.0)


@jit(parallel=True)
def _fast_rows(q_sel, k, p, scale, chunk, out):
    """Rows ``out[r, j] = f(s_rj) / sum_j f(s_rj)`` (float32) over all keys ``j`` for the
    queries ``q_sel`` (m, d); per-chunk float64 sums reduced in chunk order."""
    m = q_sel.shape[0]
    n = k.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    sums = np.empty((m, n_chunks))
    for item in prange(m * n_chunks):
        r = item // n_chunks
        c = item - r * n_chunks
        qi = q_sel[r]
        total = 0.0
        for j in range(c * chunk, min(n, (c + 1) * chunk)):
            total += _weight(qi, k[j], p, scale)
        sums[r, c] = total
    inv = np.empty(m)
    for r in range(m):
        total = 0.0
        for c in range(n_chunks):
            total += sums[r, c]
        inv[r] = 1.0 / total if total > n * DEN_FLOOR else -1.0
    for item in prange(m * n_chunks):
        r = item // n_chunks
        c = item - r * n_chunks
        qi = q_sel[r]
        row = out[r]
        for j in range(c * chunk, min(n, (c + 1) * chunk)):
            if inv[r] > 0.0:
                row[j] = np.float32(_weight(qi, k[j], p, scale) * inv[r])
            else:
                row[j] = np.float32(1.0 / n)


# ---------------------------------------------------------------------------------------------
# Method interface (arguments already validated by nlattn.attention)


def _check_params(p, normalization, scale: float) -> tuple[int, str]:
    p = check_int("p", p)
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2 (the order of fastmax's polynomial), got {p}")
    normalization = check_choice("normalization", normalization, NORMALIZATIONS)
    if p == 1 and normalization == "none":
        raise ValueError(
            "p=1 needs normalised tokens (normalization 'unit', 'max' or 'centred'): with "
            "normalization='none' the weights 1 + s can be negative"
        )
    if p == 1 and scale > 1.0:
        raise ValueError(
            f"p=1 needs scale <= 1 so that the weights 1 + s stay >= 0 on normalised tokens, "
            f"got scale={scale}"
        )
    return p, normalization


def key_moments(keys: np.ndarray, values: np.ndarray, p: int) -> np.ndarray:
    """The summed key moments ``(dv + 1, F)`` float64 of normalised keys ``(n, d)`` and values
    ``(n, dv)`` float32: row ``e`` is ``sum_j v_je phi(k_j)``, row ``dv`` the normaliser's
    ``sum_j phi(k_j)``, with ``phi(k) = [1, k, (k_a k_b for a <= b)]``."""
    n, d = keys.shape
    dv = values.shape[1]
    n_items = min(MOMENT_ITEMS, (n + MOMENT_CHUNK - 1) // MOMENT_CHUNK)
    partial = np.empty((n_items, dv + 1, n_features(d, p)))
    _moments(keys, values, p, MOMENT_CHUNK, partial)
    moments = np.empty(partial.shape[1:])
    sum_chunks(partial, moments)
    return moments


def query_coefficients(d: int, p: int, scale: float) -> np.ndarray:
    """``c`` such that ``(c * phi(q)) . phi(k) = f(scale q.k)``: ``[1, scale (d times),
    (scale^2 / 2) c_ab for a <= b]`` with ``c_ab`` = 1 if ``a = b`` else 2."""
    coef = np.empty(n_features(d, p))
    coef[0] = 1.0
    coef[1 : 1 + d] = scale
    if p == 2:
        a, b = np.triu_indices(d)
        coef[1 + d :] = np.where(a == b, 0.5, 1.0) * scale * scale
    return coef


def attend(queries: np.ndarray, keys: np.ndarray, values: np.ndarray, scale: float, seed: int,
           *, p: int = 2, normalization: str = "unit") -> np.ndarray:
    """Fastmax attention of float32 C-contiguous ``(H, W, d)`` / ``(H, W, dv)`` arrays.

    ``seed`` is unused (the method is deterministic).  Returns ``(H, W, dv)`` float32.
    Raises ValueError for ``p`` not in {1, 2}, an unknown ``normalization``, or p = 1 without
    normalisation or with ``scale > 1``.
    """
    p, normalization = _check_params(p, normalization, scale)
    height, width, d = queries.shape
    dv = values.shape[2]
    n = height * width
    q = normalize(queries.reshape(n, d), normalization)
    k = normalize(keys.reshape(n, d), normalization)
    moments = key_moments(k, values.reshape(n, dv), p) * query_coefficients(d, p, scale)
    out = np.empty((n, dv), np.float32)
    _fast_outputs(q, moments, p, QUERY_BLOCK, out)
    return out.reshape(height, width, dv)


def rows(queries: np.ndarray, keys: np.ndarray, positions: np.ndarray, scale: float, seed: int,
         *, p: int = 2, normalization: str = "unit") -> np.ndarray:
    """Fastmax rows ``f(s_ij) / sum_j f(s_ij)`` of the query pixels ``positions`` (m, 2) over
    every key, as ``(m, H, W)`` float32 (O(n d) per row; each row sums to 1)."""
    p, normalization = _check_params(p, normalization, scale)
    height, width, d = queries.shape
    n = height * width
    m = positions.shape[0]
    out = np.empty((m, n), np.float32)
    if m:
        q = normalize(queries.reshape(n, d), normalization)
        k = normalize(keys.reshape(n, d), normalization)
        q_sel = np.ascontiguousarray(q[positions[:, 0] * width + positions[:, 1]])
        _fast_rows(q_sel, k, p, float(scale), KEY_CHUNK, out)
    return out.reshape(m, height, width)
