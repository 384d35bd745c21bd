"""Efficient Attention (method ``"efficient"``; Shen et al. 2021).

Softmax attention normalises the ``n x n`` product ``Q K^T`` row by row; Efficient Attention
normalises the factors instead, so that the product can be taken the other way round:

    E = rho_q(Q) (rho_k(K)^T V),

``n x d`` times ``d x dv``, O(n d dv) time and O(d dv) memory.  Two normalisations (``variant``):

- ``"softmax"`` (default, the paper's main one): ``rho_k`` is a softmax of every key channel over
  the positions, ``rho_k(K)[j, c] = exp(scale k_jc) / sum_j' exp(scale k_j'c)``, and ``rho_q`` a
  softmax of every query over its channels, ``rho_q(Q)[i, c] = exp(scale q_ic) / sum_c'
  exp(scale q_ic')``.  The query's map over the keys, ``a_ij = sum_c rho_q(Q)[i, c]
  rho_k(K)[j, c]``, is a proper distribution (non-negative, ``sum_j a_ij = 1``, since the columns
  of ``rho_k`` and the rows of ``rho_q`` sum to 1) and ``out_i = sum_j a_ij v_j``.
- ``"scaling"``: ``rho_q(Q) = Q / sqrt(n)`` and ``rho_k(K) = K / sqrt(n)``, so ``out_i = sum_j
  (scale q_i.k_j / n) v_j`` exactly: plain (un-normalised) linear attention, whose weights are
  signed and do not sum to 1.  It has no attention map in the sense of :func:`attention_rows`
  (``rows`` raises ValueError for it).

``scale`` is the inverse temperature of both softmaxes (``scale = 1`` is the paper's and the
reference code's operator, which apply no factor; :func:`nlattn.attention`'s default ``1 /
sqrt(d)`` makes the maps flatter); in the scaling variant it multiplies the weights.

**A different operator.**  Each map ``a_i.`` is a convex combination of the ``d`` fixed spatial
maps ``rho_k(K)[:, c]`` (one per channel), so the ``n x n`` matrix has rank at most ``d``: a
query's map cannot single out the pixels similar to that query the way softmax attention (or
non-local means) does.  The per-channel maps are what a user can look at.

Heads (``heads``): the ``d`` query/key channels are split into ``heads`` equal groups (``heads``
must divide ``d``); head ``h`` applies ``rho_q`` within its group.  As in the reference code, when
``heads`` divides ``dv`` the value channels are split the same way and head ``h`` produces value
channels ``[h dv/heads, (h + 1) dv/heads)``.  When it does not (a grey image has ``dv = 1``), every
head attends over all value channels and the heads' outputs are averaged: the operator is then
attention with the heads' mean map.  :func:`rows` returns the heads' mean map in both cases (it is
each head's own map only when ``heads = 1``).  ``rho_k`` is per channel, so heads do not change it.

Numerics: the key softmax subtracts each channel's maximum over the positions and the query
softmax each query's own maximum (per head) before exponentiating, so no exponential exceeds 1
and no input overflows; the exponentials are float32 (``nlattn._fastexp.exp_neg``, relative error
below 1e-6, vectorised) of float64 differences, and every sum is float64.

Algorithm: keys are taken in blocks of :data:`KEY_CHUNK`, made channels-first (float64) and
exponentiated in place, and the context ``sum_j rho_k(K)[j, a] [v_j, 1]`` is a dot product along
the block per (channel, value channel); the blocks are dealt round-robin to at most
:data:`CONTEXT_ITEMS` work items whose partial sums are added in item order.  Queries are taken in
blocks of :data:`QUERY_BLOCK`, channels-first too, so the query softmax and ``rho_q(Q) context``
are vector loops along the block.  The work items depend on ``n`` only, so the output is the same
at any thread count.  Rows exponentiate each key block once and reuse it for every query.

References
----------
Z. Shen, M. Zhang, H. Zhao, S. Yi, H. Li, "Efficient Attention: Attention with Linear
Complexities", WACV 2021.  Reference code: github.com/cmsflash/efficient-attention.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from nlattn._fastexp import exp_neg
from nlattn._jit import jit
from nlattn._validate import check_choice, check_int
from nlattn.attention._blas1 import sum_chunks, vector_dot, vector_sum

#: Defaults of the method's parameters.
DEFAULTS = {"variant": "softmax", "heads": 1}
#: The accepted values of ``variant``.
VARIANTS = ("softmax", "scaling")
#: Keys per block made channels-first (d x 256 float64 stays in L1/L2).
KEY_CHUNK = 256
#: Work items (partial sums) of the context kernel, at most; fixed, so the summation order never
#: depends on the thread count.
CONTEXT_ITEMS = 64
#: Queries per work item of the output kernel.
QUERY_BLOCK = 256
#: Keys per work item of the channel maxima.
MAX_CHUNK = 4096


# ---------------------------------------------------------------------------------------------
# Kernels


@jit(parallel=True)
def _channel_max(k, chunk, partial):
    """``partial[c, a] = max of k[j, a]`` over chunk ``c`` of the keys."""
    n, d = k.shape
    for c in prange(partial.shape[0]):
        best = partial[c]
        best[:] = -np.inf
        for j in range(c * chunk, min(n, (c + 1) * chunk)):
            row = k[j]
            for a in range(d):
                best[a] = max(best[a], np.float64(row[a]))


@jit
def _key_block(k, j0, j1, kmax, scale, softmax, out):
    """``out[a, t] = rho(k[j0 + t, a])`` channels-first, float64, for ``t < j1 - j0``: the
    unnormalised key softmax ``exp(scale (k - kmax_a))`` (``softmax``) or ``k`` itself."""
    d = k.shape[1]
    for t in range(j1 - j0):
        row = k[j0 + t]
        for a in range(d):
            out[a, t] = row[a]
    if softmax:
        for a in range(d):
            oa = out[a]
            ma = kmax[a]
            for t in range(j1 - j0):
                oa[t] = exp_neg(np.float32(scale * (ma - oa[t])))






@jit(parallel=True)
def _contexts(k, v, kmax, scale, softmax, chunk, partial):
    """Partial contexts: work item ``c`` sums ``w_ja [v_j, 1]`` over its keys (chunks of
    ``chunk`` keys dealt round-robin to the ``partial.shape[0]`` items) into ``partial[c, a]``,
    with ``w_ja = exp(scale (k_ja - kmax_a))`` (``softmax``) or ``k_ja``.

    ``k`` (n, d), ``v`` (n, dv) float32; ``partial`` (n_items, d, dv + 1) float64.
    """
    n, d = k.shape
    dv = v.shape[1]
    n_items = partial.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    for c in prange(n_items):
        acc = partial[c]
        acc[:] = 0.0
        kc = np.empty((d, chunk))
        vc = np.empty((dv, chunk))
        for g in range(c, n_chunks, n_items):
            j0 = g * chunk
            j1 = min(n, j0 + chunk)
            m = j1 - j0
            _key_block(k, j0, j1, kmax, scale, softmax, kc)
            for t in range(m):
                vj = v[j0 + t]
                for e in range(dv):
                    vc[e, t] = vj[e]
            for a in range(d):
                ka = kc[a]
                acc_a = acc[a]
                for e in range(dv):
                    acc_a[e] += vector_dot(ka, vc[e], m)
                acc_a[dv] += vector_sum(ka, m)




@jit
def _query_weights(q, head_size, scale, softmax, out):
    """``out = rho_q(q)``: a softmax of ``scale q`` within each group of ``head_size`` channels
    (``softmax``), else ``q`` itself (float64)."""
    d = q.shape[0]
    if not softmax:
        for a in range(d):
            out[a] = q[a]
        return
    for g in range(0, d, head_size):
        best = -np.inf
        for a in range(g, g + head_size):
            best = max(best, np.float64(q[a]))
        total = 0.0
        for a in range(g, g + head_size):
            w = math.exp(scale * (np.float64(q[a]) - best))
            out[a] = w
            total += w
        inv = 1.0 / total
        for a in range(g, g + head_size):
            out[a] *= inv


@jit
def _block_outputs(qc, m, context, head_size, scale, softmax, tot, part, acc):
    """``acc[e, i] = sum_a rho_q(qc[:, i])[a] context[a, e]`` for a channels-first block ``qc``
    (d, B) of ``m`` queries (overwritten); ``tot`` (B,) and ``part`` (dv, B) are buffers."""
    d = qc.shape[0]
    dv = acc.shape[0]
    acc[:] = 0.0
    for g in range(0, d, head_size):
        if softmax:
            tot[:m] = qc[g, :m]  # the head's largest channel, per query
            for a in range(g + 1, g + head_size):
                qa = qc[a]
                for i in range(m):
                    tot[i] = max(tot[i], qa[i])
            for a in range(g, g + head_size):  # qc becomes the unnormalised weights
                qa = qc[a]
                for i in range(m):
                    qa[i] = exp_neg(np.float32(scale * (tot[i] - qa[i])))
            tot[:m] = 0.0
            for a in range(g, g + head_size):
                qa = qc[a]
                for i in range(m):
                    tot[i] += qa[i]
        part[:, :m] = 0.0
        for a in range(g, g + head_size):
            qa = qc[a]
            for e in range(dv):
                ca = context[a, e]
                pe = part[e]
                for i in range(m):
                    pe[i] += ca * qa[i]
        for e in range(dv):
            pe = part[e]
            ae = acc[e]
            if softmax:
                for i in range(m):
                    ae[i] += pe[i] / tot[i]
            else:
                for i in range(m):
                    ae[i] += pe[i]


@jit(parallel=True)
def _efficient_outputs(q, context, head_size, scale, softmax, factor, block, out):
    """``out[i, e] = factor * sum_a rho_q(q_i)[a] context[a, e]`` (float32) for every query;
    ``context`` (d, dv) float64 already holds the head masks and normalisers."""
    n_q, d = q.shape
    dv = out.shape[1]
    n_blocks = (n_q + block - 1) // block
    for b in prange(n_blocks):
        i0 = b * block
        i1 = min(n_q, i0 + block)
        m = i1 - i0
        qc = np.empty((d, block))
        tot = np.empty(block)
        part = np.empty((dv, block))
        acc = np.empty((dv, block))
        for t in range(m):
            row = q[i0 + t]
            for a in range(d):
                qc[a, t] = row[a]
        _block_outputs(qc, m, context, head_size, scale, softmax, tot, part, acc)
        for t in range(m):
            o = out[i0 + t]
            for e in range(dv):
                o[e] = np.float32(factor * acc[e, t])


@jit(parallel=True)
def _efficient_rows(coef, k, kmax, scale, chunk, out):
    """Rows ``out[r, j] = sum_a coef[r, a] exp(scale (k_ja - kmax_a))`` (float32) over all keys,
    with ``coef`` (m, d) the query weights divided by the key normalisers."""
    m, d = coef.shape
    n = k.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    for c in prange(n_chunks):
        j0 = c * chunk
        j1 = min(n, j0 + chunk)
        kc = np.empty((d, chunk))
        total = np.empty(chunk)
        _key_block(k, j0, j1, kmax, scale, True, kc)
        for r in range(m):
            cr = coef[r]
            total[:] = 0.0
            for a in range(d):
                ka = kc[a]
                ca = cr[a]
                for t in range(j1 - j0):
                    total[t] += ca * ka[t]
            row = out[r]
            for t in range(j1 - j0):
                row[j0 + t] = np.float32(total[t])


# ---------------------------------------------------------------------------------------------
# Method interface (arguments already validated by nlattn.attention)


def _check_params(variant, heads, d: int) -> tuple[str, int]:
    variant = check_choice("variant", variant, VARIANTS)
    heads = check_int("heads", heads, minimum=1)
    if d % heads:
        divisors = [h for h in range(1, d + 1) if d % h == 0]
        raise ValueError(
            f"heads must divide the number of query/key channels d = {d} (one of "
            f"{divisors}), got {heads}"
        )
    return variant, heads


def _key_max(k: np.ndarray) -> np.ndarray:
    n, d = k.shape
    partial = np.empty(((n + MAX_CHUNK - 1) // MAX_CHUNK, d))
    _channel_max(k, MAX_CHUNK, partial)
    return partial.max(axis=0)


def _context(k: np.ndarray, v: np.ndarray, kmax: np.ndarray, scale: float,
             softmax: bool) -> np.ndarray:
    """``sum_j w_ja [v_j, 1]`` as a ``(d, dv + 1)`` float64 array (see :func:`_contexts`)."""
    n, d = k.shape
    n_items = min(CONTEXT_ITEMS, (n + KEY_CHUNK - 1) // KEY_CHUNK)
    partial = np.empty((n_items, d, v.shape[1] + 1))
    _contexts(k, v, kmax, scale, softmax, KEY_CHUNK, partial)
    context = np.empty(partial.shape[1:])
    sum_chunks(partial, context)
    return context


def head_mask(d: int, dv: int, heads: int) -> np.ndarray:
    """``(d, dv)`` weights of key channel ``a``'s head in value channel ``e``: 1 where the head of
    ``a`` owns ``e`` (``heads`` divides ``dv``), else ``1 / heads`` everywhere (heads averaged)."""
    if dv % heads:
        return np.full((d, dv), 1.0 / heads)
    head_of_key = np.arange(d) // (d // heads)
    head_of_value = np.arange(dv) // (dv // heads)
    return (head_of_key[:, None] == head_of_value[None, :]).astype(np.float64)


def attend(queries: np.ndarray, keys: np.ndarray, values: np.ndarray, scale: float, seed: int,
           *, variant: str = "softmax", heads: int = 1) -> np.ndarray:
    """Efficient attention of float32 C-contiguous ``(H, W, d)`` / ``(H, W, dv)`` arrays.

    ``seed`` is unused (the method is deterministic).  Returns ``(H, W, dv)`` float32.
    Raises ValueError for an unknown ``variant`` or ``heads`` that does not divide ``d``.
    """
    height, width, d = queries.shape
    variant, heads = _check_params(variant, heads, d)
    dv = values.shape[2]
    n = height * width
    q = queries.reshape(n, d)
    k = keys.reshape(n, d)
    softmax = variant == "softmax"
    kmax = _key_max(k) if softmax else np.zeros(d)
    context = _context(k, values.reshape(n, dv), kmax, float(scale), softmax)
    if softmax:
        context = context[:, :dv] / context[:, dv:]
        factor = 1.0
    else:
        context = context[:, :dv]
        factor = float(scale) / n
    context = np.ascontiguousarray(context * head_mask(d, dv, heads))
    out = np.empty((n, dv), np.float32)
    _efficient_outputs(q, context, d // heads, float(scale), softmax, factor, QUERY_BLOCK, out)
    return out.reshape(height, width, dv)


def rows(queries: np.ndarray, keys: np.ndarray, positions: np.ndarray, scale: float, seed: int,
         *, variant: str = "softmax", heads: int = 1) -> np.ndarray:
    """Efficient-attention maps ``sum_c rho_q(q_i)_c rho_k(K)[j, c]`` (averaged over heads) of
    the query pixels ``positions`` (m, 2), as ``(m, H, W)`` float32; each sums to 1.

    Raises ValueError for ``variant="scaling"``, whose signed weights are no distribution.
    """
    height, width, d = queries.shape
    variant, heads = _check_params(variant, heads, d)
    if variant != "softmax":
        raise ValueError(
            "variant='scaling' is plain linear attention: its weights scale*q.k/n are signed and "
            "do not sum to 1, so it has no attention map; use variant='softmax' for maps"
        )
    n = height * width
    m = positions.shape[0]
    out = np.empty((m, n), np.float32)
    if m:
        k = keys.reshape(n, d)
        kmax = _key_max(k)
        norms = _context(k, np.empty((n, 0), np.float32), kmax, float(scale), True)[:, 0]
        coef = np.empty((m, d))
        for r in range(m):
            _query_weights(queries[positions[r, 0], positions[r, 1]], d // heads, float(scale),
                           True, coef[r])
        coef /= heads * norms
        _efficient_rows(coef, k, kmax, float(scale), KEY_CHUNK, out)
    return out.reshape(m, height, width)
