"""A batch that never loses the user: interrupts, dead workers, lost clusters, special files.

The signal tests run the real command line in a subprocess (its own session, so that a signal
can go to the whole process group as a terminal's Ctrl-C does), interrupt it while it works and
check what the user sees: the exit status, the time it took, no traceback, no temporary file, no
process left behind, and complete outputs only.  The run loop's retry rules are checked with a
scripted executor; the Dask tests use an in-process cluster whose last worker goes away.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from nlattn_cli.main import cli
from PIL import Image

from nlattn.batch import Job, collect_inputs, implausible_result, process_job, run_jobs
from nlattn.batch.runner import Outcome, run_executor
from tests.test_batch import PARAMS
from tests.test_killsafe import (
    SLOW,
    check_outputs_complete,
    cli_command,
    group_alive,
    make_inputs,
    process_table,
    reference_run,
    temporaries,
    visible,
    wait_for_outputs,
)

POSIX = pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX signals")


def save(path, seed: int = 0, shape=(20, 24)) -> str:
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(120, 30, shape), 0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path)
    return str(path)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """16 inputs of ~0.1 s each and the outputs of an uninterrupted run."""
    root = tmp_path_factory.mktemp("faults")
    make_inputs(root / "in", n=16)
    reference_run(root / "in", root / "expected")
    return root


def start(tmp_path, *args, env=None) -> tuple[subprocess.Popen, str]:
    log = str(tmp_path / "log.txt")
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            cli_command(*args), stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
            env=env,
        )  # fmt: skip
    return proc, log


def wait_for(out_dir, count: int, proc: subprocess.Popen, log: str, timeout=120.0) -> None:
    try:
        wait_for_outputs(out_dir, count, proc, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {open(log).read()}") from None


def workers_of(pid: int) -> list[int]:
    """The batch's worker processes (its children but the multiprocessing resource tracker)."""
    return [child for child, state, parent, _, command in process_table()
            if parent == pid and state not in ("Z", "X") and b"resource_tracker" not in command]


def end_group(pgid: int) -> list[int]:
    """Wait for a process group to go; kill and return what outlived it."""
    deadline = time.monotonic() + 10
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = group_alive(pgid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


# ----------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM
# ----------------------------------------------------------------------------------------------


@POSIX
@pytest.mark.parametrize(
    ("extra", "signum"),
    [(["-j", "2"], signal.SIGINT), ([], signal.SIGINT), (["-j", "2"], signal.SIGTERM)],
    ids=["ctrl-c-pool", "ctrl-c-serial", "sigterm-pool"],
)
def test_interrupt_ends_the_batch_at_once_and_cleanly(tmp_path, batch, extra, signum):
    out_dir = tmp_path / "out"
    proc, log = start(tmp_path, "denoise", batch / "in", "-o", out_dir, *SLOW, *extra)
    try:
        wait_for(out_dir, 2, proc, log)
        sent = time.monotonic()
        os.killpg(proc.pid, signum)  # the whole group, as a terminal's Ctrl-C
        time.sleep(0.05)
        os.killpg(proc.pid, signum)  # the impatient user's second one
        proc.wait(timeout=10)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = open(log).read()
    assert proc.returncode == 130, output
    assert seconds < 10
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert output.strip().splitlines()[-1].startswith("interrupted: "), output
    assert end_group(proc.pid) == [], "worker processes outlived the interrupted batch"
    assert temporaries(out_dir) == []
    done = visible(out_dir)
    assert 2 <= len(done) < 16, "the batch was not interrupted"
    check_outputs_complete(out_dir, batch / "expected")


# ----------------------------------------------------------------------------------------------
# Dead workers
# ----------------------------------------------------------------------------------------------


@POSIX
def test_killed_worker_loses_no_image(tmp_path, batch):
    out_dir = tmp_path / "out"
    proc, log = start(tmp_path, "denoise", batch / "in", "-o", out_dir, "--json", *SLOW, "-j", "2")
    try:
        wait_for(out_dir, 2, proc, log)
        victims = workers_of(proc.pid)
        assert len(victims) == 2, victims
        os.kill(victims[0], signal.SIGKILL)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = open(log).read().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert proc.returncode == 0, lines
    assert len(records) == 16 and {r["status"] for r in records} == {"ok"}
    assert visible(out_dir) == visible(batch / "expected") and temporaries(out_dir) == []
    check_outputs_complete(out_dir, batch / "expected")


class ScriptedExecutor:
    """An executor whose jobs' fates are scripted: ``deaths[i]`` attempts of job i are lost."""

    def __init__(self, deaths: dict[int, int], retries: int = 1) -> None:
        self.retries = retries
        self.deaths = dict(deaths)
        self.running: list[tuple[int, Job]] = []
        self.submitted: list[int] = []
        self.stopped = self.closed = False

    def free_slots(self) -> int:
        return 2 - len(self.running)

    def submit(self, index, job) -> None:
        self.submitted.append(index)
        self.running.append((index, job))

    def poll(self, timeout):
        outcomes = []
        for index, job in self.running:
            if self.deaths.get(index, 0) > 0:
                self.deaths[index] -= 1
                outcomes.append(Outcome(index, lost="its worker process was killed by SIGKILL"))
            else:
                outcomes.append(Outcome(index, record={"input": job.input, "status": "ok"}))
        self.running = []
        return outcomes

    def failure(self):
        return None

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.closed = True


def test_run_loop_retries_a_lost_job_once_then_names_it(tmp_path):
    jobs = [Job(f"in{i}.png", str(tmp_path / f"out{i}.png"), f"in{i}.png") for i in range(4)]
    executor = ScriptedExecutor({1: 1, 2: 5})
    records = dict(run_executor(executor, jobs, [0, 1, 2, 3], PARAMS))
    assert sorted(records) == [0, 1, 2, 3]
    assert records[1]["status"] == "ok"  # lost once, done on the second attempt
    assert records[2]["status"] == "error" and records[2]["input"] == "in2.png"
    assert "killed by SIGKILL" in records[2]["error"] and "2 attempts" in records[2]["error"]
    assert executor.submitted.count(2) == 2 and executor.submitted.count(0) == 1
    assert executor.closed and not executor.stopped
    # without retries (the Dask scheduler retries itself), the first loss is final
    executor = ScriptedExecutor({0: 1}, retries=0)
    records = dict(run_executor(executor, jobs[:1], [0], PARAMS))
    assert records[0]["status"] == "error" and "attempts" not in records[0]["error"]


def test_run_loop_stops_its_executor_when_the_consumer_stops(tmp_path):
    jobs = [Job(f"in{i}.png", str(tmp_path / f"out{i}.png"), f"in{i}.png") for i in range(4)]
    executor = ScriptedExecutor({})
    records = run_executor(executor, jobs, [0, 1, 2, 3], PARAMS)
    next(records)
    records.close()  # as a KeyboardInterrupt in the consumer does
    assert executor.stopped and not executor.closed


# ----------------------------------------------------------------------------------------------
# Dask: the last worker gone, the scheduler gone, no scheduler at all
# ----------------------------------------------------------------------------------------------


def test_dask_batch_whose_last_worker_dies_ends_naming_every_image(tmp_path, batch):
    pytest.importorskip("distributed")
    import dask
    from distributed import Client, LocalCluster

    inputs = sorted(str(batch / "in" / name) for name in visible(batch / "in"))[:8]
    jobs, _ = collect_inputs(inputs, output_dir=str(tmp_path / "out"))
    params = dict(PARAMS, patch_radius=2, search_radius=10)
    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        )
        client = Client(cluster, set_as_default=False)
        try:
            records = []

            def on_record(record):
                records.append(record)
                if len(records) == 1:
                    threading.Thread(target=cluster.scale, args=(0,)).start()

            start = time.monotonic()
            run_jobs(jobs, params=params, scheduler=client, on_record=on_record)
            seconds = time.monotonic() - start
        finally:
            client.close()
            cluster.close()
    assert len(records) == len(jobs)
    failed = [r for r in records if r["status"] == "error"]
    assert failed, "the worker went before the batch ended"
    for record in failed:
        assert "no Dask worker left" in record["error"], record["error"]
        assert "\n" not in record["error"]
    assert seconds < 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@POSIX
def test_dask_batch_whose_scheduler_dies_ends_in_one_line_each(tmp_path, batch):
    pytest.importorskip("distributed")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="3s")
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", str(port),
         "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
         "--no-nanny", "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    out_dir = tmp_path / "out"
    proc = None
    try:
        proc, log = start(
            tmp_path, "denoise", batch / "in", "-o", out_dir, *SLOW, "--scheduler", address,
            env=env,
        )  # fmt: skip
        wait_for(out_dir, 1, proc, log, timeout=60)
        os.killpg(scheduler.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        for child in (proc, scheduler, worker):
            if child is not None and child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    output = open(log).read()
    assert proc.returncode == 1, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors and all("Dask" in line for line in errors), output
    # one record per image; a worker outlives its scheduler and may finish the image it holds
    # (then written after its error record, or before it: "unconfirmed")
    summary = output.strip().splitlines()[-1]
    assert summary.startswith(f"denoised {16 - len(errors)} of 16 inputs, {len(errors)} failed")
    time.sleep(1.0)
    check_outputs_complete(out_dir, batch / "expected")
    assert temporaries(out_dir) == []


def test_scheduler_address_is_checked_before_any_work(tmp_path):
    pytest.importorskip("distributed")
    src = save(tmp_path / "a.png")
    start = time.monotonic()
    result = CliRunner().invoke(cli, ["denoise", src, "--scheduler", "notanaddress"])
    assert result.exit_code == 2 and "HOST:PORT" in result.output
    result = CliRunner().invoke(cli, ["denoise", src, "--scheduler", f"tcp://127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("error: cannot")
    ]
    assert time.monotonic() - start < 20
    assert not os.path.exists(tmp_path / "a_denoised.png")


# ----------------------------------------------------------------------------------------------
# Special files and odd names
# ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_and_other_special_files_in_a_folder_are_named_and_passed_by(tmp_path):
    folder = tmp_path / "in"
    save(folder / "a.png")
    os.mkfifo(folder / "pipe.png")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "sock.png"))
        os.symlink(folder / "gone.png", folder / "broken.png")
        result = subprocess.run(
            cli_command("denoise", folder, "-o", tmp_path / "out", "--sigma", "10"),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("pipe.png" in line and "FIFO" in line for line in warnings), warnings
    assert any("sock.png" in line and "socket" in line for line in warnings), warnings
    assert any("broken.png" in line and "broken" in line for line in warnings), warnings
    assert visible(tmp_path / "out") == ["a_denoised.png"]


def test_recursive_scan_reports_links_back_up_and_unreadable_folders(tmp_path, monkeypatch):
    root = tmp_path / "in"
    save(root / "a.png")
    save(root / "sub" / "b.png")
    save(tmp_path / "elsewhere" / "c.png")
    os.symlink(root, root / "sub" / "loop")  # a link back up: must not be walked forever
    os.symlink(tmp_path / "elsewhere", root / "linked")  # a link out: followed
    jobs, warnings = collect_inputs([str(root)], recursive=True, output_dir=str(tmp_path / "o"))
    assert sorted(job.relative for job in jobs) == ["a.png", "linked/c.png", "sub/b.png"]
    assert any("loop" in w and "scanned already" in w for w in warnings), warnings
    # a folder that cannot be read is reported (root reads everything: simulate the refusal)
    real_scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path).endswith("sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    jobs, warnings = collect_inputs([str(root)], recursive=True)
    assert "sub/b.png" not in [job.relative for job in jobs]
    assert any("sub" in w and "Permission denied" in w for w in warnings), warnings


def test_newline_in_a_file_name_keeps_each_message_on_one_line(tmp_path):
    bad = tmp_path / "two\nlines.png"
    bad.write_bytes(b"not an image")
    good = save(tmp_path / "ok.png")
    result = CliRunner().invoke(cli, ["denoise", str(bad), good, "-o", str(tmp_path / "out"),
                                      "--sigma", "10"])  # fmt: skip
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "two\\nlines.png" in errors[0]
    assert all(line.startswith(("error:", "[", "warning:")) for line in result.stderr.splitlines())


# ----------------------------------------------------------------------------------------------
# Results that must never be reported as ok
# ----------------------------------------------------------------------------------------------


def test_implausible_results_are_named():
    image = np.arange(600, dtype=np.float32).reshape(20, 30)
    assert implausible_result(image.copy(), image) is None
    nan = image.copy()
    nan[3, 4] = np.nan
    nan[19, 0] = np.inf
    assert "2 of 600 values" in implausible_result(nan, image)
    flat = np.full_like(image, 7.0)
    assert "constant" in implausible_result(flat, image)
    assert implausible_result(flat, flat.copy()) is None  # constant in, constant out: fine
    big = np.tile(image, (30, 1))  # more rows than one check block
    assert implausible_result(big, big) is None
    spoilt = big.copy()
    spoilt[-1, -1] = np.nan
    assert "1 of" in implausible_result(spoilt, big)


def test_a_non_finite_or_collapsed_result_is_an_error_and_not_written(tmp_path, monkeypatch):
    import nlattn.batch.job as job_module

    src = save(tmp_path / "a.png")
    for broken in (lambda image: np.full(image.shape, np.nan, np.float32),
                   lambda image: np.zeros(image.shape, np.float32)):  # fmt: skip
        monkeypatch.setattr(job_module, "_denoise", lambda image, *args, b=broken: b(image))
        out = tmp_path / "a_d.png"
        record = process_job(Job(src, str(out), "a.png"), PARAMS)
        assert record["status"] == "error" and "nothing written" in record["error"]
        assert not out.exists() and temporaries(tmp_path) == []


def test_an_output_made_meanwhile_by_another_run_is_never_replaced(tmp_path, monkeypatch):
    import nlattn.batch.job as job_module

    src = save(tmp_path / "a.png")
    out = tmp_path / "a_d.png"
    real_denoise = job_module._denoise

    def racing(image, *args):
        out.write_bytes(b"the other run's output")  # another batch finishes first
        return real_denoise(image, *args)

    monkeypatch.setattr(job_module, "_denoise", racing)
    record = process_job(Job(src, str(out), "a.png"), PARAMS, "error")
    assert record["status"] == "error" and "appeared while" in record["error"]
    assert out.read_bytes() == b"the other run's output"
    out.unlink()
    assert process_job(Job(src, str(out), "a.png"), PARAMS, "skip")["status"] == "skipped"
    out.unlink()
    assert process_job(Job(src, str(out), "a.png"), PARAMS, "overwrite")["status"] == "ok"
    assert out.read_bytes() != b"the other run's output"
    assert temporaries(tmp_path) == []


def test_library_warnings_reach_the_record_not_the_terminal(tmp_path, monkeypatch, capsys):
    import logging
    import warnings

    import nlattn.batch.job as job_module

    src = save(tmp_path / "a.png")
    real_denoise = job_module._denoise

    def noisy(image, *args):
        warnings.warn("overflow encountered in cast", RuntimeWarning, stacklevel=1)
        warnings.warn("overflow encountered in cast", RuntimeWarning, stacklevel=1)
        logging.getLogger("tifffile").warning("TiffPage 0: invalid tag\nsecond line")
        return real_denoise(image, *args)

    monkeypatch.setattr(job_module, "_denoise", noisy)
    record = process_job(Job(src, str(tmp_path / "a_d.png"), "a.png"), PARAMS)
    assert record["status"] == "ok"
    assert record["warning"] == (
        "TiffPage 0: invalid tag; RuntimeWarning: overflow encountered in cast"
    )
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    # and the terminal gets it once, as a warning line naming the file
    result = CliRunner().invoke(cli, ["denoise", src, "-o", str(tmp_path / "o"), "--sigma", "10"])
    assert result.exit_code == 0
    assert [line for line in result.stderr.splitlines() if "overflow" in line] == [
        f"warning: {src}: TiffPage 0: invalid tag; RuntimeWarning: overflow encountered in cast"
    ]


@POSIX
def test_two_runs_sharing_an_output_folder_lose_and_clobber_nothing(tmp_path, batch):
    out_dir = tmp_path / "out"
    runs = []
    for i in range(2):
        log = open(tmp_path / f"log{i}.txt", "wb")
        runs.append(subprocess.Popen(
            cli_command("denoise", batch / "in", "-o", out_dir, "--skip-existing", "--json",
                        *SLOW),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))  # fmt: skip
    for proc in runs:
        proc.wait(timeout=300)
    assert [proc.returncode for proc in runs] == [0, 0]
    done = {}
    for i in range(2):
        for line in open(tmp_path / f"log{i}.txt"):
            if line.startswith("{"):
                record = json.loads(line)
                done.setdefault(record["input"], []).append(record["status"])
    assert len(done) == 16
    for statuses in done.values():  # each image written by one run, skipped by the other
        assert sorted(statuses) == ["ok", "skipped"], statuses
    assert visible(out_dir) == visible(batch / "expected") and temporaries(out_dir) == []
    check_outputs_complete(out_dir, batch / "expected")


def test_odd_names_go_through(tmp_path):
    names = ["-dash.png", "ünï cödé.png", "L" * 230 + ".png", "esc\x1b[31mred.png", "a b.png"]
    for i, name in enumerate(names):
        save(tmp_path / "in" / name, seed=i)
    args = ["denoise", "--json", "--sigma", "10", "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, [*args, "--", str(tmp_path / "in")])
    assert result.exit_code == 0, result.output
    assert sorted(visible(tmp_path / "out")) == sorted(
        name[:-4] + "_denoised.png" for name in names
    )
    assert "\x1b" not in result.stderr


def test_an_unreadable_named_input_is_one_error_and_the_others_are_done(tmp_path, monkeypatch):
    a, locked, b = (save(tmp_path / f"{name}.png", seed=i)
                    for i, name in enumerate(("a", "locked", "b")))  # fmt: skip
    real_open = os.open

    def refusing(path, flags, *args, **kwargs):  # root reads everything: simulate the refusal
        if os.fspath(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    result = CliRunner().invoke(cli, ["denoise", a, locked, b, "-o", str(tmp_path / "out"),
                                      "--sigma", "10"])  # fmt: skip
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "locked.png" in errors[0] and "ermission denied" in errors[0]
    assert sorted(visible(tmp_path / "out")) == ["a_denoised.png", "b_denoised.png"]


@POSIX
def test_progress_bar_on_a_terminal_even_with_json(tmp_path):
    import pty

    for i in range(3):
        save(tmp_path / "in" / f"im{i}.png", seed=i, shape=(60, 60))
    main, child = pty.openpty()
    proc = subprocess.Popen(
        cli_command("denoise", tmp_path / "in", "-o", tmp_path / "out", "--sigma", "10",
                    "--json"),
        stdout=subprocess.PIPE, stderr=child, stdin=child,
    )  # fmt: skip
    os.close(child)
    stdout, _ = proc.communicate(timeout=120)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal's other end is closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert proc.returncode == 0
    terminal = seen.decode(errors="replace")
    assert "denoising" in terminal and "3/3" in terminal, terminal
    assert [json.loads(line)["status"] for line in stdout.decode().splitlines()] == ["ok"] * 3
