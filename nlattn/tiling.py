"""Huge images in bounded memory: windowed NLM by tiles, identical to the untiled result.

:func:`nl_means_tiled` takes the arguments of :func:`nlattn.nl_means` plus a memory budget. The
windowed denoiser (``"nlm"``) is run on tiles cut from the image with a halo wide enough that every
output pixel is computed from exactly the data, and in exactly the floating-point order, of the
untiled run: the result is bit-identical, not merely close.  Global methods, whose pixels may draw
on the whole image, run untiled when they fit in the budget and are refused with a clear message
when they do not.  :func:`check_feasible` refuses quadratic-time runs that would take absurdly long.

How wide the halo must be (windowed NLM, patch radius ``f``, search radius ``s``)
--------------------------------------------------------------------------------
- Pixel-wise aggregation: ``out(p)`` is a weighted mean over the search window of ``p``; each
  weight compares the patches around ``p`` and ``j``, so ``out(p)`` reads the image up to
  ``f + s`` pixels away.
- Patch-wise aggregation: ``out(p)`` averages the patch estimates ``B(i)`` of every query ``i``
  within ``f`` of ``p``, and ``B(i)`` reads ``f + s`` pixels around ``i``: ``2 f + s`` in all.
  ``f + s`` alone is not enough.

Columns need exactly that halo: the kernel treats every column alike.  Rows need more, because the
kernel (:mod:`nlattn.denoise.nlm`) works on horizontal strips of fixed height and streams its box
sums down each strip with running sums, whose rounding depends on where the strip starts.  A tile
that cuts the image across its rows therefore starts at a multiple of the strips' heights (so its
strips are the image's strips), keeps the strip heights of the whole image, and discards the
strips next to its top edge, whose running sums started in the tile's padding.  So tiles are
full-height column bands whenever a band fits in the budget (only a ``2 (2 f + s)`` column
overlap), and taller images are also cut across their rows.

Noise level
-----------
With ``sigma=None`` the noise is estimated once for the whole image by
:func:`nlattn.estimate_sigma` (per-tile estimates would give every tile its own filter
strength), so the result equals ``nl_means(image, "nlm")``; only when even the estimate does
not fit in the budget is it taken as the median over crops spread over the image
(:func:`estimate_sigma_bounded`).
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np

from nlattn._validate import (
    check_choice,
    check_image,
    check_int,
    check_n_threads,
    check_seed,
)

#: Fraction of the memory available when the call starts that ``max_memory=None`` allows.
DEFAULT_MEMORY_FRACTION = 0.25
#: Budget used when the machine's available memory cannot be read.
FALLBACK_MEMORY = 2 << 30
#: Smallest budget accepted (bytes).
MIN_MEMORY = 1 << 16

#: Peak bytes a pixel that :func:`nlattn.estimate_sigma` allocates (measured: 4.6 for its float32
#: copy of a channel and per-patch arrays), with room to spare.
SIGMA_BYTES_PER_PIXEL = 8
#: Crops (a square number) and their largest side, when the whole image does not fit.
SIGMA_CROPS = 9
SIGMA_CROP_SIDE = 2048

#: Denoisers computed from a bounded neighbourhood of each pixel, which tiles reproduce exactly.
WINDOWED_METHODS = ("nlm",)

#: ``exact`` attention time per query-key pair: ``EXACT_NS_PER_PAIR + EXACT_NS_PER_CHANNEL *
#: (d + dv)`` nanoseconds at 2 threads, fitted on an idle 2-core x86-64 machine (n = 256^2,
#: d = 26, dv = 1: 0.35 ns; n = 128^2, d = dv = 64: 1.2 ns; benchmarks/scram.py).  A loaded
#: machine is slower: ``nlattn bench --methods exact`` measures it.
EXACT_NS_PER_PAIR = 0.12
EXACT_NS_PER_CHANNEL = 0.0085
#: Threads the rates above were measured with.
EXACT_RATE_THREADS = 2
#: Predicted seconds above which :func:`check_feasible` refuses a run (unless forced).
MAX_FEASIBLE_SECONDS = 600.0

#: Methods whose time grows with the square of the number of pixels.
QUADRATIC_METHODS = ("exact",)


class Tile(NamedTuple):
    """One tile: the image rows and columns it reads and the output pixels it is kept for.

    ``rows`` and ``cols`` are ``(start, stop)`` of the part of the image handed to the denoiser;
    ``out_rows`` and ``out_cols`` the part of its result copied to the output (inside ``rows``
    and ``cols``).  The output parts of a plan cover the image exactly once.
    """

    rows: tuple[int, int]
    cols: tuple[int, int]
    out_rows: tuple[int, int]
    out_cols: tuple[int, int]


# --------------------------------------------------------------------------------------------
# memory


def _cgroup_available() -> int | None:
    """Bytes the process's cgroup (v2 or v1) still allows, or None without a limit."""
    pairs = (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
         "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    )
    for limit_path, usage_path in pairs:
        try:
            with open(limit_path) as fh:
                text = fh.read().strip()
            if text == "max":
                return None
            limit = int(text)
            if limit >= 1 << 60:  # cgroup v1 "unlimited"
                return None
            with open(usage_path) as fh:
                usage = int(fh.read().strip())
            return max(0, limit - usage)
        except (OSError, ValueError):
            continue
    return None


def available_memory() -> int | None:
    """Bytes of memory available to this process now.

    Returns
    -------
    int or None
        ``MemAvailable`` of ``/proc/meminfo`` (Linux), else the physical memory
        (``os.sysconf``), capped by what the process's cgroup (a container's limit) still
        allows; None when none of them can be read.
    """
    available = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        available = None
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            available = None
    cgroup = _cgroup_available()
    if cgroup is not None:
        available = cgroup if available is None else min(available, cgroup)
    return available


def default_max_memory() -> int:
    """The memory budget ``max_memory=None`` stands for: a quarter of the available memory.

    Returns
    -------
    int
        ``DEFAULT_MEMORY_FRACTION`` (0.25) of :func:`available_memory` in bytes, at least
        ``MIN_MEMORY``; ``FALLBACK_MEMORY`` (2 GiB) when the available memory cannot be read.

    Notes
    -----
    A quarter leaves room for the input image, the output (neither counts against the
    budget), the interpreter and other processes.
    """
    available = available_memory()
    if available is None:
        return FALLBACK_MEMORY
    return max(MIN_MEMORY, int(available * DEFAULT_MEMORY_FRACTION))


def _strips(height: int, patch_radius: int, search_radius: int) -> tuple[int, int]:
    """Strip heights of the two sweeps of the NLM kernel for an image of ``height`` rows."""
    from nlattn.denoise.nlm import patchwise_strip_rows, strip_rows

    return (strip_rows(patch_radius, search_radius),
            patchwise_strip_rows(height, patch_radius, search_radius))


def nlm_tile_bytes(height: int, width: int, n_channels: int, itemsize: int, patch_radius: int,
                   search_radius: int, aggregation: str, n_threads: int) -> int:
    """Peak bytes :func:`nlattn.nl_means` (method ``"nlm"``) allocates for one image.

    Parameters
    ----------
    height, width, n_channels : int
        The image's shape.
    itemsize : int
        Bytes per value of its dtype.
    patch_radius, search_radius : int
        NLM radii.
    aggregation : {"patch", "pixel"}
        NLM aggregation.
    n_threads : int
        Numba threads of the run.

    Returns
    -------
    int
        Bytes, 3 % over the sum of the buffers (measured peaks of the resident set agree
        within 1 %).

    Notes
    -----
    Counts every buffer of :func:`nlattn.denoise.nlm.nlm_windowed`: the float32 planar copy and
    its padded copy, the float64 normalisers and numerators, the largest weights, the output,
    the patch-wise normalisers, and the strip buffers each of ``n_threads`` threads holds at a
    time; or, if larger, the conversion of the result to the input's dtype (rounding and
    clipping temporaries).  About 41 bytes a pixel for a grey image.  The image itself is not
    counted.
    """
    f, s = patch_radius, search_radius
    c = n_channels
    pad = f + s
    n = height * width
    strip_n, strip_p = _strips(height, f, s)
    whole = 4 * c * n + 4 * c * (height + 2 * pad) * (width + 2 * pad)  # planar, padded
    whole += (8 + 4) * n + (8 + 4) * c * n  # den, wmax; num, out
    rows_n = strip_n + s
    per_thread = rows_n * width * (8 + 4 + 4) + 4 * (2 * f + 4) * (width + 2 * f)
    if aggregation == "pixel":
        per_thread += rows_n * width * 12 * c
    else:
        whole += 8 * n  # w_self, inv_c
        rows_p = strip_p + f + s
        per_thread = max(per_thread, rows_p * width * 12 * c
                         + 4 * (2 * f + 1) * (3 * width + 10 * f) + 32 * width)
    kernel = whole + n_threads * per_thread
    finish = (12 + itemsize) * c * n  # result, rint and clip temporaries, converted copy
    return int(1.03 * max(kernel, finish))  # 3 % for the allocator and small arrays


def _global_bytes(method: str, n_pixels: int, n_channels: int, patch_radius: int) -> int:
    """Rough peak bytes of an untiled global denoiser (patch vectors, their float64 PCA,
    tokens, the method's own buffers and the windowed kernel's)."""
    elements = (2 * patch_radius + 1) ** 2 * n_channels
    per_pixel = 12 * elements + 17 * 32 + 16 * n_channels + 64
    if method == "scram":
        per_pixel += 16 * 24 + 48 + 32 * n_channels  # kNN field, heaps, NLM buffers
    elif method not in ("exact", "local"):
        per_pixel += 2048  # random features, hash buckets, sparse supports
    return int(n_pixels * per_pixel)


def _global_reason(method: str) -> str:
    """Why a denoiser's tiles would not give its untiled result."""
    if method == "scram":
        return "it is global: PatchMatch matches each pixel with patches anywhere in the image"
    return "no tiling rule reproduces it yet"


def _fmt_bytes(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def _fmt_seconds(t: float) -> str:
    if t >= 2 * 86400:
        return f"{t / 86400:.3g} days"
    if t >= 2 * 3600:
        return f"{t / 3600:.3g} hours"
    if t >= 120:
        return f"{t / 60:.3g} minutes"
    return f"{t:.3g} seconds"


# --------------------------------------------------------------------------------------------
# time


def predict_seconds(method: str, n_pixels: int, d: int = 17, *, dv: int = 1,
                    n_threads: int | None = None) -> float | None:
    """Predicted seconds of a quadratic-time method on ``n_pixels`` tokens.

    Parameters
    ----------
    method : str
        Method name.
    n_pixels : int
        Tokens ``n``.
    d, dv : int
        Query/key and value channels.
    n_threads : int, optional
        Threads (None: Numba's current count).

    Returns
    -------
    float or None
        For ``"exact"``: ``n_pixels**2 * (EXACT_NS_PER_PAIR + EXACT_NS_PER_CHANNEL * (d + dv))``
        nanoseconds, scaled from 2 threads to ``n_threads``; None for other methods.
    """
    if method not in QUADRATIC_METHODS:
        return None
    if n_threads is None:
        import numba

        n_threads = numba.get_num_threads()
    ns = EXACT_NS_PER_PAIR + EXACT_NS_PER_CHANNEL * (d + dv)
    return float(n_pixels) ** 2 * ns * 1e-9 * EXACT_RATE_THREADS / n_threads


def check_feasible(method: str, n_pixels: int, d: int = 17, *, dv: int = 1,
                   n_threads: int | None = None, force: bool = False) -> float | None:
    """Refuse a run of a quadratic-time method that would take absurdly long.

    Parameters
    ----------
    method : str
        An attention method or denoiser name; only ``"exact"`` (O(n^2)) is ever refused.
    n_pixels : int
        Number of tokens (pixels) ``n``.
    d : int
        Query/key channels (17 for the PCA-16 NLM tokens the denoisers use).
    dv : int
        Value channels (1 for grey images, 3 for colour).
    n_threads : int, optional
        Threads the run will use (default: Numba's current count).
    force : bool
        Return the prediction instead of raising.

    Returns
    -------
    float or None
        Predicted seconds (:func:`predict_seconds`), None for methods that scale near-linearly.

    Raises
    ------
    ValueError
        When the prediction exceeds ``MAX_FEASIBLE_SECONDS`` (10 minutes) and ``force`` is
        False; the message says how long the run would take and how to force it.

    Notes
    -----
    The rate is a measured constant (``EXACT_NS_PER_PAIR``, ``EXACT_NS_PER_CHANNEL``), so the
    check itself costs nothing.  ``nlattn bench --methods exact`` measures it on any machine.
    """
    check_choice("method", method, _known_methods())
    n_pixels = check_int("n_pixels", n_pixels, minimum=0)
    d = check_int("d", d, minimum=1)
    dv = check_int("dv", dv, minimum=1)
    n_threads = check_n_threads(n_threads)
    if not isinstance(force, bool):
        raise TypeError(f"force must be a bool, got {type(force).__name__}")
    seconds = predict_seconds(method, n_pixels, d, dv=dv, n_threads=n_threads)
    if seconds is not None and seconds > MAX_FEASIBLE_SECONDS and not force:
        raise ValueError(
            f"method {method!r} on {n_pixels} pixels compares all {float(n_pixels) ** 2:.3g} "
            f"pixel pairs and would take about {_fmt_seconds(seconds)} (more than "
            f"{_fmt_seconds(MAX_FEASIBLE_SECONDS)}); use a sub-quadratic method (nlm, local, "
            f"scram, ...), a smaller image, or force it (force=True, --force)"
        )
    return seconds


def _known_methods() -> set[str]:
    from nlattn.attention import METHODS
    from nlattn.denoise import DENOISE_METHODS

    return set(METHODS) | set(DENOISE_METHODS)


# --------------------------------------------------------------------------------------------
# tile plans


def nlm_halo(patch_radius: int, search_radius: int, aggregation: str) -> int:
    """Pixels of context an output pixel of windowed NLM reads on each side.

    Parameters
    ----------
    patch_radius, search_radius : int
        ``f`` and ``s``.
    aggregation : {"patch", "pixel"}
        NLM aggregation.

    Returns
    -------
    int
        ``2 f + s`` with patch-wise aggregation (a pixel averages the estimates of the patches
        that hold it, each computed from ``f + s`` around its centre), ``f + s`` with
        pixel-wise.
    """
    if aggregation == "pixel":
        return patch_radius + search_radius
    return 2 * patch_radius + search_radius


def _row_margins(height: int, patch_radius: int, search_radius: int,
                 aggregation: str) -> tuple[int, int, int, int]:
    """``(align, top, bottom, min_rows)`` of tiles that cut the rows of an image of ``height``.

    A tile's first row is a multiple of ``align`` (the strips' heights), its output starts
    ``top`` rows lower (unless it starts at row 0) and ends ``bottom`` rows above its last row
    (unless that is the image's), and it holds at least ``min_rows`` rows so that its
    patch-wise strips are as tall as the image's.
    """
    f, s = patch_radius, search_radius
    strip_n, strip_p = _strips(height, f, s)
    if aggregation == "pixel":
        # the first strip's running sums start in the padding; its halo spills s rows further
        return strip_n, strip_n + s, f + s, 1
    # patch-wise strip b is clean when the normalisers it reads (rows from b * strip_p - f)
    # are; the strip before it spills s rows into it
    first_clean = max(1, math.ceil((strip_n + s + f) / strip_p))
    top = first_clean * strip_p + s
    align = strip_n * strip_p // math.gcd(strip_n, strip_p)
    min_rows = height
    while min_rows > 1 and _strips(min_rows - 1, f, s)[1] == strip_p:
        min_rows -= 1
    return align, top, 2 * f + s, min_rows


def _split(length: int, n_parts: int) -> list[tuple[int, int]]:
    """``length`` cut into ``n_parts`` contiguous parts of near-equal size."""
    bounds = [length * i // n_parts for i in range(n_parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n_parts)]


def _column_tiles(rows: tuple[int, int], out_rows: tuple[int, int], width: int, out_width: int,
                  halo: int, multiple: int = 1) -> list[Tile]:
    n_bands = max(1, math.ceil(width / out_width))
    if n_bands > 1:  # a multiple of the tiles denoised at once, so that none waits alone
        n_bands = min(width, math.ceil(n_bands / multiple) * multiple)
    tiles = []
    for x0, x1 in _split(width, n_bands):
        tiles.append(Tile(rows, (max(0, x0 - halo), min(width, x1 + halo)), out_rows, (x0, x1)))
    return tiles


def _widest(fits, limit: int) -> int:
    """Largest ``w`` in ``[0, limit]`` with ``fits(w)`` (``fits`` monotone decreasing)."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def plan_tiles(shape: tuple[int, ...], itemsize: int, patch_radius: int, search_radius: int,
               aggregation: str, max_memory: int, n_threads: int, *,
               multiple: int = 1) -> list[Tile]:
    """Tiles of windowed NLM on an image of ``shape`` that each fit in ``max_memory`` bytes.

    Parameters
    ----------
    shape : tuple
        ``(H, W)`` or ``(H, W, C)``.
    itemsize : int
        Bytes per value of the image's dtype.
    patch_radius, search_radius : int
        NLM patch and search radii.
    aggregation : {"patch", "pixel"}
        NLM aggregation (sets the halo, :func:`nlm_halo`).
    max_memory : int
        Budget in bytes for one tile (:func:`nlm_tile_bytes`).
    n_threads : int
        Threads the denoiser runs with (each holds strip buffers).
    multiple : int
        Make the number of bands (of each block of rows) a multiple of this: the number of
        tiles denoised at once.

    Returns
    -------
    list of Tile
        One tile (the image) when it fits; else full-height column bands; else tiles that also
        cut the rows (aligned on the kernel's strips, see the module's notes).

    Raises
    ------
    ValueError
        When not even the smallest tile fits in ``max_memory`` (the message gives its size).

    Notes
    -----
    Bands are as wide as the budget allows and of near-equal widths.  Row cuts are considered
    only when a band narrower than four halos would be needed (they discard more rows, the
    strips near their top edge, than columns), and chosen when a larger share of the pixels
    read is kept.
    """
    height, width = shape[0], shape[1]
    n_ch = shape[2] if len(shape) == 3 else 1
    f, s = patch_radius, search_radius
    halo = nlm_halo(f, s, aggregation)

    def tile_bytes(h: int, w: int) -> int:
        return nlm_tile_bytes(h, w, n_ch, itemsize, f, s, aggregation, n_threads)

    if tile_bytes(height, width) <= max_memory:
        return [Tile((0, height), (0, width), (0, height), (0, width))]
    # candidates: (share of the pixels read that are kept, row blocks, output band width)
    candidates = []
    out_width = _widest(lambda w: tile_bytes(height, min(width, w + 2 * halo)) <= max_memory,
                        width)
    if out_width >= 1:
        candidates.append((out_width / min(width, out_width + 2 * halo),
                           [((0, height), (0, height))], out_width))
    if out_width < min(width, 4 * halo):
        # cut the rows too: blocks of output rows, each read with the margins the strips need
        align, top, bottom, min_rows = _row_margins(height, f, s, aggregation)
        top = math.ceil(top / align) * align
        block = align
        while block < height:
            blocks = _row_block_tiles(height, block, align, top, bottom, min_rows)
            tallest = max(r1 - r0 for (r0, r1), _ in blocks)
            w = _widest(lambda w, t=tallest: tile_bytes(t, min(width, w + 2 * halo))
                        <= max_memory, width)
            if w >= 1:
                read = sum(r1 - r0 for (r0, r1), _ in blocks) * min(width, w + 2 * halo)
                candidates.append((height * min(width, w) / read, blocks, w))
            block *= 2
    if not candidates:
        align, top, bottom, min_rows = _row_margins(height, f, s, aggregation)
        rows = min(height, max(min_rows, math.ceil(top / align) * align + align + bottom))
        need = tile_bytes(rows, min(width, 1 + 2 * halo))
        raise ValueError(
            f"max_memory={max_memory} bytes ({_fmt_bytes(max_memory)}) is too small for "
            f"windowed NLM with patch_radius={f}, search_radius={s}: its smallest tile "
            f"({rows} x {min(width, 1 + 2 * halo)} pixels) needs about {_fmt_bytes(need)}"
        )
    best = max(candidates, key=lambda candidate: candidate[0])
    _, row_tiles, w = best
    plan = []
    for rows, out_rows in row_tiles:
        plan.extend(_column_tiles(rows, out_rows, width, w, halo, multiple))
    return plan


def _row_block_tiles(height: int, block: int, align: int, top: int, bottom: int,
                     min_rows: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``(rows, out_rows)`` of blocks of ``block`` output rows (a multiple of ``align``)."""
    tiles = []
    for y0 in range(0, height, block):
        y1 = min(height, y0 + block)
        r0 = max(0, y0 - top)
        r1 = height if y1 == height else min(height, y1 + bottom)
        while r1 - r0 < min_rows and r0 > 0:
            r0 = max(0, r0 - align)
        r1 = max(r1, min(height, r0 + min_rows))
        tiles.append(((r0, r1), (y0, y1)))
    return tiles


# --------------------------------------------------------------------------------------------
# noise level


def estimate_sigma_bounded(image: np.ndarray, max_memory: int | None = None) -> float:
    """:func:`nlattn.estimate_sigma` of a whole image, within a memory budget.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Integer or float image (a ``numpy.memmap`` is only read where it is used).
    max_memory : int, optional
        Bytes the estimate may use (None: :func:`default_max_memory`).

    Returns
    -------
    float
        ``nlattn.estimate_sigma(image)`` when ``SIGMA_BYTES_PER_PIXEL`` bytes a pixel fit in
        ``max_memory``; otherwise the median of its estimates on ``SIGMA_CROPS`` square crops
        spread over the image on a regular grid (each as large as the budget allows, at most
        ``SIGMA_CROP_SIDE`` pixels a side).

    Raises
    ------
    TypeError, ValueError
        On an invalid image.

    Notes
    -----
    The noise level must be one number for the whole image: estimated per tile, every tile
    would get its own filter strength.  The crops keep the estimate's memory bounded on images
    too large for it, at the price of reading only part of the image; below that size the
    result is exactly that of ``nl_means(sigma=None)``.
    """
    from nlattn.denoise import estimate_sigma

    image = check_image("image", image)
    budget = default_max_memory() if max_memory is None else max_memory
    height, width = image.shape[:2]
    if SIGMA_BYTES_PER_PIXEL * height * width <= budget:
        return estimate_sigma(image)
    side = min(height, width, SIGMA_CROP_SIDE,
               max(16, math.isqrt(budget // SIGMA_BYTES_PER_PIXEL)))
    per_axis = math.isqrt(SIGMA_CROPS)
    estimates = []
    for i in range(per_axis):
        y0 = (height - side) * i // max(1, per_axis - 1)
        for j in range(per_axis):
            x0 = (width - side) * j // max(1, per_axis - 1)
            estimates.append(estimate_sigma(image[y0 : y0 + side, x0 : x0 + side]))
    return float(np.median(estimates))


# --------------------------------------------------------------------------------------------
# the tiled denoiser

#: Keyword arguments of :func:`nlattn.nl_means` besides ``method`` and ``n_threads``.
NL_MEANS_ARGUMENTS = ("sigma", "h", "patch_radius", "search_radius", "k", "seed", "aggregation")


def _check_out(out, image: np.ndarray) -> np.ndarray:
    if out is None:
        return np.empty(image.shape, image.dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array (or numpy.memmap), got {type(out).__name__}")
    if out.shape != image.shape or out.dtype != image.dtype:
        raise ValueError(f"out must have the image's shape {image.shape} and dtype {image.dtype}, "
                         f"got shape {out.shape} and dtype {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    return out


def _resolve_nlm(image: np.ndarray, kwargs: dict, budget: int) -> dict:
    """The explicit parameters :func:`nlattn.nl_means` would pick for the whole image
    (``sigma``, then the preset's ``patch_radius``, ``search_radius`` and ``h``)."""
    from nlattn.denoise import AGGREGATIONS, resolve_nlm_parameters

    if kwargs.get("k") is not None:
        raise ValueError("k is not a parameter of method 'nlm'; leave it None")
    check_seed(kwargs.get("seed", 0))
    aggregation = check_choice("aggregation", kwargs.get("aggregation", "patch"), AGGREGATIONS)
    sigma = kwargs.get("sigma")
    if sigma is None:
        sigma = estimate_sigma_bounded(image, budget)
    sigma, patch_radius, search_radius, h = resolve_nlm_parameters(
        image, sigma, kwargs.get("h"), kwargs.get("patch_radius"), kwargs.get("search_radius"))
    return {"sigma": sigma, "h": h, "patch_radius": patch_radius,
            "search_radius": search_radius, "aggregation": aggregation}


def nl_means_tiled(
    image: np.ndarray,
    method: str = "nlm",
    *,
    max_memory: int | None = None,
    n_threads: int | None = None,
    force: bool = False,
    out: np.ndarray | None = None,
    **nl_means_kwargs,
) -> np.ndarray:
    """:func:`nlattn.nl_means` in bounded memory: tiles with a halo, the same result.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Grey or colour image of any integer or float dtype; a ``numpy.memmap`` works (only the
        tile being denoised is read into memory).
    method : str
        A key of :data:`nlattn.DENOISE_METHODS`.  ``"nlm"`` (windowed) is tiled; the others
        are global (see Notes) and run untiled when they fit in ``max_memory``.
    max_memory : int, optional
        Bytes the denoiser may allocate besides the image and the output (>= 64 KiB).  None:
        :func:`default_max_memory`, a quarter of the memory available now.
    n_threads : int, optional
        Numba threads (default: all).  Tiles are denoised that many at a time, each with one
        thread (faster than one tile at a time with all threads: the conversions around the
        kernel are serial), each in ``max_memory / n_threads``.
    force : bool
        Run ``"exact"`` even when :func:`check_feasible` predicts more than 10 minutes.
    out : ndarray, optional
        Array to write the result into (shape and dtype of ``image``), e.g. a ``numpy.memmap``
        when even the output does not fit in memory.  None: a new array.
    **nl_means_kwargs
        ``sigma``, ``h``, ``patch_radius``, ``search_radius``, ``k``, ``seed``,
        ``aggregation`` and method parameters, as for :func:`nlattn.nl_means`.

    Returns
    -------
    ndarray
        The denoised image (``out`` when given): identical, bit for bit, to
        ``nlattn.nl_means(image, method, **nl_means_kwargs)``.

    Raises
    ------
    TypeError, ValueError
        On invalid arguments (as :func:`nlattn.nl_means`); when ``max_memory`` is too small
        for the smallest tile; when a global method does not fit in ``max_memory`` (the
        message says why it cannot be tiled); when ``"exact"`` would take too long (see
        ``force``).

    Notes
    -----
    ``"nlm"``: the parameters left None are resolved once for the whole image (``sigma`` by
    :func:`nlattn.estimate_sigma`, or on crops when even that does not fit, see
    :func:`estimate_sigma_bounded`; then the preset), tiles are planned by :func:`plan_tiles`
    (full-height column bands when they fit, halo ``2 f + s`` with patch-wise aggregation,
    ``f + s`` with pixel-wise; see the module's notes for why the result is bit-identical) and
    each is denoised with those explicit parameters.  Time: that of ``nl_means`` plus the
    recomputed halos (a few percent for bands a thousand pixels wide); memory: ``max_memory``
    plus the output.

    Global methods (``"scram"``: PatchMatch matches anywhere in the image; and any denoiser
    without a tiling rule here, such as ``"nlm2"``) cannot be cut into tiles without changing
    what they compute: a tile would only search itself.  They run on the whole image when their
    estimated peak memory fits in ``max_memory``, and raise ValueError otherwise.
    """
    from nlattn.denoise import check_denoise_method, nl_means

    image = check_image("image", image)
    check_denoise_method(method)
    budget = default_max_memory() if max_memory is None else check_int(
        "max_memory", max_memory, minimum=MIN_MEMORY)
    n_threads = check_n_threads(n_threads)
    if not isinstance(force, bool):
        raise TypeError(f"force must be a bool, got {type(force).__name__}")
    out = _check_out(out, image)
    height, width = image.shape[:2]
    n_channels = 1 if image.ndim == 2 else image.shape[2]

    if method not in WINDOWED_METHODS:
        patch_radius = nl_means_kwargs.get("patch_radius")
        need = _global_bytes(method, height * width, n_channels,
                             3 if patch_radius is None else int(patch_radius))
        if need > budget:
            raise ValueError(
                f"method {method!r} cannot be cut into tiles without changing its result "
                f"({_global_reason(method)}), and on this {height} x {width} image "
                f"it needs about {_fmt_bytes(need)}, more than max_memory={budget} "
                f"({_fmt_bytes(budget)}); use method 'nlm' (windowed: tiled exactly), a smaller "
                f"image, or a larger max_memory"
            )
        if method in QUADRATIC_METHODS:
            check_feasible(method, height * width, dv=n_channels, n_threads=n_threads,
                           force=force)
        out[...] = nl_means(image, method, n_threads=n_threads, **nl_means_kwargs)
        return out

    unknown = sorted(set(nl_means_kwargs) - set(NL_MEANS_ARGUMENTS))
    if unknown:
        raise TypeError(f"{unknown[0]!r} is not a parameter of nl_means with method {method!r}")
    params = _resolve_nlm(image, nl_means_kwargs, budget)
    if params["h"] == 0.0:  # nothing to remove, as nl_means does
        out[...] = image
        return out
    import numba

    threads = numba.get_num_threads() if n_threads is None else n_threads
    itemsize = image.dtype.itemsize
    f, s, aggregation = params["patch_radius"], params["search_radius"], params["aggregation"]
    if nlm_tile_bytes(height, width, n_channels, itemsize, f, s, aggregation,
                      threads) <= budget:
        out[...] = nl_means(image, method, n_threads=n_threads, **params)
        return out
    workers = threads if _threadsafe_layer() else 1
    try:
        tiles = plan_tiles(image.shape, itemsize, f, s, aggregation, budget // workers,
                           threads // workers, multiple=workers)
    except ValueError:
        if workers == 1:
            raise
        workers = 1  # one tile at a time, with the whole budget
        tiles = plan_tiles(image.shape, itemsize, f, s, aggregation, budget, threads)
    workers = min(workers, len(tiles))
    run_tiles(image, tiles, params, out, workers, threads // workers)
    return out


def _threadsafe_layer() -> bool:
    """Whether Numba's threading layer lets several Python threads launch parallel kernels at
    once (TBB and OpenMP do; the workqueue layer would abort the process)."""
    import importlib

    import numba

    try:
        return numba.threading_layer() in ("tbb", "omp")
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen
        pass
    layer = numba.config.THREADING_LAYER
    if layer in ("tbb", "omp"):
        return True
    if layer not in ("default", "threadsafe"):
        return False
    for module in ("numba.np.ufunc.tbbpool", "numba.np.ufunc.omppool"):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return True
    return False


def run_tiles(image: np.ndarray, tiles: list[Tile], params: dict, out: np.ndarray,
              workers: int = 1, threads_per_tile: int | None = None) -> None:
    """Denoise ``tiles`` of ``image`` with windowed NLM into ``out``.

    Parameters
    ----------
    image : ndarray
        The image.
    tiles : list of Tile
        A plan (:func:`plan_tiles`).
    params : dict
        Explicit ``nl_means`` parameters: ``sigma``, ``h``, ``patch_radius``,
        ``search_radius``, ``aggregation`` (never None: a tile must not pick its own).
    out : ndarray
        Receives the result (shape and dtype of ``image``).
    workers : int
        Tiles denoised at once (Python threads; the kernels release the GIL).
    threads_per_tile : int, optional
        Numba threads of each tile.

    Notes
    -----
    Every tile writes its own part of ``out``; the result does not depend on ``workers``.
    """
    from nlattn.denoise import nl_means

    def one(tile: Tile) -> None:
        (r0, r1), (c0, c1) = tile.rows, tile.cols
        (y0, y1), (x0, x1) = tile.out_rows, tile.out_cols
        result = nl_means(image[r0:r1, c0:c1], "nlm", n_threads=threads_per_tile, **params)
        out[y0:y1, x0:x1] = result[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0]

    if workers <= 1:
        for tile in tiles:
            one(tile)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(one, tile) for tile in tiles]:
            future.result()


__all__ = ["Tile", "available_memory", "check_feasible", "default_max_memory",
           "estimate_sigma_bounded", "nl_means_tiled", "nlm_halo", "nlm_tile_bytes",
           "plan_tiles", "predict_seconds", "run_tiles"]
