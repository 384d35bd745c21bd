"""Timing and scaling harness behind ``nlattn bench``.

:func:`run_bench` times attention methods (:data:`nlattn.METHODS`), denoisers
(:data:`nlattn.DENOISE_METHODS`) and, when installed, peers (scikit-image and OpenCV non-local
means, faiss k-nearest-neighbour search) on square images of growing size, and fits the exponent
``a`` of ``time ~ n**a`` (``n`` pixels).  :func:`format_table` and :func:`plot_scaling` present
the result; the command line adds nothing but option parsing.

Protocol
--------
- Image: for each side length, a dead-leaves image (occluding discs of random grey levels with a
  scale-invariant ``r**-3`` radius law, radii 2 px to side/8: edges and flat regions at every
  scale, like natural images, and statistically alike at every size), or a given image cropped
  to its central square and resized; then Gaussian noise of ``noise`` grey levels, rounded and
  clipped to 8 bits.
- Tokens: the NLM tokens of the image, :func:`nlattn.nlm_tokens` with 5x5 patches reduced to 16
  principal components (``d = 17``), ``h`` = the noise level (peaked maps), ``scale = 1``;
  attention methods get ``(q, k, v)``, their time excludes building the tokens (timed apart as
  ``tokens``).
- Denoisers (``denoise:<name>``) run :func:`nlattn.nl_means` on the 8-bit image with the noise
  level given (no estimation).
- Timing: the first call of each method is timed alone (it includes JIT compilation or loading
  from the cache), then ``repeats`` calls; the median is the time, and ``first - median`` the
  compile time.  At later sizes, calls stop early once they have used ``max_seconds``.
- Extrapolation: before each size the time is predicted from the measured sizes (the fitted
  exponent, at least the method's nominal one: 2 for all-pairs methods) or, for ``exact``
  before any measurement, from its documented rate (:func:`nlattn.tiling.predict_seconds`).
  When the prediction exceeds ``max_seconds`` the size is not run: the predicted time is
  reported, marked as extrapolated, and so are the larger sizes.
- Exponent: least squares of ``log t`` on ``log n`` over the measured sizes of at least
  ``FIT_MIN_SIZE`` (128) pixels a side, or over all measured sizes when fewer than two are that
  large (small sizes are dominated by fixed costs).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_SIZES = (64, 128, 256, 512, 1024)
DEFAULT_REPEATS = 3
DEFAULT_MAX_SECONDS = 20.0
DEFAULT_NOISE = 20.0
#: Smallest side length accepted.
MIN_SIZE = 8
#: Sides below this are left out of the exponent fit when at least two sizes reach it.
FIT_MIN_SIZE = 128
#: NLM tokens of the benchmark: patch radius and PCA components (d = TOKEN_PCA + 1).
TOKEN_PATCH_RADIUS = 2
TOKEN_PCA = 16
#: Neighbours of the k-nearest-neighbour entries (PatchMatch and faiss).
KNN_K = 16

#: Entries whose time grows with n**2 (the nominal exponent used for predictions).
QUADRATIC = ("exact", "denoise:exact", "peer:faiss-flat")

PEERS = ("peer:skimage", "peer:opencv", "peer:faiss-flat", "peer:faiss-hnsw", "knn:patchmatch")


@dataclass
class Case:
    """The inputs of one size, shared by every entry."""

    size: int
    image: np.ndarray  # (size, size) uint8
    sigma: float
    tokens: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def nlm_tokens(self):
        if self.tokens is None:
            import nlattn

            self.tokens = nlattn.nlm_tokens(self.image, TOKEN_PATCH_RADIUS, h=self.sigma,
                                            pca=TOKEN_PCA)
        return self.tokens


@dataclass
class Entry:
    """One timed thing: ``prepare(case)`` returns the zero-argument call to time."""

    name: str
    kind: str  # "attention", "denoise", "tokens", "peer", "knn"
    prepare: Callable[[Case], Callable[[], object]]
    description: str


@dataclass
class Timing:
    """What was measured (or predicted) for one entry."""

    name: str
    kind: str
    description: str
    status: str = "ok"  # "ok", "unavailable", "error"
    message: str | None = None
    seconds: dict[int, float] = field(default_factory=dict)
    runs: dict[int, int] = field(default_factory=dict)
    extrapolated: dict[int, bool] = field(default_factory=dict)
    compile_seconds: float | None = None
    exponent: float | None = None
    fit_sizes: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "status": self.status,
            "message": self.message,
            "seconds": {str(s): self.seconds[s] for s in sorted(self.seconds)},
            "runs": {str(s): self.runs.get(s, 0) for s in sorted(self.seconds)},
            "extrapolated": {str(s): self.extrapolated[s] for s in sorted(self.seconds)},
            "compile_seconds": self.compile_seconds,
            "exponent": self.exponent,
            "fit_sizes": self.fit_sizes,
        }


# --------------------------------------------------------------------------------------------
# images


def dead_leaves(size: int, seed: int = 0) -> np.ndarray:
    """A clean dead-leaves image: occluding discs, like the objects of natural images.

    Parameters
    ----------
    size : int
        Side length.
    seed : int
        Seed (the image also depends on ``size``).

    Returns
    -------
    ndarray, shape (size, size), float32
        Values in [0, 255].

    Notes
    -----
    Discs of uniform random grey levels, radii drawn from ``r**-3`` on
    ``[2, max(8, size / 8)]`` (the scale-invariant law), centres uniform, drawn back to front
    over a grey ramp until about three discs cover each pixel on average.  O(size^2) time.

    References
    ----------
    A. B. Lee, D. Mumford, J. Huang, "Occlusion models for natural images: a statistical study
    of a scale-invariant dead leaves model", International Journal of Computer Vision 41, 2001.
    """
    rng = np.random.default_rng([seed, size])
    r_min, r_max = 2.0, max(8.0, size / 8.0)
    # E[r^2] of the r^-3 law on [r_min, r_max]
    mean_r2 = 2.0 * np.log(r_max / r_min) / (1.0 / r_min**2 - 1.0 / r_max**2)
    n_discs = int(3.0 * size * size / (np.pi * mean_r2)) + 1
    u = rng.random(n_discs)
    radii = 1.0 / np.sqrt((1.0 - u) / r_min**2 + u / r_max**2)
    centres = rng.random((n_discs, 2)) * size
    greys = rng.random(n_discs) * 255.0
    ramp = np.linspace(60.0, 190.0, size, dtype=np.float32)
    image = np.empty((size, size), np.float32)
    image[:] = ramp[None, :]
    axis = np.arange(size, dtype=np.float64)
    for r, (cy, cx), g in zip(radii, centres, greys, strict=True):
        y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
        inside = (axis[y0:y1, None] - cy) ** 2 + (axis[None, x0:x1] - cx) ** 2 <= r * r
        image[y0:y1, x0:x1][inside] = g
    return image


def load_square(path: str, size: int) -> np.ndarray:
    """The central square of the image at ``path``, grey, resized to ``size x size``.

    Parameters
    ----------
    path : str
        Any image :func:`nlattn.read_image` reads (colour is averaged to grey).
    size : int
        Side length (Lanczos resampling).

    Returns
    -------
    ndarray, shape (size, size), float32
        Values in [0, 255] (integer images scaled from their dtype's range).

    Raises
    ------
    nlattn.ImageReadError
        When the file cannot be read.
    """
    from PIL import Image

    import nlattn

    array, _ = nlattn.read_image(path)
    grey = array.astype(np.float64)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    top = 1.0 if np.issubdtype(array.dtype, np.floating) and grey.max() <= 1.0 else (
        float(np.iinfo(array.dtype).max) if np.issubdtype(array.dtype, np.integer) else 255.0)
    grey = np.clip(grey * (255.0 / top), 0.0, 255.0)
    side = min(grey.shape)
    y0, x0 = (grey.shape[0] - side) // 2, (grey.shape[1] - side) // 2
    square = Image.fromarray(grey[y0 : y0 + side, x0 : x0 + side].astype(np.float32), mode="F")
    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS), np.float32)


def make_case(size: int, noise: float, image_path: str | None = None, seed: int = 0) -> Case:
    """The benchmark input of side ``size`` (see the module's protocol).

    Parameters
    ----------
    size : int
        Side length.
    noise : float
        Gaussian noise added, in grey levels (0: none; the noise level is then estimated).
    image_path : str, optional
        An image to use instead of :func:`dead_leaves`.
    seed : int
        Seed of the synthetic image and the noise.

    Returns
    -------
    Case
        The 8-bit noisy image and its noise level; tokens are built on first use.
    """
    clean = dead_leaves(size, seed) if image_path is None else load_square(image_path, size)
    rng = np.random.default_rng([seed, size, 1])
    noisy = clean + rng.normal(0.0, noise, clean.shape) if noise > 0 else clean
    image = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if noise > 0:
        sigma = float(noise)
    else:
        import nlattn

        sigma = max(nlattn.estimate_sigma(image), 1.0)
    return Case(size, image, sigma)


# --------------------------------------------------------------------------------------------
# entries


def _attention_entry(name: str, n_threads: int | None) -> Entry:
    def prepare(case: Case):
        import nlattn

        q, k, v = case.nlm_tokens()
        return lambda: nlattn.attention(q, k, v, name, scale=1.0, seed=0, n_threads=n_threads)

    return Entry(name, "attention", prepare, f"attention {name!r} on NLM tokens (d=17)")


def _denoise_entry(name: str, n_threads: int | None) -> Entry:
    def prepare(case: Case):
        import nlattn

        return lambda: nlattn.nl_means(case.image, name, sigma=case.sigma, seed=0,
                                       n_threads=n_threads)

    return Entry(f"denoise:{name}", "denoise", prepare, f"nl_means(method={name!r}), 8-bit")


def _tokens_entry() -> Entry:
    def prepare(case: Case):
        import nlattn

        return lambda: nlattn.nlm_tokens(case.image, TOKEN_PATCH_RADIUS, h=case.sigma,
                                         pca=TOKEN_PCA)

    return Entry("tokens", "tokens", prepare, "nlm_tokens: 5x5 patches, PCA-16")


def _skimage_entry() -> Entry:
    def prepare(case: Case):
        from skimage.restoration import denoise_nl_means

        image = case.image.astype(np.float64)
        return lambda: denoise_nl_means(image, patch_size=7, patch_distance=11,
                                        h=0.6 * case.sigma, sigma=case.sigma, fast_mode=True,
                                        preserve_range=True)

    return Entry("peer:skimage", "peer", prepare,
                 "scikit-image denoise_nl_means, fast mode, 7x7 patches, 23x23 window (1 thread)")


def _opencv_entry(n_threads: int | None) -> Entry:
    def prepare(case: Case):
        import cv2

        if n_threads is not None:
            cv2.setNumThreads(n_threads)
        return lambda: cv2.fastNlMeansDenoising(case.image, None, h=case.sigma,
                                                templateWindowSize=7, searchWindowSize=21)

    return Entry("peer:opencv", "peer", prepare,
                 "OpenCV fastNlMeansDenoising, 7x7 patches, 21x21 window")


def _patch_vectors(case: Case) -> np.ndarray:
    q = case.nlm_tokens()[0]
    return np.ascontiguousarray(q[..., :-1].reshape(-1, q.shape[-1] - 1), dtype=np.float32)


def _faiss_entry(kind: str, n_threads: int | None) -> Entry:
    def prepare(case: Case):
        import faiss

        if n_threads is not None:
            faiss.omp_set_num_threads(n_threads)
        x = _patch_vectors(case)

        def run():
            if kind == "flat":
                index = faiss.IndexFlatL2(x.shape[1])
            else:
                index = faiss.IndexHNSWFlat(x.shape[1], 32)
                index.hnsw.efConstruction = 64
                index.hnsw.efSearch = 64
            index.add(x)
            return index.search(x, KNN_K + 1)

        return run

    what = ("exact (IndexFlatL2)" if kind == "flat"
            else "HNSW (M=32, efConstruction=64, efSearch=64), build + search")
    return Entry(f"peer:faiss-{kind}", "peer", prepare,
                 f"faiss {what}: {KNN_K}-NN of the PCA-16 patch vectors")


def _patchmatch_entry(n_threads: int | None) -> Entry:
    def prepare(case: Case):
        import nlattn

        q, k, _ = case.nlm_tokens()
        return lambda: nlattn.knn_patchmatch(q, k, k=KNN_K, seed=0, scale=1.0,
                                             n_threads=n_threads)

    return Entry("knn:patchmatch", "knn", prepare,
                 f"knn_patchmatch: {KNN_K}-NN of the same patch vectors (scram's search)")


def entry_names() -> list[str]:
    """Every name :func:`select_entries` accepts, in the default order."""
    from nlattn.attention import METHODS
    from nlattn.denoise import DENOISE_METHODS

    return ["tokens", *METHODS, *(f"denoise:{name}" for name in DENOISE_METHODS), *PEERS]


def _resolve(name: str) -> str:
    """A user's name as an entry name: bare attention methods first, then denoisers, peers."""
    from nlattn.attention import METHODS
    from nlattn.denoise import DENOISE_METHODS

    if name in METHODS or ":" in name or name == "tokens":
        return name
    if name in DENOISE_METHODS:
        return f"denoise:{name}"
    for prefix in ("peer:", "knn:"):
        if prefix + name in PEERS:
            return prefix + name
    return name


def select_entries(methods: Sequence[str] | None = None, peers: bool | None = None,
                   n_threads: int | None = None) -> list[Entry]:
    """The entries to time.

    Parameters
    ----------
    methods : sequence of str, optional
        Names: attention methods (``"scram"``), denoisers (``"denoise:nlm"``, or ``"nlm"`` when
        the name is no attention method), ``"tokens"``, peers (``"peer:skimage"``,
        ``"peer:opencv"``, ``"peer:faiss-flat"``, ``"peer:faiss-hnsw"``) and
        ``"knn:patchmatch"``.  None: tokens, every attention method and every denoiser.
    peers : bool, optional
        Add the peers and ``knn:patchmatch``.  None: when ``methods`` is None.
    n_threads : int, optional
        Threads of nlattn's kernels, OpenCV and faiss.

    Returns
    -------
    list of Entry

    Raises
    ------
    ValueError
        On an unknown name (the message lists the valid ones).
    """
    valid = entry_names()
    if methods is None:
        names = [n for n in valid if n not in PEERS]
    else:
        names = []
        for raw in methods:
            name = _resolve(raw.strip())
            if name not in valid:
                raise ValueError(f"unknown method {raw.strip()!r}; valid: {', '.join(valid)}")
            if name not in names:
                names.append(name)
    if peers is None:
        peers = methods is None
    if peers:
        names += [n for n in PEERS if n not in names]
    from nlattn.attention import METHODS

    entries = []
    for name in names:
        if name == "tokens":
            entries.append(_tokens_entry())
        elif name in METHODS:
            entries.append(_attention_entry(name, n_threads))
        elif name.startswith("denoise:"):
            entries.append(_denoise_entry(name.split(":", 1)[1], n_threads))
        elif name == "peer:skimage":
            entries.append(_skimage_entry())
        elif name == "peer:opencv":
            entries.append(_opencv_entry(n_threads))
        elif name in ("peer:faiss-flat", "peer:faiss-hnsw"):
            entries.append(_faiss_entry(name.rsplit("-", 1)[1], n_threads))
        else:
            entries.append(_patchmatch_entry(n_threads))
    return entries


# --------------------------------------------------------------------------------------------
# timing


def fit_exponent(sizes: Sequence[int], seconds: Sequence[float]) -> float | None:
    """The exponent ``a`` of ``t ~ n**a``, ``n = size**2``.

    Parameters
    ----------
    sizes : sequence of int
        Side lengths.
    seconds : sequence of float
        Times at those sizes.

    Returns
    -------
    float or None
        Least-squares slope of ``log t`` against ``log n``; None with fewer than two distinct
        sizes or a non-positive time.
    """
    if len(set(sizes)) < 2 or min(seconds) <= 0:
        return None
    n = np.log(np.array(sizes, np.float64) ** 2)
    t = np.log(np.array(seconds, np.float64))
    return float(np.polyfit(n, t, 1)[0])


def _fit(timing: Timing) -> None:
    measured = sorted(s for s in timing.seconds if not timing.extrapolated[s])
    large = [s for s in measured if s >= FIT_MIN_SIZE]
    sizes = large if len(large) >= 2 else measured
    timing.exponent = fit_exponent(sizes, [timing.seconds[s] for s in sizes])
    timing.fit_sizes = sizes if timing.exponent is not None else []


def _nominal_exponent(name: str) -> float:
    return 2.0 if name in QUADRATIC else 1.0


def _predict(timing: Timing, size: int, n_threads: int | None) -> float | None:
    """Predicted seconds of ``timing``'s entry at ``size`` from what is known so far."""
    measured = sorted(s for s in timing.seconds if not timing.extrapolated[s])
    if not measured:
        if timing.name in ("exact", "denoise:exact"):
            from nlattn.tiling import predict_seconds

            return predict_seconds("exact", size * size, TOKEN_PCA + 1, n_threads=n_threads)
        return None
    fitted = fit_exponent(measured[-3:], [timing.seconds[s] for s in measured[-3:]])
    a = max(_nominal_exponent(timing.name), fitted if fitted is not None else 0.0)
    last = measured[-1]
    return timing.seconds[last] * (size / last) ** (2.0 * a)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def time_entry(entry: Entry, case: Case, timing: Timing, repeats: int, max_seconds: float,
               n_threads: int | None) -> None:
    """Time ``entry`` at ``case.size`` into ``timing``.

    Parameters
    ----------
    entry : Entry
        What to time.
    case : Case
        The input of this size.
    timing : Timing
        Updated in place: the median time and number of calls, or the extrapolated time, or
        the status ``"unavailable"`` (ImportError) / ``"error"`` with a one-line message.
    repeats : int
        Timed calls (fewer at sizes after the first once ``max_seconds`` is spent).
    max_seconds : float
        Cap on the predicted time of one call.
    n_threads : int, optional
        Threads (for the prediction of ``exact``).
    """
    size = case.size
    if timing.status != "ok":
        return
    predicted = _predict(timing, size, n_threads)
    previous = [s for s in timing.seconds if s < size]
    chained = bool(previous) and timing.extrapolated[max(previous)]
    if chained or (predicted is not None and predicted > max_seconds):
        timing.seconds[size] = predicted
        timing.extrapolated[size] = True
        timing.runs[size] = 0
        return
    try:
        call = entry.prepare(case)
        first = None
        if timing.compile_seconds is None:
            start = time.perf_counter()
            call()
            first = time.perf_counter() - start
        times = []
        spent = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
            spent += times[-1]
            if first is None and spent > max_seconds:
                break
    except ImportError as exc:
        timing.status = "unavailable"
        timing.message = _one_line(exc)
        return
    except Exception as exc:  # a failing method must not stop the others
        timing.status = "error"
        timing.message = _one_line(exc)
        return
    median = statistics.median(times)
    if first is not None:
        timing.compile_seconds = max(0.0, first - median)
    timing.seconds[size] = median
    timing.extrapolated[size] = False
    timing.runs[size] = len(times)


def machine_info() -> dict:
    """CPU model, cores, Numba threads and versions, for the record (a dict)."""
    import numba

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
    }


def run_bench(
    methods: Sequence[str] | None = None,
    sizes: Sequence[int] = DEFAULT_SIZES,
    *,
    repeats: int = DEFAULT_REPEATS,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    peers: bool | None = None,
    image: str | None = None,
    noise: float = DEFAULT_NOISE,
    n_threads: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Time methods over image sizes and fit their scaling exponents.

    Parameters
    ----------
    methods : sequence of str, optional
        Entry names (see :func:`select_entries`); None: all of nlattn's.
    sizes : sequence of int
        Image side lengths (>= 8); ``n = size**2`` pixels.
    repeats : int
        Timed calls per size (>= 1); the median is reported.
    max_seconds : float
        Per-size cap: sizes predicted to take longer are extrapolated, not run (> 0).
    peers : bool, optional
        Time the peers too (None: when ``methods`` is None).
    image : str, optional
        Path of an image to use instead of the synthetic one.
    noise : float
        Standard deviation of the Gaussian noise added, in 8-bit grey levels (>= 0).
    n_threads : int, optional
        Threads (default: all of Numba's).
    seed : int
        Seed of the synthetic image and the noise.
    progress : callable, optional
        Called with one line of text per timed size (e.g. to print on stderr).

    Returns
    -------
    dict
        ``{"machine", "threads", "sizes", "repeats", "max_seconds", "image", "noise",
        "tokens", "results": [Timing.as_dict(), ...]}``, JSON-serialisable.

    Raises
    ------
    TypeError, ValueError
        On invalid arguments (unknown methods are listed).

    Notes
    -----
    See the module's notes for the protocol.  A method whose module cannot be imported, or
    that raises, is reported with ``status`` ``"unavailable"`` or ``"error"`` and a one-line
    message; the others go on.
    """
    from nlattn._validate import check_float, check_int, check_n_threads, check_seed

    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not sizes:
        raise TypeError(f"sizes must be a non-empty sequence of ints, got {sizes!r}")
    sizes = sorted({check_int("sizes", s, minimum=MIN_SIZE, maximum=1 << 16) for s in sizes})
    repeats = check_int("repeats", repeats, minimum=1)
    max_seconds = check_float("max_seconds", max_seconds, minimum=0.0, strict_minimum=True)
    noise = check_float("noise", noise, minimum=0.0)
    n_threads = check_n_threads(n_threads)
    seed = check_seed(seed)
    if image is not None and not os.path.isfile(image):
        raise ValueError(f"image {image!r} is not a file")
    entries = select_entries(methods, peers, n_threads)
    timings = [Timing(e.name, e.kind, e.description) for e in entries]
    say = progress or (lambda line: None)
    import numba

    threads = numba.get_num_threads() if n_threads is None else n_threads
    reported = set()
    for size in sizes:
        case = make_case(size, noise, image, seed)
        for entry, timing in zip(entries, timings, strict=True):
            time_entry(entry, case, timing, repeats, max_seconds, n_threads)
            if timing.status != "ok":
                if entry.name not in reported:
                    reported.add(entry.name)
                    say(f"{entry.name}: {timing.status}: {timing.message}")
                continue
            mark = " (extrapolated)" if timing.extrapolated[size] else ""
            say(f"{entry.name} {size}x{size}: {timing.seconds[size]:.4g} s{mark}")
        case.tokens = None
    for timing in timings:
        _fit(timing)
    return {
        "machine": machine_info(),
        "threads": threads,
        "sizes": sizes,
        "repeats": repeats,
        "max_seconds": max_seconds,
        "image": image or "synthetic dead leaves",
        "noise": noise,
        "tokens": {"patch_radius": TOKEN_PATCH_RADIUS, "pca": TOKEN_PCA, "d": TOKEN_PCA + 1,
                   "h": "noise sigma", "scale": 1.0},
        "results": [t.as_dict() for t in timings],
    }


# --------------------------------------------------------------------------------------------
# presentation


def _cell(seconds: float | None, extrapolated: bool) -> str:
    if seconds is None:
        return "-"
    text = f"{seconds:.3g}" if seconds < 1000 else f"{seconds:.0f}"
    return ("~" + text) if extrapolated else text


def format_table(report: dict) -> str:
    """The report of :func:`run_bench` as a text table.

    One row per entry: seconds per call at each size (``~`` marks extrapolated ones), the
    compile time and the fitted exponent; unavailable or failing entries are listed below
    with their message.
    """
    sizes = report["sizes"]
    rows = []
    header = ["method"] + [f"{s}^2" for s in sizes] + ["compile", "a"]
    for r in report["results"]:
        if r["status"] != "ok":
            rows.append([r["name"]] + ["-"] * len(sizes) + ["-", f"({r['status']})"])
            continue
        cells = [_cell(r["seconds"].get(str(s)), r["extrapolated"].get(str(s), False))
                 for s in sizes]
        compile_s = "-" if r["compile_seconds"] is None else f"{r['compile_seconds']:.2f}"
        a = "-" if r["exponent"] is None else f"{r['exponent']:.2f}"
        rows.append([r["name"]] + cells + [compile_s, a])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        f"seconds per call (median of up to {report['repeats']}), n = size^2 pixels, "
        f"{report['threads']} threads, {report['image']}, noise {report['noise']:g}",
        "  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i])
                  for i, h in enumerate(header)),
    ]
    for row in rows:
        lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                               for i, c in enumerate(row)))
    lines.append(f"~ extrapolated (predicted above {report['max_seconds']:g} s, not run); "
                 "compile: first call minus the median; a: time ~ n^a fitted over the measured "
                 f"sizes >= {FIT_MIN_SIZE}^2 (all measured sizes when fewer than two)")
    for r in report["results"]:
        if r["status"] != "ok":
            lines.append(f"{r['name']}: {r['status']}: {r['message']}")
    return "\n".join(lines)


def plot_scaling(report: dict, path: str) -> None:
    """Write a log-log plot of time against pixels, one line per method.

    Parameters
    ----------
    report : dict
        From :func:`run_bench`.
    path : str
        Output file; its extension picks the format (PNG, SVG, PDF...).

    Notes
    -----
    Matplotlib's Agg canvas through the object-oriented API, so the process's pyplot backend
    is left alone.  Measured points are filled, extrapolated ones hollow on a dashed line.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [r for r in report["results"] if r["status"] == "ok" and r["seconds"]]
    palette = colormaps["tab10" if len(shown) <= 10 else "tab20"]
    figure = Figure(figsize=(10, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for i, r in enumerate(shown):
        sizes = sorted(int(s) for s in r["seconds"])
        n = [s * s for s in sizes]
        t = [r["seconds"][str(s)] for s in sizes]
        measured = [not r["extrapolated"][str(s)] for s in sizes]
        label = r["name"] + ("" if r["exponent"] is None else f" (a = {r['exponent']:.2f})")
        line = ax.plot([x for x, m in zip(n, measured, strict=True) if m],
                       [y for y, m in zip(t, measured, strict=True) if m], "o-", label=label,
                       color=palette(i % palette.N))[0]
        if not all(measured):
            first = measured.index(False)
            start = max(0, first - 1)
            ax.plot(n[start:], t[start:], "o--", mfc="none", color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pixels n")
    ax.set_ylabel("seconds per call")
    ax.set_title(f"nlattn bench: {report['threads']} threads (hollow: extrapolated)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.savefig(path, dpi=120)


def dumps(report: dict) -> str:
    """The report as one JSON document."""
    return json.dumps(report, indent=1)


__all__ = ["DEFAULT_MAX_SECONDS", "DEFAULT_REPEATS", "DEFAULT_SIZES", "Case", "Entry", "Timing",
           "dead_leaves", "dumps", "entry_names", "fit_exponent", "format_table", "make_case",
           "plot_scaling", "run_bench", "select_entries", "time_entry"]
