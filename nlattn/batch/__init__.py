"""Batch processing: inputs -> jobs -> outputs, one record per job, nothing lost.

A small package, a module a concern:

- :mod:`~nlattn.batch.inputs`: files, folders and glob patterns -> :class:`Job` objects and
  their output names;
- :mod:`~nlattn.batch.job`: one job (read, denoise, check, write), a record, never raises;
- :mod:`~nlattn.batch.runner`: the run loop every executor shares (retries of jobs whose worker
  died, an executor that cannot go on, Ctrl-C);
- :mod:`~nlattn.batch.pool` and :mod:`~nlattn.batch.cluster`: the executors (this process,
  local worker processes, a Dask cluster).

It holds no Click code: the command line (``nlattn_cli``) and any other front end call
:func:`collect_inputs` and :func:`run_jobs`.

Rules:

- an input is never overwritten; an existing output is an error unless the policy says
  ``overwrite`` (replace it) or ``skip`` (leave it and report the job as skipped);
- one bad file gives an error record and the batch goes on: unreadable inputs, special files,
  implausible results (not finite, or constant for a non-constant input), outputs that cannot be
  written (disk full, permission denied) and images that kill their workers alike;
- nothing is lost: outputs are written to a hidden temporary file and renamed when complete, so a
  batch killed at any moment (``kill -9``) leaves complete outputs and, at most, temporary files
  ``.<name>.<12 hex digits>.tmp<ext>``.  Those are never taken for inputs (hidden files are
  passed by) nor outputs (they do not have the outputs' names); an interrupted batch (Ctrl-C)
  removes them itself, and the next run writing the same outputs removes any left
  (:func:`remove_stale_temporaries`); rerunning with the ``skip`` policy finishes the rest.
  Worker processes whose parent is killed exit at once.  Inputs are only ever opened for reading.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from nlattn.batch._text import printable
from nlattn.batch.cluster import (
    DASK_INSTALL,
    DaskExecutor,
    MissingDependencyError,
    SchedulerError,
    check_scheduler_address,
    require_dask,
)
from nlattn.batch.inputs import DEFAULT_SUFFIX, Job, check_jobs, collect_inputs, output_path
from nlattn.batch.job import (
    POLICIES,
    data_range,
    image_metrics,
    implausible_result,
    process_job,
    remove_stale_temporaries,
)
from nlattn.batch.pool import InProcess, WorkerPool, worker_threads
from nlattn.batch.runner import run_executor

__all__ = [
    "DASK_INSTALL",
    "DEFAULT_SUFFIX",
    "POLICIES",
    "Job",
    "MissingDependencyError",
    "SchedulerError",
    "check_jobs",
    "check_scheduler_address",
    "collect_inputs",
    "data_range",
    "image_metrics",
    "implausible_result",
    "iter_records",
    "output_path",
    "printable",
    "process_job",
    "remove_stale_temporaries",
    "require_dask",
    "run_jobs",
]


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
    if scheduler is not None:
        if n_jobs != 1:
            raise ValueError(f"n_jobs must be 1 when a scheduler is given, got {n_jobs}")
        if isinstance(scheduler, str):
            check_scheduler_address(scheduler)  # '' included
        elif not hasattr(scheduler, "submit"):
            raise TypeError(
                "scheduler must be an address (str) or a distributed.Client, got "
                f"{type(scheduler).__name__}"
            )
        else:
            require_dask()
    jobs = check_jobs(jobs)
    runnable = [i for i, job in enumerate(jobs) if job.error is None]
    options = {
        "policy": policy,
        "n_threads": n_threads,
        "reference": reference,
        "max_memory": max_memory,
    }
    # jobs already in error need no worker
    for i, job in enumerate(jobs):
        if job.error is not None:
            yield i, process_job(job, params, **options)
    if not runnable:
        return
    remove_stale_temporaries(jobs[i] for i in runnable)
    if scheduler is not None:
        executor = DaskExecutor(scheduler, params, options)
    elif n_jobs == 1 or len(runnable) <= 1:
        executor = InProcess(params, options)
    else:
        options["n_threads"] = worker_threads(n_jobs, n_threads)
        executor = WorkerPool(min(n_jobs, len(runnable)), params, options)
    yield from run_executor(executor, jobs, runnable, params)


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
    on_record : callable or None, default None
        Called with each record as its job completes (completion order).

    Returns
    -------
    list of dict
        The records (see :func:`process_job`), in the order of ``jobs``.

    Raises
    ------
    ValueError, TypeError
        If ``policy``, ``n_jobs``, ``n_threads``, ``max_memory`` or ``scheduler`` is invalid
        (an address without a port, say), or both ``n_jobs > 1`` and ``scheduler`` are given
        (before any job runs).
    MissingDependencyError
        If ``scheduler`` is given and Dask is not installed.
    SchedulerError
        If nothing answers at the scheduler's address (within a few seconds).
    KeyboardInterrupt
        On Ctrl-C: the workers are stopped at once and the temporary files of the images they
        were writing removed first; the records of the jobs done so far went to ``on_record``.

    Notes
    -----
    Every executor runs the same job function, :func:`process_job`, on the same jobs: in this
    process (``n_jobs=1``), in a pool of worker processes (``n_jobs > 1``), or as Dask tasks
    (``scheduler``); records, file names, policies and errors are the same whichever runs them
    (a Dask worker's records give the paths as they were given here).  A job whose worker
    process dies is run once more on a fresh worker (on Dask: as often as the scheduler's
    ``allowed-failures``); if it kills that one too, its record names it.  A Dask batch whose
    cluster has no worker left, or whose scheduler is lost, ends after
    ``distributed.scheduler.no-workers-timeout`` (when set) or
    ``distributed.comm.timeouts.connect`` with an error record for every unfinished job.
    Results do not depend on the executor, ``n_jobs`` or ``n_threads``: each image is denoised
    by the same deterministic kernels.  Before the jobs run, temporary files left by
    interrupted writes of their outputs are removed (:func:`remove_stale_temporaries`).
    Time: the sum of the jobs' times divided by about the number of workers, plus worker
    start-up (each worker imports nlattn and loads the compiled kernels from the cache).
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
    ):
        records[i] = record
        if on_record is not None:
            on_record(record)
    return [record for record in records if record is not None]
