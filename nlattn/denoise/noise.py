"""Noise level estimation for ``sigma=None`` / ``--sigma auto``."""

from __future__ import annotations

import numpy as np

from nlattn._validate import check_image

# Immerkaer's mask: a difference of two Laplacians that cancels affine (and most smooth) signal;
# its response to white noise of std sigma has std 6 sigma (the mask's L2 norm is 6).
_MASK_NORM = 6.0
# median(|X|) of a standard normal X
_MAD_TO_STD = 1.0 / 0.6744897501960817


def _channel_sigma(channel: np.ndarray) -> float:
    c = channel.astype(np.float64, copy=False)
    if c.shape[0] < 3 or c.shape[1] < 3:
        return 0.0
    r = (
        c[:-2, :-2] - 2 * c[:-2, 1:-1] + c[:-2, 2:]
        - 2 * c[1:-1, :-2] + 4 * c[1:-1, 1:-1] - 2 * c[1:-1, 2:]
        + c[2:, :-2] - 2 * c[2:, 1:-1] + c[2:, 2:]
    )
    return float(np.median(np.abs(r)) * _MAD_TO_STD / _MASK_NORM)


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
    Immerkaer's 3x3 mask removes the image's smooth content; the median absolute response,
    scaled to a standard deviation, is robust to the edges and textures that remain.  Images
    smaller than 3x3 have no interior and give 0.  O(n) time, O(n) memory.

    References
    ----------
    J. Immerkaer, "Fast noise variance estimation", Computer Vision and Image Understanding 64(2),
    1996.  D. L. Donoho and I. M. Johnstone, "Ideal spatial adaptation by wavelet shrinkage",
    Biometrika 81(3), 1994 (the median absolute deviation estimator).
    """
    image = check_image("image", image)
    if image.ndim == 2:
        return _channel_sigma(image)
    return float(np.mean([_channel_sigma(image[:, :, c]) for c in range(image.shape[2])]))
