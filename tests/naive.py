"""Brute-force NumPy twins of nlattn's kernels, written from the definitions alone.

This module imports nothing from nlattn: it is the independent reference the kernels are
checked against, so it favours obviousness over speed (use small inputs).
"""

from __future__ import annotations

import numpy as np


def nlm(image, patch_radius, search_radius, h, sigma=0.0, aggregation="patch"):
    """Windowed NLM by its definition (see nlattn/denoise/nlm.py).

    ``image`` is ``(H, W)`` or ``(H, W, C)``; returns float64 of the same shape.
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
