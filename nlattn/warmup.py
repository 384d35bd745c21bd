"""Compile every kernel once, so that later runs (in any process) load them from the cache."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def warmup(on_step: Callable[[str, float], None] | None = None) -> dict[str, float]:
    """Compile (or load from the on-disk cache) every Numba kernel of nlattn.

    Parameters
    ----------
    on_step : callable or None, default None
        Called with each group's name and seconds as soon as the group is compiled (a first
        run takes minutes: this is its progress).

    Returns
    -------
    dict
        Seconds spent per group of kernels, in the order they were compiled.

    Notes
    -----
    Each kernel is run once on a tiny input of every type signature the public functions use, so
    the first real call does not pay for compilation.  A first run takes tens of seconds; once the
    cache is written, a new process loads everything in about a second.
    """
    from nlattn.denoise import nl_means
    from nlattn.denoise.skimage_compat import _warmup as warmup_skimage_compat
    from nlattn.features import extract_patches

    rng = np.random.default_rng(0)
    grey = rng.random((9, 11)).astype(np.float32)
    colour = rng.random((9, 11, 3)).astype(np.float32)
    timings: dict[str, float] = {}

    def done(name: str, start: float) -> None:
        timings[name] = time.perf_counter() - start
        if on_step is not None:
            on_step(name, timings[name])

    start = time.perf_counter()
    for aggregation in ("patch", "pixel"):
        for image in (grey, colour):
            nl_means(image, "nlm", sigma=0.1, patch_radius=1, search_radius=2,
                     aggregation=aggregation)
    done("nlm (windowed)", start)

    from nlattn.denoise import estimate_sigma

    start = time.perf_counter()
    for image in (grey, colour):
        nl_means(image, "nlm2", sigma=0.1)
    estimate_sigma(rng.random((32, 32)).astype(np.float32))
    done("nlm2 (two-stage) and noise estimation", start)

    start = time.perf_counter()
    for image in (grey, colour):
        extract_patches(image, 1)
    done("patch vectors", start)

    start = time.perf_counter()
    warmup_skimage_compat()
    done("denoise_nl_means (scikit-image drop-in)", start)

    from nlattn.attention import attention, attention_rows

    start = time.perf_counter()
    tokens = rng.random((9, 11, 4)).astype(np.float32)
    for method in ("exact", "local"):
        attention(tokens, tokens, colour, method)
        attention_rows(tokens, tokens, [(0, 0), (8, 10)], method)
    done("attention (exact, local)", start)

    start = time.perf_counter()
    attention(tokens, tokens, colour, "scram", k=4)
    attention_rows(tokens, tokens, [(0, 0), (8, 10)], "scram", k=4)
    for aggregation in ("patch", "pixel"):
        for image in (grey, colour):
            nl_means(image, "scram", sigma=0.1, patch_radius=1, search_radius=1, k=4,
                     aggregation=aggregation)
    done("PatchMatch, scram attention and denoising", start)

    from nlattn.attention import METHODS

    for method in METHODS:
        if method in ("exact", "local", "scram"):
            continue
        start = time.perf_counter()
        attention(tokens, tokens, colour, method)
        attention_rows(tokens, tokens, [(0, 0), (8, 10)], method)
        if method == "efficient":
            attention(tokens, tokens, colour, method, variant="scaling")
        done(f"attention ({method})", start)
    return timings
