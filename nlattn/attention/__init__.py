"""Image attention: softmax attention over the pixels of a grid and its methods, behind one
interface.

:func:`attention` computes ``out_i = sum_j softmax_j(scale q_i.k_j) v_j`` over the pixels of an
``H x W`` grid of tokens; :func:`attention_rows` returns the attention map of chosen query pixels.
Both validate their arguments once, convert the arrays once to float32 C-contiguous, set Numba's
thread count and hand over to the method's module.

Registering a method
--------------------
A method ``name`` lives in the module ``nlattn.attention.<name>``, which exposes

- ``attend(queries, keys, values, scale, seed, **params) -> (H, W, dv) float32`` and
- ``rows(queries, keys, positions, scale, seed, **params) -> (m, H, W) float32``,

taking validated float32 C-contiguous ``(H, W, d)`` / ``(H, W, dv)`` arrays, ``positions`` an
``(m, 2)`` int64 array of ``(y, x)`` inside the grid, ``scale > 0`` and ``seed >= 0``; its method
parameters are keyword arguments with their defaults in those signatures.  To register it, add one
:class:`MethodInfo` entry to :data:`METHODS` (its ``parameters`` tuple lists the keyword names the
method accepts).  Parameter values are checked by :data:`PARAMETER_CHECKS` when their name is
there (a name means the same thing for every method), else by the method's
module; ``None`` stands for the method's default.  A value out of range raises, nothing is
clipped: ``k`` above the number of keys is an error, not ``k = n``.  Modules are imported on
first use, so importing nlattn stays cheap.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

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

#: The attention methods: name -> description, complexity, parameters.  The method ``name`` is
#: implemented by the module ``nlattn.attention.<name>``.
METHODS: dict[str, MethodInfo] = {
    "exact": MethodInfo(
        "exact",
        "Exact softmax attention over all pairs, blocked: BLAS products of query blocks and key "
        "blocks with an online softmax (running max and sum per query, float64 accumulators); "
        "never forms the n x n matrix.",
        "O(n^2 d) time, O(n d + block^2) memory",
        (),
    ),
    "local": MethodInfo(
        "local",
        "Exact softmax attention inside the (2r+1)^2 window around each query, clipped to the "
        "grid (the classic NLM search window); float64 normalisers.",
        "O(n r^2 (d + dv)) time, O(n (d + dv)) memory",
        ("window_radius",),
    ),
    "scram": MethodInfo(
        "scram",
        "SCRAM (Calian et al. 2019): kNN PatchMatch finds each query's k best keys, then an exact "
        "softmax over the union of the (2r+1)^2 windows around them (and, with local_radius, the "
        "query's own window); float64 log-sum-exp.",
        "O(n log n d) PatchMatch + O(n k (2r+1)^2 d) softmax time, O(n k) memory",
        ("k", "window_radius", "local_radius", "n_iters"),
    ),
    "performer": MethodInfo(
        "performer",
        "Performer (Choromanski et al. 2021): low-rank attention through positive orthogonal "
        "random features of exp(scale q.k) (variance-optimal FAVOR++ form), stabilised in log "
        "space; unbiased for the "
        "unnormalised weights, good for diffuse maps, poor for peaked ones.",
        "O(n m d) time, O(n m) memory (m = n_features)",
        ("n_features",),
    ),
    "lsh": MethodInfo(
        "lsh",
        "LSH attention (Reformer-style, q != k): exact softmax inside equal-size buckets of "
        "keys sorted by random-hyperplane codes of an exact embedding that turns scores into "
        "distances (NLM: patch distance), over n_hashes rounds, each key counted once; good "
        "for peaked maps.",
        "O(n n_hashes (log n + bucket_size d)) time, O(n n_hashes) memory",
        ("n_hashes", "bucket_size"),
    ),
    "scatterbrain": MethodInfo(
        "scatterbrain",
        "Scatterbrain (Chen et al. 2021): Performer random features for the whole map plus an "
        "exact sparse part on a support (local window, LSH buckets or the PatchMatch support), "
        "with the features' own estimate subtracted there (unbiased); good at every "
        "temperature.",
        "O(n (m + s) d) time, O(n (m + s)) memory (m = n_features, s = support size)",
        ("n_features", "support", "window_radius", "n_hashes", "bucket_size", "k", "n_iters"),
    ),
    "fast": MethodInfo(
        "fast",
        "FAST 'fastmax' (Gerami et al. 2024): the polynomial score 1 + s + s^2/2 (p=2) or 1 + s "
        "(p=1) of normalised q, k (default: unit norm), factorised through key moments; a "
        "different operator with a small dynamic range (<= 5:1), not an approximation of "
        "peaked softmax.",
        "O(n d^p dv) time (d^(p+1) a token when dv = d; reduce d first for p=2), "
        "O(n d + d^p dv) memory",
        ("p", "normalization"),
    ),
    "efficient": MethodInfo(
        "efficient",
        "Efficient Attention (Shen et al. 2021): softmax over each key channel across positions "
        "and over each query's channels, E = rho_q(Q) (rho_k(K)^T V); rank <= d maps, a "
        "different operator from softmax attention.",
        "O(n d dv) time, O(d dv) memory",
        ("variant", "heads"),
    ),
}


def _check_k(value, n_keys: int) -> int:
    return check_int("k", value, minimum=1, maximum=n_keys)


def _check_window_radius(value, n_keys: int) -> int:
    return check_int("window_radius", value, minimum=0, maximum=1024)


def _check_n_iters(value, n_keys: int) -> int:
    return check_int("n_iters", value, minimum=0)


def _check_local_radius(value, n_keys: int) -> int:
    return check_int("local_radius", value, minimum=0, maximum=1024)


def _check_n_features(value, n_keys: int) -> int:
    return check_int("n_features", value, minimum=1, maximum=1 << 16)


def _check_n_hashes(value, n_keys: int) -> int:
    return check_int("n_hashes", value, minimum=1, maximum=256)


def _check_bucket_size(value, n_keys: int) -> int:
    return check_int("bucket_size", value, minimum=1, maximum=1 << 16)


#: Shared checks of method parameters: name -> function(value, n_keys) returning the checked
#: value or raising TypeError/ValueError that names the parameter; ``n_keys`` is the number of
#: keys (pixels of the grid), the bound of the parameters that count keys (``k``).  A parameter
#: without an entry is passed to the method unchecked (its module checks it).
PARAMETER_CHECKS: dict[str, Callable[[object, int], object]] = {
    "k": _check_k,
    "window_radius": _check_window_radius,
    "n_iters": _check_n_iters,
    "local_radius": _check_local_radius,
    "n_features": _check_n_features,
    "n_hashes": _check_n_hashes,
    "bucket_size": _check_bucket_size,
}


def _check_tokens(name: str, array, what: str) -> np.ndarray:
    """A token grid ``(H, W, channels)`` of ints or finite floats, not empty."""
    if isinstance(array, np.ndarray) and array.ndim != 3:
        raise ValueError(
            f"{name} must have shape (H, W, {what}) (a sequence of n tokens is (1, n, {what})), "
            f"got shape {array.shape}"
        )
    return check_image(name, array)


def _to_float32(name: str, array: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(array, dtype=np.float32)
    if array.dtype.itemsize > 4 and not np.isfinite(out).all():
        raise ValueError(f"{name} holds values beyond the float32 range (|x| > 3.4e38)")
    return out


def _unchecked(value, n_keys: int):
    return value


def _check_method(method: str, method_params: dict, n_keys: int) -> tuple[str, dict]:
    """Check ``method`` and its parameters on a grid of ``n_keys`` keys; ``None`` values mean
    "the method's default".  The one place method parameters are resolved."""
    check_choice("method", method, METHODS)
    valid = METHODS[method].parameters
    for key in method_params:
        if key not in valid:
            accepted = ", ".join(valid) if valid else "none"
            raise TypeError(
                f"{key!r} is not a parameter of attention method {method!r} "
                f"(its parameters: {accepted})"
            )
    params = {key: PARAMETER_CHECKS.get(key, _unchecked)(value, n_keys)
              for key, value in method_params.items() if value is not None}
    return method, params


def _check_common(queries, keys, scale, seed, n_threads):
    """Checked float32 ``(q, k)``, ``scale``, ``seed`` and ``n_threads``."""
    queries = _check_tokens("queries", queries, "d")
    keys = _check_tokens("keys", keys, "d")
    if keys.shape != queries.shape:
        raise ValueError(
            f"keys must have the shape of queries (H, W, d) = {queries.shape}, got {keys.shape}"
        )
    d = queries.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    scale = check_float("scale", scale, minimum=0.0, strict_minimum=True)
    seed = check_seed(seed)
    n_threads = check_n_threads(n_threads)
    q = _to_float32("queries", queries)
    k = _to_float32("keys", keys)
    # Scores are float32: |scale q.k| <= scale max|q| max|k| must stay far from overflow.
    bound = scale * np.sqrt(np.einsum("...c,...c->...", q, q, dtype=np.float64).max()) * np.sqrt(
        np.einsum("...c,...c->...", k, k, dtype=np.float64).max()
    )
    if not bound < 1e37:
        raise ValueError(
            f"scale * |q| * |k| reaches {bound:.3g}: the scores would overflow float32; rescale "
            "queries, keys or scale"
        )
    return q, k, scale, seed, n_threads


def _module(method: str):
    return importlib.import_module(f"{__name__}.{method}")


def attention(
    queries: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    method: str = "exact",
    *,
    scale: float | None = None,
    seed: int = 0,
    n_threads: int | None = None,
    **method_params,
) -> np.ndarray:
    """Softmax attention over the pixels of a grid of tokens.

    ``out_i = sum_j w_ij v_j / sum_j w_ij`` with ``w_ij = exp(scale q_i.k_j)``, each query
    ``i`` and key ``j`` a pixel of the ``H x W`` grid (``n = H W`` tokens), over all keys
    (``"exact"``) or the keys each method selects.

    Parameters
    ----------
    queries, keys : ndarray, shape (H, W, d)
        Query and key vectors of every pixel (integer or float dtype, finite).  A sequence of
        ``n`` tokens is the grid ``(1, n, d)``.
    values : ndarray, shape (H, W, dv)
        Value vectors (any ``dv``), on the same grid.
    method : str
        A key of :data:`METHODS`: ``"exact"`` (all pairs) or ``"local"`` (a window around each
        query), and the approximations registered there.
    scale : float, optional
        Multiplies the dot products (> 0); ``None``: ``1 / sqrt(d)``.  ``scale=1.0`` with the
        tokens of :func:`nlattn.nlm_tokens` gives non-local means.
    seed : int
        Seed of randomised methods (deterministic methods ignore it).
    n_threads : int, optional
        Numba threads to use (default: all).
    **method_params
        The method's parameters (see ``METHODS[method].parameters``), e.g. ``window_radius``
        (int >= 0, default 3) for ``"local"`` or ``k`` (1 <= k <= H W: the number of keys)
        for ``"scram"``.  ``None`` means the method's default.

    Returns
    -------
    ndarray, shape (H, W, dv), float32
        The attention output of every query pixel.

    Raises
    ------
    TypeError
        On an argument of the wrong type, or a parameter the method does not take (the message
        lists the ones it does).
    ValueError
        On an argument out of its range (shapes that disagree, NaN or infinite values, scale <=
        0, an unknown method, a parameter out of its range such as ``k`` above the number of
        keys ``H W``, scores that would overflow float32).

    Notes
    -----
    ``"exact"`` costs O(n^2 (d + dv)) time and O(n (d + dv)) memory (blocks of queries x keys,
    never the n x n matrix); ``"local"`` with window radius r costs O(n r^2 (d + dv)) time.
    Every method subtracts each query's maximum score before exponentiating, so large scores
    cannot overflow, and accumulates its normalisers in float64.  Results are identical at any
    thread count.

    References
    ----------
    A. Vaswani et al., "Attention is all you need", NeurIPS 2017.
    M. Milakov, N. Gimelshein, "Online normalizer calculation for softmax", arXiv:1805.02867,
    2018.
    M. N. Rabe, C. Staats, "Self-attention does not need O(n^2) memory", arXiv:2112.05682, 2021.
    A. Buades, B. Coll, J.-M. Morel, "A non-local algorithm for image denoising", CVPR 2005.
    """
    q, k, scale, seed, n_threads = _check_common(queries, keys, scale, seed, n_threads)
    method, params = _check_method(method, method_params, q.shape[0] * q.shape[1])
    values = _check_tokens("values", values, "dv")
    if values.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"values must lie on the grid of queries (H, W) = {q.shape[:2]}, got shape "
            f"{values.shape}"
        )
    v = _to_float32("values", values)
    with numba_threads(n_threads):
        return _module(method).attend(q, k, v, scale, seed, **params)


def _check_positions(positions, height: int, width: int) -> np.ndarray:
    array = np.asarray(positions)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        if array.size or array.dtype == np.bool_:
            raise TypeError(f"positions must hold integers (y, x), got dtype {array.dtype}")
        array = array.astype(np.int64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"positions must have shape (m, 2) of (y, x) pairs, got {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.int64)
    outside = (array[:, 0] < 0) | (array[:, 0] >= height) | (array[:, 1] < 0) | (
        array[:, 1] >= width
    )
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        y, x = (int(c) for c in array[i])
        raise ValueError(
            f"positions[{i}] = (y={y}, x={x}) lies outside the {height} x {width} grid "
            f"(y in [0, {height - 1}], x in [0, {width - 1}])"
        )
    return array


def attention_rows(
    queries: np.ndarray,
    keys: np.ndarray,
    positions,
    method: str = "exact",
    *,
    scale: float | None = None,
    seed: int = 0,
    n_threads: int | None = None,
    **method_params,
) -> np.ndarray:
    """Attention maps: the weights of chosen query pixels over every key pixel.

    Row ``p`` holds ``w_ij / sum_j w_ij`` for the query ``i = positions[p]`` and every key
    ``j`` of the grid, zero where the method puts no weight; it sums to 1.

    Parameters
    ----------
    queries, keys : ndarray, shape (H, W, d)
        Query and key vectors of every pixel, as for :func:`attention`.
    positions : array_like of int, shape (m, 2)
        The query pixels, as ``(y, x)`` pairs inside the grid.
    method : str
        A key of :data:`METHODS`.
    scale : float, optional
        Multiplies the dot products (> 0); ``None``: ``1 / sqrt(d)``.
    seed : int
        Seed of randomised methods.
    n_threads : int, optional
        Numba threads to use (default: all).
    **method_params
        The method's parameters, as for :func:`attention`.

    Returns
    -------
    ndarray, shape (m, H, W), float32
        One attention map per query pixel; each sums to 1.

    Raises
    ------
    TypeError, ValueError
        As :func:`attention`; ValueError names the first position outside the grid.

    Notes
    -----
    No method forms the n x n matrix: ``"exact"`` costs O(n d) per row (scores and weights in
    float64), ``"local"`` O(r^2 d) per row plus the zeroed map.  Memory is the output, O(m n).

    References
    ----------
    A. Vaswani et al., "Attention is all you need", NeurIPS 2017.
    """
    q, k, scale, seed, n_threads = _check_common(queries, keys, scale, seed, n_threads)
    method, params = _check_method(method, method_params, q.shape[0] * q.shape[1])
    pos = _check_positions(positions, q.shape[0], q.shape[1])
    with numba_threads(n_threads):
        return _module(method).rows(q, k, pos, scale, seed, **params)


__all__ = ["METHODS", "PARAMETER_CHECKS", "MethodInfo", "attention", "attention_rows"]
