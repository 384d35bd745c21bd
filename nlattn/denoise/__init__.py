"""Non-local means denoising: the public entry points.

:func:`nl_means` is nlattn's denoiser: the two-stage ``"nlm2"`` (an NLM pilot, then collaborative
Wiener filtering of groups of similar blocks), one-stage windowed NLM ``"nlm"`` with patch-wise
aggregation, and other non-local methods, all with presets from the noise level;
:func:`denoise_nl_means` is a faster drop-in for scikit-image's function of the same name;
:func:`estimate_sigma` measures the noise for ``sigma=None``.
"""

from __future__ import annotations

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
from nlattn.denoise.noise import estimate_sigma
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

#: Attention methods (``nlattn.METHODS``) that also denoise through the NLM tokens: softmax
#: attention of ``nlm_tokens(image, patch_radius, h, pca=ATTENTION_PCA)`` with ``scale=1`` is
#: global non-local means, so each approximation is a denoiser (a good one only where it
#: approximates peaked softmax well).  ``"scram"`` has a dedicated denoiser above.
ATTENTION_DENOISERS = ("exact", "local", "performer", "lsh", "scatterbrain", "fast", "efficient")
#: Patch vectors of the attention-backed denoisers are reduced to this many principal components.
ATTENTION_PCA = 16

for _name in ATTENTION_DENOISERS:
    DENOISE_METHODS[_name] = MethodInfo(
        _name,
        f"Softmax attention method {_name!r} (nlattn.METHODS) over NLM patch tokens (PCA-"
        f"{ATTENTION_PCA}, scale 1, pixel-wise): global NLM when exact; the attention methods' "
        "table says what each approximation is good for.",
        "that of the attention method, n = pixels, d = 17",
        ("sigma", "h", "patch_radius", "seed") + _ATTENTION_METHODS[_name].parameters,
    )
del _name

#: Neighbours PatchMatch adds to each pixel's support in ``method="scram"`` when ``k`` is None.
SCRAM_K = 16
#: Patch vectors are reduced to this many principal components for the PatchMatch search.
SCRAM_PCA = 16

AGGREGATIONS = ("patch", "pixel")


def data_range(image: np.ndarray) -> float:
    """Nominal range of an image's values: the integer dtype's maximum, else 1 or 255.

    Float images are taken to be in [0, 1] when every value lies within [-1, 2] (noise may push
    a [0, 1] image slightly outside it), else in [0, 255].
    """
    if np.issubdtype(image.dtype, np.integer):
        return float(np.iinfo(image.dtype).max)
    lo, hi = float(image.min()), float(image.max())
    return 1.0 if (lo >= -1.0 and hi <= 2.0) else 255.0


def _from_planar(planar: np.ndarray, like: np.ndarray) -> np.ndarray:
    out = planar[0] if like.ndim == 2 else np.moveaxis(planar, 0, -1)
    if np.issubdtype(like.dtype, np.integer):
        info = np.iinfo(like.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return np.ascontiguousarray(out, dtype=like.dtype)


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
    **method_params,
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
        8x8 blocks found on the pilot; :mod:`nlattn.denoise.nlm2`), ``"nlm"`` (windowed NLM),
        ``"scram"`` (adds to each pixel's search window its ``k`` most similar patches anywhere
        in the image, found by kNN PatchMatch), or an attention method of
        :data:`ATTENTION_DENOISERS` applied to the NLM tokens of the image.
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
    **method_params
        Further parameters of an attention method (e.g. ``n_features`` for ``"performer"``,
        ``window_radius`` for ``"local"``); see ``nlattn.METHODS[method].parameters``.

    Returns
    -------
    ndarray
        The denoised image, of the input's shape and dtype (integers rounded and clipped).

    Raises
    ------
    TypeError, ValueError
        On an invalid image or parameter (the message names it and its valid range).

    Notes
    -----
    ``"nlm"``: time O(n (2s+1)^2 / 2) for n pixels and any patch size (box sums over the
    squared-difference image of each offset; each symmetric pair of offsets is computed once),
    about twice that for patch-wise aggregation; memory O(n).  ``"nlm2"``: that of its pilot,
    plus O(n / step^2 (s_2^2 L + k P^2 + P^3)) for the second stage (references every
    ``step = 3`` pixels, ``L = 32`` coefficients compared per candidate block, ``P = 8``),
    memory O(n).  Presets: ``nlattn.denoise.presets``; sigma is mapped to 8-bit grey levels
    through :func:`data_range` to pick one.  With ``sigma == 0`` and ``h`` not given there is
    nothing to remove and a copy of the image is returned (``"nlm2"``: whatever ``h``).  The
    result is identical at any thread count.

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
    check_choice("method", method, DENOISE_METHODS)
    check_choice("aggregation", aggregation, AGGREGATIONS)
    check_seed(seed)
    n_threads = check_n_threads(n_threads)
    if method in ATTENTION_DENOISERS:
        if search_radius is not None or aggregation != "patch":
            raise ValueError(f"search_radius and aggregation are parameters of methods 'nlm2', "
                             f"'nlm' and 'scram', not of {method!r} (its parameters: "
                             f"{', '.join(DENOISE_METHODS[method].parameters)})")
        return _attention_denoise(image, method, sigma, h, patch_radius, k, seed, n_threads,
                                  method_params)
    if method_params:
        raise TypeError(f"{next(iter(method_params))!r} is not a parameter of nl_means with "
                        f"method {method!r}")
    if method == "nlm2":
        return _nlm2_denoise(image, sigma, h, patch_radius, search_radius, k, aggregation,
                             n_threads)
    if method == "nlm" and k is not None:
        raise ValueError(f"k is not a parameter of method {method!r}; leave it None")
    if method == "scram":
        k = SCRAM_K if k is None else check_int("k", k, minimum=1, maximum=256)
    sigma, patch_radius, search_radius, h = resolve_nlm_parameters(
        image, sigma, h, patch_radius, search_radius)
    if h == 0.0:
        return image.copy()

    from nlattn.denoise.nlm import nlm_windowed
    from nlattn.features import to_planar

    with numba_threads(n_threads):
        extra = None
        if method == "scram":
            extra = _patchmatch_neighbours(image, patch_radius, k, seed)
        planar = nlm_windowed(to_planar(image), patch_radius, search_radius, h, sigma,
                              aggregation, extra)
    return _from_planar(planar, image)


def resolve_nlm_parameters(image: np.ndarray, sigma: float | None, h: float | None,
                           patch_radius: int | None, search_radius: int | None
                           ) -> tuple[float, int, int, float]:
    """The checked ``(sigma, patch_radius, search_radius, h)`` that windowed NLM uses.

    ``sigma=None`` is estimated with :func:`estimate_sigma`; the others default to the preset
    for ``sigma`` (in 8-bit grey levels through :func:`data_range`).  A returned ``h`` of 0
    (no noise and no ``h`` given) means there is nothing to remove.
    """
    if sigma is None:
        sigma = estimate_sigma(image)
    sigma = check_float("sigma", sigma, minimum=0.0)
    n_channels = 1 if image.ndim == 2 else image.shape[2]
    preset = nlm_preset(sigma * 255.0 / data_range(image), n_channels)
    patch_radius = check_int("patch_radius", preset.patch_radius if patch_radius is None
                             else patch_radius, minimum=0, maximum=64)
    search_radius = check_int("search_radius", preset.search_radius if search_radius is None
                              else search_radius, minimum=0, maximum=256)
    if h is None:
        h = preset.h_over_sigma * sigma
    else:
        h = check_float("h", h, minimum=0.0, strict_minimum=True)
    return sigma, patch_radius, search_radius, h


def _nlm2_denoise(image, sigma, h, patch_radius, search_radius, k, aggregation,
                  n_threads) -> np.ndarray:
    """``nl_means`` with ``method="nlm2"`` (two stages: NLM pilot, collaborative Wiener)."""
    from nlattn.denoise.nlm2 import nlm2_planar
    from nlattn.features import to_planar

    if sigma is None:
        sigma = estimate_sigma(image)
    sigma = check_float("sigma", sigma, minimum=0.0)
    n_channels = 1 if image.ndim == 2 else image.shape[2]
    scale = 255.0 / data_range(image)
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
        return image.copy()
    if h is None:
        h = preset.pilot_h_over_sigma * sigma
    planar = to_planar(image) * np.float32(scale)  # a new array: the input stays untouched
    with numba_threads(n_threads):
        out = nlm2_planar(planar, np.full(n_channels, sigma * scale), patch_radius,
                          preset.pilot_search_radius, h * scale, aggregation, preset.block,
                          preset.step, search_radius, k, preset.n_coefs, preset.tau,
                          preset.beta)
    out /= np.float32(scale)
    return _from_planar(out, image)


def _attention_denoise(image, method, sigma, h, patch_radius, k, seed, n_threads,
                       method_params) -> np.ndarray:
    """``nl_means`` through an attention method on the NLM tokens of ``image``."""
    from nlattn.attention import METHODS, attention
    from nlattn.features import nlm_tokens

    sigma, patch_radius, _, h = resolve_nlm_parameters(image, sigma, h, patch_radius, None)
    if h == 0.0:
        return image.copy()
    n_channels = 1 if image.ndim == 2 else image.shape[2]
    n_elements = (2 * patch_radius + 1) ** 2 * n_channels
    params = dict(method_params)
    if k is not None:
        if "k" not in METHODS[method].parameters:
            raise ValueError(f"k is not a parameter of method {method!r}; leave it None")
        params["k"] = k
    queries, keys, values = nlm_tokens(image, patch_radius, h,
                                       pca=min(ATTENTION_PCA, n_elements))
    out = attention(queries, keys, values, method, scale=1.0, seed=seed, n_threads=n_threads,
                    **params)
    return _from_planar(np.moveaxis(out, -1, 0), image)


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


__all__ = ["ATTENTION_DENOISERS", "DENOISE_METHODS", "MethodInfo", "data_range",
           "denoise_nl_means", "estimate_sigma", "nl_means"]
