"""Many jobs, one run loop: queueing, retries, failures and interrupts, whatever runs the jobs.

An executor runs jobs (:func:`nlattn.batch.job.process_job`) somewhere: in this process, in
local worker processes (:mod:`nlattn.batch.pool`), or on a Dask cluster
(:mod:`nlattn.batch.cluster`).  It only says what became of each job it was given; this module
decides everything else the same way for all of them:

- a job whose worker died (``kill -9``, out of memory) is given to a fresh worker once more,
  where the executor allows it; a job that kills workers again is reported by name;
- when the executor cannot go on (no Dask worker left, the scheduler lost), every unfinished job
  gets an error record naming why, and the batch ends;
- Ctrl-C (or the consumer stopping early) stops the workers at once, removes the temporary
  files of the jobs they were writing, and re-raises; a second Ctrl-C during that cleanup is
  ignored rather than shown as a traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from nlattn.batch.inputs import Job
from nlattn.batch.job import make_record, remove_stale_temporaries

__all__ = ["Executor", "Outcome", "run_executor"]

#: Seconds between checks of the executor's health while waiting for jobs.
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Outcome:
    """What became of one job given to an executor.

    Attributes
    ----------
    index : int
        The job's position in the batch.
    record : dict or None
        The job's record when it ran (successfully or not); None when it was lost.
    lost : str or None
        Why the job was lost without a record (its worker died); one line.
    retry : bool
        Whether running the job again may help (False when the executor retried already).
    """

    index: int
    record: dict | None = None
    lost: str | None = None
    retry: bool = True


class Executor(Protocol):
    """Runs jobs; :func:`run_executor` drives it."""

    #: How many times a lost job is run again.
    retries: int

    def free_slots(self) -> int:
        """How many more jobs may be submitted now."""

    def submit(self, index: int, job: Job) -> None:
        """Start (or queue) one job."""

    def poll(self, timeout: float) -> list[Outcome]:
        """Wait up to ``timeout`` seconds; the outcomes of the jobs that ended meanwhile."""

    def failure(self) -> str | None:
        """Why no job can finish any more (one line), or None while the executor is healthy."""

    def stop(self) -> None:
        """Abandon every job at once (interrupted); must not wait for running jobs."""

    def close(self) -> None:
        """Release the workers after the last job."""


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ignore Ctrl-C in the block (the main thread's SIGINT handler), then restore it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _lost_text(lost: str | None, attempts: int) -> str:
    reason = lost or "its worker was lost"
    if attempts > 1:
        return f"{reason}, on each of {attempts} attempts: this image kills its workers"
    return reason


def _unconfirmed(error: str, job: Job, since: float) -> str:
    """``error``, saying so when the job's output was written during the batch all the same
    (a worker that finished while its record was lost with the scheduler)."""
    try:
        written = os.stat(job.output).st_mtime >= since
    except OSError:
        written = False
    if written:
        return f"{error}; its output was written, but unconfirmed: check it or rerun it"
    return error


def run_executor(
    executor: Executor, jobs: list[Job], runnable: list[int], params: dict
) -> Iterator[tuple[int, dict]]:
    """Run ``jobs[i]`` for ``i`` in ``runnable`` on ``executor``; yield ``(i, record)`` pairs.

    Parameters
    ----------
    executor : Executor
        Runs the jobs.
    jobs : list of Job
        The batch.
    runnable : list of int
        Positions of the jobs to run, in the order they are started.
    params : dict
        The denoising parameters (for the records of lost jobs).

    Yields
    ------
    (int, dict)
        Each job's position and record, in completion order; every runnable job gets exactly
        one record unless the run is interrupted.

    Notes
    -----
    At most ``len(runnable) * (1 + executor.retries)`` submissions.  On any exception (Ctrl-C)
    or when the consumer closes the generator, the executor is stopped, the temporary files of
    the jobs in flight are removed, and the exception propagates.
    """
    since = time.time() - 1.0  # file times may be coarser than the clock
    queue = deque(runnable)
    in_flight: set[int] = set()
    attempts: Counter[int] = Counter()
    completed = False
    try:
        while queue or in_flight:
            while queue and executor.free_slots() > 0:
                index = queue.popleft()
                executor.submit(index, jobs[index])
                in_flight.add(index)
            for outcome in executor.poll(POLL_SECONDS):
                index = outcome.index
                in_flight.discard(index)
                if outcome.record is not None:
                    yield index, outcome.record
                    continue
                remove_stale_temporaries([jobs[index]])  # the dead worker's unfinished write
                attempts[index] += 1
                if outcome.retry and attempts[index] <= executor.retries:
                    queue.appendleft(index)
                    continue
                error = _unconfirmed(_lost_text(outcome.lost, attempts[index]), jobs[index], since)
                yield index, make_record(jobs[index], params, error=error)
            failure = executor.failure()
            if failure is not None:
                unfinished = sorted(in_flight) + list(queue)
                in_flight.clear()
                queue.clear()
                with interrupts_held():
                    executor.stop()
                    remove_stale_temporaries(jobs[index] for index in unfinished)
                for index in unfinished:
                    error = _unconfirmed(failure, jobs[index], since)
                    yield index, make_record(jobs[index], params, error=error)
        completed = True
    finally:
        with interrupts_held():
            if completed:
                executor.close()
            else:
                executor.stop()
                remove_stale_temporaries(jobs[index] for index in in_flight)
