"""Two-stage non-local denoising: a non-local means pilot, then collaborative Wiener filtering.

Stage 1 is windowed NLM (:func:`nlattn.denoise.nlm.nlm_windowed`) with a strong filter: its output,
the *pilot*, is smooth but holds little noise.  Stage 2 revisits the noisy image through the pilot,
as the second step of BM3D does (Dabov et al. 2007):

- Reference blocks of ``P x P`` pixels sit on a grid of stride ``step`` (the last row and column
  of blocks always included, so every pixel is covered).  For each, block matching on the pilot
  (its first channel) finds up to ``k`` similar blocks in the ``(2 s + 1)**2`` window of block
  positions around it: the distance is the mean squared difference of the two pilot blocks over
  their ``L`` lowest-frequency 2-D DCT coefficients (zig-zag order; the pilot has little energy
  above them), divided by ``P**2``; candidates farther than ``tau`` are dropped, the reference
  itself always comes first, ties keep the earlier candidate in raster order.  The group holds
  the largest power of two of blocks not above the number found.
- Each group is transformed in 3-D: an orthonormal 2-D DCT of every block and an orthonormal Haar
  transform across the group.  Every coefficient ``z`` of the noisy group is multiplied by the
  empirical Wiener gain ``p**2 / (p**2 + sigma**2)`` computed from the pilot's coefficient ``p``
  (the pilot acts as an oracle of the clean signal), except the group's mean (the first
  coefficient), which keeps gain 1: its noise is only ``sigma / (P sqrt m)``, and shrinking it
  would darken flat areas a little (a constant image comes back unchanged).  The group is then
  transformed back.
- Every block estimate is averaged into the image with the group's weight
  ``1 / (sigma**2 * sum of squared gains)`` times a Kaiser window of parameter ``beta``.

Colour (any number of channels): the channels are first decorrelated by an orthonormal DCT-II
across them (for three channels the opponent transform ``(R+G+B)/sqrt 3, (R-B)/sqrt 2,
(R-2G+B)/sqrt 6``), each channel keeping its own noise level; the pilot is joint NLM over all of
them, block matching uses the first (luminance) channel only, and each channel is filtered with
the shared groups and its own sigma (as colour BM3D does).

Implementation: the image is cut into tiles of reference blocks; a tile computes the 2-D DCT of
every block position it can reach (its references' windows) with separable passes over whole rows,
gathers groups from those arrays, accumulates the filtered block estimates *in the DCT domain* per
block position (the inverse DCT is linear, so one inverse transform per position replaces one per
block of every group), and finally transforms back and adds its Kaiser-weighted sums into the
image.  Tiles are at least ``2 s + P`` pixels apart when they run at the same time (four phases,
by the parity of the tile row and column), so no two threads write the same pixel and the result
is the same at any thread count.  A tile's arrays live in its thread's row of scratch buffers
allocated once per call (``numba.get_thread_id``): allocating megabytes tile after tile cost more
in page faults than the filtering itself.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import get_thread_id, prange

from nlattn._jit import jit
from nlattn.denoise.nlm import nlm_windowed

#: Reference rows and columns per tile (more when the window needs it, see :func:`tile_shape`).
TILE_REF_ROWS = 8
TILE_REF_COLS = 48
_SQRT_HALF = np.float32(np.sqrt(0.5))


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` (``n x n``, float64): ``D @ x`` transforms ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def zigzag_rank(block: int) -> np.ndarray:
    """Rank of each coefficient ``a * block + b`` of a 2-D DCT by frequency ``(a + b, a)``."""
    order = sorted(range(block * block), key=lambda e: (e // block + e % block, e // block))
    rank = np.empty(block * block, np.int64)
    rank[np.asarray(order)] = np.arange(block * block)
    return rank


def block_positions(length: int, block: int, step: int) -> np.ndarray:
    """Reference block starts along one axis: ``0, step, 2 step, ...`` and ``length - block``."""
    positions = list(range(0, length - block + 1, step))
    if positions[-1] != length - block:
        positions.append(length - block)
    return np.asarray(positions, np.int64)


def tile_shape(block: int, step: int, search_radius: int) -> tuple[int, int]:
    """Reference rows and columns per tile: tiles of the same phase must be ``2 s + P`` apart."""
    need = -(-(block + 2 * search_radius) // step)
    return max(TILE_REF_ROWS, need), max(TILE_REF_COLS, need)


def channel_transform(n_channels: int) -> np.ndarray:
    """Orthonormal decorrelating transform across channels (rows: output channels), float64.

    The DCT-II: its first row averages the channels (luminance); for three channels it is the
    opponent colour transform.
    """
    return dct_matrix(n_channels)


@jit
def _dct_tile(image, p0, n_rows, q0, n_cols, dct, dct_t, rank, rows_t, row, out):
    """``out[y, x, rank[a * P + b]]``: coefficient ``(a, b)`` of the 2-D DCT of the block at
    ``(p0 + y, q0 + x)``, for ``y < n_rows``, ``x < n_cols``.

    Separable: first every row of every block (``rows_t[b, r, x]``, a correlation along whole
    image rows), then the columns.  ``rows_t``: ``(P, n_rows + P - 1, n_cols)``; ``row``:
    ``(n_cols,)``.
    """
    block = dct.shape[0]
    for r in range(n_rows + block - 1):
        src = image[p0 + r, q0 : q0 + n_cols + block - 1]
        for b in range(block):
            dst = rows_t[b, r]
            for x in range(n_cols):
                dst[x] = 0.0
            for c in range(block):
                coef = dct_t[c, b]
                seg = src[c : c + n_cols]
                for x in range(n_cols):
                    dst[x] += coef * seg[x]
    for y in range(n_rows):
        dst = out[y]
        for a in range(block):
            for b in range(block):
                for x in range(n_cols):
                    row[x] = 0.0
                for c in range(block):
                    coef = dct[a, c]
                    src = rows_t[b, y + c]
                    for x in range(n_cols):
                        row[x] += coef * src[x]
                e = rank[a * block + b]
                for x in range(n_cols):
                    dst[x, e] = row[x]


@jit
def _low_planes(coefs, low):
    """``low[e, y, x] = coefs[y, x, e]`` for the first ``low.shape[0]`` coefficients."""
    for y in range(coefs.shape[0]):
        src = coefs[y]
        for e in range(low.shape[0]):
            dst = low[e, y]
            for x in range(coefs.shape[1]):
                dst[x] = src[x, e]


@jit
def _match(low, y, x, s, k, tau, dist, best_d, best_j):
    """Block matching around ``(y, x)`` (tile coordinates) on the planes ``low[e]`` of the pilot's
    lowest DCT frequencies.

    ``best_d``/``best_j`` (length ``k``) receive the squared distances and flat tile indices
    ``yy * n_cols + xx`` of the best candidates, sorted, the reference first; returns how many
    were found (``>= 1``).  ``tau`` bounds the distance; ``dist`` is scratch of ``2 s + 1``.
    The distances of a row of candidates are computed together (``xx`` innermost), which LLVM
    vectorises.
    """
    n_low = low.shape[0]
    n_rows = low.shape[1]
    n_cols = low.shape[2]
    best_d[0] = 0.0
    best_j[0] = y * n_cols + x
    for t in range(1, k):
        best_d[t] = np.inf
        best_j[t] = -1
    found = 1
    x0 = max(0, x - s)
    n_x = min(n_cols, x + s + 1) - x0
    for yy in range(max(0, y - s), min(n_rows, y + s + 1)):
        for c in range(n_x):
            dist[c] = 0.0
        for e in range(n_low):
            ref = low[e, y, x]
            for c in range(n_x):
                diff = ref - low[e, yy, x0 + c]
                dist[c] += diff * diff
        for c in range(n_x):
            d2 = dist[c]
            if d2 >= best_d[k - 1] or d2 > tau:
                continue
            xx = x0 + c
            if yy == y and xx == x:
                continue
            t = k - 1
            while t > 1 and best_d[t - 1] > d2:
                best_d[t] = best_d[t - 1]
                best_j[t] = best_j[t - 1]
                t -= 1
            best_d[t] = d2
            best_j[t] = yy * n_cols + xx
            if found < k:
                found += 1
    return found


@jit
def _haar_forward(group, m, tmp):
    """Orthonormal Haar transform across the first ``m`` rows of ``group`` (a power of two), in
    place: pairs become scaled sums (the next level's input) and differences, level by level.
    Rows end as ``[mean, coarsest difference, ..., finest differences]``."""
    n_e = group.shape[1]
    n = m
    while n > 1:
        half = n // 2
        for i in range(half):
            for e in range(n_e):
                a = group[2 * i, e]
                b = group[2 * i + 1, e]
                tmp[i, e] = (a + b) * _SQRT_HALF
                tmp[half + i, e] = (a - b) * _SQRT_HALF
        for i in range(n):
            for e in range(n_e):
                group[i, e] = tmp[i, e]
        n = half


@jit
def _haar_inverse(group, m, tmp):
    """Inverse of :func:`_haar_forward`, in place."""
    n_e = group.shape[1]
    n = 2
    while n <= m:
        half = n // 2
        for i in range(half):
            for e in range(n_e):
                a = group[i, e]
                d = group[half + i, e]
                tmp[2 * i, e] = (a + d) * _SQRT_HALF
                tmp[2 * i + 1, e] = (a - d) * _SQRT_HALF
        for i in range(n):
            for e in range(n_e):
                group[i, e] = tmp[i, e]
        n *= 2


@jit
def _wiener_group(noisy_c, pilot_c, best_j, m, sigma2, group_n, group_p, tmp, acc, wacc):
    """Collaborative Wiener filtering of one group in one channel, accumulated per position.

    ``noisy_c``/``pilot_c``: ``(n_rows, n_cols, P*P)`` block DCTs of the tile; ``best_j[:m]`` the
    group (``m`` a power of two).  ``acc[y, x]`` receives the group's weight times the filtered
    DCT of each of its blocks, ``wacc[y, x]`` the weight.
    """
    n_cols = noisy_c.shape[1]
    n_e = noisy_c.shape[2]
    for j in range(m):
        jy = best_j[j] // n_cols
        jx = best_j[j] - jy * n_cols
        for e in range(n_e):
            group_n[j, e] = noisy_c[jy, jx, e]
            group_p[j, e] = pilot_c[jy, jx, e]
    _haar_forward(group_n, m, tmp)
    _haar_forward(group_p, m, tmp)
    gains = np.float32(1.0)  # the group's mean (q = 0, e = 0) is kept: gain 1
    for q in range(m):
        for e in range(n_e):
            if q == 0 and e == 0:
                continue
            p2 = group_p[q, e] * group_p[q, e]
            gain = p2 / (p2 + sigma2)
            gains += gain * gain
            group_n[q, e] *= gain
    weight = 1.0 / (sigma2 * gains)
    _haar_inverse(group_n, m, tmp)
    for j in range(m):
        jy = best_j[j] // n_cols
        jx = best_j[j] - jy * n_cols
        for e in range(n_e):
            acc[jy, jx, e] += weight * group_n[j, e]
        wacc[jy, jx] += weight


@jit
def _idct_tile_add(acc, wacc, p0, q0, dct, rank, kaiser, acc_t, cols_t, row, num, den):
    """Inverse 2-D DCT of the accumulated estimates of every block position of a tile, added
    into ``num`` with the Kaiser window (and the weights into ``den``).

    ``acc_t``: ``(P*P, n_cols)``; ``cols_t``: ``(P, P, n_cols)``; ``row``: ``(n_cols,)``.
    """
    block = dct.shape[0]
    n_rows = acc.shape[0]
    n_cols = acc.shape[1]
    n_e = block * block
    for y in range(n_rows):
        src = acc[y]
        for e in range(n_e):
            dst = acc_t[e]
            for x in range(n_cols):
                dst[x] = src[x, e]
        for a in range(block):
            for b2 in range(block):
                dst = cols_t[a, b2]
                for x in range(n_cols):
                    dst[x] = 0.0
                for a2 in range(block):
                    coef = dct[a2, a]
                    s = acc_t[rank[a2 * block + b2]]
                    for x in range(n_cols):
                        dst[x] += coef * s[x]
        weights = wacc[y]
        for a in range(block):
            for b in range(block):
                for x in range(n_cols):
                    row[x] = 0.0
                for b2 in range(block):
                    coef = dct[b2, b]
                    s = cols_t[a, b2]
                    for x in range(n_cols):
                        row[x] += coef * s[x]
                window = kaiser[a, b]
                num_row = num[p0 + y + a, q0 + b : q0 + b + n_cols]
                den_row = den[p0 + y + a, q0 + b : q0 + b + n_cols]
                for x in range(n_cols):
                    num_row[x] += window * row[x]
                    den_row[x] += window * weights[x]


@jit(parallel=True)
def _wiener_tiles(noisy, pilot, sigma2, ys, xs, tile_rows, tile_cols, s, k, n_coefs, tau, dct,
                  dct_t, rank, kaiser, scratch_f32, scratch_f64, num, den):
    """Stage 2 over the whole image: tiles of references in four phases (see the module notes).

    ``noisy``/``pilot``: ``(C, H, W)`` float32; ``sigma2``: ``(C,)`` noise variances; ``ys``,
    ``xs``: reference block starts; ``scratch_f32``/``scratch_f64``: one row per thread, large
    enough for the biggest tile (:func:`scratch_sizes`): the tiles' big arrays live there, so
    they are not allocated (and paged in) tile after tile; ``num``/``den``: ``(C, H, W)``
    float64 sums (zeroed).
    """
    n_ch = noisy.shape[0]
    block = dct.shape[0]
    n_e = block * block
    pos_rows = noisy.shape[1] - block + 1
    pos_cols = noisy.shape[2] - block + 1
    n_ty = (ys.shape[0] + tile_rows - 1) // tile_rows
    n_tx = (xs.shape[0] + tile_cols - 1) // tile_cols
    for phase in range(4):
        py = phase // 2
        px = phase % 2
        ny = (n_ty - py + 1) // 2
        nx = (n_tx - px + 1) // 2
        for t in prange(ny * nx):
            ty = 2 * (t // nx) + py
            tx = 2 * (t % nx) + px
            ry0 = ty * tile_rows
            ry1 = min(ys.shape[0], ry0 + tile_rows)
            rx0 = tx * tile_cols
            rx1 = min(xs.shape[0], rx0 + tile_cols)
            p0 = max(0, ys[ry0] - s)
            p1 = min(pos_rows, ys[ry1 - 1] + s + 1)
            q0 = max(0, xs[rx0] - s)
            q1 = min(pos_cols, xs[rx1 - 1] + s + 1)
            n_rows = p1 - p0
            n_cols = q1 - q0
            f32 = scratch_f32[get_thread_id()]
            f64 = scratch_f64[get_thread_id()]
            size = n_ch * n_rows * n_cols * n_e
            coefs_n = f32[:size].reshape((n_ch, n_rows, n_cols, n_e))
            coefs_p = f32[size : 2 * size].reshape((n_ch, n_rows, n_cols, n_e))
            used = 2 * size
            low = f32[used : used + n_coefs * n_rows * n_cols].reshape((n_coefs, n_rows, n_cols))
            used += n_coefs * n_rows * n_cols
            rows_t = f32[used : used + block * (n_rows + block - 1) * n_cols].reshape(
                (block, n_rows + block - 1, n_cols))
            acc = f64[:size].reshape((n_ch, n_rows, n_cols, n_e))
            wacc = f64[size : size + n_ch * n_rows * n_cols].reshape((n_ch, n_rows, n_cols))
            acc[...] = 0.0
            wacc[...] = 0.0
            row = np.empty(n_cols, np.float32)
            for ch in range(n_ch):
                _dct_tile(noisy[ch], p0, n_rows, q0, n_cols, dct, dct_t, rank, rows_t, row,
                          coefs_n[ch])
                _dct_tile(pilot[ch], p0, n_rows, q0, n_cols, dct, dct_t, rank, rows_t, row,
                          coefs_p[ch])
            _low_planes(coefs_p[0], low)
            dist = np.empty(2 * s + 1, np.float32)
            best_d = np.empty(k, np.float32)
            best_j = np.empty(k, np.int64)
            group_n = np.empty((k, n_e), np.float32)
            group_p = np.empty((k, n_e), np.float32)
            tmp = np.empty((k, n_e), np.float32)
            for ry in range(ry0, ry1):
                for rx in range(rx0, rx1):
                    found = _match(low, ys[ry] - p0, xs[rx] - q0, s, k, tau, dist, best_d,
                                   best_j)
                    m = 1
                    while 2 * m <= found:
                        m *= 2
                    for ch in range(n_ch):
                        _wiener_group(coefs_n[ch], coefs_p[ch], best_j, m, sigma2[ch], group_n,
                                      group_p, tmp, acc[ch], wacc[ch])
            acc_t = np.empty((n_e, n_cols), np.float32)
            cols_t = np.empty((block, block, n_cols), np.float32)
            for ch in range(n_ch):
                _idct_tile_add(acc[ch], wacc[ch], p0, q0, dct, rank, kaiser, acc_t, cols_t, row,
                               num[ch], den[ch])


def scratch_sizes(n_ch: int, ys: np.ndarray, xs: np.ndarray, tile_rows: int, tile_cols: int,
                  block: int, search_radius: int, n_coefs: int) -> tuple[int, int]:
    """Float32 and float64 elements a thread's scratch rows need for the biggest tile."""
    def span(starts, per_tile, limit):
        widest = 0
        for i in range(0, starts.shape[0], per_tile):
            j = min(starts.shape[0], i + per_tile) - 1
            widest = max(widest, min(limit, starts[j] + search_radius + 1)
                         - max(0, starts[i] - search_radius))
        return widest

    rows = span(ys, tile_rows, int(ys[-1]) + 1)
    cols = span(xs, tile_cols, int(xs[-1]) + 1)
    size = n_ch * rows * cols * block * block
    f32 = 2 * size + n_coefs * rows * cols + block * (rows + block - 1) * cols
    f64 = size + n_ch * rows * cols
    return f32, f64


@jit(parallel=True)
def _divide(num, den, out):
    """``out = num / den`` row by row (every pixel is covered, so ``den > 0``)."""
    n_ch = num.shape[0]
    height = num.shape[1]
    for y in prange(height):
        for ch in range(n_ch):
            n_row = num[ch, y]
            d_row = den[ch, y]
            o_row = out[ch, y]
            for x in range(n_row.shape[0]):
                o_row[x] = n_row[x] / d_row[x]


def collaborative_wiener(noisy: np.ndarray, pilot: np.ndarray, sigmas: np.ndarray, block: int,
                         step: int, search_radius: int, k: int, n_coefs: int, tau: float,
                         beta: float) -> np.ndarray:
    """Stage 2: collaborative Wiener filtering of ``noisy`` with ``pilot`` as oracle.

    Parameters
    ----------
    noisy, pilot : ndarray, shape (C, H, W)
        The noisy image and its pilot estimate (float32, planar; channels decorrelated).
    sigmas : ndarray, shape (C,)
        Noise standard deviation of each channel (> 0).
    block : int
        Block side ``P`` (>= 1); reduced to the image's smaller side when that is shorter.
    step : int
        Stride of the reference blocks (>= 1); reduced to ``block`` so that every pixel is
        covered.
    search_radius : int
        Candidate block positions within this many pixels of the reference, in both directions.
    k : int
        Most blocks in a group (>= 1); groups hold the largest power of two found.
    n_coefs : int
        Lowest DCT frequencies compared by block matching (at most ``block**2``).
    tau : float
        Matching threshold: the most mean squared difference per pixel over those frequencies.
    beta : float
        Parameter of the Kaiser window of the aggregation.

    Returns
    -------
    ndarray, shape (C, H, W)
        The estimate, float32.

    Notes
    -----
    Arguments are assumed valid (:func:`nlattn.nl_means` checks them).  With ``R`` reference
    blocks (about ``n / step**2``): time O(n P (1 + 2 s / (step tile)) + R ((2s+1)**2 n_coefs +
    k P**2 C)), memory O(n C) plus one tile's DCTs per thread.  Identical at any thread count.

    References
    ----------
    K. Dabov, A. Foi, V. Katkovnik, K. Egiazarian, "Image denoising by sparse 3-D
    transform-domain collaborative filtering", IEEE Trans. Image Processing 16(8), 2007.
    M. Lebrun, "An analysis and implementation of the BM3D image denoising method", Image
    Processing On Line 2, 2012.
    """
    n_ch, height, width = noisy.shape
    block = min(block, height, width)
    step = min(step, block)  # references must cover every pixel
    n_coefs = min(n_coefs, block * block)
    ys = block_positions(height, block, step)
    xs = block_positions(width, block, step)
    tile_rows, tile_cols = tile_shape(block, step, search_radius)
    dct = dct_matrix(block)
    window = np.kaiser(block, beta) if block > 1 else np.ones(1)
    kaiser = np.ascontiguousarray(np.outer(window, window), np.float32)
    sigma2 = np.ascontiguousarray(np.asarray(sigmas, np.float64) ** 2, np.float32)
    num = np.zeros((n_ch, height, width), np.float64)
    den = np.zeros((n_ch, height, width), np.float64)
    n_f32, n_f64 = scratch_sizes(n_ch, ys, xs, tile_rows, tile_cols, block, search_radius,
                                 n_coefs)
    threads = numba.config.NUMBA_NUM_THREADS  # rows never touched cost no memory
    _wiener_tiles(np.ascontiguousarray(noisy, np.float32), np.ascontiguousarray(pilot, np.float32),
                  sigma2, ys, xs, tile_rows, tile_cols, search_radius, k, n_coefs,
                  np.float32(tau * block * block), dct.astype(np.float32),
                  np.ascontiguousarray(dct.T, np.float32), zigzag_rank(block), kaiser,
                  np.empty((threads, n_f32), np.float32), np.empty((threads, n_f64), np.float64),
                  num, den)
    out = np.empty((n_ch, height, width), np.float32)
    _divide(num, den, out)
    return out


def nlm2_planar(planar: np.ndarray, sigmas: np.ndarray, pilot_patch_radius: int,
                pilot_search_radius: int, pilot_h: float, aggregation: str, block: int, step: int,
                search_radius: int, k: int, n_coefs: int, tau: float, beta: float) -> np.ndarray:
    """Both stages of ``nl_means(method="nlm2")`` on a planar image.

    Parameters
    ----------
    planar : ndarray, shape (C, H, W)
        The noisy image, float32.
    sigmas : ndarray, shape (C,)
        Noise standard deviation of each channel (> 0).  Several channels are decorrelated
        first (:func:`channel_transform`), each transformed channel getting its own sigma.
    pilot_patch_radius, pilot_search_radius : int
        Patch and search radius of the NLM pilot (stage 1).
    pilot_h : float
        Filter strength of the pilot (> 0); its sigma offset is the root mean square of the
        channels' sigmas (the distance is joint over the channels).
    aggregation : {"patch", "pixel"}
        Aggregation of the pilot.
    block, step, search_radius, k, n_coefs, tau, beta
        Stage 2, see :func:`collaborative_wiener`.

    Returns
    -------
    ndarray, shape (C, H, W)
        The estimate, float32.

    Notes
    -----
    Arguments are assumed valid.  Time: the pilot's (:func:`nlattn.denoise.nlm.nlm_windowed`)
    plus stage 2's; memory O(n C).  Identical at any thread count.
    """
    n_ch = planar.shape[0]
    sigmas = np.asarray(sigmas, np.float64)
    if n_ch > 1:
        transform = channel_transform(n_ch)
        work = np.ascontiguousarray(np.tensordot(transform, planar, axes=1), np.float32)
        sigmas = np.sqrt((transform**2) @ sigmas**2)
    else:
        work = np.ascontiguousarray(planar, np.float32)
    pilot_sigma = float(np.sqrt(np.mean(sigmas**2)))
    pilot = nlm_windowed(work, pilot_patch_radius, pilot_search_radius, pilot_h, pilot_sigma,
                         aggregation)
    out = collaborative_wiener(work, pilot, sigmas, block, step, search_radius, k, n_coefs, tau,
                               beta)
    if n_ch > 1:
        out = np.ascontiguousarray(np.tensordot(transform.T, out, axes=1), np.float32)
    return out
