"""Windowed softmax attention (method ``"local"``): the classic NLM search window.

Definitions (the naive twins ``windowed_attention`` and ``windowed_rows`` in ``tests/naive.py``
implement exactly these): query ``i = (y, x)`` attends to the keys ``j = (y', x')`` of the
``(2r+1) x (2r+1)`` window ``|y' - y| <= r, |x' - x| <= r`` clipped to the grid (no padding: a
border query simply has fewer keys; its own key is always there),

    out_i = sum_j w_ij v_j / sum_j w_ij,    w_ij = exp(s_ij - max_j s_ij),    s_ij = scale q_i.k_j

Algorithm: channels-first copies of q (pre-scaled), k and v let every inner loop run along a row
of pixels, where LLVM vectorises it.  The work items are tiles of up to :data:`MAX_TILE` query
pixels of one row (:func:`tile_width`), each owned by one thread.  Pass 1, window row by window
row: the tile's scores against the ``2r+1`` offsets of that row are accumulated four channels at
a time (channels outer, offsets inner, so the q and k rows are reused from L1) into a per-item
buffer of ``(2r+1)**2 x tile`` floats, and each query's maximum is updated.  Pass 2 turns the
cached scores into weights ``exp(s - max)`` in place (vectorised float32 exponential), adds them
to a float64 normaliser and accumulates ``sum_j w_ij v_j`` in float32 over one window row, then
into float64 totals.  The maximum is exact, not a running estimate, so no rescaling is needed.
Each output pixel is computed by one work item in a fixed order, and the tiles depend on the
grid and ``r`` only: the output is the same at any thread count.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from nlattn._fastexp import exp_neg
from nlattn._jit import jit

#: Most query pixels per work item (one row segment); see :func:`tile_width`.
MAX_TILE = 512
#: Float32 scores a work item caches, at most (512 KiB: half of a Zen 4/5 core's L2).
SCORE_BUFFER = 131072


def tile_width(window_radius: int) -> int:
    """Query pixels per work item: as many as :data:`MAX_TILE`, fewer for large windows so that
    the ``(2r+1)**2 x tile`` cached scores fit in :data:`SCORE_BUFFER` (at least 32)."""
    side = 2 * window_radius + 1
    return max(32, min(MAX_TILE, SCORE_BUFFER // (side * side) // 16 * 16))


@jit
def _add_scores4(qp, kp, c, y, yy, xa, xb, dx, s):
    """``s[t] += sum_{c' < c + 4} qp[c', y, xa + t] * kp[c', yy, xa + dx + t]``, channels
    ``c .. c + 3``: one load and store of ``s`` per four multiply-adds."""
    q0 = qp[c, y, xa:xb]
    q1 = qp[c + 1, y, xa:xb]
    q2 = qp[c + 2, y, xa:xb]
    q3 = qp[c + 3, y, xa:xb]
    k0 = kp[c, yy, xa + dx : xb + dx]
    k1 = kp[c + 1, yy, xa + dx : xb + dx]
    k2 = kp[c + 2, yy, xa + dx : xb + dx]
    k3 = kp[c + 3, yy, xa + dx : xb + dx]
    for t in range(s.shape[0]):
        s[t] += (q0[t] * k0[t] + q1[t] * k1[t]) + (q2[t] * k2[t] + q3[t] * k3[t])


@jit
def _add_scores1(qp, kp, c, y, yy, xa, xb, dx, s):
    """``s[t] += qp[c, y, xa + t] * kp[c, yy, xa + dx + t]``."""
    qc = qp[c, y, xa:xb]
    kc = kp[c, yy, xa + dx : xb + dx]
    for t in range(s.shape[0]):
        s[t] += qc[t] * kc[t]


@jit
def _zero(s):
    for t in range(s.shape[0]):
        s[t] = 0.0


@jit
def _max_into(best, s):
    for t in range(best.shape[0]):
        best[t] = max(best[t], s[t])


@jit
def _weights_into(s, best, den):
    """``s = exp(s - best)`` in place (float32) and ``den += s`` (float64)."""
    for t in range(s.shape[0]):
        p = exp_neg(best[t] - s[t])
        s[t] = p
        den[t] += p


@jit
def _accumulate(acc, w, values):
    """``acc += w * values`` (float32)."""
    for t in range(acc.shape[0]):
        acc[t] += w[t] * values[t]


@jit
def _flush(total, part):
    """``total += part; part = 0`` (float32 partial sums into float64 totals)."""
    for c in range(total.shape[0]):
        tot = total[c]
        prt = part[c]
        for t in range(tot.shape[0]):
            tot[t] += prt[t]
            prt[t] = 0.0


@jit(parallel=True)
def _local_attend(qp, kp, vp, r, tile, out):
    """Windowed attention on channels-first float32 ``qp`` (d, H, W) (pre-scaled), ``kp``
    (d, H, W) and ``vp`` (dv, H, W); ``out`` is ``(H, W, dv)`` float32."""
    d, height, width = qp.shape
    dv = vp.shape[0]
    side = 2 * r + 1
    n_tiles = (width + tile - 1) // tile
    for item in prange(height * n_tiles):
        y = item // n_tiles
        x0 = (item % n_tiles) * tile
        x1 = min(width, x0 + tile)
        nt = x1 - x0
        scores = np.empty((side * side, nt), np.float32)
        best = np.full(nt, -np.inf, np.float32)
        den = np.zeros(nt, np.float64)
        acc = np.zeros((dv, nt), np.float64)
        part = np.zeros((dv, nt), np.float32)
        y_lo = max(0, y - r)
        y_hi = min(height, y + r + 1)
        for yy in range(y_lo, y_hi):
            # channels outer, offsets inner: the tile's q rows and the key rows of window row yy
            # are reused from L1 by every offset dx
            row0 = (yy - y + r) * side + r
            for dx in range(-r, r + 1):
                xa = max(x0, -dx)
                xb = min(x1, width - dx)
                if xa < xb:
                    _zero(scores[row0 + dx, xa - x0 : xb - x0])
            c = 0
            while c < d:
                for dx in range(-r, r + 1):
                    xa = max(x0, -dx)
                    xb = min(x1, width - dx)
                    if xa >= xb:
                        continue
                    s = scores[row0 + dx, xa - x0 : xb - x0]
                    if c + 4 <= d:
                        _add_scores4(qp, kp, c, y, yy, xa, xb, dx, s)
                    else:
                        _add_scores1(qp, kp, c, y, yy, xa, xb, dx, s)
                c += 4 if c + 4 <= d else 1
            for dx in range(-r, r + 1):
                xa = max(x0, -dx)
                xb = min(x1, width - dx)
                if xa < xb:
                    _max_into(best[xa - x0 : xb - x0], scores[row0 + dx, xa - x0 : xb - x0])
        for yy in range(y_lo, y_hi):
            row0 = (yy - y + r) * side + r
            for dx in range(-r, r + 1):  # scores become weights, in place
                xa = max(x0, -dx)
                xb = min(x1, width - dx)
                if xa < xb:
                    lo = xa - x0
                    hi = xb - x0
                    _weights_into(scores[row0 + dx, lo:hi], best[lo:hi], den[lo:hi])
            for c in range(dv):  # value channels outer: the rows of v are reused from L1
                pc = part[c]
                for dx in range(-r, r + 1):
                    xa = max(x0, -dx)
                    xb = min(x1, width - dx)
                    if xa < xb:
                        _accumulate(pc[xa - x0 : xb - x0], scores[row0 + dx, xa - x0 : xb - x0],
                                    vp[c, yy, xa + dx : xb + dx])
            _flush(acc, part)
        for t in range(nt):
            inv = 1.0 / den[t]
            o_px = out[y, x0 + t]
            for c in range(dv):
                o_px[c] = np.float32(acc[c, t] * inv)


@jit(parallel=True)
def _local_rows(queries, keys, positions, scale, r, out):
    """Window rows: ``out[p]`` (H, W), zero on entry, gets the softmax of the window of query
    ``positions[p]``; scores and weights in float64."""
    height, width, d = queries.shape
    for p in prange(positions.shape[0]):
        y = positions[p, 0]
        x = positions[p, 1]
        qi = queries[y, x]
        y_lo = max(0, y - r)
        y_hi = min(height, y + r + 1)
        x_lo = max(0, x - r)
        x_hi = min(width, x + r + 1)
        row = out[p]
        scores = np.empty((y_hi - y_lo, x_hi - x_lo), np.float64)
        best = -np.inf
        for yy in range(y_lo, y_hi):
            for xx in range(x_lo, x_hi):
                kj = keys[yy, xx]
                s = 0.0
                for c in range(d):
                    s += np.float64(qi[c]) * np.float64(kj[c])
                s *= scale
                scores[yy - y_lo, xx - x_lo] = s
                best = max(best, s)
        total = 0.0
        for yy in range(y_lo, y_hi):
            for xx in range(x_lo, x_hi):
                wgt = math.exp(scores[yy - y_lo, xx - x_lo] - best)
                scores[yy - y_lo, xx - x_lo] = wgt
                total += wgt
        inv = 1.0 / total
        for yy in range(y_lo, y_hi):
            for xx in range(x_lo, x_hi):
                row[yy, xx] = np.float32(scores[yy - y_lo, xx - x_lo] * inv)


def _channels_first(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=np.float32)


def attend(queries: np.ndarray, keys: np.ndarray, values: np.ndarray, scale: float, seed: int,
           *, window_radius: int = 3) -> np.ndarray:
    """Windowed softmax attention of float32 C-contiguous ``(H, W, d)`` / ``(H, W, dv)`` arrays.

    ``seed`` is unused (the method is deterministic).  Returns ``(H, W, dv)`` float32.
    """
    height, width, _ = queries.shape
    qp = _channels_first(queries * np.float32(scale))
    out = np.empty((height, width, values.shape[2]), np.float32)
    _local_attend(qp, _channels_first(keys), _channels_first(values), window_radius,
                  tile_width(window_radius), out)
    return out


def rows(queries: np.ndarray, keys: np.ndarray, positions: np.ndarray, scale: float, seed: int,
         *, window_radius: int = 3) -> np.ndarray:
    """Window rows of the query pixels ``positions`` (m, 2) as ``(m, H, W)`` float32, zero
    outside each query's window."""
    height, width, _ = queries.shape
    out = np.zeros((positions.shape[0], height, width), np.float32)
    if positions.shape[0]:
        _local_rows(queries, keys, np.ascontiguousarray(positions, dtype=np.int64), float(scale),
                    window_radius, out)
    return out
