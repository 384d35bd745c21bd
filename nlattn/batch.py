"""Batch processing: inputs -> jobs -> outputs.

This module turns the command line's ``INPUT...`` (files, folders, globs) into a list of
:class:`Job` objects with their output paths, and runs them, one record per job.  It holds no
Click code: the command line (``nlattn_cli``) and any other front end call it.

The work of one job is the pure top-level function :func:`process_job`; :func:`run_jobs` runs it
with one of three executors: in this process, in a pool of worker processes (``n_jobs``), or as
tasks on an existing Dask distributed cluster (``scheduler``, the ``dask`` extra).  Names,
policies, records and errors are the same whichever executor runs the jobs.

Rules:

- an input is a file, a folder (every image inside; with ``recursive``, below too, keeping the
  relative layout under the output folder) or a glob pattern, expanded here so that quoted
  patterns work;
- the tool's own outputs (stems ending with the suffix, anything inside the output folder) are
  never picked up from folders or globs;
- an input is never overwritten; an existing output is an error unless the policy says
  ``overwrite`` (replace it) or ``skip`` (leave it and report the job as skipped);
- one bad file gives an error record and the batch goes on: unreadable inputs, and outputs that
  cannot be written (disk full, permission denied) alike;
- nothing is lost: outputs are written to a hidden temporary file and renamed when complete, so a
  batch killed at any moment (``kill -9``) leaves complete outputs and, at most, temporary files
  ``.<name>.<12 hex digits>.tmp<ext>``.  Those are never taken for inputs (hidden files are
  passed by) nor outputs (they do not have the outputs' names), and the next run writing the
  same outputs removes them (:func:`remove_stale_temporaries`); rerunning with the ``skip``
  policy finishes the rest.  Pool workers whose parent is killed exit at once.  Inputs are only
  ever opened for reading.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import math
import multiprocessing
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "DASK_INSTALL",
    "POLICIES",
    "Job",
    "MissingDependencyError",
    "SchedulerError",
    "check_jobs",
    "collect_inputs",
    "iter_records",
    "output_path",
    "process_job",
    "remove_stale_temporaries",
    "require_dask",
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


def _write_reason(exc: OSError) -> str:
    """The reason of a file-system error, without the path (the record names the output)."""
    return exc.strerror or _one_line(exc)


def _estimate_sigma(image, max_memory: int | None) -> float:
    """The noise level of the whole image (within ``max_memory`` when it is given)."""
    if max_memory is None:
        import nlattn

        return float(nlattn.estimate_sigma(image))
    from nlattn.tiling import estimate_sigma_bounded

    return float(estimate_sigma_bounded(image, max_memory))


def _denoise(image, params: dict, n_threads: int | None, max_memory: int | None, force: bool):
    """Denoise one image: :func:`nlattn.nl_means`, tiled under a memory budget when one is given.

    Quadratic-time methods (``exact``) are refused on images where they would take absurdly
    long unless ``force`` (:func:`nlattn.tiling.check_feasible`).
    """
    import nlattn
    from nlattn import tiling

    kwargs = dict(params)
    method = kwargs.pop("method", "nlm")
    if max_memory is not None:
        return tiling.nl_means_tiled(
            image, method, max_memory=max_memory, force=force, n_threads=n_threads, **kwargs
        )
    if method in tiling.QUADRATIC_METHODS:
        n_channels = 1 if image.ndim == 2 else image.shape[2]
        tiling.check_feasible(
            method, image.shape[0] * image.shape[1], dv=n_channels, n_threads=n_threads,
            force=force,
        )
    return nlattn.nl_means(image, method, **kwargs, n_threads=n_threads)


def process_job(
    job: Job,
    params: dict,
    policy: str = "error",
    n_threads: int | None = None,
    reference: str | None = None,
    *,
    max_memory: int | None = None,
    force: bool = False,
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
    max_memory : int or None, default None
        Memory budget in bytes: the image is denoised in tiles that fit it
        (:func:`nlattn.tiling.nl_means_tiled`; the result is that of the untiled denoiser for
        the windowed methods).  None: in one piece.
    force : bool, default False
        Run methods whose time on this image would be absurd (``exact`` on large images)
        instead of refusing them.

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
    hidden temporary file and renames it, so a write that fails (disk full, permission denied)
    or is interrupted (``kill -9``) never leaves a partial output.  The input is only read,
    never written, whatever ``policy`` says.  Metrics use the nominal range of the image's dtype
    (255, 65535 or 1.0).
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
            sigma = _estimate_sigma(image, max_memory)
        kwargs["sigma"] = sigma
        denoised = _denoise(image, kwargs, n_threads, max_memory, force)
        parent = os.path.dirname(job.output)
        try:
            if parent:
                os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot create the folder {parent}: {_write_reason(exc)}") from None
        try:
            nlattn.write_image(job.output, denoised, meta=meta)
        except OSError as exc:
            raise OSError(f"cannot write {job.output}: {_write_reason(exc)}") from None
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
# Leftovers of interrupted writes
# ----------------------------------------------------------------------------------------------


def remove_stale_temporaries(jobs: Iterable[Job]) -> list[str]:
    """Remove the temporary files that interrupted writes of these jobs' outputs left behind.

    Parameters
    ----------
    jobs : iterable of Job
        The batch about to run; jobs in error are ignored.

    Returns
    -------
    list of str
        The paths removed (files that could not be removed are left and not listed).

    Notes
    -----
    A batch killed while writing (``kill -9``, power cut) leaves no partial output: each output
    is written to a hidden temporary file ``.<name>.<12 hex digits>.tmp<ext>`` beside it and
    renamed when complete (:func:`nlattn.io.atomic_file`).  The temporary file itself stays.
    It never looks like an output or an input (its name starts with a dot, so folder scans and
    shell globs pass it by), and the next batch that writes the same output removes it here,
    before any job runs.  Only temporary files of this batch's own outputs are touched: two
    batches writing the same outputs at the same time are not supported anyway.  One directory
    listing per output folder.
    """
    from nlattn.io import temporary_target

    wanted: dict[str, set[str]] = {}
    for job in jobs:
        if job.error is None and job.output:
            folder, name = os.path.split(os.path.abspath(job.output))
            wanted.setdefault(folder, set()).add(name)
    removed = []
    for folder, names in wanted.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue  # not created yet, or unreadable: nothing to clean
        for entry in entries:
            target = temporary_target(entry)
            if target is None:
                continue
            if target in names or any(n.startswith(target) for n in names if len(target) >= 96):
                path = os.path.join(folder, entry)
                try:
                    if os.path.isfile(path) and not os.path.islink(path):
                        os.unlink(path)
                        removed.append(path)
                except OSError:
                    pass
    return removed


# ----------------------------------------------------------------------------------------------
# Many jobs: one job function, three executors (this process, a process pool, a Dask cluster)
# ----------------------------------------------------------------------------------------------

#: How to install what ``scheduler=`` needs.
DASK_INSTALL = "pip install 'nlattn[dask]'"


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


class SchedulerError(RuntimeError):
    """The Dask scheduler cannot be reached; the message is one line naming its address."""


def require_dask() -> None:
    """Check that Dask's distributed scheduler can be imported.

    Raises
    ------
    MissingDependencyError
        With a one-line message naming the extra to install.
    """
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            f"running jobs on a Dask cluster needs dask and distributed: {DASK_INSTALL}"
        ) from None


def _init_worker(n_threads: int | None, parent: int) -> None:
    """Process-pool initializer: this worker's share of Numba threads, and a parent watchdog.

    A worker whose parent dies (``kill -9`` of the batch) exits at once instead of working
    through its queue unattended; an image it was writing stays a temporary file.
    """
    if n_threads is not None:
        import numba

        numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="nlattn-parent-watchdog", daemon=True).start()


def _worker_threads(n_jobs: int, n_threads: int | None) -> int | None:
    if n_threads is not None or n_jobs <= 1:
        return n_threads
    cpus = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0)) or cpus
    return max(1, cpus // n_jobs)


def _serial_records(jobs: list[Job], runnable: list[int], params: dict, options: dict):
    for i in runnable:
        yield i, process_job(jobs[i], params, **options)


def _pool_records(jobs: list[Job], runnable: list[int], params: dict, options: dict, n_jobs: int):
    threads = options["n_threads"]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=min(n_jobs, len(runnable)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(threads, os.getpid()),
    ) as pool:
        futures = {pool.submit(process_job, jobs[i], params, **options): i for i in runnable}
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


def _process_on_worker(job: Job, params: dict, host_slots: dict, **options) -> dict:
    """:func:`process_job` on a Dask worker, its Numba threads shared among the host's tasks.

    With ``n_threads=None`` each task gets the machine's Numba threads divided by the number of
    task threads of all the workers on its host (``host_slots``: host -> task threads, from the
    scheduler when the batch starts; this worker's own count for a host not listed), as the
    process pool divides the cores among its ``n_jobs`` workers: two one-thread workers on a
    2-core machine denoise with one Numba thread each, not two (which would oversubscribe it).
    """
    import numba

    from nlattn._validate import numba_threads

    if options.get("n_threads") is None:
        from distributed import get_worker
        from distributed.comm import get_address_host

        try:
            worker = get_worker()
            own = getattr(getattr(worker, "state", worker), "nthreads", 1) or 1
            slots = host_slots.get(get_address_host(worker.address), own)
        except ValueError:  # not inside a worker (a synchronous scheduler)
            slots = 1
        options = dict(options, n_threads=max(1, numba.config.NUMBA_NUM_THREADS // slots))
    threads = min(options["n_threads"], numba.config.NUMBA_NUM_THREADS)
    # the share also applies to whatever the job runs without an n_threads argument (noise
    # estimation, conversions), as a pool worker's initializer makes it its process default
    with numba_threads(threads):
        return process_job(job, params, **options)


def _host_slots(client) -> dict:
    """Task threads per host of the cluster's workers (empty when the scheduler does not say)."""
    from distributed.comm import get_address_host

    slots: dict = {}
    try:
        workers = client.scheduler_info().get("workers", {})
    except Exception:  # noqa: BLE001 - only an optimisation: each worker falls back to its own
        return slots
    for address, info in workers.items():
        host = info.get("host") or get_address_host(address)
        slots[host] = slots.get(host, 0) + int(info.get("nthreads", 1) or 1)
    return slots


def _absolute(job: Job) -> Job:
    """The job with absolute paths: workers do not share the client's working folder."""
    if job.error is not None:
        return job
    return dataclasses.replace(
        job, input=os.path.abspath(job.input), output=os.path.abspath(job.output)
    )


def _as_local(record: dict, job: Job, remote: Job, reference, remote_reference) -> dict:
    """A worker's record with the paths as the user gave them, as the local executors write it."""
    record = dict(record, input=job.input, output=job.output or None)
    error = record.get("error")
    if error:
        pairs = [(remote.input, job.input), (remote.output, job.output)]
        if reference is not None:
            pairs.append((remote_reference, reference))
        for remote_path, local_path in sorted(pairs, key=lambda p: -len(p[0])):
            if remote_path != local_path:
                error = error.replace(remote_path, local_path)
        record["error"] = error
    return record


def _dask_records(
    jobs: list[Job], runnable: list[int], params: dict, options: dict, scheduler
):
    import distributed

    own_client = isinstance(scheduler, str)
    if own_client:
        try:
            client = distributed.Client(scheduler, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise SchedulerError(
                f"cannot connect to the Dask scheduler at {scheduler}: {_one_line(exc)}"
            ) from None
    else:
        client = scheduler
    reference = options.get("reference")
    remote_reference = os.path.abspath(reference) if reference is not None else None
    remote_options = dict(options, reference=remote_reference)
    batch = secrets.token_hex(4)
    futures = {}
    try:
        host_slots = _host_slots(client)
        for i in runnable:
            remote = _absolute(jobs[i])
            future = client.submit(
                _process_on_worker,
                remote,
                params,
                host_slots,
                **remote_options,
                key=f"nlattn-denoise-{batch}-{i}",
                pure=False,
            )
            futures[future] = (i, remote)
        for future in distributed.as_completed(list(futures), loop=client.loop):
            i, remote = futures[future]
            try:
                record = future.result()
            except Exception as exc:  # the worker died (killed, out of memory) or was lost
                record = _record(jobs[i], params, error=f"worker failed: {_one_line(exc)}")
            else:
                record = _as_local(record, jobs[i], remote, reference, remote_reference)
            yield i, record
    except BaseException:  # interrupted, or the consumer stopped early: drop queued jobs
        if futures:
            try:
                client.cancel(list(futures))
            except Exception:  # noqa: BLE001 - the scheduler may be gone already
                pass
        raise
    finally:
        if own_client:
            client.close()


def iter_records(
    jobs: Iterable[Job],
    *,
    params: dict,
    policy: str = "error",
    n_jobs: int = 1,
    n_threads: int | None = None,
    reference: str | None = None,
    scheduler=None,
    max_memory: int | None = None,
    force: bool = False,
) -> Iterator[tuple[int, dict]]:
    """Run jobs and yield ``(index, record)`` pairs as the jobs complete.

    Parameters are those of :func:`run_jobs`; ``index`` is the job's position in ``jobs``.
    """
    from nlattn._validate import check_choice, check_int

    check_choice("policy", policy, POLICIES)
    n_jobs = check_int("n_jobs", n_jobs, minimum=1)
    if n_threads is not None:
        n_threads = check_int("n_threads", n_threads, minimum=1)
    if max_memory is not None:
        from nlattn.tiling import MIN_MEMORY

        max_memory = check_int("max_memory", max_memory, minimum=MIN_MEMORY)
    if not isinstance(force, bool):
        raise TypeError(f"force must be a bool, got {type(force).__name__} {force!r}")
    if scheduler is not None:
        if n_jobs != 1:
            raise ValueError(f"n_jobs must be 1 when a scheduler is given, got {n_jobs}")
        if isinstance(scheduler, str):
            if not scheduler.strip():
                raise ValueError("scheduler must be a Dask scheduler address, got ''")
        elif not hasattr(scheduler, "submit"):
            raise TypeError(
                "scheduler must be an address (str) or a distributed.Client, got "
                f"{type(scheduler).__name__}"
            )
        require_dask()
    jobs = check_jobs(jobs)
    runnable = [i for i, job in enumerate(jobs) if job.error is None]
    options = {
        "policy": policy,
        "n_threads": n_threads,
        "reference": reference,
        "max_memory": max_memory,
        "force": force,
    }
    # jobs already in error need no worker
    for i, job in enumerate(jobs):
        if job.error is not None:
            yield i, process_job(job, params, **options)
    if not runnable:
        return
    remove_stale_temporaries(jobs[i] for i in runnable)
    if scheduler is not None:
        yield from _dask_records(jobs, runnable, params, options, scheduler)
    elif n_jobs == 1 or len(runnable) <= 1:
        yield from _serial_records(jobs, runnable, params, options)
    else:
        options["n_threads"] = _worker_threads(n_jobs, n_threads)
        yield from _pool_records(jobs, runnable, params, options, n_jobs)


def run_jobs(
    jobs: Iterable[Job],
    *,
    params: dict,
    policy: str = "error",
    n_jobs: int = 1,
    n_threads: int | None = None,
    reference: str | None = None,
    scheduler=None,
    max_memory: int | None = None,
    force: bool = False,
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
        Numba threads per image.  None with ``n_jobs > 1``: the CPUs divided among the workers;
        on a Dask cluster: each worker's cores divided among its task threads.
    reference : str or None, default None
        Clean image file, or folder of clean images under the jobs' relative names, for PSNR/SSIM.
    scheduler : str, distributed.Client or None, default None
        Run the jobs on an existing Dask distributed cluster: the scheduler's address
        (``tcp://host:port``) or a connected client.  Needs the ``dask`` extra; the workers must
        see the inputs and outputs under the same absolute paths (a shared file system).
    max_memory : int or None, default None
        Memory budget per image in bytes: images are denoised in tiles that fit it (see
        :func:`process_job`).
    force : bool, default False
        Run methods whose time would be absurd on an image instead of refusing them.
    on_record : callable or None, default None
        Called with each record as its job completes (completion order).

    Returns
    -------
    list of dict
        The records (see :func:`process_job`), in the order of ``jobs``.

    Raises
    ------
    ValueError, TypeError
        If ``policy``, ``n_jobs``, ``n_threads``, ``max_memory`` or ``scheduler`` is invalid, or
        both ``n_jobs > 1`` and ``scheduler`` are given (before any job runs).
    MissingDependencyError
        If ``scheduler`` is given and Dask is not installed.
    SchedulerError
        If the scheduler cannot be reached.

    Notes
    -----
    Every executor runs the same job function, :func:`process_job`, on the same jobs: in this
    process (``n_jobs=1``), in a pool of worker processes (``n_jobs > 1``), or as Dask tasks
    (``scheduler``); records, file names, policies and errors are the same whichever runs them
    (a Dask worker's records give the paths as they were given here).  Results do not depend
    on the executor, ``n_jobs`` or ``n_threads``: each image is denoised by the same
    deterministic kernels.  Before the jobs run, temporary files left by interrupted writes of
    their outputs are removed (:func:`remove_stale_temporaries`).  Time: the sum of the jobs'
    times divided by about the number of workers, plus worker start-up (each worker imports
    nlattn and loads the compiled kernels from the cache).
    """
    jobs = list(jobs)
    records: list[dict | None] = [None] * len(jobs)
    for i, record in iter_records(
        jobs,
        params=params,
        policy=policy,
        n_jobs=n_jobs,
        n_threads=n_threads,
        reference=reference,
        scheduler=scheduler,
        max_memory=max_memory,
        force=force,
    ):
        records[i] = record
        if on_record is not None:
            on_record(record)
    return [record for record in records if record is not None]
