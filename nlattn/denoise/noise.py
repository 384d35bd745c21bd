"""Noise level estimation for ``sigma=None`` / ``--sigma auto``.

:func:`estimate_sigma` measures additive white Gaussian noise from the image's *weakly textured*
patches (Liu, Tanaka & Okutomi 2013), with the eigenvalue criterion of Chen, Zhu & Heng (2015):

1. Every ``5 x 5`` patch on a grid of stride 2 gets its gradient energy ``g``: the sum of the
   squared differences of horizontally and vertically adjacent pixels inside it.  Patches that
   touch the channel's smallest or largest value are left out (clipped highlights and shadows
   hold no noise), unless that leaves too few, and so are perfectly flat ones (``g = 0``).
2. Start from all the patches; then repeat: keep the patches whose ``g`` is below
   ``GRADIENT_QUANTILE * sigma**2`` (the 80th percentile of ``g`` for pure noise of the current
   level, so textured patches drop out), take the eigenvalues of their covariance, and set
   ``sigma**2`` to the mean of the smallest eigenvalues, dropping the largest ones until that
   mean is also their median (the noise eigenvalues are all equal, the signal's stand out),
   divided by ``SELECTION_BIAS``, what this gives on pure noise (selecting low-energy patches
   favours low variance).  Stop when ``sigma`` moves by less than 0.1 %, or after 10 rounds.

The constants come from pure Gaussian noise (see :func:`calibrate`).  On Set12 with noise of
sigma 5 to 50 the estimate is within 7 % of the truth (``benchmarks/tune_nlm2.py --sigma-only``),
where the median of Immerkaer's filter, the previous estimator, was 35 % high at sigma 5 (fine
texture passes its filter).  Noise-free regions at other values than the extremes (a flat
area painted in after the noise) bias the estimate low: the patches on their edges look like
weak noise.  Channels with fewer than ``MIN_PATCHES`` patches on the grid (below about 24 x 24
pixels), or too few weakly textured ones, fall back to Immerkaer's estimate.  A Numba kernel
sums the kept patches' outer products straight from the image (one partial sum per row of the
grid, added in order, so the result does not depend on the thread count); the memory is a
float32 copy of one channel.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from nlattn._jit import jit
from nlattn._validate import check_image

# Immerkaer's mask: a difference of two Laplacians that cancels affine (and most smooth) signal;
# its response to white noise of std sigma has std 6 sigma (the mask's L2 norm is 6).
_MASK_NORM = 6.0
# median(|X|) of a standard normal X
_MAD_TO_STD = 1.0 / 0.6744897501960817

#: Side of the patches whose covariance is measured.
PATCH = 5
#: Stride of the patch grid.
STRIDE = 2
#: Fraction of pure-noise patches kept by the gradient-energy threshold.
KEEP = 0.8
#: ``KEEP``-quantile of the gradient energy of a ``PATCH x PATCH`` patch of unit white noise
#: (its mean is ``2 * 2 * PATCH * (PATCH - 1) = 80``); :func:`calibrate`, seeds 0-2.
GRADIENT_QUANTILE = 100.54
#: The estimate of ``sigma**2`` on the kept patches of unit white noise; :func:`calibrate`, mean of
#: seeds 0-2.
SELECTION_BIAS = 0.9094
#: Below this many kept patches the estimate falls back to Immerkaer's.
MIN_PATCHES = 4 * PATCH * PATCH
_MAX_ROUNDS = 10
_TOLERANCE = 1e-3
#: Images whose largest magnitude lies outside ``[2**-SAFE_EXPONENT, 2**SAFE_EXPONENT]`` are
#: scaled by a power of two before any float32 arithmetic (:func:`value_exponent`).
SAFE_EXPONENT = 40


def value_exponent(image: np.ndarray, *magnitudes: float) -> int:
    """The power of two that brings an image into float32's safe range, 0 when it is there.

    Parameters
    ----------
    image : ndarray
        A checked integer or float image.
    *magnitudes : float
        Further values in the image's units that the arithmetic squares (``sigma``, ``h``).

    Returns
    -------
    int
        0 when ``M``, the largest of the image's magnitudes and ``magnitudes``, is 0 or lies in
        ``[2**-SAFE_EXPONENT, 2**SAFE_EXPONENT]``; else the ``e`` with ``M * 2**-e`` in
        (0.5, 1].

    Notes
    -----
    Squared differences of values of float32 overflow above about ``2**64`` and lose their
    precision to subnormals below about ``2**-63``; within the safe range they, sums of
    thousands of them and ``1 / h**2`` are normal float32 numbers.  Scaling by a power of two
    is exact (outside the subnormals) and every step of the denoisers is equivariant to it, so
    the result is the same up to the scale.  O(n) time, no copy.
    """
    low, high = image.min(), image.max()
    if np.issubdtype(image.dtype, np.integer):
        low, high = float(low), float(high)  # abs() of the smallest int64 would overflow
    top = max(abs(low), abs(high), *(abs(m) for m in magnitudes))
    if top == 0 or 2.0 ** -SAFE_EXPONENT <= top <= 2.0 ** SAFE_EXPONENT:
        return 0
    mantissa, exponent = np.frexp(top)  # top = mantissa * 2**exponent, mantissa in [0.5, 1)
    return int(exponent) - 1 if mantissa == 0.5 else int(exponent)


def immerkaer_sigma(channel: np.ndarray) -> float:
    """Immerkaer's noise estimate of one channel (the fallback of :func:`estimate_sigma`).

    Parameters
    ----------
    channel : ndarray, shape (H, W)
        One channel, any real dtype.

    Returns
    -------
    float
        The median absolute response of the 3x3 mask ``[1 -2 1; -2 4 -2; 1 -2 1]`` scaled to
        a standard deviation; 0 below 3x3 pixels.

    Notes
    -----
    O(n) time and memory.  Textures pass the mask: on Set12 at sigma 5 it reads up to 35 %
    high.

    References
    ----------
    J. Immerkaer, "Fast noise variance estimation", Computer Vision and Image Understanding
    64(2), 1996.
    """
    c = np.asarray(channel, np.float64)
    if c.shape[0] < 3 or c.shape[1] < 3:
        return 0.0
    r = (
        c[:-2, :-2] - 2 * c[:-2, 1:-1] + c[:-2, 2:]
        - 2 * c[1:-1, :-2] + 4 * c[1:-1, 1:-1] - 2 * c[1:-1, 2:]
        + c[2:, :-2] - 2 * c[2:, 1:-1] + c[2:, 2:]
    )
    return float(np.median(np.abs(r)) * _MAD_TO_STD / _MASK_NORM)


@jit(parallel=True)
def _select_scatter(channel, offset, threshold, lo, hi, use_clear, scatter, total, count):
    """Sums over the kept patches of the grid, one partial per grid row (``prange`` rows).

    A patch (top-left ``(STRIDE gy, STRIDE gx)``) is kept when its gradient energy is below
    ``threshold`` but not 0 and, with ``use_clear``, none of its pixels is ``<= lo`` or ``>= hi``.
    ``scatter[gy]`` receives the upper triangle of ``sum v v^T`` and ``total[gy]`` ``sum v`` of
    the kept patches' vectors ``v`` (pixels minus ``offset``), ``count[gy]`` their number.
    """
    n_elems = PATCH * PATCH
    n_gx = (channel.shape[1] - PATCH) // STRIDE + 1
    for gy in prange(scatter.shape[0]):
        y = gy * STRIDE
        v = np.empty(n_elems, np.float64)
        for gx in range(n_gx):
            x = gx * STRIDE
            energy = 0.0
            clear = True
            for a in range(PATCH):
                for b in range(PATCH):
                    value = channel[y + a, x + b]
                    v[a * PATCH + b] = value - offset
                    clear &= lo < value < hi
                    if b + 1 < PATCH:
                        d = np.float64(channel[y + a, x + b + 1]) - value
                        energy += d * d
                    if a + 1 < PATCH:
                        d = np.float64(channel[y + a + 1, x + b]) - value
                        energy += d * d
            if energy >= threshold or energy == 0.0 or (use_clear and not clear):
                continue
            count[gy] += 1
            for i in range(n_elems):
                vi = v[i]
                total[gy, i] += vi
                row = scatter[gy, i]
                for j in range(i, n_elems):
                    row[j] += vi * v[j]


def _kept_variance(channel: np.ndarray, offset: float, threshold: float, lo: float, hi: float,
                   use_clear: bool) -> tuple[float, int]:
    """Noise variance of the kept patches (Chen et al.'s rule) and how many were kept."""
    n_gy = (channel.shape[0] - PATCH) // STRIDE + 1
    n_elems = PATCH * PATCH
    scatter = np.zeros((n_gy, n_elems, n_elems))
    total = np.zeros((n_gy, n_elems))
    count = np.zeros(n_gy, np.int64)
    _select_scatter(channel, offset, threshold, lo, hi, use_clear, scatter, total, count)
    n = int(count.sum())
    if n < MIN_PATCHES:
        return 0.0, n
    upper = scatter.sum(axis=0)
    full = np.triu(upper) + np.triu(upper, 1).T
    return _noise_variance(full, total.sum(axis=0), n), n


def _noise_variance(scatter: np.ndarray, total: np.ndarray, count: int) -> float:
    """Noise variance from the covariance of patches (Chen et al.'s mean = median rule)."""
    mean = total / count
    cov = scatter / count - np.outer(mean, mean)
    eig = np.maximum(np.sort(np.linalg.eigvalsh(cov))[::-1], 0.0)
    if eig[0] <= 0.0:
        return 0.0
    for i in range(eig.size):
        tail = eig[i:]
        tau = tail.mean()
        if np.count_nonzero(tail > tau) >= np.count_nonzero(tail < tau):
            return float(tau)
    return float(eig[-1])


def _channel_sigma(channel: np.ndarray) -> float:
    height, width = channel.shape
    n_grid = ((height - PATCH) // STRIDE + 1) * ((width - PATCH) // STRIDE + 1)
    if height < PATCH or width < PATCH or n_grid < MIN_PATCHES:
        return immerkaer_sigma(channel)
    c = np.ascontiguousarray(channel, np.float32)
    lo, hi = float(c.min()), float(c.max())
    if lo == hi:
        return 0.0
    offset = float(c.mean(dtype=np.float64))
    use_clear = True
    variance, n = _kept_variance(c, offset, np.inf, lo, hi, use_clear)
    if n < MIN_PATCHES:  # the extreme values are everywhere: keep them
        use_clear = False
        variance, n = _kept_variance(c, offset, np.inf, lo, hi, use_clear)
    for _ in range(_MAX_ROUNDS):
        if variance <= 0.0:
            return 0.0
        new, n = _kept_variance(c, offset, GRADIENT_QUANTILE * variance, lo, hi, use_clear)
        if n < MIN_PATCHES:
            return immerkaer_sigma(channel)
        new /= SELECTION_BIAS
        done = new <= 0.0 or abs(np.sqrt(new / variance) - 1.0) < _TOLERANCE
        variance = new
        if done:
            break
    return float(np.sqrt(max(variance, 0.0)))


def channel_sigmas(image: np.ndarray) -> list[float]:
    """The noise standard deviation of each channel of an image.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Integer or float image.

    Returns
    -------
    list of float
        One estimate per channel (one for a grey image), in the image's units.

    Raises
    ------
    TypeError, ValueError
        If ``image`` is not a non-empty finite 2-D or 3-D numeric array.

    Notes
    -----
    The estimator of :func:`estimate_sigma`, channel by channel.  An image out of float32's
    safe range (:func:`value_exponent`) is measured scaled by a power of two and the estimates
    scaled back: the same result up to the scale.
    """
    image = check_image("image", image)
    exponent = value_exponent(image)
    if exponent:  # out of the safe range: estimate on the image times 2**-exponent
        with np.errstate(under="ignore"):
            image = np.ldexp(image, -exponent, dtype=np.result_type(image, np.float32))
    if image.ndim == 2:
        sigmas = [_channel_sigma(image)]
    else:
        sigmas = [_channel_sigma(image[:, :, c]) for c in range(image.shape[2])]
    return [math.ldexp(sigma, exponent) for sigma in sigmas]


def estimate_sigma(image: np.ndarray) -> float:
    """Estimate the standard deviation of additive white Gaussian noise in an image.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Integer or float image; the estimate is in the image's own units.

    Returns
    -------
    float
        The noise standard deviation; for colour images the mean over the channels.

    Raises
    ------
    TypeError, ValueError
        If ``image`` is not a non-empty finite 2-D or 3-D numeric array.

    Notes
    -----
    Weak-texture patch selection and the eigenvalues of the kept patches' covariance (module
    notes): within 7 % of the truth on Set12 for sigma 5 to 50.  An image without noise (a
    constant or an affine ramp) gives 0.  O(n) time per round (a few rounds, 25**2 / 2
    operations per kept patch), O(n) memory (a float32 copy of a channel).  An image out of
    float32's range is measured scaled by a power of two (:func:`channel_sigmas`): the same
    estimate up to the scale.

    References
    ----------
    X. Liu, M. Tanaka, M. Okutomi, "Single-image noise level estimation for blind denoising",
    IEEE Trans. Image Processing 22(12), 2013.
    G. Chen, F. Zhu, P. A. Heng, "An efficient statistical method for image noise level
    estimation", ICCV 2015.
    J. Immerkaer, "Fast noise variance estimation", Computer Vision and Image Understanding 64(2),
    1996 (the starting point and the fallback).
    """
    return float(np.mean(channel_sigmas(image)))


def calibrate(size: int = 2048, seed: int = 0) -> tuple[float, float]:
    """Measure the estimator's constants on pure noise.

    Parameters
    ----------
    size : int
        Side of the square of unit white Gaussian noise (``numpy.random.default_rng(seed)``).
    seed : int
        Its seed.

    Returns
    -------
    tuple of float
        :data:`GRADIENT_QUANTILE` (the ``KEEP``-quantile of the patches' gradient energy) and
        :data:`SELECTION_BIAS` (the variance found on the patches below it).

    Notes
    -----
    O(size**2) time and memory; ``calibrate()`` gives 100.54 and 0.9090 (other seeds agree to
    0.1 %).
    """
    noise = np.random.default_rng(seed).standard_normal((size, size)).astype(np.float32)
    p = PATCH
    n = noise.astype(np.float64)
    dh = np.diff(n, axis=1) ** 2
    dv = np.diff(n, axis=0) ** 2
    windows = np.lib.stride_tricks.sliding_window_view
    energy = (windows(dh, (p, p - 1))[: size - p + 1].sum(axis=(2, 3))
              + windows(dv, (p - 1, p))[:, : size - p + 1].sum(axis=(2, 3)))
    quantile = float(np.quantile(energy[::STRIDE, ::STRIDE], KEEP))
    bias, _ = _kept_variance(noise, 0.0, quantile, -np.inf, np.inf, False)
    return quantile, bias
