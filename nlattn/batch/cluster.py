"""The Dask executor: jobs as tasks on an existing ``distributed`` cluster (the ``dask`` extra).

The scheduler places the tasks and reschedules those of a worker that dies (up to its
``distributed.scheduler.allowed-failures``); a task that kills that many workers comes back as
``KilledWorker`` and is reported by name.  What the scheduler does not do, this executor does:
it notices when no worker is left, or the scheduler itself is lost, and then ends the batch
after ``distributed.scheduler.no-workers-timeout`` (when set) or
``distributed.comm.timeouts.connect`` (30 s by default) with every unfinished image named,
instead of waiting forever.  ``distributed``'s own log lines (tracebacks of lost
connections) are held back while the batch runs: what they say reaches the user as records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator

from nlattn.batch._text import one_line
from nlattn.batch.inputs import Job
from nlattn.batch.job import process_job
from nlattn.batch.runner import Outcome

__all__ = [
    "DASK_INSTALL",
    "DaskExecutor",
    "MissingDependencyError",
    "SchedulerError",
    "check_scheduler_address",
    "distributed_loggers",
    "require_dask",
]

#: How to install what ``scheduler=`` needs.
DASK_INSTALL = "pip install 'nlattn[dask]'"

#: Seconds a first TCP connection to the scheduler may take before it is declared unreachable.
CONNECT_SECONDS = 5.0

#: Seconds a finished task's record (a small dict) may take to come back; longer, and the
#: worker holding it is gone.
RESULT_SECONDS = 2.0


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


def check_scheduler_address(address: str) -> tuple[str, str, int | None]:
    """Check that ``address`` is a Dask scheduler address; its scheme, host and port.

    Parameters
    ----------
    address : str
        ``tcp://HOST:PORT``, ``tls://HOST:PORT``, ``HOST:PORT`` (tcp), or another scheme of
        ``distributed.comm`` (``inproc://...``: no host or port).

    Returns
    -------
    (str, str, int or None)
        The scheme, the host (or location) and the port (None for schemes without one).

    Raises
    ------
    ValueError
        One line, when the address has no port or an unknown scheme.
    MissingDependencyError
        If Dask is not installed.

    Notes
    -----
    Parsing only: nothing is resolved or connected (see :class:`DaskExecutor`).
    """
    require_dask()
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port
    from distributed.comm.registry import backends

    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"scheduler must be a Dask scheduler address, got {address!r}")
    try:
        scheme, location = parse_address(address.strip())
    except ValueError as exc:
        raise ValueError(f"scheduler {address!r} is not an address: {one_line(exc)}") from None
    if scheme not in backends:
        known = ", ".join(sorted(backends))
        raise ValueError(f"scheduler {address!r}: unknown scheme {scheme!r} (known: {known})")
    if scheme not in ("tcp", "tls", "ws", "wss"):
        return scheme, location, None
    try:
        host, port = parse_host_port(location)
    except ValueError:
        raise ValueError(
            f"scheduler {address!r} is not an address: give HOST:PORT, e.g. tcp://10.0.0.5:8786"
        ) from None
    return scheme, host, int(port)


def _probe(address: str) -> None:
    """Fail fast, in one line, when nothing listens at the scheduler's address."""
    scheme, host, port = check_scheduler_address(address)
    if port is None:
        return
    try:
        with socket.create_connection((host, port), timeout=CONNECT_SECONDS):
            pass
    except socket.gaierror as exc:
        raise SchedulerError(
            f"cannot connect to the Dask scheduler at {address}: unknown host {host!r} "
            f"({exc.strerror or exc})"
        ) from None
    except OSError as exc:
        if isinstance(exc, TimeoutError):
            reason = f"no answer in {CONNECT_SECONDS:g} s"
        else:
            reason = exc.strerror or one_line(exc)
        raise SchedulerError(
            f"cannot connect to the Dask scheduler at {address}: {reason}"
        ) from None


def _timeout_seconds() -> tuple[float, str]:
    """How long a cluster without workers (or without its scheduler) is waited for, and the
    setting that says so: ``distributed.scheduler.no-workers-timeout`` when it is set, else
    ``distributed.comm.timeouts.connect``."""
    import dask
    from dask.utils import parse_timedelta

    for name in ("distributed.scheduler.no-workers-timeout", "distributed.comm.timeouts.connect"):
        value = dask.config.get(name, None)
        if value is not None:
            return float(parse_timedelta(value, "s")), name
    return 30.0, "default"


def _info_interval() -> float:
    """``distributed.client.scheduler-info-interval``: how stale the client's list of workers
    may be, in seconds."""
    import dask
    from dask.utils import parse_timedelta

    value = dask.config.get("distributed.client.scheduler-info-interval", "2s")
    return float(parse_timedelta(value, "s"))


def distributed_loggers() -> list[logging.Logger]:
    """The loggers ``distributed`` configures with handlers of their own (it sets levels on
    ``distributed``, ``distributed.client`` and others, which do not propagate)."""
    names = ["distributed", "distributed.client", "tornado", "asyncio"]
    names += [
        name
        for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("distributed.") and isinstance(logger, logging.Logger)
        and (logger.level or logger.handlers)
    ]
    return [logging.getLogger(name) for name in dict.fromkeys(names)]


@contextlib.contextmanager
def _distributed_logs_held() -> Iterator[None]:
    """Raise the ``distributed`` loggers to CRITICAL in the block; restore them after."""
    loggers = distributed_loggers()
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


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


class DaskExecutor:
    """Jobs as tasks on a Dask distributed cluster.

    Parameters
    ----------
    scheduler : str or distributed.Client
        The scheduler's address (a client is made and closed here) or a connected client.
    params, options : dict
        The job function's parameters and keyword options.

    Raises
    ------
    ValueError
        If the address is not one.
    SchedulerError
        If nothing answers at the address, or the client cannot connect.
    """

    retries = 0  # the scheduler reschedules the tasks of dead workers itself

    def __init__(self, scheduler, params: dict, options: dict) -> None:
        import distributed

        self._held = contextlib.ExitStack()  # distributed's log lines, until close()
        self._held.enter_context(_distributed_logs_held())
        self.own_client = isinstance(scheduler, str)
        self.address = scheduler if self.own_client else getattr(scheduler, "scheduler", None)
        self.client = scheduler
        try:
            if self.own_client:
                self.address = scheduler.strip()
                _probe(self.address)
                self.client = _connect(distributed, self.address)
            self.timeout, self.timeout_setting = _timeout_seconds()
            self.info_interval = _info_interval()
            self.host_slots = _host_slots(self.client)
        except BaseException:
            self._held.close()
            raise
        self.params = params
        reference = options.get("reference")
        self.reference = reference
        self.remote_reference = os.path.abspath(reference) if reference is not None else None
        self.options = dict(options, reference=self.remote_reference)
        self.batch = secrets.token_hex(4)
        self.futures: dict[int, tuple[object, Job, Job]] = {}
        self.unhealthy_since: float | None = None
        self.settled = threading.Event()  # set when a task ends
        self.closed = False

    def free_slots(self) -> int:
        return sys.maxsize  # the scheduler queues and places the tasks

    def submit(self, index: int, job: Job) -> None:
        remote = _absolute(job)
        future = self.client.submit(
            _process_on_worker,
            remote,
            self.params,
            self.host_slots,
            **self.options,
            key=f"nlattn-denoise-{self.batch}-{index}",
            pure=False,
        )
        future.add_done_callback(self._done)
        self.futures[index] = (future, job, remote)

    def _done(self, future) -> None:
        self.settled.set()

    def poll(self, timeout: float) -> list[Outcome]:
        if not self.futures:
            return []
        self.settled.wait(timeout)
        self.settled.clear()
        outcomes = []
        for index, (future, job, remote) in list(self.futures.items()):
            status = future.status
            if status == "finished":
                try:
                    record = future.result(timeout=RESULT_SECONDS)
                except Exception:  # noqa: BLE001 - the record was lost with its worker
                    problem = self._problem() or "its worker or the scheduler was lost"
                    lost = f"its record did not come back from the Dask cluster: {problem}"
                    outcomes.append(Outcome(index, lost=lost, retry=False))
                else:
                    outcome = _as_local(record, job, remote, self.reference, self.remote_reference)
                    outcomes.append(Outcome(index, record=outcome))
            elif status == "error":
                outcomes.append(Outcome(index, lost=_task_error(future), retry=False))
            elif status in ("cancelled", "lost"):
                problem = self._problem() or f"the Dask scheduler {status} its task"
                outcomes.append(Outcome(index, lost=f"not finished: {problem}", retry=False))
            else:
                continue
            del self.futures[index]
        return outcomes

    def failure(self) -> str | None:
        problem = self._problem()
        if problem is None:
            self.unhealthy_since = None
            return None
        now = time.monotonic()
        if self.unhealthy_since is None:
            # the client learns of the workers every scheduler-info-interval: the problem may
            # be that old already
            self.unhealthy_since = now - self.info_interval
        waited = now - self.unhealthy_since
        if waited < self.timeout:
            return None
        return f"not finished: {problem} (waited {waited:.0f} s, {self.timeout_setting})"

    def _problem(self) -> str | None:
        status = getattr(self.client, "status", "running")
        if status != "running":
            return f"lost the Dask scheduler at {self.address} ({status})"
        try:
            workers = self.client.scheduler_info().get("workers", {})
        except Exception:  # noqa: BLE001 - a scheduler that cannot answer is a lost one
            return f"lost the Dask scheduler at {self.address}"
        if not workers and self.futures:
            return "no Dask worker left on the cluster"
        return None

    def stop(self) -> None:
        futures = [future for future, _, _ in self.futures.values()]
        self.futures.clear()
        if futures:
            with contextlib.suppress(Exception):
                self.client.cancel(futures, asynchronous=False)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.own_client:
                with contextlib.suppress(Exception):
                    self.client.close(timeout=CONNECT_SECONDS)
        finally:
            self._held.close()


def _connect(distributed, address: str):
    """A client for ``address``; a failure is one line, with no ``Client.__del__`` traceback."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None  # a half-made client's __del__ complains
    try:
        return distributed.Client(address, set_as_default=False, timeout=CONNECT_SECONDS * 2)
    except (OSError, TimeoutError, ValueError) as exc:
        raise SchedulerError(
            f"cannot connect to the Dask scheduler at {address}: {one_line(exc)}"
        ) from None
    finally:
        gc.collect()  # the half-made client goes now, while its complaint is ignored
        sys.unraisablehook = hook


def _task_error(future) -> str:
    """One line for a task that failed on the cluster."""
    try:
        exc = future.exception(timeout=CONNECT_SECONDS)
    except Exception as problem:  # noqa: BLE001
        return f"the Dask task failed ({one_line(problem)})"
    if type(exc).__name__ == "KilledWorker":
        return "it killed every Dask worker it ran on (distributed.scheduler.allowed-failures)"
    if type(exc).__name__ == "NoValidWorkerError":
        return "not finished: no Dask worker left (distributed.scheduler.no-workers-timeout)"
    return f"worker failed: {one_line(exc)}"
