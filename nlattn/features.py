"""Patch vectors: the features non-local means compares, and the tokens of image attention.

A pixel's patch vector holds the ``(2f+1)**2 * C`` values of the patch around it (reflect padding
at the borders, as in the denoisers), each multiplied by the square root of its weight, the
weights summing to 1.  The squared Euclidean distance of two patch vectors is then the (weighted)
*mean* squared difference of the patches, the distance of :func:`nlattn.nl_means`, in squared
image units: pure-noise patches sit at ``2 sigma**2``.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from nlattn._jit import jit
from nlattn._validate import check_float, check_image, check_int


def to_planar(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` image as a float32 C-contiguous ``(C, H, W)`` array."""
    planar = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
    return np.ascontiguousarray(planar, dtype=np.float32)


def augmented_tokens(patches: np.ndarray, h: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Queries ``[p, 1]`` and keys ``[2 p, -|p|**2] / h**2`` of vectors ``p`` (float32).

    ``q_i . k_j = (|p_i|**2 - |p_i - p_j|**2) / h**2``: ranking keys by score ranks them by
    squared distance, and a softmax over keys gives NLM weights.
    """
    p = patches.astype(np.float64)
    queries = np.concatenate([p, np.ones(p.shape[:-1] + (1,))], axis=-1)
    keys = np.concatenate([2.0 * p, -np.sum(p * p, axis=-1, keepdims=True)], axis=-1)
    return queries.astype(np.float32), (keys / (h * h)).astype(np.float32)


def patch_weights(patch_radius: int, n_channels: int, gaussian_sigma: float | None = None):
    """Per-element weights of a patch vector, in its element order, summing to 1.

    Uniform by default; with ``gaussian_sigma`` (in pixels) the weight of an offset ``(a, b)`` is
    proportional to ``exp(-(a**2 + b**2) / (2 gaussian_sigma**2))``.  Channels share their
    pixel's weight equally.
    """
    side = 2 * patch_radius + 1
    if gaussian_sigma is None:
        spatial = np.ones((side, side))
    else:
        offsets = np.arange(-patch_radius, patch_radius + 1)
        r2 = offsets[:, None] ** 2 + offsets[None, :] ** 2
        spatial = np.exp(-r2 / (2.0 * gaussian_sigma**2))
    spatial /= spatial.sum()
    return np.repeat(spatial.ravel() / n_channels, n_channels)


@jit(parallel=True)
def _extract_patches(planar_padded, pad, f, scale, out):
    n_ch = planar_padded.shape[0]
    height, width = out.shape[0], out.shape[1]
    side = 2 * f + 1
    for y in prange(height):
        for a in range(side):
            for b in range(side):
                base = (a * side + b) * n_ch
                for ch in range(n_ch):
                    k = base + ch
                    src = planar_padded[ch, y + pad - f + a, pad - f + b : pad - f + b + width]
                    s = scale[k]
                    for x in range(width):
                        out[y, x, k] = s * src[x]


def extract_patches(
    image: np.ndarray,
    patch_radius: int,
    *,
    gaussian_sigma: float | None = None,
    centre: bool = False,
) -> np.ndarray:
    """The patch vector of every pixel.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Integer or float image.
    patch_radius : int
        Patches are ``(2 patch_radius + 1)**2`` pixels.
    gaussian_sigma : float, optional
        Weigh the patch's pixels by a Gaussian of this standard deviation (pixels) around its
        centre; uniform weights when None.
    centre : bool
        Subtract the mean patch vector (over all pixels).  Distances are unchanged; dot products
        (attention scores) lose a term that only shifts them, which helps random-feature methods.

    Returns
    -------
    ndarray, shape (H, W, C * (2 patch_radius + 1)**2), float32
        Element ``((a * side + b) * C + c)`` holds channel ``c`` of the pixel at offset
        ``(a - f, b - f)`` times the square root of its weight (see :func:`patch_weights`).

    Raises
    ------
    TypeError, ValueError
        On an invalid image or parameter.

    Notes
    -----
    O(n (2f+1)^2 C) time and memory.  ``||p_i - p_j||**2`` is the weighted mean squared
    difference of the two patches.
    """
    image = check_image("image", image)
    patch_radius = check_int("patch_radius", patch_radius, minimum=0, maximum=64)
    if gaussian_sigma is not None:
        gaussian_sigma = check_float("gaussian_sigma", gaussian_sigma, minimum=0.0,
                                     strict_minimum=True)
    if not isinstance(centre, bool):
        raise TypeError(f"centre must be a bool, got {type(centre).__name__}")
    planar = to_planar(image)
    n_ch, height, width = planar.shape
    pad = patch_radius
    padded = np.pad(planar, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    scale = np.sqrt(patch_weights(patch_radius, n_ch, gaussian_sigma)).astype(np.float32)
    out = np.empty((height, width, scale.size), np.float32)
    _extract_patches(padded, pad, patch_radius, scale, out)
    if centre:
        out -= out.reshape(-1, scale.size).mean(axis=0, dtype=np.float64).astype(np.float32)
    return out


def pca_reduce(vectors: np.ndarray, n_components: int) -> np.ndarray:
    """Project vectors ``(..., D)`` on their ``n_components`` principal axes (float32).

    The axes are the leading eigenvectors of the (uncentred) second-moment matrix, computed in
    float64 over all vectors: distances between vectors are kept up to the discarded energy, and
    centred vectors (``extract_patches(..., centre=True)``) make it the usual PCA.  O(n D^2).
    """
    n_components = check_int("pca", n_components, minimum=1, maximum=vectors.shape[-1])
    flat = vectors.reshape(-1, vectors.shape[-1]).astype(np.float64)
    moments = flat.T @ flat
    _, eigenvectors = np.linalg.eigh(moments)
    axes = eigenvectors[:, ::-1][:, :n_components]
    # a deterministic sign for each axis: its largest component positive
    axes *= np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(n_components)])
    reduced = flat @ axes
    return reduced.reshape(vectors.shape[:-1] + (n_components,)).astype(np.float32)


def nlm_tokens(
    image: np.ndarray,
    patch_radius: int = 2,
    h: float | None = None,
    *,
    pca: int | None = None,
    centre: bool = True,
    gaussian_sigma: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Queries, keys and values that make softmax attention compute non-local means.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Integer or float image.
    patch_radius : int
        Patches are ``(2 patch_radius + 1)**2`` pixels.
    h : float, optional
        Filter strength in the image's units (> 0); None: the ``nl_means`` preset's h for the
        noise level :func:`nlattn.estimate_sigma` finds (1 grey level when it finds none).
    pca : int, optional
        Reduce the patch vectors to this many principal components first.
    centre : bool
        Subtract the mean patch vector (free: translation invariance; keeps scores small).
    gaussian_sigma : float, optional
        Gaussian weighting of the patch pixels (see :func:`extract_patches`).

    Returns
    -------
    q, k, v : ndarray
        ``q = [p, 1]`` and ``k = [2 p, -|p|**2] / h**2`` of shape ``(H, W, D + 1)``, ``v`` the
        pixel values ``(H, W, C)``, all float32.  With ``scale=1``, the score
        ``q_i . k_j = (|p_i|**2 - |p_i - p_j|**2) / h**2`` differs from the NLM log-weight
        ``-|p_i - p_j|**2 / h**2`` by a term of ``i`` alone, which the softmax cancels: so
        ``nlattn.attention(q, k, v, "exact", scale=1.0)`` is global non-local means (with the
        centre weighted like any other pixel and no ``sigma`` offset).

    Notes
    -----
    O(n D) time and memory, plus O(n D^2) for ``pca``.  Design section 1.
    """
    image = check_image("image", image)
    patches = extract_patches(image, patch_radius, gaussian_sigma=gaussian_sigma, centre=centre)
    if pca is not None:
        patches = pca_reduce(patches, pca)
    if h is None:
        from nlattn.denoise import data_range, estimate_sigma
        from nlattn.denoise.presets import nlm_preset

        sigma = estimate_sigma(image)
        n_channels = 1 if image.ndim == 2 else image.shape[2]
        ratio = nlm_preset(sigma * 255.0 / data_range(image), n_channels).h_over_sigma
        h = ratio * sigma if sigma > 0 else data_range(image) / 255.0
    h = check_float("h", h, minimum=0.0, strict_minimum=True)
    queries, keys = augmented_tokens(patches, h)
    values = image[:, :, None] if image.ndim == 2 else image
    return queries, keys, np.ascontiguousarray(values, dtype=np.float32)


__all__ = ["augmented_tokens", "extract_patches", "nlm_tokens", "patch_weights", "pca_reduce",
           "to_planar"]
