"""One job: read an image, denoise it, check the result, write it; never raises.

:func:`process_job` is a pure top-level function of picklable arguments, so that every executor
(this process, the local worker processes, a Dask cluster) runs the same code.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator

from nlattn.batch._text import one_line, printable
from nlattn.batch.inputs import Job, _real

__all__ = [
    "POLICIES",
    "data_range",
    "image_metrics",
    "implausible_result",
    "make_record",
    "process_job",
    "remove_stale_temporaries",
]

#: What to do with an output file that already exists.
POLICIES = ("error", "overwrite", "skip")


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


def _read_reference(reference: str | None, job: Job, image) -> tuple[object, str | None]:
    """The clean image for ``job`` and None, or None and why there is none (a warning).

    A reference that is missing, unreadable or of another shape costs the job its metrics,
    never its output.
    """
    import nlattn

    if reference is None:
        return None, None
    path = reference
    if os.path.isdir(reference):
        path = os.path.join(reference, *job.relative.split("/"))
    if not os.path.isfile(path):
        what = "not a regular file" if os.path.lexists(path) else "missing"
        return None, f"reference image {printable(path)} {what}: PSNR and SSIM not computed"
    try:
        clean, _ = nlattn.read_image(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable reference only costs the metrics
        return None, f"reference {printable(path)} unreadable ({one_line(exc)}): no PSNR, SSIM"
    if clean.shape != image.shape:
        return None, (
            f"reference {printable(path)} has shape {clean.shape}, the image {image.shape}: "
            "PSNR and SSIM not computed"
        )
    return clean, None


#: Rows checked at once by :func:`implausible_result` (bounds its temporary memory).
CHECK_ROWS = 256


def implausible_result(result, image) -> str | None:
    """Why a denoised image must not be written, or None when it is plausible.

    Parameters
    ----------
    result : ndarray
        The denoised image.
    image : ndarray
        The input it was computed from (same shape).

    Returns
    -------
    str or None
        One line when ``result`` holds values that are not finite (NaN, infinity) or is constant
        where ``image`` is not; None otherwise.

    Notes
    -----
    A denoiser never makes a non-constant image constant, and never makes finite values
    infinite: either is a failure (an overflow, a collapsed weight), whatever the exit status of
    the kernels.  Time O(H*W), extra memory ``CHECK_ROWS`` rows.
    """
    import numpy as np

    bad = 0
    result_span = [np.inf, -np.inf]
    image_span = [np.inf, -np.inf]
    for top in range(0, result.shape[0], CHECK_ROWS):
        block = result[top : top + CHECK_ROWS]
        finite = np.isfinite(block)
        if not finite.all():
            bad += block.size - int(np.count_nonzero(finite))
        elif not bad:
            source = image[top : top + CHECK_ROWS]
            for span, values in ((result_span, block), (image_span, source)):
                span[0] = min(span[0], float(values.min()))
                span[1] = max(span[1], float(values.max()))
    if bad:
        return f"the result is not finite ({bad} of {result.size} values are NaN or infinite)"
    if result_span[0] == result_span[1] and image_span[0] != image_span[1]:
        return "the result is constant where the input is not"
    return None


def make_record(job: Job, params: dict, **fields) -> dict:
    """A job's record: an error unless ``fields`` say otherwise (see :func:`process_job`)."""
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
        "warning": None,
    }
    record.update(fields)
    return record


def _overwrites_input(job: Job) -> str:
    return f"output {printable(job.output)} would overwrite the input"


def _write_reason(exc: OSError) -> str:
    """The reason of a file-system error, without the path (the record names the output)."""
    return exc.strerror or one_line(exc)


def _estimate_sigma(image, max_memory: int | None) -> float:
    """The noise level of the whole image (within ``max_memory`` when it is given)."""
    if max_memory is None:
        import nlattn

        return float(nlattn.estimate_sigma(image))
    from nlattn.tiling import estimate_sigma_bounded

    return float(estimate_sigma_bounded(image, max_memory))


def _denoise(image, params: dict, n_threads: int | None, max_memory: int | None):
    """Denoise one image: :func:`nlattn.nl_means`, tiled under a memory budget when one is given."""
    import nlattn
    from nlattn import tiling

    kwargs = dict(params)
    method = kwargs.pop("method", "nlm")
    if max_memory is not None:
        return tiling.nl_means_tiled(
            image, method, max_memory=max_memory, n_threads=n_threads, **kwargs
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
    Returns
    -------
    dict
        The record: ``input``, ``output``, ``status`` ("ok", "skipped" or "error"), ``error``
        (one line, or None), ``method``, ``parameters`` (``params`` without the method),
        ``sigma`` (the noise level used), ``seconds`` (wall time of the job), ``psnr``, ``ssim``
        (None without ``reference``), ``warning`` (one line, or None: why PSNR and SSIM are
        missing when ``reference`` is given, and what the libraries warned about while the
        job ran: numpy's RuntimeWarning, tifffile's and Pillow's log messages).

    Notes
    -----
    A pure top-level function of picklable arguments, so that any executor (this module's
    process pool, a Dask cluster) can run it.  A reference that is missing, unreadable or of
    another shape costs the job its metrics (a warning), never its output.  A result that is
    not finite, or constant for a non-constant input, is an error and is not written
    (:func:`implausible_result`).  Nothing is written for a job that fails:
    :func:`nlattn.write_image` writes a hidden temporary file and renames it, so a write that
    fails (disk full, permission denied) or is interrupted (``kill -9``) never leaves a partial
    output, and it never replaces an output that another run made meanwhile unless ``policy``
    is ``overwrite``.  The input is only read, never written, whatever ``policy`` says.
    Metrics use the nominal range of the image's dtype (255, 65535 or 1.0).
    """
    with _notes_captured() as notes:
        record = _run_job(job, params, policy, n_threads, reference, max_memory)
    if notes and record["status"] != "error":
        shown = "; ".join(dict.fromkeys(notes))
        record["warning"] = f"{record['warning']}; {shown}" if record["warning"] else shown
    return record


@contextlib.contextmanager
def _notes_captured() -> Iterator[list[str]]:
    """Collect, as one-line notes, what the libraries would print while a job runs: Python
    warnings (numpy's RuntimeWarning) and the log records of the image readers (tifffile,
    Pillow), so that they reach the user once, in the job's record, not as stray lines."""
    notes: list[str] = []

    class Collect(logging.Handler):
        def emit(self, entry: logging.LogRecord) -> None:
            notes.append(printable(entry.getMessage().strip().splitlines()[0][:200]))

    handler = Collect(logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("tifffile", "PIL")]
    propagates = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield notes
        for warning in caught:
            notes.append(printable(f"{warning.category.__name__}: {warning.message}"))
    finally:
        for logger, propagate in zip(loggers, propagates, strict=True):
            logger.removeHandler(handler)
            logger.propagate = propagate


def _run_job(job, params, policy, n_threads, reference, max_memory) -> dict:
    """:func:`process_job` without the capture of warnings."""
    start = time.perf_counter()
    if policy not in POLICIES:
        error = f"policy must be one of {list(POLICIES)}, got {policy!r}"
        return make_record(job, params, error=error)
    if job.error is not None:
        return make_record(job, params, error=job.error)
    try:
        if os.path.exists(job.output):
            if os.path.exists(job.input) and os.path.samefile(job.output, job.input):
                return make_record(job, params, error=_overwrites_input(job))
            if policy == "skip":
                return make_record(job, params, status="skipped")
            if policy == "error":
                return make_record(
                    job,
                    params,
                    error=f"output {job.output} exists (use --overwrite or --skip-existing)",
                )
            if os.path.isdir(job.output):
                return make_record(job, params, error=f"output {job.output} is a folder")
        elif _real(job.output) == _real(job.input):
            return make_record(job, params, error=_overwrites_input(job))

        import nlattn

        image, meta = nlattn.read_image(job.input)
        clean, warning = _read_reference(reference, job, image)
        kwargs = dict(params)
        sigma = kwargs.get("sigma")
        if sigma is None:
            sigma = _estimate_sigma(image, max_memory)
        kwargs["sigma"] = sigma
        denoised = _denoise(image, kwargs, n_threads, max_memory)
        implausible = implausible_result(denoised, image)
        if implausible is not None:
            raise ValueError(f"{implausible}; nothing written")
        parent = os.path.dirname(job.output)
        try:
            if parent:
                os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot create the folder {parent}: {_write_reason(exc)}") from None
        try:
            nlattn.write_image(job.output, denoised, meta=meta, replace=policy == "overwrite")
        except FileExistsError:
            # made while this job ran: another batch writing the same outputs
            if policy == "skip":
                return make_record(job, params, status="skipped")
            raise OSError(
                f"output {printable(job.output)} appeared while the image was denoised "
                "(another run writing the same outputs?): left as it is"
            ) from None
        except OSError as exc:
            raise OSError(f"cannot write {job.output}: {_write_reason(exc)}") from None
        psnr = ssim = None
        if clean is not None:
            psnr, ssim = image_metrics(denoised, clean, dtype=image.dtype)
        return make_record(
            job,
            params,
            status="ok",
            sigma=float(sigma),
            seconds=time.perf_counter() - start,
            psnr=psnr,
            ssim=ssim,
            warning=warning,
        )
    except Exception as exc:  # one bad file must not stop the batch
        return make_record(job, params, error=one_line(exc), seconds=time.perf_counter() - start)


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
    before any job runs.  Only temporary files of this batch's own outputs are touched, and only
    those no write holds any more (:func:`nlattn.io.remove_stale_temporary`): a second batch
    writing into the same folder leaves the first one's writes in progress alone.  One
    directory listing per output folder.
    """
    from nlattn.io import remove_stale_temporary, temporary_target

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
                if remove_stale_temporary(path):
                    removed.append(path)
    return removed
