"""Brute-force NumPy twins of nlattn's kernels, written from the definitions alone.

This module imports nothing from nlattn: it is the independent reference the kernels are
checked against, so it favours obviousness over speed (use small inputs).
"""

from __future__ import annotations

import itertools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def nlm(image, patch_radius, search_radius, h, sigma=0.0, aggregation="patch", extra=None):
    """Windowed NLM by its definition (see nlattn/denoise/nlm.py).

    ``image`` is ``(H, W)`` or ``(H, W, C)``; returns float64 of the same shape.  ``extra``
    (``(H, W, k)`` flat indices, -1 for none) adds neighbours outside the search window.
    """
    u = np.asarray(image, dtype=np.float64)
    grey = u.ndim == 2
    if grey:
        u = u[:, :, None]
    height, width, n_ch = u.shape
    f, s = patch_radius, search_radius
    pad = f + s
    padded = np.pad(u, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")

    def patch(y, x):  # patch centred on image coordinates (y, x), may reach into the padding
        return padded[y + pad - f : y + pad + f + 1, x + pad - f : x + pad + f + 1, :]

    weights = {}  # i -> list of (j, w_ij), self included with the self-weight rule
    for y in range(height):
        for x in range(width):
            p_i = patch(y, x)
            found = []
            for yy in range(max(0, y - s), min(height, y + s + 1)):
                for xx in range(max(0, x - s), min(width, x + s + 1)):
                    if yy == y and xx == x:
                        continue
                    d2 = np.mean((p_i - patch(yy, xx)) ** 2)
                    found.append(((yy, xx), np.exp(-max(d2 - 2 * sigma**2, 0.0) / h**2)))
            for j in [] if extra is None else extra[y, x]:
                yy, xx = divmod(int(j), width)
                if j < 0 or (abs(yy - y) <= s and abs(xx - x) <= s):
                    continue  # empty, or already in the window
                d2 = np.mean((p_i - patch(yy, xx)) ** 2)
                found.append(((yy, xx), np.exp(-max(d2 - 2 * sigma**2, 0.0) / h**2)))
            w_self = max((w for _, w in found), default=0.0)
            if w_self <= 0.0:
                w_self = 1.0
            found.append(((y, x), w_self))
            weights[(y, x)] = found

    out = np.zeros_like(u)
    if aggregation == "pixel":
        for (y, x), found in weights.items():
            total = sum(w for _, w in found)
            out[y, x] = sum(w * u[yy, xx] for (yy, xx), w in found) / total
    else:
        counts = np.zeros((height, width))
        for (y, x), found in weights.items():
            total = sum(w for _, w in found)
            estimate = sum(w * patch(yy, xx) for (yy, xx), w in found) / total
            for dy in range(-f, f + 1):
                for dx in range(-f, f + 1):
                    py, px = y + dy, x + dx
                    if 0 <= py < height and 0 <= px < width:
                        out[py, px] += estimate[dy + f, dx + f]
                        counts[py, px] += 1
        out /= counts[:, :, None]
    return out[:, :, 0] if grey else out


def patches(image, patch_radius, gaussian_sigma=None):
    """Patch vectors by their definition: weighted patch values, weights summing to 1."""
    u = np.asarray(image, dtype=np.float64)
    if u.ndim == 2:
        u = u[:, :, None]
    height, width, n_ch = u.shape
    f = patch_radius
    padded = np.pad(u, ((f, f), (f, f), (0, 0)), mode="reflect")
    offsets = [(a, b) for a in range(-f, f + 1) for b in range(-f, f + 1)]
    if gaussian_sigma is None:
        weights = np.ones(len(offsets))
    else:
        weights = np.array([np.exp(-(a * a + b * b) / (2 * gaussian_sigma**2)) for a, b in offsets])
    weights /= weights.sum() * n_ch
    out = np.zeros((height, width, len(offsets) * n_ch))
    for y in range(height):
        for x in range(width):
            k = 0
            for (a, b), w in zip(offsets, weights, strict=True):
                for c in range(n_ch):
                    out[y, x, k] = np.sqrt(w) * padded[y + f + a, x + f + b, c]
                    k += 1
    return out


def schraudolph_exp(y):
    """scikit-image's ``_fast_exp``: high word of a double = int32(EXP_A * y) + EXP_BC, low 0."""
    high = np.trunc(1512775.3951951856938 * np.asarray(y, np.float64)).astype(np.int64)
    return ((high + 1072632447) << 32).view(np.float64)


def skimage_nlm_fast(image, s, d, h, sigma, expfn=np.exp):
    """scikit-image's fast-mode NLM by its definition.

    ``image`` is (spatial..., C); returns float64 of the same shape.

    Reflect padding by o + d + 1; for every shift t in [-d, d]^D (window never clipped) the
    box (-o, o]^D of squared differences summed over channels, minus (2o)^D C 2 sigma^2,
    clamped at 0 and divided by C h^2 s^D; weight exp(-dist) if dist <= 5 else 0.
    """
    img = np.asarray(image, np.float64)
    ndim, n_ch, shape = img.ndim - 1, img.shape[-1], img.shape[:-1]
    s += 1 - s % 2
    o = s // 2
    pad = o + d + 1
    xp = np.pad(img, [(pad, pad)] * ndim + [(0, 0)], mode="reflect")
    num = np.zeros(img.shape)
    den = np.zeros(shape)
    for t in itertools.product(range(-d, d + 1), repeat=ndim):
        if o == 0:
            box = np.zeros(shape)
        else:
            region = tuple(slice(pad - o + 1, pad + n + o) for n in shape)
            moved = tuple(slice(pad - o + 1 + tk, pad + n + o + tk)
                          for n, tk in zip(shape, t, strict=True))
            sq = ((xp[region] - xp[moved]) ** 2).sum(-1)
            box = sliding_window_view(sq, (2 * o,) * ndim).sum(axis=tuple(range(ndim, 2 * ndim)))
        dist = np.maximum(box - (2 * o) ** ndim * n_ch * 2 * sigma**2, 0) / (n_ch * h * h * s**ndim)
        w = np.where(dist <= 5, expfn(-np.minimum(dist, 5)), 0.0)
        window = tuple(slice(pad + tk, pad + n + tk) for n, tk in zip(shape, t, strict=True))
        num += w[..., None] * xp[window]
        den += w
    return num / den[..., None]


def skimage_nlm_slow(image, s, d, h, sigma, expfn=np.exp):
    """scikit-image's slow-mode NLM by its definition.

    ``image`` is (spatial..., C); returns float64 of the same shape.

    Reflect padding by o; neighbours are real pixels within d on every axis; a dense Gaussian
    G (A = (s - 1) / 4, normalised to sum 1 / (C h^2)) weighs the s^D patch; the partial sum is
    checked against 5 before each patch row after the first (axis 0), as scikit-image exits
    early; weight exp(-max(dist, 0)).  s == 1: scikit-image's 0/0 Gaussian gives equal weights.
    """
    img = np.asarray(image, np.float64)
    ndim, n_ch, shape = img.ndim - 1, img.shape[-1], img.shape[:-1]
    s += 1 - s % 2
    o = s // 2
    xp = np.pad(img, [(o, o)] * ndim + [(0, 0)], mode="reflect")
    if s == 1:
        gauss = np.zeros((1,) * ndim)
    else:
        a = (s - 1) / 4
        r = np.arange(-o, o + 1.0)
        grids = np.meshgrid(*([r] * ndim), indexing="ij")
        gauss = np.exp(-sum(g * g for g in grids) / (2 * a * a))
        gauss /= n_ch * gauss.sum() * h * h
    num = np.zeros(img.shape)
    den = np.zeros(shape)
    for t in itertools.product(range(-d, d + 1), repeat=ndim):
        p = [slice(max(0, -tk), min(n, n - tk)) for n, tk in zip(shape, t, strict=True)]
        sub = tuple(sl.stop - sl.start for sl in p)
        if min(sub) <= 0:
            continue
        part = np.zeros(sub)
        worst = np.full(sub, -np.inf)
        for off in itertools.product(range(s), repeat=ndim):
            if off[0] >= 1 and not any(off[1:]):
                worst = np.maximum(worst, part)
            a = xp[tuple(slice(sl.start + k, sl.stop + k) for sl, k in zip(p, off, strict=True))]
            b = xp[tuple(slice(sl.start + k + tk, sl.stop + k + tk)
                         for sl, k, tk in zip(p, off, t, strict=True))]
            part += gauss[off] * (((a - b) ** 2).sum(-1) - n_ch * 2 * sigma**2)
        w = np.where(worst > 5, 0.0, expfn(-np.maximum(part, 0)))
        num[tuple(p)] += w[..., None] * img[tuple(slice(sl.start + tk, sl.stop + tk)
                                                   for sl, tk in zip(p, t, strict=True))]
        den[tuple(p)] += w
    return num / den[..., None]


# --- attention (design section 1): dense and windowed softmax attention ------------------------


def softmax_attention(queries, keys, values, scale):
    """Dense softmax attention by its definition: ``out_i = sum_j softmax_j(scale q_i.k_j) v_j``.

    ``queries``/``keys`` are ``(H, W, d)``, ``values`` ``(H, W, dv)``; every pixel attends to
    every pixel (itself included).  Returns float64 ``(H, W, dv)``.
    """
    maps = softmax_rows_all(queries, keys, scale)
    out = np.einsum("ihw,hwc->ic", maps, np.asarray(values, np.float64))
    return out.reshape(queries.shape[0], queries.shape[1], values.shape[2])


def softmax_rows_all(queries, keys, scale):
    """The dense attention matrix: one ``(H, W)`` map per query, row-major: ``(n, H, W)``."""
    q = np.asarray(queries, np.float64).reshape(-1, queries.shape[2])
    k = np.asarray(keys, np.float64).reshape(-1, keys.shape[2])
    scores = scale * (q @ k.T)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.reshape(-1, keys.shape[0], keys.shape[1])


def softmax_rows(queries, keys, positions, scale):
    """Dense attention rows of the query pixels ``positions`` ((y, x) pairs): ``(m, H, W)``."""
    width = queries.shape[1]
    every = softmax_rows_all(queries, keys, scale)
    return np.array([every[y * width + x] for y, x in positions]).reshape(-1, *keys.shape[:2])


def windowed_rows(queries, keys, positions, scale, window_radius):
    """Softmax over the keys of the ``(2r+1)^2`` window around each query, clipped to the grid,
    written into a zero ``(H, W)`` map per query: ``(m, H, W)`` float64."""
    height, width = keys.shape[:2]
    r = window_radius
    out = np.zeros((len(positions), height, width))
    for p, (y, x) in enumerate(positions):
        q = np.asarray(queries[y, x], np.float64)
        scores = {}
        for yy in range(max(0, y - r), min(height, y + r + 1)):
            for xx in range(max(0, x - r), min(width, x + r + 1)):
                scores[yy, xx] = scale * float(q @ np.asarray(keys[yy, xx], np.float64))
        top = max(scores.values())
        total = sum(np.exp(s - top) for s in scores.values())
        for (yy, xx), s in scores.items():
            out[p, yy, xx] = np.exp(s - top) / total
    return out


def windowed_attention(queries, keys, values, scale, window_radius):
    """Windowed softmax attention by its definition: each query attends to the keys of the
    ``(2r+1)^2`` window around it, clipped to the grid.  Returns float64 ``(H, W, dv)``."""
    height, width = queries.shape[:2]
    positions = [(y, x) for y in range(height) for x in range(width)]
    maps = windowed_rows(queries, keys, positions, scale, window_radius)
    out = np.einsum("ihw,hwc->ic", maps, np.asarray(values, np.float64))
    return out.reshape(height, width, values.shape[2])


def support_softmax(queries, keys, values, supports, scale):
    """Softmax attention of each query over its own support (a set of flat key indices)."""
    q = np.asarray(queries, np.float64)
    height, width, _ = q.shape
    k = np.asarray(keys, np.float64).reshape(height * width, -1)
    v = np.asarray(values, np.float64).reshape(height * width, -1)
    out = np.zeros((height, width, v.shape[1]))
    for y in range(height):
        for x in range(width):
            ids = np.array(sorted(supports[y][x]))
            s = scale * (k[ids] @ q[y, x])
            w = np.exp(s - s.max())
            out[y, x] = w @ v[ids] / w.sum()
    return out


def scram_supports(matches, height, width, window_radius, local_radius=None):
    """SCRAM's support: the union of the windows around each match (and the query's own)."""
    supports = []
    for y in range(height):
        row = []
        for x in range(width):
            ids = set()
            centres = [(int(j) // width, int(j) % width) for j in matches[y, x] if j >= 0]
            windows = [(cy, cx, window_radius) for cy, cx in centres]
            if local_radius is not None:
                windows.append((y, x, local_radius))
            for cy, cx, r in windows:
                for yy in range(max(0, cy - r), min(height, cy + r + 1)):
                    for xx in range(max(0, cx - r), min(width, cx + r + 1)):
                        ids.add(yy * width + xx)
            row.append(ids)
        supports.append(row)
    return supports


def topk_dot(queries, keys, k, scale=1.0, exclude_self=True):
    """Exact top-k of ``scale * q_i . k_j`` by brute force (the twin of knn_patchmatch).

    ``queries``/``keys`` are ``(H, W, d)``.  Returns ``(indices, scores)`` of shape ``(H, W, k)``:
    int64 flat key indices ``y * W + x`` and float64 scores, best first (equal scores: smaller
    index first), ``-1`` / ``-inf`` in the slots left when fewer than ``k`` keys exist.
    """
    height, width, d = queries.shape
    n = height * width
    q = np.asarray(queries, np.float64).reshape(n, d)
    kk = np.asarray(keys, np.float64).reshape(n, d)
    indices = np.full((n, k), -1, np.int64)
    scores = np.full((n, k), -np.inf)
    for i in range(n):
        s = scale * (kk @ q[i])
        candidates = [j for j in range(n) if not (exclude_self and j == i)]
        candidates.sort(key=lambda j: (-s[j], j))
        best = candidates[:k]
        indices[i, : len(best)] = best
        scores[i, : len(best)] = s[best]
    return indices.reshape(height, width, k), scores.reshape(height, width, k)


def topk_dot_in_groups(queries, keys, groups, k, scale=1.0, exclude_self=True):
    """Exact top-k of ``scale * q_i . k_j`` over the keys ``j`` that share a group with ``i``
    (the twin of a random-projection forest's starting field).

    ``queries``/``keys`` are ``(n, d)``; ``groups`` is a list of lists of pixel indices, each
    pixel in one group per list (several forests' leaves may be concatenated).  Returns sets:
    ``result[i]`` is the set of the best ``min(k, candidates)`` keys (equal scores: smaller
    index first).
    """
    n, d = queries.shape
    q = np.asarray(queries, np.float64)
    kk = np.asarray(keys, np.float64)
    candidates = [set() for _ in range(n)]
    for group in groups:
        for i in group:
            candidates[i].update(j for j in group if not (exclude_self and j == i))
    result = []
    for i in range(n):
        ranked = sorted(candidates[i], key=lambda j: (-scale * float(q[i] @ kk[j]), j))
        result.append(set(ranked[:k]))
    return result


# ---------------------------------------------------- fastmax and efficient attention
# Brute-force NumPy twins of the fastmax and efficient-attention methods (dense n x n products).
#
# Each twin follows the definition of its method (the module docstrings of
# ``nlattn/attention/fast.py`` and ``nlattn/attention/efficient.py``) with every weight formed
# explicitly, in float64.  Imports nothing from nlattn.

#: A fastmax normaliser below ``n * DEN_FLOOR`` means all weights are zero: uniform weights.
DEN_FLOOR = 1e-12


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])


def fastmax_normalize(x: np.ndarray, normalization: str) -> np.ndarray:
    """Normalised tokens (n, d), float64: "unit", "max", "centred" or "none"."""
    x = _flat(x)
    if normalization == "none":
        return x
    if normalization == "centred":
        x = x - x.mean(axis=0)
    norms = np.linalg.norm(x, axis=1)
    if normalization == "unit":
        safe = np.where(norms > 0, norms, 1.0)
        return np.where(norms[:, None] > 0, x / safe[:, None], 0.0)
    largest = norms.max()
    return x / largest if largest > 0 else x


def fastmax_weights(queries, keys, scale, p, normalization) -> np.ndarray:
    """The dense n x n fastmax weights ``f(scale qn_i . kn_j)``."""
    s = scale * fastmax_normalize(queries, normalization) @ fastmax_normalize(
        keys, normalization).T
    w = 1.0 + s
    if p == 2:
        w += 0.5 * s * s
    return w


def fastmax_attention(queries, keys, values, scale, p=2, normalization="unit") -> np.ndarray:
    """Dense fastmax attention ``sum_j f(s_ij) v_j / sum_j f(s_ij)``, (H, W, dv) float64; a query
    whose weights are all (numerically) zero gets the uniform average."""
    w = fastmax_weights(queries, keys, scale, p, normalization)
    v = _flat(values)
    n = w.shape[1]
    den = w.sum(axis=1)
    zero = den <= n * DEN_FLOOR
    w[zero] = 1.0
    out = (w @ v) / w.sum(axis=1, keepdims=True)
    return out.reshape(values.shape[:-1] + (v.shape[1],))


def fastmax_rows(queries, keys, positions, scale, p=2, normalization="unit") -> np.ndarray:
    """Dense fastmax rows ``f(s_ij) / sum_j f(s_ij)`` (weights clamped at 0), (m, H, W)."""
    height, width = queries.shape[:2]
    w = np.maximum(fastmax_weights(queries, keys, scale, p, normalization), 0.0)
    index = [y * width + x for y, x in positions]
    out = w[index]
    n = out.shape[1]
    for r in range(out.shape[0]):
        total = out[r].sum()
        out[r] = out[r] / total if total > n * DEN_FLOOR else 1.0 / n
    return out.reshape(-1, height, width)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def efficient_head_maps(queries, keys, scale, variant="softmax", heads=1) -> list[np.ndarray]:
    """Each head's dense n x n weights: ``rho_q(Q_h) rho_k(K_h)^T`` (softmax variant: softmax
    over each query's channels of the head, softmax over positions of each key channel) or
    ``scale Q_h K_h^T / n`` (scaling variant)."""
    q = _flat(queries)
    k = _flat(keys)
    n, d = q.shape
    size = d // heads
    maps = []
    for h in range(heads):
        qh = q[:, h * size:(h + 1) * size]
        kh = k[:, h * size:(h + 1) * size]
        if variant == "softmax":
            maps.append(_softmax(scale * qh, axis=1) @ _softmax(scale * kh, axis=0).T)
        else:
            maps.append(scale * qh @ kh.T / n)
    return maps


def efficient_attention(queries, keys, values, scale, variant="softmax", heads=1) -> np.ndarray:
    """Dense efficient attention, (H, W, dv) float64: head h's map times its own value channels
    when heads divides dv, else every head over all value channels, outputs averaged."""
    v = _flat(values)
    dv = v.shape[1]
    maps = efficient_head_maps(queries, keys, scale, variant, heads)
    if dv % heads == 0:
        size = dv // heads
        out = np.concatenate([a @ v[:, h * size:(h + 1) * size] for h, a in enumerate(maps)],
                             axis=1)
    else:
        out = sum(a @ v for a in maps) / heads
    return out.reshape(values.shape[:-1] + (dv,))


def efficient_rows(queries, keys, positions, scale, heads=1) -> np.ndarray:
    """Dense efficient-attention maps (softmax variant) averaged over heads, (m, H, W)."""
    height, width = queries.shape[:2]
    mean_map = sum(efficient_head_maps(queries, keys, scale, "softmax", heads)) / heads
    index = [y * width + x for y, x in positions]
    return mean_map[index].reshape(-1, height, width)


# --------------------------------------- Performer, LSH and Scatterbrain
# Brute-force NumPy twins of performer, lsh and scatterbrain attention (imports nothing from
# nlattn).
#
# Each twin implements a method's definition directly (dense matrices, Python loops), given the
# same random draws as the method (the projections, the bucket assignment, the PatchMatch matches),
# which the tests take from the method's own helpers.

def dense_scores(queries, keys, scale):
    """``scale * q_i . k_j`` for every flat pair: ``(n, n)`` float64."""
    q = np.asarray(queries, np.float64).reshape(-1, queries.shape[-1])
    k = np.asarray(keys, np.float64).reshape(-1, keys.shape[-1])
    return scale * (q @ k.T)


def _sqrtm(matrix):
    e, v = np.linalg.eigh((matrix + matrix.T) / 2)
    return (v * np.sqrt(np.maximum(e, 0.0))) @ v.T


def kept_basis(x, y, drop_relative=1e-7):
    """Orthonormal basis (columns) of the directions of the token pairs ``x``, ``y`` (n, d)
    holding at least ``drop_relative`` of the largest energy of ``E xx^T + E yy^T``."""
    e, v = np.linalg.eigh((x.T @ x + y.T @ y) / len(x))
    return v[:, e > drop_relative * max(e.max(), 1e-300)]


def _range_basis(moments, rank_relative=1e-10):
    e, v = np.linalg.eigh((moments + moments.T) / 2)
    if not e.size or e.max() <= 0:
        return v[:, :0]
    return v[:, e > rank_relative * e.max()]


def _ridged_sqrtm(matrix, ridge_relative, power=0.5):
    e, v = np.linalg.eigh((matrix + matrix.T) / 2)
    e = np.maximum(e, ridge_relative * max(e.max(), 1e-300))
    return (v * e**power) @ v.T


def balanced_tokens(queries, keys, scale, drop_relative=1e-7, rank_relative=1e-10,
                    ridge_relative=1e-6):
    """The exact rewriting of the scores by centring and balancing.

    Returns ``(x, y, u, beta)`` with ``scale q_i.k_j = x_i.y_j + u_j + beta_i``: on the
    orthonormal basis ``B`` of the range of the keys' second moment inside the range of the
    queries' (eigenvalues above ``rank_relative`` of the largest), ``x = sqrt(scale) (q - mean
    q) B A``, ``y = sqrt(scale) (k - mean k) B A^-1``, ``A^2`` the geometric mean of ``C_x^-1``
    and ``C_y`` (second moments on ``B``, each floored at ``ridge_relative`` of its largest
    eigenvalue), directions with energy below ``drop_relative`` of the largest projected out;
    ``u_j = scale mean(q).k_j`` and ``beta_i = scale (q_i - mean q).mean(k)``.  ``x`` and ``y``
    are returned in the original ``d`` coordinates (times ``B^T``).
    """
    d = queries.shape[-1]
    q = np.asarray(queries, np.float64).reshape(-1, d)
    k = np.asarray(keys, np.float64).reshape(-1, d)
    qm, km = q.mean(axis=0), k.mean(axis=0)
    qc, kc = q - qm, k - km
    in_q = _range_basis(qc.T @ qc / len(q), rank_relative)
    kq = kc @ in_q
    basis = in_q @ _range_basis(kq.T @ kq / len(k), rank_relative)
    qb, kb = qc @ basis, kc @ basis
    cx, cy = qb.T @ qb / len(q), kb.T @ kb / len(k)
    root = _ridged_sqrtm(cx, ridge_relative)
    inv_root = _ridged_sqrtm(cx, ridge_relative, -0.5)
    middle = _sqrtm(root @ _ridged_sqrtm(cy, ridge_relative, 1.0) @ root)
    a = _sqrtm(inv_root @ middle @ inv_root)
    a_inv = np.linalg.inv(a) if a.size else a
    x, y = qb @ a, kb @ a_inv
    keep = kept_basis(x, y, drop_relative)
    x, y = x @ keep @ keep.T @ basis.T, y @ keep @ keep.T @ basis.T
    u = scale * (k @ qm)
    beta = scale * (q @ km - qm @ km)
    return np.sqrt(scale) * x, np.sqrt(scale) * y, u, beta


def favor_estimates(queries, keys, scale, projections, n_features):
    """The optimal positive random features' estimate of ``exp(scale q_i.k_j)`` for every
    flat pair.

    ``projections`` ``(d, P)``, ``P = ceil(n_features / 2)``, standard Gaussian columns:
    feature ``f`` is ``(1 - 4A)^(r/4) exp(sqrt(1 - 4A) s_f w.x + A |P w|^2 - |x|^2 / 2) /
    sqrt(m)`` with ``w`` the column ``f // 2`` and ``s_f`` its sign, ``+`` for even ``f`` and
    ``-`` for odd ``f``, on the balanced tokens of :func:`balanced_tokens` (``P`` the projector
    onto the ``r`` directions they span), times the exact factors ``exp(u_j + beta_i)``.  ``A``
    minimises the variance for the tokens' mean ``|x + y|^2 / r = rho``: the root below 1/8 of
    ``16 A^2 + (4 rho - 2) A - rho = 0`` (``A = 0`` is Performer's FAVOR+).  Returns ``(n, n)``
    float64.
    """
    x, y, u, beta = balanced_tokens(queries, keys, scale)
    keep = kept_basis(x, y)
    rank = keep.shape[1]
    rho = ((x**2).sum(axis=1).mean() + (y**2).sum(axis=1).mean()) / rank if rank else 0.0
    a = np.roots([16.0, 4.0 * rho - 2.0, -rho]).real.min() if rho > 0 else 0.0
    signs = np.where(np.arange(n_features) % 2 == 0, 1.0, -1.0)
    w = projections[:, np.arange(n_features) // 2] * signs  # (d, m)
    offset = a * ((keep.T @ w) ** 2).sum(axis=0) + rank / 4 * np.log(1 - 4 * a)  # (m,)
    log_q = np.sqrt(1 - 4 * a) * (x @ w) + offset - 0.5 * (x**2).sum(axis=1, keepdims=True)
    log_k = np.sqrt(1 - 4 * a) * (y @ w) + offset - 0.5 * (y**2).sum(axis=1, keepdims=True)
    # exp(log_q) exp(log_k) summed over features, in log space for safety
    total = log_q[:, None, :] + log_k[None, :, :]
    top = total.max(axis=2, keepdims=True)
    est = np.exp(top[..., 0]) * np.exp(total - top).sum(axis=2) / n_features
    return est * np.exp(u[None, :] + beta[:, None])


def weighted_attention(weights, values):
    """``out_i = sum_j w_ij v_j / sum_j w_ij`` for a dense ``(n, n)`` weight matrix."""
    v = np.asarray(values, np.float64).reshape(weights.shape[1], -1)
    return (weights @ v) / weights.sum(axis=1, keepdims=True)


def weighted_rows(weights, flat_positions):
    """Rows ``w_ij / sum_j w_ij`` of the flat queries ``flat_positions``: ``(m, n)``."""
    rows = weights[list(flat_positions)]
    return rows / rows.sum(axis=1, keepdims=True)


def window_supports(height, width, radius):
    """The ``(2r+1)^2`` window around every pixel, clipped: a list of sets of flat indices."""
    supports = []
    for y in range(height):
        for x in range(width):
            supports.append({yy * width + xx
                             for yy in range(max(0, y - radius), min(height, y + radius + 1))
                             for xx in range(max(0, x - radius), min(width, x + radius + 1))})
    return supports


def match_supports(matches, height, width, radius):
    """SCRAM's support: the union of the windows around each valid match (``matches`` (H, W, k)
    flat indices, -1 empty), as a flat list of sets."""
    supports = []
    for y in range(height):
        for x in range(width):
            ids = set()
            for j in matches[y, x]:
                if j < 0:
                    continue
                cy, cx = int(j) // width, int(j) % width
                for yy in range(max(0, cy - radius), min(height, cy + radius + 1)):
                    for xx in range(max(0, cx - radius), min(width, cx + radius + 1)):
                        ids.add(yy * width + xx)
            supports.append(ids)
    return supports


def lsh_supports(query_bucket, key_bucket):
    """Query ``i`` attends to every key sharing its bucket in at least one round."""
    n = query_bucket.shape[1]
    return [set(np.flatnonzero((key_bucket == query_bucket[:, i : i + 1]).any(axis=0)).tolist())
            for i in range(n)]


def support_weights(queries, keys, scale, supports):
    """Exact softmax weights restricted to each support: ``(n, n)``, each row shifted by its
    maximum on the support, zero elsewhere."""
    s = dense_scores(queries, keys, scale)
    w = np.zeros_like(s)
    for i, ids in enumerate(supports):
        ids = sorted(ids)
        w[i, ids] = np.exp(s[i, ids] - s[i, ids].max())
    return w


def scatterbrain_weights(queries, keys, scale, supports, estimates):
    """Scatterbrain's unnormalised weights: ``exp(s_ij)`` on the support, the features' estimate
    ``estimates[i, j]`` elsewhere (each row divided by ``exp`` of its largest score, which
    cancels in the normalisation)."""
    s = dense_scores(queries, keys, scale)
    top = s.max(axis=1, keepdims=True)
    w = estimates * np.exp(-top)
    for i, ids in enumerate(supports):
        ids = sorted(ids)
        w[i, ids] = np.exp(s[i, ids] - top[i, 0])
    return w


# -------------------------------------------------------- two-stage nlm2
# Brute-force NumPy twins of the two-stage denoiser (``method="nlm2"``) and of the noise
# estimator, written from their definitions (the module notes of nlattn/denoise/nlm2.py and
# nlattn/denoise/noise.py), one reference block and one patch at a time, in float64.
#
# Imports nothing from nlattn.

def dct_matrix(n):
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def haar_matrix(n):
    """Orthonormal Haar matrix (n a power of two) by its rows: the constant, then the
    differences of the two halves of each dyadic interval, coarse to fine."""
    rows = [np.full(n, 1.0 / np.sqrt(n))]
    size = n
    while size > 1:
        for start in range(0, n, size):
            row = np.zeros(n)
            row[start : start + size // 2] = 1.0
            row[start + size // 2 : start + size] = -1.0
            rows.append(row / np.sqrt(size))
        size //= 2
    # coarse rows first: the Haar order groups rows by scale, largest first
    return np.array(rows)


def zigzag_order(block):
    """Coefficient indices ``a * block + b`` sorted by ``(a + b, a)``."""
    return sorted(range(block * block), key=lambda e: (e // block + e % block, e // block))


def positions(length, block, step):
    out = list(range(0, length - block + 1, step))
    if out[-1] != length - block:
        out.append(length - block)
    return out


def collaborative(noisy, pilot, sigmas, block, step, search_radius, k, n_coefs, tau, beta):
    """Stage 2 on planar ``(C, H, W)`` arrays by its definition; returns float64 ``(C, H, W)``."""
    u = np.asarray(noisy, np.float64)
    g = np.asarray(pilot, np.float64)
    n_ch, height, width = u.shape
    p = min(block, height, width)
    step = min(step, p)
    n_coefs = min(n_coefs, p * p)
    d = dct_matrix(p)
    order = zigzag_order(p)
    window = np.kaiser(p, beta) if p > 1 else np.ones(1)
    kaiser = np.outer(window, window)
    sigma2 = np.asarray(sigmas, np.float64) ** 2

    def dct2(x):
        return d @ x @ d.T

    def low(y, x):
        return dct2(g[0, y : y + p, x : x + p]).ravel()[order][:n_coefs]

    num = np.zeros(u.shape)
    den = np.zeros(u.shape)
    for y in positions(height, p, step):
        for x in positions(width, p, step):
            ref = low(y, x)
            candidates = []
            for yy in range(max(0, y - search_radius), min(height - p, y + search_radius) + 1):
                for xx in range(max(0, x - search_radius),
                                min(width - p, x + search_radius) + 1):
                    if (yy, xx) == (y, x):
                        continue
                    dist = float(np.sum((ref - low(yy, xx)) ** 2))
                    if dist <= tau * p * p:
                        candidates.append((dist, len(candidates), yy, xx))
            candidates.sort()  # by distance, then raster order
            group = [(y, x)] + [(yy, xx) for _, _, yy, xx in candidates[: k - 1]]
            m = 1
            while 2 * m <= len(group):
                m *= 2
            group = group[:m]
            h = haar_matrix(m)
            for c in range(n_ch):
                zn = np.tensordot(h, np.array([dct2(u[c, a : a + p, b : b + p])
                                               for a, b in group]), axes=1)
                zp = np.tensordot(h, np.array([dct2(g[c, a : a + p, b : b + p])
                                               for a, b in group]), axes=1)
                gain = zp**2 / (zp**2 + sigma2[c])
                gain[0, 0, 0] = 1.0  # the group's mean is kept
                weight = 1.0 / (sigma2[c] * np.sum(gain**2))
                est = np.tensordot(h.T, zn * gain, axes=1)
                for (a, b), e in zip(group, est, strict=True):
                    num[c, a : a + p, b : b + p] += weight * kaiser * (d.T @ e @ d)
                    den[c, a : a + p, b : b + p] += weight * kaiser
    return num / den


def channel_transform(n):
    return dct_matrix(n)


def nlm2(image, sigma, pilot_patch_radius, pilot_search_radius, pilot_h, block, step,
         search_radius, k, n_coefs, tau, beta):
    """Both stages on an ``(H, W)`` or ``(H, W, C)`` image (sigma the same in every channel);
    float64 of the image's shape."""
    u = np.asarray(image, np.float64)
    planar = u[None] if u.ndim == 2 else np.moveaxis(u, -1, 0)
    n_ch = planar.shape[0]
    t = channel_transform(n_ch)
    work = np.tensordot(t, planar, axes=1)
    pilot = nlm(np.moveaxis(work, 0, -1), pilot_patch_radius, pilot_search_radius, pilot_h,
                      sigma, "patch")
    pilot = np.moveaxis(pilot, -1, 0)
    out = collaborative(work, pilot, np.full(n_ch, sigma), block, step, search_radius, k, n_coefs,
                        tau, beta)
    out = np.tensordot(t.T, out, axes=1)
    return out[0] if u.ndim == 2 else np.moveaxis(out, 0, -1)


# ------------------------------------------------------------------------------------------
# noise estimation


def kept_sums(channel, patch, stride, threshold, lo, hi, use_clear):
    """Scatter matrix, sum and number of the grid patches kept (gradient energy below
    ``threshold`` but not 0, and no pixel <= lo or >= hi when ``use_clear``), patch by patch."""
    c = np.asarray(channel, np.float64)
    offset = c.mean()
    n = patch * patch
    scatter = np.zeros((n, n))
    total = np.zeros(n)
    count = 0
    for y in range(0, c.shape[0] - patch + 1, stride):
        for x in range(0, c.shape[1] - patch + 1, stride):
            block = c[y : y + patch, x : x + patch]
            energy = np.sum(np.diff(block, axis=1) ** 2) + np.sum(np.diff(block, axis=0) ** 2)
            clear = bool(np.all((block > lo) & (block < hi)))
            if energy >= threshold or energy == 0.0 or (use_clear and not clear):
                continue
            v = block.ravel() - offset
            scatter += np.outer(v, v)
            total += v
            count += 1
    return scatter, total, count


def noise_variance(scatter, total, count):
    mean = total / count
    eig = np.sort(np.linalg.eigvalsh(scatter / count - np.outer(mean, mean)))[::-1]
    eig = np.maximum(eig, 0.0)
    if eig[0] <= 0.0:
        return 0.0
    for i in range(eig.size):
        tail = eig[i:]
        tau = tail.mean()
        if np.sum(tail > tau) >= np.sum(tail < tau):
            return tau
    return eig[-1]


def immerkaer(channel):
    c = np.asarray(channel, np.float64)
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
    r = [np.sum(c[y : y + 3, x : x + 3] * mask) for y in range(c.shape[0] - 2)
         for x in range(c.shape[1] - 2)]
    return float(np.median(np.abs(r)) / 0.6744897501960817 / 6.0)


def channel_sigma(channel, patch, stride, quantile, bias, min_patches, rounds=10, tol=1e-3):
    """The estimator of nlattn/denoise/noise.py, by its definition."""
    c = np.asarray(channel, np.float32).astype(np.float64)
    n_grid = ((c.shape[0] - patch) // stride + 1) * ((c.shape[1] - patch) // stride + 1)
    if c.shape[0] < patch or c.shape[1] < patch or n_grid < min_patches:
        return immerkaer(channel)
    lo, hi = c.min(), c.max()
    if lo == hi:
        return 0.0
    use_clear = True
    sums = kept_sums(c, patch, stride, np.inf, lo, hi, True)
    if sums[2] < min_patches:
        use_clear = False
        sums = kept_sums(c, patch, stride, np.inf, lo, hi, False)
    variance = noise_variance(*sums) if sums[2] >= min_patches else 0.0
    for _ in range(rounds):
        if variance <= 0.0:
            return 0.0
        sums = kept_sums(c, patch, stride, quantile * variance, lo, hi, use_clear)
        if sums[2] < min_patches:
            return immerkaer(channel)
        new = noise_variance(*sums) / bias
        done = new <= 0.0 or abs(np.sqrt(new / variance) - 1.0) < tol
        variance = new
        if done:
            break
    return float(np.sqrt(max(variance, 0.0)))
