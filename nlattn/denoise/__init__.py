"""Non-local means denoising: the public entry points.

:func:`nl_means` is nlattn's denoiser: the two-stage ``"nlm2"`` (an NLM pilot, then collaborative
Wiener filtering of groups of similar blocks), one-stage windowed NLM ``"nlm"`` with patch-wise
aggregation and PatchMatch-global NLM ``"scram"``, all with presets from the noise level;
:func:`denoise_nl_means` is a faster drop-in for scikit-image's function of the same name;
:func:`estimate_sigma` measures the noise for ``sigma=None``.
"""

from __future__ import annotations

import math

import numpy as np

from nlattn._methods import MethodInfo
from nlattn._validate import (
    check_choice,
    check_float,
    check_image,
    check_int,
    check_n_threads,
    check_seed,
    numba_threads,
)
from nlattn.attention import METHODS as _ATTENTION_METHODS
from nlattn.denoise.noise import estimate_sigma, value_exponent
from nlattn.denoise.presets import nlm2_preset, nlm_preset
from nlattn.denoise.skimage_compat import denoise_nl_means

DENOISE_METHODS: dict[str, MethodInfo] = {
    "nlm2": MethodInfo(
        "nlm2",
        "Two-stage non-local denoising: a strong windowed-NLM pilot, then collaborative Wiener "
        "filtering of groups of similar 8x8 blocks found on the pilot (3-D DCT-Haar transform, "
        "pilot as oracle, as BM3D's second step); colour through an opponent transform.  "
        "Within 0.06-0.24 dB of BM3D on Set12 at 1/13-1/15 of its time.",
        "O(n (f-independent NLM pilot s1^2 + (s^2 L + k P^2 + P^3) / step^2)) time, O(n) memory",
        ("sigma", "h", "patch_radius", "search_radius", "k", "aggregation"),
    ),
    "nlm": MethodInfo(
        "nlm",
        "Windowed non-local means (Buades 2005): exact weights over a (2s+1)^2 search window, "
        "sigma-aware patch distance, patch-wise (default) or pixel-wise aggregation.",
        "O(n s^2) time (patch size free: box sums), O(n) memory",
        ("sigma", "h", "patch_radius", "search_radius", "aggregation"),
    ),
    "scram": MethodInfo(
        "scram",
        "PatchMatch-global NLM (SCRAM's support for denoising): the windowed NLM support plus "
        "each pixel's k most similar patches anywhere in the image, found by kNN PatchMatch on "
        "PCA-reduced patch vectors; better on repeated texture far apart.",
        "O(n (s^2 + k (2f+1)^2 + PatchMatch n_iters k^2 d)) time, O(n k) memory",
        ("sigma", "h", "patch_radius", "search_radius", "k", "seed", "aggregation"),
    ),
}

#: Attention methods (``nlattn.METHODS``) that are not denoisers: :func:`nl_means` refuses them.
#: Softmax attention over an image's NLM patch tokens is global non-local means, but run as
#: denoisers with their defaults these fail the rule a denoiser must pass: a PSNR gain of at
#: least +1 dB on every held-out image, noise level and noise draw (``benchmarks/denoisers.py``;
#: ``"fast"``, ``"efficient"`` and ``"performer"`` lose up to 12-14 dB, ``"local"``, ``"lsh"``
#: and ``"scatterbrain"`` gain as little as 0.3 dB on fine texture at sigma 15, ``"exact"``
#: 0.99 dB).  They
#: remain attention operators: :func:`nlattn.attention`, ``nlattn attnmap``.  (``"scram"``
#: names both an attention method and a denoiser, its PatchMatch-global NLM.)
ATTENTION_OPERATORS = tuple(name for name in _ATTENTION_METHODS if name not in DENOISE_METHODS)

#: Neighbours PatchMatch adds to each pixel's support in ``method="scram"`` when ``k`` is None.
SCRAM_K = 16
#: Patch vectors are reduced to this many principal components for the PatchMatch search.
SCRAM_PCA = 16

AGGREGATIONS = ("patch", "pixel")


def check_denoise_method(method) -> str:
    """Check a denoiser's name: a key of :data:`DENOISE_METHODS`.

    Raises
    ------
    TypeError, ValueError
        When ``method`` is not one; an attention operator (:data:`ATTENTION_OPERATORS`) is
        named as such, with where to use it instead.
    """
    if isinstance(method, str) and method in ATTENTION_OPERATORS:
        raise ValueError(
            f"method {method!r} is an attention operator, not a denoiser (it can leave an image "
            f"about as noisy as it was, or worse): use it through nlattn.attention or "
            f"`nlattn attnmap --method {method}`; the denoisers are {', '.join(DENOISE_METHODS)}")
    return check_choice("method", method, DENOISE_METHODS)


def data_range(image: np.ndarray) -> float:
    """Nominal range of an image's values: the integer dtype's maximum, else 1 or 255.

    Float images are taken to be in [0, 1] when every value lies within [-1, 2] (noise may push
    a [0, 1] image slightly outside it), else in [0, 255]; a float image out of float32's safe
    range (largest magnitude ``M`` outside ``[2**-40, 2**40]``, :func:`value_exponent`) is
    taken to be in [0, 2**e], ``2**e`` the power of two with ``M`` in (2**(e - 1), 2**e].
    """
    if np.issubdtype(image.dtype, np.integer):
        return float(np.iinfo(image.dtype).max)
    exponent = value_exponent(image)
    if exponent:
        return math.ldexp(1.0, exponent)
    lo, hi = float(image.min()), float(image.max())
    return 1.0 if (lo >= -1.0 and hi <= 2.0) else 255.0


def _from_planar(planar: np.ndarray, like: np.ndarray, exponent: int = 0) -> np.ndarray:
    """The image of ``like``'s layout and dtype from a planar result; ``exponent``: the result
    is in units of ``2**exponent`` of ``like``'s (:func:`value_exponent`)."""
    out = planar[0] if like.ndim == 2 else np.moveaxis(planar, 0, -1)
    integer = np.issubdtype(like.dtype, np.integer)
    if exponent:
        out = out.astype(np.float64 if integer else like.dtype)
        if exponent > 0 and not integer:  # the dtype's largest finite value, in these units
            limit = np.ldexp(np.finfo(like.dtype).max, -exponent)
            out = np.clip(out, -limit, limit, out=out)
        with np.errstate(under="ignore"):
            out = np.ldexp(out, exponent, out=out)
    if integer:
        info = np.iinfo(like.dtype)
        top = out.dtype.type(info.max)
        if int(top) > info.max:  # rounded up (int32 in float32, int64 in float64): step down
            top = np.nextafter(top, out.dtype.type(0))
        out = np.clip(np.rint(out), info.min, top)
    return np.ascontiguousarray(out, dtype=like.dtype)


def _in_work_units(name: str, value: float | None, exponent: int) -> float | None:
    """``value`` (``sigma`` or ``h`` in the image's units, checked) times ``2**-exponent``."""
    if value is None or not exponent:
        return value
    scaled = math.ldexp(value, -exponent)  # at most 1: the exponent accounts for the value
    if value > 0.0 and scaled == 0.0:
        raise ValueError(f"{name} must be > 0 next to the image's largest value (its ratio to it "
                         f"must be at least 2**-1074), got {value}")
    return scaled


def nl_means(
    image: np.ndarray,
    method: str = "nlm2",
    *,
    sigma: float | None = None,
    h: float | None = None,
    patch_radius: int | None = None,
    search_radius: int | None = None,
    k: int | None = None,
    seed: int = 0,
    aggregation: str = "patch",
    n_threads: int | None = None,
) -> np.ndarray:
    """Denoise an image with non-local means.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Grey or colour (any number of channels, denoised jointly: one weight per pixel pair)
        image of any integer or float dtype.
    method : str
        The denoiser, a key of :data:`nlattn.DENOISE_METHODS`: ``"nlm2"`` (the default; two
        stages: a windowed-NLM pilot, then collaborative Wiener filtering of groups of similar
        8x8 blocks found on the pilot; :mod:`nlattn.denoise.nlm2`), ``"nlm"`` (windowed NLM) or
        ``"scram"`` (adds to each pixel's search window its ``k`` most similar patches anywhere
        in the image, found by kNN PatchMatch).  The other attention methods
        (:data:`ATTENTION_OPERATORS`) are refused: they are not denoisers.
    sigma : float, optional
        Standard deviation of the noise in the image's units (grey levels for 8-bit images).
        ``None`` estimates it with :func:`estimate_sigma`.  Patch distances below ``2 sigma**2``
        (what pure noise produces) count as 0.
    h : float, optional
        Filter strength (> 0), in the image's units: weights are
        ``exp(-max(d2 - 2 sigma**2, 0) / h**2)`` with ``d2`` the mean squared difference of two
        patches.  ``None``: the preset's ``h / sigma`` ratio (0.3-0.55) times ``sigma``.
        ``"nlm2"``: the filter strength of its NLM pilot (preset ratio 0.5-0.8, a strong
        filter: the pilot only has to be clean, not sharp).
    patch_radius, search_radius : int, optional
        Patches are ``(2 patch_radius + 1)**2`` pixels, the search window
        ``(2 search_radius + 1)**2``.  ``None``: from the preset for ``sigma``.  ``"nlm2"``:
        ``patch_radius`` is its pilot's patch radius, ``search_radius`` the radius of the
        window of block positions searched for each reference block in its second stage (the
        pilot's own window comes from the preset).
    k : int, optional
        Neighbours PatchMatch adds per pixel (``"scram"``; default 16); ``"nlm2"``: the most
        blocks in a group (groups hold the largest power of two of similar blocks found, up to
        ``k``; 1-64, preset 16); ``"nlm"`` takes none (must be None).
    seed : int
        Seed of randomised methods (PatchMatch); the same seed gives the same output.
        ``"nlm"`` and ``"nlm2"`` are deterministic and do not use it.
    aggregation : {"patch", "pixel"}
        ``"patch"`` (default) averages every patch's estimate back into all its pixels (IPOL),
        ``"pixel"`` keeps only the centre's estimate (classic NLM, faster).  ``"nlm2"``: the
        aggregation of its pilot.
    n_threads : int, optional
        Numba threads to use (default: all).

    Returns
    -------
    ndarray
        The denoised image, of the input's shape and dtype (integers rounded and clipped).

    Raises
    ------
    TypeError, ValueError
        On an invalid image or parameter (the message names it and its valid range), on an
        attention method that is not a denoiser (:data:`ATTENTION_OPERATORS`), and on a
        positive ``sigma`` or ``h`` below ``2**-1074`` times the image's largest value.

    Notes
    -----
    A method is offered here only when, with its defaults, it gains at least 1 dB of PSNR on
    every held-out image, noise level and noise draw of ``benchmarks/denoisers.py``.
    ``"nlm"``: time O(n (2s+1)^2 / 2) for n pixels and any patch size (box sums over the
    squared-difference image of each offset; each symmetric pair of offsets is computed once),
    about twice that for patch-wise aggregation; memory O(n).  ``"nlm2"``: that of its pilot,
    plus O(n / step^2 (s_2^2 L + k P^2 + P^3)) for the second stage (references every
    ``step = 3`` pixels, ``L = 32`` coefficients compared per candidate block, ``P = 8``),
    memory O(n).  Presets: ``nlattn.denoise.presets``; sigma is mapped to 8-bit grey levels
    through :func:`data_range` to pick one.  With ``sigma == 0`` and ``h`` not given there is
    nothing to remove and a copy of the image is returned (``"nlm2"``: whatever ``h``).  The
    result is identical at any thread count.

    The kernels compute in float32.  An image whose largest magnitude (or ``sigma``, or ``h``)
    lies outside ``[2**-40, 2**40]`` (:func:`nlattn.denoise.noise.value_exponent`), where squared
    patch distances and ``h**2`` would overflow or sink into subnormals, is denoised multiplied
    by the power of two ``2**-e`` that brings it into (0.5, 1], with ``sigma`` and ``h`` scaled
    alike, and the result multiplied back by ``2**e``: non-local means is equivariant to that
    scaling, so the result is that of the scaled image, exactly, up to the scale (its nominal
    range, :func:`data_range`, being ``2**e``).  A result beyond the float dtype's largest
    finite value (``"nlm2"`` may overshoot an image that reaches it) is clipped to it.  Images
    within the range are not touched.

    References
    ----------
    A. Buades, B. Coll, J.-M. Morel, "A non-local algorithm for image denoising", CVPR 2005.
    A. Buades, B. Coll, J.-M. Morel, "Non-Local Means Denoising", Image Processing On Line 1,
    2011 (patch-wise aggregation, the sigma-aware distance and the parameter table).
    J. Darbon et al., "Fast nonlocal filtering applied to electron cryomicroscopy", ISBI 2008
    (the shift-outer algorithm).
    K. Dabov, A. Foi, V. Katkovnik, K. Egiazarian, "Image denoising by sparse 3-D
    transform-domain collaborative filtering", IEEE Trans. Image Processing 16(8), 2007 (the
    collaborative Wiener filtering of ``"nlm2"``'s second stage, and its colour variant).
    """
    image = check_image("image", image)
    check_denoise_method(method)
    check_choice("aggregation", aggregation, AGGREGATIONS)
    check_seed(seed)
    n_threads = check_n_threads(n_threads)
    if sigma is not None:
        sigma = check_float("sigma", sigma, minimum=0.0)
    if h is not None:
        h = check_float("h", h, minimum=0.0, strict_minimum=True)
    # out of float32's safe range: denoise the image times 2**-exponent, sigma and h alike
    exponent = value_exponent(image, *(value for value in (sigma, h) if value is not None))
    value_range = math.ldexp(data_range(image), -exponent)
    work = image
    if exponent:
        with np.errstate(under="ignore"):
            work = np.ldexp(image, -exponent, dtype=np.result_type(image, np.float32))
        sigma = _in_work_units("sigma", sigma, exponent)
        h = _in_work_units("h", h, exponent)
    if method == "nlm2":
        planar = _nlm2_denoise(work, sigma, h, patch_radius, search_radius, k, aggregation,
                               n_threads, value_range)
    else:
        planar = _nlm_denoise(work, method, sigma, h, patch_radius, search_radius, k, seed,
                              aggregation, n_threads, value_range)
    if planar is None:  # nothing to remove
        return image.copy()
    return _from_planar(planar, image, exponent)


def _nlm_denoise(image, method, sigma, h, patch_radius, search_radius, k, seed, aggregation,
                 n_threads, value_range) -> np.ndarray | None:
    """Windowed NLM (``"nlm"``), with PatchMatch neighbours (``"scram"``): the planar result,
    None when there is nothing to remove."""
    if method == "nlm" and k is not None:
        raise ValueError(f"k is not a parameter of method {method!r}; leave it None")
    if method == "scram":
        k = SCRAM_K if k is None else check_int("k", k, minimum=1, maximum=256)
    sigma, patch_radius, search_radius, h = resolve_nlm_parameters(
        image, sigma, h, patch_radius, search_radius, value_range=value_range)
    if h == 0.0:
        return None

    from nlattn.denoise.nlm import nlm_windowed
    from nlattn.features import to_planar

    with numba_threads(n_threads):
        extra = None
        if method == "scram":
            extra = _patchmatch_neighbours(image, patch_radius, k, seed)
        return nlm_windowed(to_planar(image), patch_radius, search_radius, h, sigma,
                            aggregation, extra)


def resolve_nlm_parameters(image: np.ndarray, sigma: float | None, h: float | None,
                           patch_radius: int | None, search_radius: int | None, *,
                           value_range: float | None = None) -> tuple[float, int, int, float]:
    """The checked ``(sigma, patch_radius, search_radius, h)`` that windowed NLM uses.

    ``sigma=None`` is estimated with :func:`estimate_sigma`; the others default to the preset
    for ``sigma`` in 8-bit grey levels: ``sigma * 255 / value_range``, ``value_range`` the
    image's nominal range (default :func:`data_range`).  A returned ``h`` of 0 (no noise and no
    ``h`` given) means there is nothing to remove.
    """
    if sigma is None:
        sigma = estimate_sigma(image)
    sigma = check_float("sigma", sigma, minimum=0.0)
    if value_range is None:
        value_range = data_range(image)
    n_channels = 1 if image.ndim == 2 else image.shape[2]
    preset = nlm_preset(sigma * 255.0 / value_range, n_channels)
    patch_radius = check_int("patch_radius", preset.patch_radius if patch_radius is None
                             else patch_radius, minimum=0, maximum=64)
    search_radius = check_int("search_radius", preset.search_radius if search_radius is None
                              else search_radius, minimum=0, maximum=256)
    if h is None:
        h = preset.h_over_sigma * sigma
    else:
        h = check_float("h", h, minimum=0.0, strict_minimum=True)
    return sigma, patch_radius, search_radius, h


def _nlm2_denoise(image, sigma, h, patch_radius, search_radius, k, aggregation, n_threads,
                  value_range) -> np.ndarray | None:
    """``nl_means`` with ``method="nlm2"`` (two stages: NLM pilot, collaborative Wiener): the
    planar result, None when there is nothing to remove."""
    from nlattn.denoise.nlm2 import nlm2_planar
    from nlattn.features import to_planar

    if sigma is None:
        sigma = estimate_sigma(image)
    sigma = check_float("sigma", sigma, minimum=0.0)
    n_channels = 1 if image.ndim == 2 else image.shape[2]
    scale = 255.0 / value_range
    preset = nlm2_preset(sigma * scale, n_channels)
    patch_radius = preset.pilot_patch_radius if patch_radius is None else patch_radius
    search_radius = preset.search_radius if search_radius is None else search_radius
    k = preset.k if k is None else k
    patch_radius = check_int("patch_radius", patch_radius, minimum=0, maximum=64)
    search_radius = check_int("search_radius", search_radius, minimum=0, maximum=64)
    k = check_int("k", k, minimum=1, maximum=64)
    if h is not None:
        h = check_float("h", h, minimum=0.0, strict_minimum=True)
    if sigma == 0.0:  # no noise: both stages would give the image back
        return None
    if h is None:
        h = preset.pilot_h_over_sigma * sigma
    planar = to_planar(image) * np.float32(scale)  # a new array: the input stays untouched
    with numba_threads(n_threads):
        out = nlm2_planar(planar, np.full(n_channels, sigma * scale), patch_radius,
                          preset.pilot_search_radius, h * scale, aggregation, preset.block,
                          preset.step, search_radius, k, preset.n_coefs, preset.tau,
                          preset.beta)
    out /= np.float32(scale)
    return out


def _patchmatch_neighbours(image: np.ndarray, patch_radius: int, k: int, seed: int) -> np.ndarray:
    """Each pixel's ``k`` nearest patches (squared distance of PCA-reduced patch vectors, self
    excluded), as flat indices ``(H, W, k)``; -1 where the image has fewer pixels."""
    from nlattn.features import augmented_tokens, extract_patches, pca_reduce
    from nlattn.patchmatch import knn_patchmatch

    patches = extract_patches(image, patch_radius, centre=True)
    if patches.shape[-1] > SCRAM_PCA:
        patches = pca_reduce(patches, SCRAM_PCA)
    n_pixels = image.shape[0] * image.shape[1]
    if n_pixels < 2:
        return np.full(image.shape[:2] + (k,), -1, np.int32)
    # the largest q.k of the augmented vectors are the smallest |p_i - p_j|^2
    queries, keys = augmented_tokens(patches)
    field = knn_patchmatch(queries, keys, k=min(k, n_pixels - 1), seed=seed, exclude_self=True,
                           scale=1.0)
    return np.ascontiguousarray(field.indices, dtype=np.int32)


__all__ = ["ATTENTION_OPERATORS", "DENOISE_METHODS", "MethodInfo", "check_denoise_method",
           "data_range", "denoise_nl_means", "estimate_sigma", "nl_means"]
