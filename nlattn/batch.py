"""Batch processing: inputs -> jobs -> outputs.

This module turns the command line's ``INPUT...`` (files, folders, globs) into a list of
:class:`Job` objects with their output paths, and runs them, one record per job.  It holds no
Click code: the command line (``nlattn_cli``) and any other front end call it.

The work of one job is the pure top-level function :func:`process_job`; :func:`run_jobs` runs it
in this process or in a pool of worker processes, and another executor (a Dask cluster) can map
the same function over the same jobs.

Rules (design §4):

- an input is a file, a folder (every image inside; with ``recursive``, below too, keeping the
  relative layout under the output folder) or a glob pattern, expanded here so that quoted
  patterns work;
- the tool's own outputs (stems ending with the suffix, anything inside the output folder) are
  never picked up from folders or globs;
- an input is never overwritten; an existing output is an error unless the policy says
  ``overwrite`` (replace it) or ``skip`` (leave it and report the job as skipped);
- one bad file gives an error record and the batch goes on.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "POLICIES",
    "Job",
    "check_jobs",
    "collect_inputs",
    "iter_records",
    "output_path",
    "process_job",
    "run_jobs",
]

#: What to do with an output file that already exists.
POLICIES = ("error", "overwrite", "skip")

#: Default suffix appended to the stem of an input to name its output.
DEFAULT_SUFFIX = "_denoised"


@dataclass(frozen=True)
class Job:
    """One input image and where its result goes.

    Attributes
    ----------
    input : str
        Path of the input image, as found (not resolved).
    output : str
        Path of the output image.
    relative : str
        Name of the input relative to the folder it was found in (``sub/a.png``), or its base name
        for files named directly or matched by a glob.  Used to keep the layout under the output
        folder and to look up the matching clean image in a reference folder.
    error : str or None
        Why this job cannot run (the input does not exist, its output collides with an input or
        another job's output); None for a runnable job.  :func:`process_job` turns it into an error
        record without touching any file.
    """

    input: str
    output: str
    relative: str
    error: str | None = None


# ----------------------------------------------------------------------------------------------
# Inputs and naming
# ----------------------------------------------------------------------------------------------


def _image_extensions() -> frozenset[str]:
    from nlattn.io import IMAGE_EXTENSIONS

    return frozenset(IMAGE_EXTENSIONS)


def _is_image_name(path: str, extensions: frozenset[str]) -> bool:
    return os.path.splitext(path)[1].lower() in extensions


def output_path(input_path: str, relative: str, *, output_dir: str | None, suffix: str) -> str:
    """Name the output of one input: ``{stem}{suffix}{ext}``.

    Parameters
    ----------
    input_path : str
        Path of the input image.
    relative : str
        Its name relative to the folder it was found in (``sub/a.png``), or its base name.
    output_dir : str or None
        Folder for the outputs; the relative layout is kept under it.  None: the output goes next
        to the input.
    suffix : str
        Appended to the stem (may be empty, in which case the output must go elsewhere).

    Returns
    -------
    str
        The output path.
    """
    stem, ext = os.path.splitext(os.path.basename(input_path))
    name = f"{stem}{suffix}{ext}"
    if output_dir is None:
        return os.path.join(os.path.dirname(input_path), name)
    rel_dir = os.path.dirname(relative)
    return os.path.join(output_dir, rel_dir, name) if rel_dir else os.path.join(output_dir, name)


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _inside(real: str, folder_real: str | None) -> bool:
    """Whether the resolved path ``real`` is ``folder_real`` or lies below it."""
    if folder_real is None:
        return False
    return real == folder_real or real.startswith(folder_real.rstrip(os.sep) + os.sep)


def _glob_base(pattern: str) -> str:
    """The folder a glob pattern starts from: its leading components without wildcards."""
    base = pattern
    while glob.has_magic(base):
        base = os.path.dirname(base)
    return base or os.curdir


def collect_inputs(
    inputs: Iterable[str],
    *,
    recursive: bool = False,
    output_dir: str | None = None,
    suffix: str = DEFAULT_SUFFIX,
) -> tuple[list[Job], list[str]]:
    """Expand files, folders and glob patterns into jobs.

    Parameters
    ----------
    inputs : iterable of str
        Files, folders, or glob patterns (``*``, ``?``, ``[...]``; ``**`` with ``recursive``).
        Patterns are expanded here, so quoted patterns work the same as shell-expanded ones.
    recursive : bool, default False
        Walk folders recursively, keeping the relative layout under ``output_dir``.
    output_dir : str or None, default None
        Folder for the outputs; None puts each output next to its input.
    suffix : str, default "_denoised"
        Appended to each input's stem to name its output.

    Returns
    -------
    jobs : list of Job
        One job per input image, in the order found (folders sorted by name), duplicates
        removed.  An input that does not exist, a pattern that matches nothing, and a named file
        that is not an image give a job with ``error`` set, so that the caller reports them with
        the other per-input failures.
    warnings : list of str
        One line per thing skipped: non-image files and sub-folders (without ``recursive``) found
        in folders or matched by patterns.

    Notes
    -----
    Files named directly are always taken.  Files found in folders or matched by patterns are
    taken when their extension is one of :data:`nlattn.io.IMAGE_EXTENSIONS` and their name does
    not start with a dot (hidden files, and the temporary files of writes), except the tool's
    own outputs: files whose stem ends with ``suffix`` (when it is not empty), and anything in
    ``output_dir`` when that folder lies below the folder being scanned (when it is the scanned
    folder itself, as in ``nlattn denoise . -o .``, the suffix alone tells outputs apart).
    Jobs whose output would overwrite an input or another job's output get an error (see
    :func:`check_jobs`).  Cost: one directory listing per folder visited.
    """
    extensions = _image_extensions()
    out_real = _real(output_dir) if output_dir is not None else None
    jobs: list[Job] = []
    warnings: list[str] = []

    def excluded_below(root: str) -> str | None:
        # The output folder is left out of a scan only when it lies strictly below the scanned
        # folder: when it *is* that folder (``nlattn denoise . -o .``) or above it, outputs are
        # recognised by their suffix alone.
        if out_real is None:
            return None
        return out_real if _inside(out_real, _real(root)) and out_real != _real(root) else None

    def add(path: str, relative: str) -> None:
        jobs.append(
            Job(path, output_path(path, relative, output_dir=output_dir, suffix=suffix), relative)
        )

    def add_found_file(path: str, relative: str, skip_dir: str | None) -> None:
        name = os.path.basename(path)
        if name.startswith("."):
            return  # hidden files, among them an interrupted write's temporary file
        stem = os.path.splitext(name)[0]
        if (suffix and stem.endswith(suffix)) or _inside(_real(path), skip_dir):
            return  # the tool's own output
        if not _is_image_name(path, extensions):
            warnings.append(f"skipping {path}: not an image file")
            return
        add(path, relative)

    def add_folder(folder: str) -> None:
        skip_dir = excluded_below(folder)
        if recursive:
            for root, dirs, files in os.walk(folder):
                dirs.sort()
                dirs[:] = [d for d in dirs if not _inside(_real(os.path.join(root, d)), skip_dir)]
                for name in sorted(files):
                    path = os.path.join(root, name)
                    relative = os.path.relpath(path, folder).replace(os.sep, "/")
                    add_found_file(path, relative, skip_dir)
            return
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            jobs.append(Job(folder, "", os.path.basename(folder), _one_line(exc)))
            return
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                if not _inside(_real(path), skip_dir):
                    warnings.append(f"skipping folder {path} (use --recursive to enter it)")
                continue
            add_found_file(path, name, skip_dir)

    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            add_folder(item)
        elif os.path.isfile(item):
            if _is_image_name(item, extensions):
                add(item, os.path.basename(item))
            else:
                shown = ", ".join(sorted(extensions))
                reason = f"not an image file (extensions: {shown})"
                jobs.append(Job(item, "", os.path.basename(item), reason))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=recursive))
            if not matches:
                jobs.append(Job(item, "", item, "no file matches this pattern"))
            skip_dir = excluded_below(_glob_base(item))
            for match in matches:
                if _inside(_real(match), skip_dir):
                    continue
                if os.path.isdir(match):
                    add_folder(match)
                else:
                    add_found_file(match, os.path.basename(match), skip_dir)
        elif os.path.exists(item):
            jobs.append(Job(item, "", os.path.basename(item), "not a regular file or folder"))
        else:
            jobs.append(Job(item, "", os.path.basename(item), "no such file or folder"))

    # the same file named twice (directly and through its folder, say): keep the first
    unique: list[Job] = []
    seen: set[str] = set()
    for job in jobs:
        key = _real(job.input) if job.error is None else "\0" + job.input
        if key in seen:
            continue
        seen.add(key)
        unique.append(job)
    return check_jobs(unique), warnings


def check_jobs(jobs: Iterable[Job]) -> list[Job]:
    """Mark jobs that would overwrite an input or share an output with an earlier job.

    Parameters
    ----------
    jobs : iterable of Job
        The batch.

    Returns
    -------
    list of Job
        The same jobs, in order; a job whose output path is (resolves to) the input of any job in
        the batch, or the output of an earlier job, gets ``error`` set.  Jobs already in error are
        left as they are.

    Notes
    -----
    :func:`run_jobs` calls it, so hand-made job lists get the same protection.  O(number of jobs).
    """
    jobs = list(jobs)
    inputs = {_real(job.input): job.input for job in jobs if job.error is None}
    outputs: dict[str, str] = {}
    checked = []
    for job in jobs:
        if job.error is None:
            out = _real(job.output)
            if out in inputs:
                job = dataclasses.replace(
                    job, error=f"output {job.output} would overwrite the input {inputs[out]}"
                )
            elif out in outputs:
                job = dataclasses.replace(
                    job, error=f"output {job.output} is also the output of {outputs[out]}"
                )
            else:
                outputs[out] = job.input
        checked.append(job)
    return checked


# ----------------------------------------------------------------------------------------------
# One job
# ----------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    first = text.splitlines()[0].strip() if text else ""
    return first or type(exc).__name__


def data_range(dtype) -> float:
    """Nominal data range of an image dtype: 255 (uint8), 65535 (uint16), 1.0 (float).

    Parameters
    ----------
    dtype : numpy dtype or type
        The image's dtype.

    Returns
    -------
    float
        The range used for PSNR and SSIM (other integer types: the span of the type).
    """
    import numpy as np

    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.max) - float(min(info.min, 0))
    return 1.0


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def image_metrics(image, reference, *, dtype=None) -> tuple[float | None, float]:
    """PSNR and SSIM of ``image`` against a clean ``reference`` (``skimage.metrics``).

    Parameters
    ----------
    image, reference : ndarray
        Same shape, ``(H, W)`` or ``(H, W, C)``.
    dtype : numpy dtype, optional
        Whose nominal range (:func:`data_range`) is used; default ``image.dtype``.

    Returns
    -------
    psnr : float or None
        In dB; None when the images are identical (infinite PSNR).
    ssim : float
        Mean structural similarity (colour: over channels); the window shrinks to the image's
        smallest side (odd) on images smaller than 7 pixels.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    image = np.asarray(image)
    reference = np.asarray(reference)
    if image.shape != reference.shape:
        raise ValueError(
            f"reference has shape {reference.shape}, the image has shape {image.shape}"
        )
    rng = data_range(image.dtype if dtype is None else dtype)
    a = image.astype(np.float64)
    b = reference.astype(np.float64)
    with np.errstate(divide="ignore"):
        psnr = peak_signal_noise_ratio(b, a, data_range=rng)
    side = min(a.shape[0], a.shape[1])
    win = min(7, side if side % 2 == 1 else side - 1)
    if win < 3:
        raise ValueError(f"image of shape {a.shape} is too small for SSIM")
    ssim = structural_similarity(
        b, a, data_range=rng, win_size=win, channel_axis=-1 if a.ndim == 3 else None
    )
    return _finite_or_none(psnr), float(ssim)


def _reference_path(reference: str, job: Job) -> str:
    if os.path.isdir(reference):
        path = os.path.join(reference, *job.relative.split("/"))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no reference image {path}")
        return path
    if not os.path.isfile(reference):
        raise FileNotFoundError(f"no reference image {reference}")
    return reference


def _record(job: Job, params: dict, **fields) -> dict:
    parameters = {key: value for key, value in params.items() if key != "method"}
    record = {
        "input": job.input,
        "output": job.output or None,
        "status": "error",
        "error": None,
        "method": params.get("method", "nlm"),
        "parameters": parameters,
        "sigma": None,
        "seconds": None,
        "psnr": None,
        "ssim": None,
    }
    record.update(fields)
    return record


def process_job(
    job: Job,
    params: dict,
    policy: str = "error",
    n_threads: int | None = None,
    reference: str | None = None,
) -> dict:
    """Denoise one image: read, :func:`nlattn.nl_means`, write; never raises.

    Parameters
    ----------
    job : Job
        The input and output paths.
    params : dict
        Keyword arguments of :func:`nlattn.nl_means` (``method``, ``sigma``, ``h``,
        ``patch_radius``, ``search_radius``, ``k``, ``seed``, ``aggregation``); ``sigma=None``
        estimates the noise of this image with :func:`nlattn.estimate_sigma`.
    policy : {"error", "overwrite", "skip"}, default "error"
        What to do when the output exists: report an error, replace it, or skip the job.
    n_threads : int or None, default None
        Numba threads for this image (None: Numba's current setting).
    reference : str or None, default None
        A clean image, or a folder holding clean images under the job's relative name; with it the
        record carries PSNR and SSIM of the output.

    Returns
    -------
    dict
        The record: ``input``, ``output``, ``status`` ("ok", "skipped" or "error"), ``error``
        (one line, or None), ``method``, ``parameters`` (``params`` without the method),
        ``sigma`` (the noise level used), ``seconds`` (wall time of the job), ``psnr``, ``ssim``
        (None without ``reference``).

    Notes
    -----
    A pure top-level function of picklable arguments, so that any executor (this module's
    process pool, a Dask cluster) can run it.  Nothing is written for a job that fails: the
    reference is read and checked before denoising, and :func:`nlattn.write_image` writes a
    temporary file and renames it.  The input is never overwritten, whatever ``policy`` says.
    Metrics use the nominal range of the image's dtype (255, 65535 or 1.0).
    """
    start = time.perf_counter()
    if policy not in POLICIES:
        return _record(job, params, error=f"policy must be one of {list(POLICIES)}, got {policy!r}")
    if job.error is not None:
        return _record(job, params, error=job.error)
    try:
        if os.path.exists(job.output):
            if os.path.exists(job.input) and os.path.samefile(job.output, job.input):
                return _record(job, params, error=f"output {job.output} would overwrite the input")
            if policy == "skip":
                return _record(job, params, status="skipped")
            if policy == "error":
                return _record(
                    job,
                    params,
                    error=f"output {job.output} exists (use --overwrite or --skip-existing)",
                )
            if os.path.isdir(job.output):
                return _record(job, params, error=f"output {job.output} is a folder")
        elif _real(job.output) == _real(job.input):
            return _record(job, params, error=f"output {job.output} would overwrite the input")

        import nlattn

        image, meta = nlattn.read_image(job.input)
        clean = None
        if reference is not None:
            clean, _ = nlattn.read_image(_reference_path(reference, job))
            if clean.shape != image.shape:
                raise ValueError(
                    f"reference has shape {clean.shape}, the image has shape {image.shape}"
                )
        kwargs = dict(params)
        sigma = kwargs.get("sigma")
        if sigma is None:
            sigma = float(nlattn.estimate_sigma(image))
        kwargs["sigma"] = sigma
        denoised = nlattn.nl_means(image, **kwargs, n_threads=n_threads)
        parent = os.path.dirname(job.output)
        if parent:
            os.makedirs(parent, exist_ok=True)
        nlattn.write_image(job.output, denoised, meta=meta)
        psnr = ssim = None
        if clean is not None:
            psnr, ssim = image_metrics(denoised, clean, dtype=image.dtype)
        return _record(
            job,
            params,
            status="ok",
            sigma=float(sigma),
            seconds=time.perf_counter() - start,
            psnr=psnr,
            ssim=ssim,
        )
    except Exception as exc:  # one bad file must not stop the batch
        return _record(job, params, error=_one_line(exc), seconds=time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------
# Many jobs
# ----------------------------------------------------------------------------------------------


def _init_worker(n_threads: int | None) -> None:
    """Process-pool initializer: give this worker its share of Numba threads."""
    if n_threads is None:
        return
    import numba

    numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))


def _worker_threads(n_jobs: int, n_threads: int | None) -> int | None:
    if n_threads is not None or n_jobs <= 1:
        return n_threads
    cpus = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0)) or cpus
    return max(1, cpus // n_jobs)


def iter_records(
    jobs: Iterable[Job],
    *,
    params: dict,
    policy: str = "error",
    n_jobs: int = 1,
    n_threads: int | None = None,
    reference: str | None = None,
) -> Iterator[tuple[int, dict]]:
    """Run jobs and yield ``(index, record)`` pairs as the jobs complete.

    Parameters are those of :func:`run_jobs`; ``index`` is the job's position in ``jobs``.
    """
    from nlattn._validate import check_choice, check_int

    check_choice("policy", policy, POLICIES)
    n_jobs = check_int("n_jobs", n_jobs, minimum=1)
    if n_threads is not None:
        n_threads = check_int("n_threads", n_threads, minimum=1)
    jobs = check_jobs(jobs)
    runnable = [i for i, job in enumerate(jobs) if job.error is None]
    # jobs already in error need no worker
    for i, job in enumerate(jobs):
        if job.error is not None:
            yield i, process_job(job, params, policy, n_threads, reference)
    if n_jobs == 1 or len(runnable) <= 1:
        for i in runnable:
            yield i, process_job(jobs[i], params, policy, n_threads, reference)
        return
    threads = _worker_threads(n_jobs, n_threads)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=min(n_jobs, len(runnable)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(threads,),
    ) as pool:
        futures = {
            pool.submit(process_job, jobs[i], params, policy, threads, reference): i
            for i in runnable
        }
        try:
            for future in concurrent.futures.as_completed(futures):
                i = futures[future]
                try:
                    record = future.result()
                except Exception as exc:  # a worker died (killed, out of memory)
                    record = _record(jobs[i], params, error=f"worker failed: {_one_line(exc)}")
                yield i, record
        except BaseException:  # interrupted, or the consumer stopped early: drop queued jobs
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def run_jobs(
    jobs: Iterable[Job],
    *,
    params: dict,
    policy: str = "error",
    n_jobs: int = 1,
    n_threads: int | None = None,
    reference: str | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run a batch of jobs, one record each; one bad file does not stop the batch.

    Parameters
    ----------
    jobs : iterable of Job
        From :func:`collect_inputs` (or made by hand; :func:`check_jobs` is applied).
    params : dict
        Keyword arguments of :func:`nlattn.nl_means`; ``sigma=None`` estimates each image's noise.
    policy : {"error", "overwrite", "skip"}, default "error"
        What to do with outputs that exist already.
    n_jobs : int, default 1
        Worker processes; 1 runs in this process, more use a ``spawn`` process pool.
    n_threads : int or None, default None
        Numba threads per image.  None with ``n_jobs > 1``: the CPUs divided among the workers.
    reference : str or None, default None
        Clean image file, or folder of clean images under the jobs' relative names, for PSNR/SSIM.
    on_record : callable or None, default None
        Called with each record as its job completes (completion order).

    Returns
    -------
    list of dict
        The records (see :func:`process_job`), in the order of ``jobs``.

    Raises
    ------
    ValueError, TypeError
        If ``policy``, ``n_jobs`` or ``n_threads`` is invalid (before any job runs).

    Notes
    -----
    Results do not depend on ``n_jobs`` or ``n_threads``: each image is denoised by the same
    deterministic kernels.  Time: the sum of the jobs' times divided by about ``n_jobs``, plus
    worker start-up (each worker imports nlattn and loads the compiled kernels from the cache).
    """
    jobs = list(jobs)
    records: list[dict | None] = [None] * len(jobs)
    for i, record in iter_records(
        jobs, params=params, policy=policy, n_jobs=n_jobs, n_threads=n_threads, reference=reference
    ):
        records[i] = record
        if on_record is not None:
            on_record(record)
    return [record for record in records if record is not None]
