"""Quality metrics: images against a clean reference, attention against exact attention.

Arrays in, numbers out.  Image metrics (:func:`psnr`, :func:`ssim`) are thin wrappers over
``skimage.metrics`` that insist on an explicit ``data_range`` (scikit-image guesses it from the
dtype, which is wrong for float images in [0, 255]).  Attention metrics compare an approximate
operator with the exact one: :func:`relative_error` of the outputs, and per
attention row (one query's distribution over all keys) :func:`row_total_variation`,
:func:`row_kl` and :func:`recall_at_k`.

Rows are arrays whose first axis indexes the rows and whose other axes (``(H, W)`` for
:func:`nlattn.attention_rows`, or one axis of ``n`` keys) are flattened into one distribution.
Every computation is done in float64.  This module imports neither Numba nor the rest of nlattn.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "psnr",
    "recall_at_k",
    "relative_error",
    "row_kl",
    "row_total_variation",
    "ssim",
]

#: Default floor of :func:`row_kl`: zero approximate probabilities count as this value.
KL_FLOOR = 1e-10


def _check_pair(name_a: str, a, name_b: str, b) -> tuple[np.ndarray, np.ndarray]:
    """Two real, finite, non-empty arrays of the same shape, as float64."""
    arrays = []
    for name, value in ((name_a, a), (name_b, b)):
        value = np.asarray(value)
        if value.dtype == np.bool_ or not (
            np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)
        ):
            raise TypeError(f"{name} must hold integers or floats, got dtype {value.dtype}")
        if value.size == 0:
            raise ValueError(f"{name} must not be empty, got shape {value.shape}")
        value = value.astype(np.float64)
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        arrays.append(value)
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {arrays[0].shape} and "
            f"{arrays[1].shape}"
        )
    return arrays[0], arrays[1]


def _check_data_range(data_range) -> float:
    from nlattn._validate import check_float

    return check_float("data_range", data_range, minimum=0.0, strict_minimum=True)


def psnr(estimate: np.ndarray, reference: np.ndarray, *, data_range: float) -> float:
    """Peak signal-to-noise ratio of an image against a clean reference, in dB.

    Parameters
    ----------
    estimate, reference : ndarray
        Images of the same shape (any real dtype; compared in float64).
    data_range : float
        The reference's nominal range (255 for 8-bit images in grey levels, 1 for [0, 1]).
        Required: it is never guessed from the dtype.

    Returns
    -------
    float
        ``10 log10(data_range**2 / MSE)``; ``inf`` when the images are equal.

    Raises
    ------
    TypeError, ValueError
        On non-numeric, empty, non-finite or differently shaped arrays, or ``data_range <= 0``.

    Notes
    -----
    O(n).  Same value as ``skimage.metrics.peak_signal_noise_ratio``.
    """
    estimate, reference = _check_pair("estimate", estimate, "reference", reference)
    data_range = _check_data_range(data_range)
    if np.array_equal(estimate, reference):
        return float("inf")
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(reference, estimate, data_range=data_range))


def ssim(
    estimate: np.ndarray,
    reference: np.ndarray,
    *,
    data_range: float,
    channel_axis: int | None = None,
) -> float:
    """Structural similarity of an image and a clean reference (scikit-image's defaults).

    Parameters
    ----------
    estimate, reference : ndarray
        Images of the same shape, ``(H, W)`` or ``(H, W, C)``.
    data_range : float
        The reference's nominal range (see :func:`psnr`).
    channel_axis : int, optional
        Axis of the colour channels; None means -1 for 3-D arrays, none for 2-D ones.

    Returns
    -------
    float
        Mean SSIM (7x7 uniform window, ``K1 = 0.01``, ``K2 = 0.03``), averaged over channels.

    Raises
    ------
    TypeError, ValueError
        As :func:`psnr`; also when a side is shorter than the 7-pixel window.

    Notes
    -----
    O(n).  Wraps ``skimage.metrics.structural_similarity``.
    """
    estimate, reference = _check_pair("estimate", estimate, "reference", reference)
    data_range = _check_data_range(data_range)
    if channel_axis is None and reference.ndim == 3:
        channel_axis = -1
    spatial = [s for axis, s in enumerate(reference.shape)
               if channel_axis is None or axis != channel_axis % reference.ndim]
    if min(spatial) < 7:
        raise ValueError(f"ssim needs images at least 7 pixels wide, got shape {reference.shape}")
    from skimage.metrics import structural_similarity

    return float(
        structural_similarity(
            reference, estimate, data_range=data_range, channel_axis=channel_axis
        )
    )


def relative_error(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Relative error ``||estimate - reference|| / ||reference||`` (Frobenius norms).

    Parameters
    ----------
    estimate, reference : ndarray
        Arrays of the same shape, e.g. the outputs ``(H, W, dv)`` of an approximate and of the
        exact attention.

    Returns
    -------
    float
        The relative error; 0 when both are zero, ``inf`` when only the reference is.

    Raises
    ------
    TypeError, ValueError
        On non-numeric, empty, non-finite or differently shaped arrays.

    Notes
    -----
    O(n), float64.
    """
    estimate, reference = _check_pair("estimate", estimate, "reference", reference)
    diff = float(np.linalg.norm((estimate - reference).ravel()))
    norm = float(np.linalg.norm(reference.ravel()))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / norm


def _as_rows(name_a: str, a, name_b: str, b) -> tuple[np.ndarray, np.ndarray, bool]:
    """Two row arrays as float64 ``(m, n)``; True when they were single 1-D rows."""
    a, b = _check_pair(name_a, a, name_b, b)
    if a.ndim == 0:
        raise ValueError(f"{name_a} must have at least one axis, got a scalar")
    if a.ndim == 1:
        return a[None, :], b[None, :], True
    return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), False


def row_total_variation(rows: np.ndarray, reference_rows: np.ndarray) -> np.ndarray | float:
    """Total variation distance of each attention row from its reference row.

    Parameters
    ----------
    rows, reference_rows : ndarray, shape (m, ...) or (n,)
        Attention rows (non-negative, each summing to 1), the first axis indexing the rows and
        the others flattened (``(m, H, W)`` from :func:`nlattn.attention_rows`); a 1-D array is
        one row.  Rows are not renormalised.

    Returns
    -------
    ndarray of shape (m,), or float for 1-D input
        ``0.5 * sum_j |p_j - q_j|`` per row: 0 for equal distributions, 1 for disjoint ones.

    Raises
    ------
    TypeError, ValueError
        On non-numeric, empty, non-finite or differently shaped arrays.

    Notes
    -----
    O(m n), float64.
    """
    p, q, single = _as_rows("rows", rows, "reference_rows", reference_rows)
    tv = 0.5 * np.abs(p - q).sum(axis=1)
    return float(tv[0]) if single else tv


def row_kl(
    reference_rows: np.ndarray,
    rows: np.ndarray,
    eps: float = KL_FLOOR,
    *,
    per_row: bool = False,
) -> np.ndarray | float:
    """Kullback-Leibler divergence ``KL(p_reference || p_approx)`` of attention rows.

    Parameters
    ----------
    reference_rows : ndarray, shape (m, ...) or (n,)
        Exact attention rows ``p`` (non-negative, each summing to 1).
    rows : ndarray, same shape
        Approximate rows ``q``.
    eps : float
        Floor of ``q``: sparse approximations give exactly 0 to keys outside their support,
        where the divergence would be infinite, so the zeros of ``q`` are replaced by ``eps``
        (non-zero values are kept, however small, so that ``KL(p || p) = 0``).  A key the
        approximation misses then costs ``p_j log(p_j / eps)`` (at most ``p_j log(1 / eps)``,
        23 nats per unit of missed mass for the default 1e-10), and the result measures how
        much mass is missed as well as how the rest is distributed.  ``0 < eps < 1``.
    per_row : bool
        Return every row's divergence instead of their mean.

    Returns
    -------
    float, or ndarray of shape (m,) with ``per_row``
        The mean over rows of ``sum_j p_j log(p_j / q'_j)`` in nats, ``q'_j = q_j`` or ``eps``
        where ``q_j = 0`` (terms with ``p_j = 0`` are 0).  Neither ``p`` nor ``q`` is
        renormalised.

    Raises
    ------
    TypeError, ValueError
        On non-numeric, empty, non-finite or differently shaped arrays, negative
        probabilities, or ``eps`` outside (0, 1).

    Notes
    -----
    O(m n), float64.
    """
    from nlattn._validate import check_float

    p, q, _ = _as_rows("reference_rows", reference_rows, "rows", rows)
    eps = check_float("eps", eps, minimum=0.0, strict_minimum=True, maximum=1.0)
    if eps >= 1.0:
        raise ValueError(f"eps must be < 1, got {eps}")
    if (p < 0).any() or (q < 0).any():
        raise ValueError("attention rows must be non-negative")
    support = p > 0
    ratio = np.ones_like(p)
    floored = np.where(q > 0, q, eps)
    ratio[support] = p[support] / floored[support]
    kl = (p * np.log(ratio)).sum(axis=1)
    return kl if per_row else float(kl.mean())


def _top_keys(name: str, array: np.ndarray, k: int) -> list[np.ndarray]:
    """Each row's top-k key indices (a set as a sorted array) from rows or from index lists."""
    if np.issubdtype(array.dtype, np.integer):
        if array.ndim != 2:
            raise ValueError(
                f"{name} as key indices must have shape (m, k), got shape {array.shape}"
            )
        # index lists, best first, -1 for empty slots (KnnField.indices reshaped to (n, k))
        return [np.unique(row[:k][row[:k] >= 0]) for row in array]
    return _top_of_rows(_float_rows(name, array), k)


def _top_of_rows(flat: np.ndarray, k: int) -> list[np.ndarray]:
    """Each float64 row's top-k key indices, a sorted array (zero weights never count)."""
    tops = []
    for row in flat:
        order = np.argsort(-row, kind="stable")[:k]  # ties: the smaller index first
        tops.append(np.sort(order[row[order] > 0]))
    return tops


def _float_rows(name: str, array: np.ndarray) -> np.ndarray:
    """``array`` (m, ...) as finite float64 rows (m, n), the other axes flattened."""
    if array.ndim < 2:
        raise ValueError(f"{name} as rows must have shape (m, ...), got shape {array.shape}")
    flat = array.reshape(array.shape[0], -1).astype(np.float64)
    if not np.isfinite(flat).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return flat


def recall_at_k(
    rows_or_indices: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    per_row: bool = False,
) -> np.ndarray | float:
    """Fraction of the reference's top-k keys that are among the approximation's top k.

    Parameters
    ----------
    rows_or_indices : ndarray
        The approximation, either attention rows (float, shape ``(m, ...)``, the first axis
        indexing the rows, the others flattened) whose k largest entries are its top keys, or
        integer key indices ``(m, k')`` sorted best first with -1 for empty slots (e.g.
        ``KnnField.indices.reshape(-1, k')``), whose first k columns are taken.
    reference : ndarray
        The exact rows or exact top-key indices, in either form, with the same ``m``.
    k : int
        Number of top keys compared (>= 1).
    per_row : bool
        Return each row's recall instead of the mean.

    Returns
    -------
    float, or ndarray of shape (m,) with ``per_row``
        ``|A ∩ R| / |R|`` per row, ``R`` the reference's top-k keys and ``A`` the
        approximation's, averaged over rows.  Keys of zero weight are never top keys (a sparse
        row with fewer than k non-zeros offers only those), so ``|R| < k`` when the reference
        has fewer than k non-zero entries; rows whose reference has no key get NaN and are
        left out of the mean.

        Ties: when the reference is given as rows, a found key counts when its reference
        weight reaches the k-th largest one, so any k of many keys tied at the top (a flat sky,
        duplicated tokens) are a perfect answer; hits are ``|{a in A : r_a >= r_(k)}|``, at
        most ``|R|``.  The approximation's own ties at its k-th place, and the reference's
        when it is given as index lists (it has no weights to compare), are broken by the
        smaller key index, the order of :func:`nlattn.knn_patchmatch`.

    Raises
    ------
    TypeError, ValueError
        On non-numeric arrays, mismatched numbers of rows, ``k < 1``, or when no reference row
        has any key.

    Notes
    -----
    O(m n log n) for rows (a stable sort per row), O(m k log k) for index lists.
    """
    from nlattn._validate import check_int

    k = check_int("k", k, minimum=1)
    arrays = []
    for name, value in (("rows_or_indices", rows_or_indices), ("reference", reference)):
        value = np.asarray(value)
        if value.dtype == np.bool_ or not (
            np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)
        ):
            raise TypeError(f"{name} must hold integers or floats, got dtype {value.dtype}")
        if value.size == 0:
            raise ValueError(f"{name} must not be empty, got shape {value.shape}")
        arrays.append(value)
    approx, ref = arrays
    if approx.shape[0] != ref.shape[0]:
        raise ValueError(
            f"rows_or_indices and reference must have the same number of rows, got "
            f"{approx.shape[0]} and {ref.shape[0]}"
        )
    found = _top_keys("rows_or_indices", approx, k)
    if np.issubdtype(ref.dtype, np.integer):
        weights = None
        wanted = _top_keys("reference", ref, k)
    else:
        weights = _float_rows("reference", ref)
        wanted = _top_of_rows(weights, k)
    recall = np.full(len(wanted), np.nan)
    for i, (a, r) in enumerate(zip(found, wanted, strict=True)):
        if not r.size:
            continue
        if weights is None:
            hits = np.intersect1d(a, r, assume_unique=True).size
        else:
            a = a[a < weights.shape[1]]
            hits = min(r.size, int((weights[i, a] >= weights[i, r].min()).sum()))
        recall[i] = hits / r.size
    if per_row:
        return recall
    if np.isnan(recall).all():
        raise ValueError("reference has no key with a non-zero weight in any row")
    return float(np.nanmean(recall))
