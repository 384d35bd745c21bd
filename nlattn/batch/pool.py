"""Local executors: jobs in this process, or in worker processes that this process owns.

The worker pool is a handful of ``spawn``-ed processes, each given one job at a time over its
own pipe, so that the parent always knows which job a worker holds: a worker that dies
(``kill -9``, the kernel's out-of-memory killer) loses exactly that job, which the run loop
(:mod:`nlattn.batch.runner`) gives to a fresh worker.  Workers ignore Ctrl-C (the terminal sends
it to the whole process group): the parent alone decides, and on an interrupt kills them at once.
A worker whose parent dies exits by itself.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time

from nlattn.batch.inputs import Job
from nlattn.batch.job import process_job
from nlattn.batch.runner import Outcome

__all__ = ["InProcess", "WorkerPool", "worker_threads"]

#: Seconds a worker is given to exit after the last job before it is killed.
CLOSE_SECONDS = 5.0


class InProcess:
    """Runs each job in this process, one at a time (``n_jobs=1``)."""

    retries = 0

    def __init__(self, params: dict, options: dict) -> None:
        self.params = params
        self.options = options
        self.pending: tuple[int, Job] | None = None

    def free_slots(self) -> int:
        return 0 if self.pending is not None else 1

    def submit(self, index: int, job: Job) -> None:
        self.pending = (index, job)

    def poll(self, timeout: float) -> list[Outcome]:
        if self.pending is None:
            return []
        index, job = self.pending
        self.pending = None
        return [Outcome(index, record=process_job(job, self.params, **self.options))]

    def failure(self) -> str | None:
        return None

    def stop(self) -> None:
        self.pending = None

    def close(self) -> None:
        self.pending = None


def worker_threads(n_jobs: int, n_threads: int | None) -> int | None:
    """Numba threads per worker: ``n_threads``, or the usable CPUs shared among the workers."""
    if n_threads is not None or n_jobs <= 1:
        return n_threads
    cpus = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0)) or cpus
    return max(1, cpus // n_jobs)


def _watch_parent(parent: int) -> None:
    """Exit this worker at once when its parent is gone (``kill -9`` of the batch)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="nlattn-parent-watchdog", daemon=True).start()


def _worker_main(conn, n_threads: int | None, parent: int) -> None:
    """A worker process: jobs from ``conn``, one at a time, until ``None`` or the pipe closes.

    SIGINT arrives blocked (the parent blocks it while starting the process) and is ignored
    before it is unblocked, so a Ctrl-C at any moment never interrupts a worker.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _watch_parent(parent)
    if n_threads is not None:
        import numba

        numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        job, params, options = message
        try:
            conn.send(process_job(job, params, **options))
        except (BrokenPipeError, OSError):
            return


def _death(exitcode: int | None) -> str:
    """Why a worker process ended, from its exit code."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"its worker process was killed by {name}"
    return f"its worker process exited unexpectedly (status {exitcode})"


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context, n_threads: int | None) -> None:
        parent_end, child_end = context.Pipe(duplex=True)
        self.process = context.Process(
            target=_worker_main,
            args=(child_end, n_threads, os.getpid()),
            name="nlattn-worker",
            daemon=True,
        )
        blocked = hasattr(signal, "pthread_sigmask")
        if blocked:  # the child inherits the mask: no Ctrl-C before it ignores SIGINT
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.process.start()
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        child_end.close()
        self.conn = parent_end

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(CLOSE_SECONDS)
        self.conn.close()


class WorkerPool:
    """``n_workers`` local worker processes, one job each at a time; a dead one is replaced.

    Parameters
    ----------
    n_workers : int
        Worker processes (started when first needed).
    params, options : dict
        The job function's parameters and keyword options (``n_threads`` is the Numba threads
        of each worker).
    """

    retries = 1

    def __init__(self, n_workers: int, params: dict, options: dict) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.params = params
        self.options = options
        self.workers: list[_Worker | None] = [None] * n_workers
        self.busy: dict[int, int] = {}  # worker slot -> index of its job

    def free_slots(self) -> int:
        return len(self.workers) - len(self.busy)

    def submit(self, index: int, job: Job) -> None:
        slot = next(s for s in range(len(self.workers)) if s not in self.busy)
        worker = self.workers[slot]
        if worker is None or not worker.process.is_alive():
            if worker is not None:
                worker.kill()
            worker = self.workers[slot] = _Worker(self.context, self.options["n_threads"])
        self.busy[slot] = index
        try:
            worker.conn.send((job, self.params, self.options))
        except OSError:
            pass  # the worker died: poll() finds its sentinel and reports the job lost

    def poll(self, timeout: float) -> list[Outcome]:
        waiting: dict[object, int] = {}
        for slot in self.busy:
            worker = self.workers[slot]
            waiting[worker.conn] = slot
            waiting[worker.process.sentinel] = slot
        if not waiting:
            return []
        ready = multiprocessing.connection.wait(list(waiting), timeout)
        outcomes = []
        for slot in sorted({waiting[item] for item in ready}):
            worker = self.workers[slot]
            index = self.busy.pop(slot)
            try:
                if worker.conn.poll():
                    outcomes.append(Outcome(index, record=worker.conn.recv()))
                    continue
            except (EOFError, OSError):
                pass
            worker.process.join(CLOSE_SECONDS)
            outcomes.append(Outcome(index, lost=_death(worker.process.exitcode)))
            worker.kill()
            self.workers[slot] = None
        return outcomes

    def failure(self) -> str | None:
        return None

    def stop(self) -> None:
        for worker in self.workers:
            if worker is not None:
                worker.process.kill()
        for worker in self.workers:
            if worker is not None:
                worker.kill()
        self.workers = [None] * len(self.workers)
        self.busy.clear()

    def close(self) -> None:
        for worker in self.workers:
            if worker is not None:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + CLOSE_SECONDS
        for worker in self.workers:
            if worker is not None:
                worker.process.join(max(0.0, deadline - time.monotonic()))
                worker.kill()
        self.workers = [None] * len(self.workers)
        self.busy.clear()
