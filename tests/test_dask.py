"""Batch on a Dask cluster: the same jobs, names, records and exit codes as the local executors.

A two-worker ``distributed.LocalCluster`` on loopback (worker processes, one task thread each),
started once for the module; the cluster tests are skipped when Dask is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from nlattn_cli.main import cli
from PIL import Image

import nlattn
from nlattn.batch import (
    DASK_INSTALL,
    MissingDependencyError,
    SchedulerError,
    collect_inputs,
    require_dask,
    run_jobs,
)
from nlattn.batch.cluster import _host_slots

FAST = ["--patch-radius", "1", "--search-radius", "3", "--sigma", "10"]
PARAMS = {
    "method": "nlm",
    "sigma": 10.0,
    "h": None,
    "patch_radius": 1,
    "search_radius": 3,
    "k": None,
    "seed": 0,
    "aggregation": "patch",
}


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        scheduler_port=0,
    ) as local:
        yield local


def make_folder(folder) -> None:
    """A few small images of several kinds, a bad file and a sub-folder."""
    os.makedirs(os.path.join(folder, "sub"), exist_ok=True)
    for i in range(4):
        rng = np.random.default_rng(i)
        shape = (20 + 2 * i, 24) if i % 2 == 0 else (18, 22, 3)
        image = np.clip(np.rint(120 + rng.normal(0, 12, shape)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(folder, f"im{i}.png"))
    grey16 = np.random.default_rng(9).integers(1000, 60000, (16, 20)).astype(np.uint16)
    Image.fromarray(grey16).save(os.path.join(folder, "sub", "deep16.png"))
    with open(os.path.join(folder, "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")  # a signature and nothing more
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image\n")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def records_of(result) -> list[dict]:
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    for row in rows:
        row.pop("seconds")
    return sorted(rows, key=lambda row: row["input"])


def test_cli_batch_on_a_cluster_equals_the_local_batch(cluster, tmp_path, monkeypatch):
    # relative paths, and a working folder the workers (started earlier) do not share
    monkeypatch.chdir(tmp_path)
    make_folder("in")
    shutil.copytree("in", "in_copy")
    args = ["in", "--recursive", *FAST, "--json"]
    local = run("denoise", *args, "-o", "local", "-j", "2")
    remote = run("denoise", *args, "-o", "remote", "--scheduler", cluster.scheduler_address)
    assert local.exit_code == remote.exit_code == 1  # broken.png
    assert local.stderr.count("error:") == remote.stderr.count("error:") == 1
    assert "warning: skipping in/notes.txt: not an image file" in remote.stderr
    local_records, remote_records = records_of(local), records_of(remote)
    assert len(remote_records) == 6
    for a, b in zip(local_records, remote_records, strict=True):
        assert a["output"].replace("local", "remote", 1) == b["output"]
        a.pop("output"), b.pop("output")
        assert a == b
    broken = next(row for row in remote_records if row["input"] == os.path.join("in", "broken.png"))
    assert broken["error"].startswith("cannot read 'in/broken.png'")  # the path as given
    for name in ("im0", "im1", "im2", "im3", os.path.join("sub", "deep16")):
        got, meta = nlattn.read_image(os.path.join("remote", name + "_denoised.png"))
        want, _ = nlattn.read_image(os.path.join("local", name + "_denoised.png"))
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want, err_msg=name)
    # the inputs were only read
    for name in os.listdir("in"):
        path = os.path.join("in", name)
        if os.path.isfile(path):
            with open(path, "rb") as a, open(os.path.join("in_copy", name), "rb") as b:
                assert a.read() == b.read()

    # skip / overwrite / error on existing outputs behave alike too
    again = run("denoise", *args, "-o", "remote", "--scheduler", cluster.scheduler_address)
    assert again.exit_code == 1
    assert all(row["status"] == "error" for row in records_of(again))
    address = cluster.scheduler_address
    skipped = run("denoise", *args, "-o", "remote", "--skip-existing", "--scheduler", address)
    assert skipped.exit_code == 1
    statuses = sorted(row["status"] for row in records_of(skipped))
    assert statuses == ["error"] + ["skipped"] * 5
    os.remove(os.path.join("in", "broken.png"))
    overwritten = run("denoise", *args, "-o", "remote", "--overwrite", "--scheduler", address)
    assert overwritten.exit_code == 0
    assert [row["status"] for row in records_of(overwritten)] == ["ok"] * 5


def test_run_jobs_with_a_client_and_a_reference(cluster, tmp_path):
    from distributed import Client

    make_folder(tmp_path / "in")
    os.remove(tmp_path / "in" / "broken.png")
    jobs, _ = collect_inputs([str(tmp_path / "in")], output_dir=str(tmp_path / "out"))
    reference = str(tmp_path / "in")  # the noisy images as their own reference: finite numbers
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        # two one-thread workers on this host: each image gets half the cores, as with -j 2
        assert _host_slots(client) == {"127.0.0.1": 2}
        remote = run_jobs(jobs, params=PARAMS, scheduler=client, reference=reference)
    local = run_jobs(jobs, params=PARAMS, policy="overwrite", reference=reference)
    assert [r["status"] for r in remote] == ["ok"] * 4
    for a, b in zip(local, remote, strict=True):
        assert (a["input"], a["output"], a["sigma"]) == (b["input"], b["output"], b["sigma"])
        assert a["psnr"] == pytest.approx(b["psnr"]) and a["ssim"] == pytest.approx(b["ssim"])


def test_scheduler_argument_checks(tmp_path):
    jobs, _ = collect_inputs([str(tmp_path)])
    with pytest.raises(ValueError, match="n_jobs must be 1 when a scheduler"):
        run_jobs(jobs, params=PARAMS, n_jobs=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(TypeError, match="scheduler must be an address"):
        run_jobs(jobs, params=PARAMS, scheduler=8786)
    result = run("denoise", tmp_path, "-j", "2", "--scheduler", "tcp://127.0.0.1:1")
    assert result.exit_code == 2 and "mutually exclusive" in result.stderr


def test_unreachable_scheduler_is_one_line_exit_1(tmp_path):
    pytest.importorskip("distributed")
    import dask

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        result = run("denoise", tmp_path, *FAST, "--scheduler", "tcp://127.0.0.1:9")
        with pytest.raises(SchedulerError, match="tcp://127.0.0.1:9"):
            jobs, _ = collect_inputs([str(tmp_path)])
            run_jobs(jobs, params=PARAMS, scheduler="tcp://127.0.0.1:9")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot connect to the Dask scheduler at tcp://127.0.0.1:9")
    assert not (tmp_path / "a_denoised.png").exists()


def test_missing_dask_names_the_extra(tmp_path, monkeypatch):
    # hide Dask whether it is installed or not
    monkeypatch.setitem(sys.modules, "distributed", None)
    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'nlattn\[dask\]'"):
        require_dask()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    result = run("denoise", tmp_path, *FAST, "--scheduler", "tcp://127.0.0.1:8786")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and DASK_INSTALL in lines[0], result.stderr
    assert not (tmp_path / "a_denoised.png").exists()
