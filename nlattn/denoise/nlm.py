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


def patchwise_strip_rows(height: int, patch_radius: int, search_radius: int) -> int:
    """Rows per strip of the patch-wise sweep, which recomputes weights on 2f rows around each
    strip: taller strips amortise that, while 8 strips or more keep the threads busy."""
    return max(patch_radius + search_radius, min(128, max(STRIP_ROWS, height // 8)))


# Inner loops index views with their own loop variable only: an index like ``x0 + c`` makes Numba
# emit a negative-index wraparound check that stops LLVM from vectorising the loop.
#
# Weights of one offset stream down the rows: the squared differences of the last 2f + 1 rows
# live in a ring whose column sums slide (add the entering row, remove the leaving one), then a
# horizontal box sum and the exponential give one row of weights.  Everything a row needs stays
# in the L1/L2 cache whatever the image size.


@jit
def _sq_row_into_ring(padded, y_pad, dy, x_pad, dx, tmp, vert, ring_row, first):
    """Squared differences (summed over channels) of one row entering the vertical box.

    ``tmp[c] = sum_ch (u[y, x + c] - u[y + dy, x + dx + c])**2`` on padded coordinates; then
    ``vert += tmp`` (``first``) or ``vert += tmp - ring_row``, and the ring row takes ``tmp``.
    """
    n_ch = padded.shape[0]
    n = tmp.shape[0]
    a = padded[0, y_pad, x_pad : x_pad + n]
    b = padded[0, y_pad + dy, x_pad + dx : x_pad + dx + n]
    for c in range(n):
        d = a[c] - b[c]
        tmp[c] = d * d
    for ch in range(1, n_ch):
        a = padded[ch, y_pad, x_pad : x_pad + n]
        b = padded[ch, y_pad + dy, x_pad + dx : x_pad + dx + n]
        for c in range(n):
            d = a[c] - b[c]
            tmp[c] += d * d
    if first:
        for c in range(n):
            vert[c] += tmp[c]
            ring_row[c] = tmp[c]
    else:
        for c in range(n):
            vert[c] += tmp[c] - ring_row[c]
            ring_row[c] = tmp[c]


@jit
def _box_row(vert, out, span):
    """``out[c] = sum_{t < span} vert[c + t]`` (explicit loops: a slice assignment between
    arrays costs an overlap check and a temporary copy)."""
    n = out.shape[0]
    for c in range(n):
        out[c] = vert[c]
    for t in range(1, span):
        shifted = vert[t : t + n]
        for c in range(n):
            out[c] += shifted[c]


@jit
def _weights_row(padded, pad, f, dy, dx, y, first_row, c_lo, n_out, norm, two_sigma2, inv_h2,
                 ring, vert, tmp, horiz, out):
    """Weights ``w(i, i + (dy, dx))`` for query row ``y``, columns ``[c_lo, c_lo + n_out)``.

    Rows are produced in order from ``first_row`` (which starts the ring afresh); ``ring``
    (``2f + 1`` rows), ``vert``, ``tmp`` hold ``n_out + 2f`` columns, ``horiz`` and ``out``
    ``n_out``.
    """
    span = 2 * f + 1
    n_cols = n_out + 2 * f
    x_pad = c_lo - f + pad
    if y == first_row:
        vert[:] = 0.0
        for yy in range(y - f, y + f + 1):
            _sq_row_into_ring(padded, yy + pad, dy, x_pad, dx, tmp[:n_cols], vert[:n_cols],
                              ring[(yy + span) % span, :n_cols], True)
    else:
        yy = y + f
        _sq_row_into_ring(padded, yy + pad, dy, x_pad, dx, tmp[:n_cols], vert[:n_cols],
                          ring[(yy + span) % span, :n_cols], False)
    h = horiz[:n_out]
    _box_row(vert, h, span)
    for c in range(n_out):
        d2 = max(h[c] * norm - two_sigma2, _ZERO)
        out[c] = exp_neg(d2 * inv_h2)


@jit
def _add_into(dst, src):
    for c in range(dst.shape[0]):
        dst[c] += src[c]


@jit
def _max_into(dst, src):
    for c in range(dst.shape[0]):
        dst[c] = max(dst[c], src[c])


@jit
def _add_max_into(total, largest, src):
    """``total += src`` and ``largest = max(largest, src)``."""
    for c in range(total.shape[0]):
        total[c] += src[c]
        largest[c] = max(largest[c], src[c])


@jit
def _add_product_into(dst, weight, values):
    for c in range(dst.shape[0]):
        dst[c] += weight[c] * values[c]


@jit
def _flush(total, part):
    """``total += part; part = 0`` (float32 partial sums into float64 totals)."""
    flat_total = total.ravel()
    flat_part = part.ravel()
    for k in range(flat_total.shape[0]):
        flat_total[k] += flat_part[k]
        flat_part[k] = 0.0


@jit(parallel=True)
def _nlm_sweep_normalisers(padded, pad, height, width, f, s, norm, two_sigma2, inv_h2, strip,
                           want_num, den, wmax, num):
    """First sweep: ``den(i) = sum_{j != i} w_ij``, ``wmax(i)`` and (pixel-wise) ``num(i)``.

    Sums over the ``2s + 1`` offsets of one row ``dy`` of the window are kept in float32 and then
    added to float64 totals.
    """
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
            den_p = np.zeros((local_rows, width), np.float32)
            wmax_l = np.zeros((local_rows, width), np.float32)
            n_num = n_ch if want_num else 0
            num_l = np.zeros((n_num, local_rows, width), np.float64)
            num_p = np.zeros((n_num, local_rows, width), np.float32)
            ring = np.empty((2 * f + 1, width + 2 * f), np.float32)
            vert = np.empty(width + 2 * f, np.float32)
            tmp = np.empty(width + 2 * f, np.float32)
            horiz = np.empty(width, np.float32)
            w = np.empty(width, np.float32)
            for dy in range(s + 1):
                for dx in range(-s, s + 1):
                    if dy == 0 and dx <= 0:
                        continue
                    c_lo = max(0, -dx)
                    c_hi = min(width, width - dx)
                    n_out = c_hi - c_lo
                    if n_out <= 0:
                        continue
                    wr = w[:n_out]
                    for y in range(r0, min(r1, height - dy)):
                        _weights_row(padded, pad, f, dy, dx, y, r0, c_lo, n_out, norm,
                                     two_sigma2, inv_h2, ring, vert, tmp, horiz, wr)
                        r = y - r0
                        _add_max_into(den_p[r, c_lo:c_hi], wmax_l[r, c_lo:c_hi], wr)
                        _add_max_into(den_p[r + dy, c_lo + dx : c_hi + dx],
                                      wmax_l[r + dy, c_lo + dx : c_hi + dx], wr)
                        for ch in range(n_num):
                            neighbours = padded[ch, y + pad + dy, c_lo + dx + pad : c_hi + dx + pad]
                            queries = padded[ch, y + pad, c_lo + pad : c_hi + pad]
                            _add_product_into(num_p[ch, r, c_lo:c_hi], wr, neighbours)
                            _add_product_into(num_p[ch, r + dy, c_lo + dx : c_hi + dx], wr, queries)
                _flush(den_l, den_p)
                _flush(num_l, num_p)
            for r in range(min(local_rows, height - r0)):
                y = r0 + r
                _add_into(den[y], den_l[r])
                _max_into(wmax[y], wmax_l[r])
                for ch in range(n_num):
                    _add_into(num[ch, y], num_l[ch, r])


@jit
def _slide_in(vert, ring_row, w, inv_c):
    """Replace a ring row by ``w * inv_c`` and move the column sums ``vert`` along with it."""
    for c in range(vert.shape[0]):
        new = w[c] * inv_c[c]
        vert[c] += new - ring_row[c]
        ring_row[c] = new


@jit
def _slide_out(vert, ring_row):
    """Replace a ring row by zeros and move the column sums ``vert`` along with it."""
    for c in range(vert.shape[0]):
        vert[c] -= ring_row[c]
        ring_row[c] = 0.0


@jit(parallel=True)
def _nlm_sweep_patchwise(padded, pad, height, width, f, s, norm, two_sigma2, inv_h2, strip,
                         inv_c, num):
    """Second sweep of patch-wise NLM: every query's patch estimate spread over its pixels.

    ``num[ch, p]`` accumulates ``sum_i sum_j w_ij / C(i) * u(j + p - i)`` over the queries ``i``
    whose patch contains ``p`` and their neighbours ``j != i`` (the self term is added later).
    For an offset ``delta`` and ``a(i) = w(i, i + delta) / C(i)``, the forward pairs give
    ``num(p) += box(a)(p) * u(p + delta)``; with ``b(i) = w(i, i + delta) / C(i + delta)`` the
    symmetric pairs give ``num(q + delta) += box(b)(q) * u(q)``, where ``q`` may lie up to
    ``f`` pixels outside the image.  ``a`` and ``b`` stream through rings of ``2f + 1`` rows
    whose column sums slide down the strip, so the box filters stay in the cache.
    """
    n_ch = padded.shape[0]
    n_strips = (height + strip - 1) // strip
    span = 2 * f + 1
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
            num_p = np.zeros((n_ch, local_rows, width), np.float32)
            ring = np.empty((span, width + 2 * f), np.float32)
            vert = np.empty(width + 2 * f, np.float32)
            tmp = np.empty(width + 2 * f, np.float32)
            horiz = np.empty(width, np.float32)
            w = np.empty(width, np.float32)
            ring_a = np.empty((span, g_cols), np.float32)
            ring_b = np.empty((span, g_cols), np.float32)
            vert_a = np.empty(g_cols, np.float32)
            vert_b = np.empty(g_cols, np.float32)
            box_a = np.empty(width + 2 * f, np.float32)
            box_b = np.empty(width + 2 * f, np.float32)
            for dy in range(s + 1):
                for dx in range(-s, s + 1):
                    if dy == 0 and dx <= 0:
                        continue
                    c_lo = max(0, -dx)
                    c_hi = min(width, width - dx)
                    n_out = c_hi - c_lo
                    if n_out <= 0:
                        continue
                    ya = max(g0, 0)  # query rows with weights: [ya, yb)
                    yb = min(g0 + g_rows, height - dy)
                    p_lo = max(0, dx - f)
                    p_hi = min(width, width + dx + f)
                    wr = w[:n_out]
                    ring_a[:, :] = 0.0
                    ring_b[:, :] = 0.0
                    vert_a[:] = 0.0
                    vert_b[:] = 0.0
                    for gr in range(g_rows):
                        y = g0 + gr  # query row entering the box
                        # only columns [c_lo, c_hi) of a and b are ever non-zero for this offset
                        row_a = ring_a[gr % span, c_lo + m : c_hi + m]
                        row_b = ring_b[gr % span, c_lo + m : c_hi + m]
                        va = vert_a[c_lo + m : c_hi + m]
                        vb = vert_b[c_lo + m : c_hi + m]
                        if ya <= y < yb:
                            _weights_row(padded, pad, f, dy, dx, y, ya, c_lo, n_out, norm,
                                         two_sigma2, inv_h2, ring, vert, tmp, horiz, wr)
                            _slide_in(va, row_a, wr, inv_c[y, c_lo:c_hi])
                            _slide_in(vb, row_b, wr, inv_c[y + dy, c_lo + dx : c_hi + dx])
                        else:
                            _slide_out(va, row_a)
                            _slide_out(vb, row_b)
                        if gr < 2 * f:
                            continue
                        q = y - f  # the box centred on row q is complete
                        if q >= r0:  # forward: p = q, a real row of this strip
                            _box_row(vert_a, box_a, span)
                            for ch in range(n_ch):
                                src = padded[ch, q + pad + dy, dx + pad : dx + pad + width]
                                _add_product_into(num_p[ch, q - local0], box_a[f : f + width], src)
                        p = q + dy  # backward: p = q + delta receives box(b)(q) * u(q)
                        if 0 <= p < height:
                            _box_row(vert_b, box_b, span)
                            for ch in range(n_ch):
                                _add_product_into(
                                    num_p[ch, p - local0, p_lo:p_hi],
                                    box_b[p_lo - dx + f : p_hi - dx + f],
                                    padded[ch, q + pad, p_lo - dx + pad : p_hi - dx + pad],
                                )
                _flush(num_l, num_p)
            for lr in range(local_rows):
                y = local0 + lr
                if 0 <= y < height:
                    for ch in range(n_ch):
                        _add_into(num[ch, y], num_l[ch, lr])


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


@jit(parallel=True)
def _extra_weights(padded, pad, height, width, f, s, norm, two_sigma2, inv_h2, extra, want_num,
                   den, wmax, num, extra_w):
    """Weights of the extra neighbours (kNN matches outside the search window) of each query.

    ``extra_w[y, x, m]`` receives the weight of ``extra[y, x, m]`` (0 for an empty slot, the
    query itself, or a match inside the window, which the window sweep already counted); the
    query's ``den``, ``wmax`` and (pixel-wise) ``num`` take them in.
    """
    n_ch = padded.shape[0]
    side = 2 * f + 1
    k = extra.shape[2]
    for y in prange(height):
        for x in range(width):
            for m in range(k):
                j = extra[y, x, m]
                extra_w[y, x, m] = 0.0
                if j < 0:
                    continue
                jy = j // width
                jx = j - jy * width
                if abs(jy - y) <= s and abs(jx - x) <= s:
                    continue
                acc = np.float32(0.0)
                for ch in range(n_ch):
                    for a in range(side):
                        qa = padded[ch, y + pad - f + a, x + pad - f : x + pad + f + 1]
                        ka = padded[ch, jy + pad - f + a, jx + pad - f : jx + pad + f + 1]
                        for b in range(side):
                            diff = qa[b] - ka[b]
                            acc += diff * diff
                d2 = max(acc * norm - two_sigma2, _ZERO)
                w = exp_neg(d2 * inv_h2)
                extra_w[y, x, m] = w
                den[y, x] += w
                wmax[y, x] = max(wmax[y, x], w)
                if want_num:
                    for ch in range(n_ch):
                        num[ch, y, x] += w * padded[ch, jy + pad, jx + pad]


@jit(parallel=True)
def _extra_patchwise(padded, pad, height, width, f, extra, extra_w, inv_c, num):
    """Patch-wise contributions of the extra neighbours, gathered at each pixel ``p``:
    ``num(p) += sum_t sum_m w(p - t, m) / C(p - t) * u(j_m + t)`` over real queries ``p - t``."""
    n_ch = padded.shape[0]
    k = extra.shape[2]
    for y in prange(height):
        for x in range(width):
            for ty in range(-f, f + 1):
                qy = y - ty
                if qy < 0 or qy >= height:
                    continue
                for tx in range(-f, f + 1):
                    qx = x - tx
                    if qx < 0 or qx >= width:
                        continue
                    scale = inv_c[qy, qx]
                    for m in range(k):
                        w = extra_w[qy, qx, m]
                        if w == 0.0:
                            continue
                        j = extra[qy, qx, m]
                        jy = j // width
                        jx = j - jy * width
                        for ch in range(n_ch):
                            num[ch, y, x] += (w * scale) * padded[ch, jy + ty + pad,
                                                                  jx + tx + pad]


#: ``h`` is used no smaller than this fraction of the image's largest magnitude (nor than
#: ``2**-60``): below it every patch but the query's own, and its exact copies, weighs
#: ``exp(-d**2 / h**2) = 0`` in float32 already, so the result (the input) is the same, while
#: ``1 / h**2`` would overflow float32 and turn the query's own weight into NaN (``0 * inf``).
SMALLEST_RELATIVE_H = 2.0**-50


def smallest_h(planar: np.ndarray) -> float:
    """The smallest ``h`` the kernels use on ``planar`` (see ``SMALLEST_RELATIVE_H``)."""
    top = max(-float(planar.min()), float(planar.max())) if planar.size else 0.0
    return max(top * SMALLEST_RELATIVE_H, 2.0**-60)


def nlm_windowed(planar: np.ndarray, patch_radius: int, search_radius: int, h: float,
                 sigma: float, aggregation: str, extra: np.ndarray | None = None) -> np.ndarray:
    """Run windowed NLM on a float32 planar image ``(C, H, W)``; returns ``(C, H, W)`` float32.

    ``extra`` (``(H, W, k)`` int32 flat indices, -1 for none) adds neighbours beyond the search
    window to each query's support (PatchMatch matches: ``nl_means(method="scram")``).
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
    inv_h2 = np.float32(1.0 / max(h, smallest_h(planar)) ** 2)
    strip = strip_rows(f, s)
    den = np.zeros((height, width), np.float64)
    wmax = np.zeros((height, width), np.float32)
    pixelwise = aggregation == "pixel"
    num = np.zeros((n_ch, height, width), np.float64)
    _nlm_sweep_normalisers(padded, pad, height, width, f, s, norm, two_sigma2, inv_h2, strip,
                           pixelwise, den, wmax, num)
    if extra is not None:
        extra_w = np.empty(extra.shape, np.float32)
        _extra_weights(padded, pad, height, width, f, s, norm, two_sigma2, inv_h2, extra,
                       pixelwise, den, wmax, num, extra_w)
    out = np.empty((n_ch, height, width), np.float32)
    if pixelwise:
        _finish_pixelwise(padded, pad, height, width, den, wmax, num, out)
        return out
    w_self = np.empty((height, width), np.float32)
    inv_c = np.empty((height, width), np.float32)
    _self_weights(height, width, den, wmax, w_self, inv_c)
    _nlm_sweep_patchwise(padded, pad, height, width, f, s, norm, two_sigma2, inv_h2,
                         patchwise_strip_rows(height, f, s), inv_c, num)
    if extra is not None:
        _extra_patchwise(padded, pad, height, width, f, extra, extra_w, inv_c, num)
    _finish_patchwise(padded, pad, height, width, f, w_self, inv_c, num, out)
    return out
