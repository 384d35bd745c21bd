"""Attention maps of query pixels, and how well each method reproduces the exact ones.

A query pixel's *attention row* is its softmax distribution over every key of the image (for
NLM tokens, the non-local means weights of that pixel): :func:`nlattn.attention_rows` gives it
for any method without forming the n x n matrix.  :func:`compare_rows` computes the exact rows
first and measures every other method against them; :func:`attention_maps` does the whole job
behind ``nlattn attnmap``: tokens (NLM tokens of the image, or the user's features), rows of
each method, errors, in a
:class:`MapsResult` that :func:`nlattn.render.render_maps` draws.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from nlattn._validate import check_float, check_image, check_int, check_seed
from nlattn.metrics import recall_at_k, row_kl, row_total_variation

__all__ = [
    "DEFAULT_RECALL_K",
    "MapsResult",
    "RowComparison",
    "attention_maps",
    "compare_rows",
    "resolve_methods",
]

#: The k of recall@k when no ``k`` is given.
DEFAULT_RECALL_K = 16

#: The reference every method is measured against.
REFERENCE = "exact"


class RowComparison(NamedTuple):
    """One method's attention rows and their errors against the exact rows.

    Attributes
    ----------
    rows : ndarray, shape (m, H, W), float32
        The method's rows (each sums to 1).
    tv : ndarray, shape (m,)
        Total variation distance from the exact row (0 for ``exact`` itself).
    recall : ndarray, shape (m,)
        Fraction of the exact row's top-k keys among the method's top k.
    kl : ndarray, shape (m,)
        ``KL(exact || method)`` in nats, the method's zeros replaced by
        :data:`nlattn.metrics.KL_FLOOR`.
    seconds : float
        Time :func:`nlattn.attention_rows` took for this method.
    """

    rows: np.ndarray
    tv: np.ndarray
    recall: np.ndarray
    kl: np.ndarray
    seconds: float


def resolve_methods(methods: str | Iterable[str]) -> tuple[str, ...]:
    """The methods to compare, ``exact`` first.

    Parameters
    ----------
    methods : str or iterable of str
        ``"all"`` (every method of :data:`nlattn.METHODS`), one name, or several; duplicates
        are dropped.

    Returns
    -------
    tuple of str
        ``"exact"`` (always included: it is the reference), then the others in the given order
        (registry order for ``"all"``).

    Raises
    ------
    TypeError, ValueError
        When a name is not a string or not a registered method.
    """
    from nlattn.attention import METHODS

    names = list(METHODS) if methods == "all" else [methods] if isinstance(methods, str) else list(
        methods
    )
    if not names:
        raise ValueError("methods must name at least one method, got none")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"methods must be strings, got {type(name).__name__} {name!r}")
        if name not in METHODS:
            raise ValueError(
                f"method must be one of {sorted(METHODS)} (or 'all'), got {name!r}"
            )
    ordered = [REFERENCE] + [name for name in names if name != REFERENCE]
    return tuple(dict.fromkeys(ordered))


def _split_params(methods: Sequence[str], params: dict) -> dict[str, dict]:
    """Each method's share of ``params`` (by the parameters its registry entry lists)."""
    from nlattn.attention import METHODS

    per_method = {name: {} for name in methods}
    for key, value in params.items():
        takers = [name for name in methods if key in METHODS[name].parameters]
        if not takers:
            raise ValueError(
                f"{key} is not a parameter of {' or '.join(methods)} "
                f"(parameters: {_parameter_list(methods)})"
            )
        for name in takers:
            per_method[name][key] = value
    return per_method


def _parameter_list(methods: Sequence[str]) -> str:
    from nlattn.attention import METHODS

    names = sorted({p for name in methods for p in METHODS[name].parameters})
    return ", ".join(names) if names else "none"


def compare_rows(
    queries: np.ndarray,
    keys: np.ndarray,
    positions: np.ndarray,
    methods: str | Iterable[str] = "all",
    *,
    scale: float | None = None,
    seed: int = 0,
    k: int | None = None,
    recall_k: int | None = None,
    n_threads: int | None = None,
    **params,
) -> dict[str, RowComparison]:
    """Attention rows of query pixels by several methods, measured against the exact rows.

    Parameters
    ----------
    queries, keys : ndarray, shape (H, W, d)
        Token grids (see :func:`nlattn.attention_rows`).
    positions : array_like of int, shape (m, 2)
        Query pixels ``(y, x)`` on the token grid.
    methods : str or iterable of str
        ``"all"``, a method name or several (see :func:`resolve_methods`); ``exact`` is always
        computed first, as the reference.
    scale : float, optional
        Score scale (None: ``1/sqrt(d)``).
    seed : int
        Seed of the randomised methods.
    k : int, optional
        Passed as ``k`` to the methods that take it (top-k matches of ``scram``), and the k of
        recall@k unless ``recall_k`` is given (the methods that do not take ``k`` ignore it);
        at most the number of keys ``H W``.
    recall_k : int, optional
        k of recall@k, at most ``H W`` (default ``k``, or :data:`DEFAULT_RECALL_K` when both
        are None).
    n_threads : int, optional
        Numba threads.
    **params
        Method parameters (``window_radius``, ``n_iters``...): each is passed to the methods
        whose registry entry lists it.

    Returns
    -------
    dict of str to RowComparison
        ``exact`` first, then the other methods in order: their rows ``(m, H, W)``, and per
        row the total variation, recall@k and KL against the exact row, and the time taken.

    Raises
    ------
    TypeError, ValueError
        On unknown methods, a parameter that none of the methods takes, ``k`` or ``recall_k``
        above the number of keys, or the errors of :func:`nlattn.attention_rows`.

    Notes
    -----
    Exact rows cost O(m n d); the others as their methods (``nlattn methods``).  The metrics
    cost O(m n log n) (recall sorts each row).
    """
    from nlattn.attention import METHODS, attention_rows

    names = resolve_methods(methods)
    per_method = _split_params(names, params)
    # keys that are not a grid are attention_rows' to report: no bound on k until they are
    n_keys = keys.shape[0] * keys.shape[1] if _is_grid(keys) else None
    if k is not None:
        k = check_int("k", k, minimum=1, maximum=n_keys)
        for name in names:
            if "k" in METHODS[name].parameters:
                per_method[name]["k"] = k
    if recall_k is not None:
        recall_k = check_int("recall_k", recall_k, minimum=1, maximum=n_keys)
    else:
        recall_k = k if k is not None else DEFAULT_RECALL_K
    positions = np.asarray(positions)
    results: dict[str, RowComparison] = {}
    reference = None
    for name in names:
        start = time.perf_counter()
        rows = attention_rows(
            queries, keys, positions, name, scale=scale, seed=seed, n_threads=n_threads,
            **per_method[name],
        )  # fmt: skip
        seconds = time.perf_counter() - start
        if reference is None:
            reference = rows
        tv = row_total_variation(rows, reference)
        recall = recall_at_k(rows, reference, recall_k, per_row=True)
        kl = row_kl(reference, rows, per_row=True)
        results[name] = RowComparison(rows, tv, recall, kl, seconds)
    return results


def _is_grid(array) -> bool:
    return isinstance(array, np.ndarray) and array.ndim == 3


@dataclass(frozen=True)
class MapsResult:
    """Attention maps of query pixels by several methods, ready to draw or save.

    Attributes
    ----------
    image : ndarray
        The image the maps belong to, as given.
    positions : ndarray, shape (m, 2), int64
        Query pixels ``(y, x)`` in image coordinates.
    grid_positions : ndarray, shape (m, 2), int64
        The same queries on the token grid (equal to ``positions`` for NLM tokens).
    methods : tuple of str
        Method names, ``exact`` first.
    rows : ndarray, shape (m, n_methods, Hf, Wf), float32
        Attention rows on the token grid (the image's size for NLM tokens); each sums to 1.
    tv, recall, kl : ndarray, shape (m, n_methods)
        Errors against the exact rows (see :class:`RowComparison`).
    seconds : dict of str to float
        Time each method took to compute its rows.
    k : int
        The k of recall@k.
    scale : float
        The score scale used (scores are ``scale * q . k``).
    description : str
        One line naming the features and scale (the figure's default title).
    h : float or None
        Filter strength of the NLM tokens (None for user features).
    temperature : float
        Temperature dividing the scores (1 when not given).
    patch_radius : int or None
        Patch radius of the NLM tokens (None for user features).
    params : dict
        The method parameters passed (``k``, ``window_radius``...).
    """

    image: np.ndarray
    positions: np.ndarray
    grid_positions: np.ndarray
    methods: tuple[str, ...]
    rows: np.ndarray
    tv: np.ndarray
    recall: np.ndarray
    kl: np.ndarray
    seconds: dict[str, float]
    k: int
    scale: float
    description: str
    h: float | None
    temperature: float
    patch_radius: int | None
    params: dict = field(default_factory=dict)

    def errors(self) -> list[dict]:
        """Errors as plain records: one per query and method (for JSON sidecars).

        Returns
        -------
        list of dict
            ``{"query": {"x", "y"}, "method", "tv", "kl", "recall", "k", "support",
            "max_weight", "seconds"}`` for each query and method, queries outer.
        """
        records = []
        for i, (y, x) in enumerate(self.positions):
            for j, name in enumerate(self.methods):
                row = self.rows[i, j]
                records.append(
                    {
                        "query": {"x": int(x), "y": int(y)},
                        "method": name,
                        "tv": float(self.tv[i, j]),
                        "kl": float(self.kl[i, j]),
                        "recall": _json_float(self.recall[i, j]),
                        "k": self.k,
                        "support": int(np.count_nonzero(row)),
                        "max_weight": float(row.max()),
                        "seconds": self.seconds[name],
                    }
                )
        return records


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _default_h(image: np.ndarray) -> float:
    """The ``h`` :func:`nlattn.nlm_tokens` uses when given none (noise-level preset)."""
    from nlattn.denoise import data_range, estimate_sigma
    from nlattn.denoise.presets import nlm_preset

    sigma = estimate_sigma(image)
    n_channels = 1 if image.ndim == 2 else image.shape[2]
    ratio = nlm_preset(sigma * 255.0 / data_range(image), n_channels).h_over_sigma
    return float(ratio * sigma) if sigma > 0 else data_range(image) / 255.0


def _check_query_positions(positions, height: int, width: int) -> np.ndarray:
    positions = np.asarray(positions)
    if positions.ndim != 2 or positions.shape[1] != 2 or positions.shape[0] == 0:
        raise ValueError(
            f"positions must have shape (m, 2) of (y, x) with m >= 1, got shape {positions.shape}"
        )
    if positions.dtype == np.bool_ or not np.issubdtype(positions.dtype, np.integer):
        raise TypeError(f"positions must hold integers, got dtype {positions.dtype}")
    for y, x in positions:
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(
                f"query (x={x}, y={y}) is outside the image (width {width}, height {height}: "
                f"0 <= x < {width}, 0 <= y < {height})"
            )
    return positions.astype(np.int64)


def attention_maps(
    image: np.ndarray,
    positions: np.ndarray,
    methods: str | Iterable[str] = "all",
    *,
    features: np.ndarray | None = None,
    patch_radius: int | None = None,
    h: float | None = None,
    temperature: float | None = None,
    k: int | None = None,
    seed: int = 0,
    n_threads: int | None = None,
    **params,
) -> MapsResult:
    """Attention rows of query pixels over the whole image, for several methods.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        The image (any integer or float dtype).
    positions : array_like of int, shape (m, 2)
        Query pixels ``(y, x)`` in image coordinates.
    methods : str or iterable of str
        ``"all"``, a method name or several (:func:`resolve_methods`); ``exact`` always comes
        first, as the reference of the errors.
    features : ndarray, shape (Hf, Wf, d), optional
        Token features (e.g. a vision transformer's patch embeddings) used as queries and keys,
        with scale ``1 / sqrt(d) / temperature``.  The grid is taken to cover the whole image:
        query ``(y, x)`` is token ``(y * Hf // H, x * Wf // W)``.  None: the NLM tokens of the
        image (:func:`nlattn.nlm_tokens`), with scale ``1 / temperature``, so that the maps are
        the weights of global non-local means.
    patch_radius : int, optional
        NLM tokens' patch radius (default 2: 5x5 patches); not with ``features``.
    h : float, optional
        NLM tokens' filter strength in the image's units (default: the ``nl_means`` preset for
        the noise level :func:`nlattn.estimate_sigma` finds, which is small on clean images and
        makes very peaked maps); not with ``features``.
    temperature : float, optional
        Divides the scores (> 0; default 1): larger is flatter.
    k : int, optional
        Top-k matches of the methods that take ``k``, and the k of recall@k (default
        :data:`DEFAULT_RECALL_K`); at most the number of keys: the image's ``H W`` pixels, or
        the ``Hf Wf`` tokens of ``features``.
    seed : int
        Seed of the randomised methods.
    n_threads : int, optional
        Numba threads.
    **params
        Other method parameters (``window_radius``, ``n_iters``...), each passed to the methods
        that take it.

    Returns
    -------
    MapsResult
        Rows ``(m, n_methods, Hf, Wf)``, errors against exact, timings and a description.

    Raises
    ------
    TypeError, ValueError
        On an invalid image, features, query (naming it), method or parameter (``k`` above
        the number of keys among them), before any token is built.

    Notes
    -----
    NLM tokens cost O(n f^2); each method's rows cost what its ``attention_rows`` costs (exact:
    O(m n d)); the errors O(m n log n).
    """
    image = check_image("image", image)
    height, width = image.shape[:2]
    positions = _check_query_positions(positions, height, width)
    seed = check_seed(seed)
    if temperature is not None:
        temperature = check_float("temperature", temperature, minimum=0.0, strict_minimum=True)
    temp = 1.0 if temperature is None else temperature
    if features is not None:
        for name, value in (("h", h), ("patch_radius", patch_radius)):
            if value is not None:
                raise ValueError(f"{name} applies to NLM tokens only; leave it None with features")
        features = _check_features(features)
        grid_h, grid_w, dim = features.shape
        if k is not None:
            k = check_int("k", k, minimum=1, maximum=grid_h * grid_w)
        queries = keys = features
        scale = 1.0 / np.sqrt(dim) / temp
        grid_positions = np.stack(
            [(positions[:, 0] * grid_h) // height, (positions[:, 1] * grid_w) // width], axis=1
        )
        description = f"features {grid_h}x{grid_w}x{dim}, scale 1/sqrt({dim})" + (
            f" / temperature {temp:g}" if temperature is not None else ""
        )
    else:
        from nlattn.features import nlm_tokens

        if k is not None:
            k = check_int("k", k, minimum=1, maximum=height * width)
        patch_radius = 2 if patch_radius is None else check_int(
            "patch_radius", patch_radius, minimum=0, maximum=64
        )
        if h is None:
            h = _default_h(image)
        h = check_float("h", h, minimum=0.0, strict_minimum=True)
        queries, keys, _ = nlm_tokens(image, patch_radius, h)
        scale = 1.0 / temp
        grid_positions = positions
        side = 2 * patch_radius + 1
        description = f"NLM tokens: {side}x{side} patches, h = {h:.3g}" + (
            f", temperature {temp:g}" if temperature is not None else ""
        )
    compared = compare_rows(
        queries, keys, grid_positions, methods, scale=scale, seed=seed, k=k,
        n_threads=n_threads, **params,
    )  # fmt: skip
    names = tuple(compared)
    recall_k = k if k is not None else DEFAULT_RECALL_K

    def stack(attribute: str) -> np.ndarray:
        return np.stack([getattr(compared[name], attribute) for name in names], axis=1)

    return MapsResult(
        image=image,
        positions=positions,
        grid_positions=np.asarray(grid_positions, dtype=np.int64),
        methods=names,
        rows=stack("rows").astype(np.float32, copy=False),
        tv=stack("tv"),
        recall=stack("recall"),
        kl=stack("kl"),
        seconds={name: compared[name].seconds for name in names},
        k=recall_k,
        scale=float(scale),
        description=description,
        h=None if features is not None else float(h),
        temperature=temp,
        patch_radius=patch_radius if features is None else None,
        params=dict(params, **({"k": k} if k is not None else {})),
    )


def _check_features(features) -> np.ndarray:
    if not isinstance(features, np.ndarray):
        raise TypeError(f"features must be a numpy array, got {type(features).__name__}")
    if features.ndim != 3 or min(features.shape) == 0:
        raise ValueError(f"features must have shape (H, W, d), got shape {features.shape}")
    if features.dtype == np.bool_ or not (
        np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)
    ):
        raise TypeError(f"features must hold numbers, got dtype {features.dtype}")
    if not np.isfinite(features).all():
        raise ValueError("features contains NaN or infinite values")
    return features
