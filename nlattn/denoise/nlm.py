"""Windowed non-local means (Buades et al.) with the shift-outer algorithm.

Definitions (the naive twin in ``tests/naive.py`` implements exactly these):

- The image is reflect-padded (``numpy.pad(mode="reflect")``) by ``patch_radius + search_radius``
  so that every patch exists; neighbours ``j`` are real pixels only (the search window is clipped
  to the image), patches around them may reach into the padding.
- Patch distance: ``d2(i, j)`` is the *mean* squared difference over the ``(2f+1)**2 * C``
  elements of the two patches (joint over channels), so it is in squared image units and pure noise
  patches sit at ``2 sigma**2``.
- Weight: ``w_ij = exp(-max(d2 - 2 sigma**2, 0) / h**2)`` for ``j != i`` in the
  ``(2s+1)**2`` window; the centre gets the largest weight found among the others (1 when there
  are no others or all of them are 0), the usual NLM self-weight rule.
- Pixel-wise aggregation: ``out(i) = sum_j w_ij u(j) / sum_j w_ij``.
- Patch-wise aggregation (IPOL): query ``i`` estimates its whole patch,
  ``B(i)(t) = sum_j w_ij u(j + t) / C(i)``; pixel ``p`` is the mean of the estimates of all
  patches centred on real pixels that contain it.

Algorithm: for each offset ``delta`` of one half of the search window, the squared-difference
image of ``u`` and ``u`` shifted by ``delta`` is box-filtered into patch distances and turned into
weights for every pixel; ``w(i, i + delta)`` also serves the symmetric pair ``w(i + delta, i)``, so
each unordered pair is computed once.  The image is cut into strips of rows processed in parallel;
a strip's contributions that land in the next strip's rows go to a strip-local halo that is merged
in two phases (even strips, then odd), so no two threads ever write the same element and the
summation order, hence the result, is the same at any thread count.  The patch-wise variant needs
each query's normaliser ``C(i)`` before its estimates can be averaged, so it runs a second sweep.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from nlattn._fastexp import exp_neg
from nlattn._jit import jit

_ZERO = np.float32(0.0)

#: Minimum number of rows a strip holds (fixed, so results never depend on the thread count).
STRIP_ROWS = 32


def strip_rows(patch_radius: int, search_radius: int) -> int:
    """Rows per strip: large enough that halos of even strips never overlap."""
    return max(STRIP_ROWS, patch_radius + search_radius)


@jit
def _offset_weights(
    padded, pad, f, dy, dx, ra, rb, height, width, norm, two_sigma2, inv_h2, g0, gc0, sq, vs, out_w
):
    """Weights between query ``i`` and ``i + (dy, dx)`` for query rows ``[ra, rb)``.

    ``out_w[y - g0, x - gc0]`` receives the weight of query ``(y, x)``; every other element of
    ``out_w`` (invalid rows/columns, neighbours outside the image) is set to 0.
    ``sq`` (rows >= rb - ra + 2f) and ``vs`` (2 rows) are scratch buffers with at least
    ``width + 2f`` columns; ``norm``, ``two_sigma2`` and ``inv_h2`` are float32.
    """
    n_ch = padded.shape[0]
    out_w[:, :] = 0.0
    ra = max(ra, 0)
    rb = min(rb, height - dy)
    c_lo = max(0, -dx)
    c_hi = min(width, width - dx)
    if ra >= rb or c_lo >= c_hi:
        return
    n_rows = rb - ra + 2 * f
    n_cols = c_hi - c_lo + 2 * f
    x0 = c_lo - f + pad
    for rr in range(n_rows):
        y = ra - f + rr + pad
        row = sq[rr]
        for cc in range(n_cols):
            row[cc] = 0.0
        for ch in range(n_ch):
            a = padded[ch, y]
            b = padded[ch, y + dy]
            for cc in range(n_cols):
                d = a[x0 + cc] - b[x0 + cc + dx]
                row[cc] += d * d
    span = 2 * f + 1
    n_out = c_hi - c_lo
    base = c_lo - gc0
    vert = vs[0]
    horiz = vs[1]
    for r in range(rb - ra):
        for cc in range(n_cols):
            vert[cc] = sq[r, cc]
        for t in range(1, span):
            row = sq[r + t]
            for cc in range(n_cols):
                vert[cc] += row[cc]
        for c in range(n_out):
            horiz[c] = vert[c]
        for t in range(1, span):
            for c in range(n_out):
                horiz[c] += vert[c + t]
        out_row = out_w[ra + r - g0]
        for c in range(n_out):
            d2 = max(horiz[c] * norm - two_sigma2, _ZERO)
            out_row[base + c] = exp_neg(d2 * inv_h2)


@jit(parallel=True)
def _nlm_sweep_normalisers(padded, pad, height, width, f, s, norm, two_sigma2, inv_h2, strip,
                           want_num, den, wmax, num):
    """First sweep: ``den(i) = sum_{j != i} w_ij``, ``wmax(i)`` and (pixel-wise) ``num(i)``."""
    n_ch = padded.shape[0]
    n_strips = (height + strip - 1) // strip
    for phase in range(2):
        n_here = (n_strips - phase + 1) // 2
        for t in prange(n_here):
            b = 2 * t + phase
            r0 = b * strip
            r1 = min(height, r0 + strip)
            rows = r1 - r0
            local_rows = rows + s
            den_l = np.zeros((local_rows, width), np.float64)
            wmax_l = np.zeros((local_rows, width), np.float32)
            num_l = np.zeros((n_ch if want_num else 0, local_rows, width), np.float64)
            sq = np.empty((rows + 2 * f, width + 2 * f), np.float32)
            vs = np.empty((2, width + 2 * f), np.float32)
            w = np.empty((rows, width), np.float32)
            for dy in range(s + 1):
                for dx in range(-s, s + 1):
                    if dy == 0 and dx <= 0:
                        continue
                    _offset_weights(padded, pad, f, dy, dx, r0, r1, height, width, norm,
                                    two_sigma2, inv_h2, r0, 0, sq, vs, w)
                    c_lo = max(0, -dx)
                    c_hi = min(width, width - dx)
                    for r in range(rows):
                        wr = w[r]
                        fwd = den_l[r]
                        bwd = den_l[r + dy]
                        mf = wmax_l[r]
                        mb = wmax_l[r + dy]
                        for c in range(c_lo, c_hi):
                            fwd[c] += wr[c]
                            mf[c] = max(mf[c], wr[c])
                        for c in range(c_lo, c_hi):
                            bwd[c + dx] += wr[c]
                            mb[c + dx] = max(mb[c + dx], wr[c])
                        if want_num:
                            y = r0 + r + pad
                            for ch in range(n_ch):
                                src_q = padded[ch, y]
                                src_n = padded[ch, y + dy]
                                nf = num_l[ch, r]
                                nb = num_l[ch, r + dy]
                                for c in range(c_lo, c_hi):
                                    nf[c] += wr[c] * src_n[c + dx + pad]
                                for c in range(c_lo, c_hi):
                                    nb[c + dx] += wr[c] * src_q[c + pad]
            for r in range(min(local_rows, height - r0)):
                y = r0 + r
                for c in range(width):
                    den[y, c] += den_l[r, c]
                    wmax[y, c] = max(wmax[y, c], wmax_l[r, c])
                if want_num:
                    for ch in range(n_ch):
                        for c in range(width):
                            num[ch, y, c] += num_l[ch, r, c]


@jit
def _box_rows_cols(src, dst, vs, f, r_lo, r_hi, n_cols):
    """``dst[r, c] = sum_{|a|,|b| <= f} src[r + f + a, c + f + b]`` for r in [r_lo, r_hi)."""
    span = 2 * f + 1
    for r in range(r_lo, r_hi):
        for c in range(n_cols + 2 * f):
            vs[c] = src[r, c]
        for t in range(1, span):
            row = src[r + t]
            for c in range(n_cols + 2 * f):
                vs[c] += row[c]
        out = dst[r]
        for c in range(n_cols):
            acc = vs[c]
            for t in range(1, span):
                acc += vs[c + t]
            out[c] = acc


@jit(parallel=True)
def _nlm_sweep_patchwise(padded, pad, height, width, f, s, norm, two_sigma2, inv_h2, strip,
                         inv_c, num):
    """Second sweep of patch-wise NLM: every query's patch estimate spread over its pixels.

    ``num[ch, p]`` accumulates ``sum_i sum_j w_ij / C(i) * u(j + p - i)`` over the queries ``i``
    whose patch contains ``p`` and their neighbours ``j != i`` (the self term is added later).
    """
    n_ch = padded.shape[0]
    n_strips = (height + strip - 1) // strip
    m = 2 * f  # column margin of the weight grid
    for phase in range(2):
        n_here = (n_strips - phase + 1) // 2
        for t in prange(n_here):
            b = 2 * t + phase
            r0 = b * strip
            r1 = min(height, r0 + strip)
            # rows q of box-filtered estimates handled by this strip (the first takes the margin
            # above the image: q = p - delta may lie up to f rows outside it)
            qa = r0 - f if b == 0 else r0
            qb = r1
            g0 = qa - f  # weight grid rows [qa - f, qb + f)
            g_rows = qb - qa + 2 * f
            g_cols = width + 2 * m  # weight grid columns [-m, width + m)
            local0 = r0 - f  # local accumulator rows [r0 - f, r1 + s)
            local_rows = r1 - r0 + f + s
            num_l = np.zeros((n_ch, local_rows, width), np.float64)
            sq = np.empty((g_rows + 2 * f, width + 2 * f), np.float32)
            vs = np.empty((2, g_cols), np.float32)
            w = np.empty((g_rows, g_cols), np.float32)
            a = np.zeros((g_rows, g_cols), np.float32)
            bb = np.zeros((g_rows, g_cols), np.float32)
            box_a = np.empty((g_rows, g_cols - 2 * f), np.float32)
            box_b = np.empty((g_rows, g_cols - 2 * f), np.float32)
            for dy in range(s + 1):
                for dx in range(-s, s + 1):
                    if dy == 0 and dx <= 0:
                        continue
                    _offset_weights(padded, pad, f, dy, dx, g0, g0 + g_rows, height, width, norm,
                                    two_sigma2, inv_h2, g0, -m, sq, vs, w)
                    # a(i) = w(i) / C(i) and b(i) = w(i) / C(i + delta) on the grid (0 off-image)
                    for gr in range(g_rows):
                        y = g0 + gr
                        if y < 0 or y >= height - dy:
                            for gc in range(g_cols):
                                a[gr, gc] = 0.0
                                bb[gr, gc] = 0.0
                            continue
                        ic = inv_c[y]
                        icn = inv_c[y + dy]
                        for gc in range(g_cols):
                            a[gr, gc] = 0.0
                            bb[gr, gc] = 0.0
                        for x in range(max(0, -dx), min(width, width - dx)):
                            wv = w[gr, x + m]
                            a[gr, x + m] = wv * ic[x]
                            bb[gr, x + m] = wv * icn[x + dx]
                    # box sums for q rows [qa, qb): grid row (q - g0) - f .. + f, columns q in
                    # [-f, width + f) -> box column index q + f
                    _box_rows_cols(a, box_a, vs[0], f, 0, g_rows - 2 * f, g_cols - 2 * f)
                    _box_rows_cols(bb, box_b, vs[0], f, 0, g_rows - 2 * f, g_cols - 2 * f)
                    for qr in range(qb - qa):
                        q = qa + qr
                        # forward: p = q (real rows of this strip only)
                        if r0 <= q < r1:
                            y = q + pad
                            lr = q - local0
                            for ch in range(n_ch):
                                src = padded[ch, y + dy]
                                acc = num_l[ch, lr]
                                ba = box_a[qr]
                                for c in range(width):
                                    acc[c] += ba[c + f] * src[c + dx + pad]
                        # backward: p = q + delta receives box_b(q) * u(q)
                        p = q + dy
                        if 0 <= p < height:
                            lr = p - local0
                            y = q + pad
                            c_lo = max(0, dx - f)
                            c_hi = min(width, width + dx + f)
                            for ch in range(n_ch):
                                src = padded[ch, y]
                                acc = num_l[ch, lr]
                                bq = box_b[qr]
                                for pc in range(c_lo, c_hi):
                                    acc[pc] += bq[pc - dx + f] * src[pc - dx + pad]
            for lr in range(local_rows):
                y = local0 + lr
                if y < 0 or y >= height:
                    continue
                for ch in range(n_ch):
                    for c in range(width):
                        num[ch, y, c] += num_l[ch, lr, c]


@jit(parallel=True)
def _finish_pixelwise(padded, pad, height, width, den, wmax, num, out):
    n_ch = padded.shape[0]
    for y in prange(height):
        for c in range(width):
            ws = wmax[y, c]
            if ws <= 0.0:
                ws = 1.0
            inv = 1.0 / (den[y, c] + ws)
            for ch in range(n_ch):
                out[ch, y, c] = (num[ch, y, c] + ws * padded[ch, y + pad, c + pad]) * inv


@jit(parallel=True)
def _self_weights(height, width, den, wmax, w_self, inv_c):
    for y in prange(height):
        for c in range(width):
            ws = wmax[y, c]
            if ws <= 0.0:
                ws = 1.0
            w_self[y, c] = ws
            inv_c[y, c] = 1.0 / (den[y, c] + ws)


@jit(parallel=True)
def _finish_patchwise(padded, pad, height, width, f, w_self, inv_c, num, out):
    n_ch = padded.shape[0]
    for y in prange(height):
        y_lo = max(0, y - f)
        y_hi = min(height, y + f + 1)
        for c in range(width):
            x_lo = max(0, c - f)
            x_hi = min(width, c + f + 1)
            self_sum = 0.0
            for yy in range(y_lo, y_hi):
                for xx in range(x_lo, x_hi):
                    self_sum += w_self[yy, xx] * inv_c[yy, xx]
            count = (y_hi - y_lo) * (x_hi - x_lo)
            for ch in range(n_ch):
                u = padded[ch, y + pad, c + pad]
                out[ch, y, c] = (num[ch, y, c] + self_sum * u) / count


def nlm_windowed(planar: np.ndarray, patch_radius: int, search_radius: int, h: float,
                 sigma: float, aggregation: str) -> np.ndarray:
    """Run windowed NLM on a float32 planar image ``(C, H, W)``; returns ``(C, H, W)`` float32.

    Arguments are assumed valid (the public :func:`nlattn.nl_means` checks them).
    """
    n_ch, height, width = planar.shape
    f, s = patch_radius, search_radius
    pad = f + s
    padded = np.ascontiguousarray(
        np.pad(planar, ((0, 0), (pad, pad), (pad, pad)), mode="reflect"), dtype=np.float32
    )
    norm = np.float32(1.0 / (n_ch * (2 * f + 1) ** 2))
    two_sigma2 = np.float32(2.0 * sigma * sigma)
    inv_h2 = np.float32(1.0 / (h * h))
    strip = strip_rows(f, s)
    den = np.zeros((height, width), np.float64)
    wmax = np.zeros((height, width), np.float32)
    pixelwise = aggregation == "pixel"
    num = np.zeros((n_ch, height, width), np.float64)
    _nlm_sweep_normalisers(padded, pad, height, width, f, s, norm, two_sigma2, inv_h2, strip,
                           pixelwise, den, wmax, num)
    out = np.empty((n_ch, height, width), np.float32)
    if pixelwise:
        _finish_pixelwise(padded, pad, height, width, den, wmax, num, out)
        return out
    w_self = np.empty((height, width), np.float32)
    inv_c = np.empty((height, width), np.float32)
    _self_weights(height, width, den, wmax, w_self, inv_c)
    _nlm_sweep_patchwise(padded, pad, height, width, f, s, norm, two_sigma2, inv_h2, strip,
                         inv_c, num)
    _finish_patchwise(padded, pad, height, width, f, w_self, inv_c, num, out)
    return out
