"""Nothing lost: kill -9 at any moment, disk full, permission errors; inputs never modified.

The kill tests run the real command line in a subprocess on a folder of images, SIGKILL it while
it works, and check that every output file present is complete, that the leftovers of the
interrupted write are hidden temporary files that are neither inputs nor outputs, and that a
rerun with --skip-existing finishes the batch with the same files an uninterrupted run writes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from nlattn_cli.main import cli
from PIL import Image

import nlattn
import nlattn.io
from nlattn.io import temporary_target

#: Parameters giving each image ~0.1 s of work, so that a batch lasts a few seconds.
SLOW = ["--sigma", "12", "--patch-radius", "2", "--search-radius", "10", "--threads", "1"]
N_IMAGES = 24
SHAPE = (200, 200)

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX signals")


def make_inputs(folder, n: int = N_IMAGES, shape=SHAPE) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        ramp = np.linspace(30, 220, shape[1])[None, :] * np.ones(shape)
        image = np.clip(np.rint(ramp + rng.normal(0, 12, shape)), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"im{i:02d}.png")
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def fingerprint(paths) -> dict[str, tuple[str, int]]:
    """sha256 and modification time of each file: what 'never modified' is checked against."""
    prints = {}
    for path in paths:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        prints[path] = (digest, os.stat(path).st_mtime_ns)
    return prints


def visible(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def temporaries(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if temporary_target(name) is not None)


def reference_run(inputs_dir, out_dir) -> None:
    """The uninterrupted batch, in this process."""
    result = CliRunner().invoke(cli, ["denoise", str(inputs_dir), "-o", str(out_dir), *SLOW])
    assert result.exit_code == 0, result.output


def cli_command(*args) -> list[str]:
    code = "import sys; from nlattn_cli.main import cli; sys.exit(cli())"
    return [sys.executable, "-c", code, *map(str, args)]


def start(log, *args) -> subprocess.Popen:
    # output to a file, not a pipe: orphaned workers holding a pipe open would hang the reader
    with open(log, "wb") as f:
        return subprocess.Popen(
            cli_command(*args),
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the pool's workers die with it
        )


def wait_for_outputs(out_dir, count: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.isdir(out_dir) and len(visible(out_dir)) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the batch ended before {count} outputs")
        time.sleep(0.002)
    raise AssertionError(f"no {count} outputs after {timeout} s")


def process_table() -> list[tuple[int, str, int, int, bytes]]:
    """``(pid, state, parent pid, process group, command line)`` of every process; Linux /proc."""
    table = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        table.append((int(entry), fields[0], int(fields[1]), int(fields[2]), command))
    return table


def group_alive(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies excluded)."""
    return [pid for pid, state, _, group, _ in process_table()
            if group == pgid and state not in ("Z", "X")]  # fmt: skip


def check_outputs_complete(out_dir, expected_dir) -> None:
    """Every visible file in out_dir is a complete output equal to the uninterrupted run's."""
    names = visible(out_dir)
    assert set(names) <= set(visible(expected_dir)), names
    for name in names:
        got, _ = nlattn.read_image(os.path.join(out_dir, name))  # raises if partial
        want, _ = nlattn.read_image(os.path.join(expected_dir, name))
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Inputs and the outputs of an uninterrupted run, made once for the kill tests."""
    root = tmp_path_factory.mktemp("batch")
    make_inputs(root / "in")
    reference_run(root / "in", root / "expected")
    return root


def kill_and_resume(tmp_path, batch, extra: list[str], kill_group: bool) -> None:
    inputs_dir, out_dir, expected_dir = tmp_path / "in", tmp_path / "out", batch / "expected"
    shutil.copytree(batch / "in", inputs_dir)
    inputs = [str(inputs_dir / name) for name in visible(inputs_dir)]
    before = fingerprint(inputs)

    # two interrupted runs (the second resumes the first), then one that finishes
    for stop_after in (1, 4):
        log = tmp_path / f"log{stop_after}.txt"
        proc = start(log, "denoise", inputs_dir, "-o", out_dir, "--skip-existing", *SLOW, *extra)
        try:
            wait_for_outputs(out_dir, stop_after, proc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {log.read_text()}") from None
        finally:
            try:
                (os.killpg if kill_group else os.kill)(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 30
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # a killed parent's pool workers see it and exit
        left = group_alive(proc.pid)
        for pid in left:  # do not leave them running if the check fails
            os.kill(pid, signal.SIGKILL)
        assert not left, "worker processes outlived the killed batch"
        done = visible(out_dir)
        assert stop_after <= len(done) < N_IMAGES, "the batch was not interrupted"
        check_outputs_complete(out_dir, expected_dir)
        # the input folder holds the inputs and nothing else
        assert visible(inputs_dir) == visible(batch / "in")

    # a write cut short by the kill leaves a temporary file like this one: plant one for sure
    stale = os.path.join(out_dir, ".im23_denoised.png.0123456789ab.tmp.png")
    with open(stale, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n partial")
    hour_ago = time.time() - 3600
    for name in temporaries(out_dir):  # leftovers are old; a fresh one may be a live write
        os.utime(os.path.join(out_dir, name), (hour_ago, hour_ago))
    result = subprocess.run(
        cli_command("denoise", inputs_dir, "-o", out_dir, "--skip-existing", "--json", *SLOW),
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    statuses = [record["status"] for record in records]
    assert len(records) == N_IMAGES
    assert statuses.count("skipped") >= 4 and "error" not in statuses
    assert visible(out_dir) == visible(expected_dir)
    check_outputs_complete(out_dir, expected_dir)
    assert temporaries(out_dir) == [], "leftover temporary files were not removed"
    assert fingerprint(inputs) == before


def test_kill_9_serial_batch_then_resume(tmp_path, batch):
    kill_and_resume(tmp_path, batch, [], kill_group=False)


def test_kill_9_process_pool_then_resume(tmp_path, batch):
    # the whole process group, as a terminal's kill or an OOM-killed session would
    kill_and_resume(tmp_path, batch, ["-j", "2"], kill_group=True)


def test_kill_9_of_the_parent_stops_pool_workers(tmp_path, batch):
    # only the parent: its orphaned workers must notice and stop writing
    kill_and_resume(tmp_path, batch, ["-j", "2"], kill_group=False)


# ----------------------------------------------------------------------------------------------
# leftovers of interrupted writes are neither inputs nor outputs
# ----------------------------------------------------------------------------------------------


def test_temporary_files_are_never_inputs_and_are_removed(tmp_path):
    make_inputs(tmp_path, n=2, shape=(24, 24))
    # a write of an output next to its input, cut short: a hidden temporary file
    stale = tmp_path / ".im00_denoised.png.00112233aabb.tmp.png"
    stale.write_bytes(b"\x89PNG\r\n\x1a\n")
    other = tmp_path / ".unrelated.png.00112233aabb.tmp.png"  # not an output of this batch
    other.write_bytes(b"x")
    hour_ago = time.time() - 3600
    for path in (stale, other):
        os.utime(path, (hour_ago, hour_ago))
    result = CliRunner().invoke(cli, ["denoise", str(tmp_path), "--json", *SLOW[:6]])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(os.path.basename(r["input"]) for r in records) == ["im00.png", "im01.png"]
    assert not stale.exists()
    assert other.exists()  # only this batch's own leftovers are touched
    # shell-style globs pass hidden files by as well
    result = CliRunner().invoke(
        cli, ["denoise", str(tmp_path / "*.png"), "--skip-existing", "--json", *SLOW[:6]]
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(os.path.basename(r["input"]) for r in records) == ["im00.png", "im01.png"]


def test_temporary_target_names():
    assert temporary_target(".a_d.png.0123456789ab.tmp.png") == "a_d.png"
    assert temporary_target(".a_d.tif.0123456789ab.tmp.tif") == "a_d.tif"
    assert temporary_target(".noext.0123456789ab.tmp") == "noext"
    for name in (
        "a_d.png",
        ".a_d.png",
        ".a_d.png.0123456789ab.tmp.jpg",  # extension differs from the target's
        ".a_d.png.0123456789AB.tmp.png",  # not our token
        ".a_d.png.0123456789a.tmp.png",
    ):
        assert temporary_target(name) is None, name
    # a real temporary file of an interrupted write
    long_name = "x" * 120 + ".png"
    f, tmp = nlattn.io._open_temp(os.curdir, long_name, ".png")
    f.close()
    try:
        assert long_name.startswith(temporary_target(os.path.basename(tmp)))
    finally:
        os.unlink(tmp)


# ----------------------------------------------------------------------------------------------
# disk full and permission errors on one output: reported, the batch goes on
# ----------------------------------------------------------------------------------------------


def fail_writes_of(monkeypatch, needle: str, exc: OSError) -> None:
    """Make the encoder write part of the file for outputs whose name has ``needle``, then fail."""
    encode = nlattn.io._encode

    def failing(f, *args, **kwargs):
        if needle in os.path.basename(f.name):
            f.write(b"\x89PNG\r\n\x1a\n partial data")
            raise exc
        return encode(f, *args, **kwargs)

    monkeypatch.setattr(nlattn.io, "_encode", failing)


@pytest.mark.parametrize(
    "exc, reason",
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), os.strerror(errno.ENOSPC)),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), os.strerror(errno.EACCES)),
    ],
)
def test_write_error_on_one_output_is_reported_and_the_batch_goes_on(
    tmp_path, monkeypatch, exc, reason
):
    inputs = make_inputs(tmp_path / "in", n=4, shape=(24, 24))
    before = fingerprint(inputs)
    out = tmp_path / "out"
    fail_writes_of(monkeypatch, "im01", exc)
    result = CliRunner().invoke(cli, ["denoise", str(tmp_path / "in"), "-o", str(out), *SLOW])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "im01.png" in errors[0] and reason in errors[0] and "im01_denoised.png" in errors[0]
    assert visible(out) == ["im00_denoised.png", "im02_denoised.png", "im03_denoised.png"]
    assert sorted(os.listdir(out)) == visible(out)  # the failed write's temporary file is gone
    assert fingerprint(inputs) == before
    # the next run, with space again, finishes the batch
    monkeypatch.undo()
    result = CliRunner().invoke(
        cli, ["denoise", str(tmp_path / "in"), "-o", str(out), "--skip-existing", *SLOW]
    )
    assert result.exit_code == 0, result.output
    assert len(visible(out)) == 4


def test_real_file_system_error_on_one_output(tmp_path):
    # the output folder of one input is taken by a file: a real OSError, whoever runs the test
    make_inputs(tmp_path / "in", n=2, shape=(24, 24))
    make_inputs(tmp_path / "in" / "sub", n=1, shape=(24, 24))
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_bytes(b"in the way")
    result = CliRunner().invoke(
        cli, ["denoise", str(tmp_path / "in"), "-o", str(out), "--recursive", *SLOW]
    )
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and os.path.join("sub", "im00.png") in errors[0]
    assert "cannot create the folder" in errors[0]
    assert visible(out) == ["im00_denoised.png", "im01_denoised.png", "sub"]


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions"
)
def test_read_only_output_folder(tmp_path):
    make_inputs(tmp_path / "in", n=1, shape=(24, 24))
    make_inputs(tmp_path / "in" / "sub", n=1, shape=(24, 24))
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    os.chmod(out / "sub", 0o555)
    try:
        result = CliRunner().invoke(
            cli, ["denoise", str(tmp_path / "in"), "-o", str(out), "--recursive", *SLOW]
        )
    finally:
        os.chmod(out / "sub", 0o755)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and os.strerror(errno.EACCES) in errors[0]
    assert (out / "im00_denoised.png").exists()
    assert os.listdir(out / "sub") == []
