"""nlattn.batch: inputs -> jobs -> outputs (naming, skipping, policies, workers)."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest
from PIL import Image

from nlattn.batch import (
    Job,
    check_jobs,
    collect_inputs,
    data_range,
    image_metrics,
    output_path,
    process_job,
    run_jobs,
)

PARAMS = {
    "method": "nlm",
    "sigma": 10.0,
    "h": None,
    "patch_radius": 1,
    "search_radius": 2,
    "k": None,
    "seed": 0,
    "aggregation": "patch",
}


def noisy_image(seed: int = 0, shape=(20, 24)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, shape[1])[None, :] * np.ones(shape)
    return np.clip(ramp + rng.normal(0, 12, shape), 0, 255).astype(np.uint8)


def save(path, image=None, seed: int = 0) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(noisy_image(seed) if image is None else image).save(path)
    return path


def names(jobs):
    return [os.path.relpath(job.input) for job in jobs]


# ----------------------------------------------------------------------------------------------
# naming
# ----------------------------------------------------------------------------------------------


def test_output_path_next_to_input_and_in_output_dir():
    assert output_path(os.path.join("a", "b.png"), "b.png", output_dir=None, suffix="_x") == (
        os.path.join("a", "b_x.png")
    )
    assert output_path(os.path.join("a", "b.tif"), "b.tif", output_dir="out", suffix="_d") == (
        os.path.join("out", "b_d.tif")
    )
    # the relative layout of folder inputs is kept under the output folder
    assert output_path(
        os.path.join("in", "s", "t", "c.png"), "s/t/c.png", output_dir="out", suffix=""
    ) == os.path.join("out", "s", "t", "c.png")
    # only the last extension moves behind the suffix
    assert output_path("x.y.png", "x.y.png", output_dir=None, suffix="_d") == "x.y_d.png"


def test_collect_files_and_folder_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save("d/b.png")
    save("d/a.png")
    save("single.png")
    jobs, warnings = collect_inputs(["single.png", "d"], output_dir=None, suffix="_den")
    assert warnings == []
    assert names(jobs) == ["single.png", os.path.join("d", "a.png"), os.path.join("d", "b.png")]
    assert [job.output for job in jobs] == [
        "single_den.png",
        os.path.join("d", "a_den.png"),
        os.path.join("d", "b_den.png"),
    ]
    assert all(job.error is None for job in jobs)
    assert [job.relative for job in jobs] == ["single.png", "a.png", "b.png"]


def test_collect_folder_skips_junk_and_subfolders_with_warnings(tmp_path):
    save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.png").write_text("not an image")
    save(tmp_path / ".a.png.x1y2.tmp.png")  # an interrupted write's temporary file
    save(tmp_path / "sub" / "c.png")
    jobs, warnings = collect_inputs([str(tmp_path)], output_dir=None, suffix="_d")
    # images are picked by extension: fake.png is a job (it fails when read), notes.txt is not
    assert sorted(os.path.basename(job.input) for job in jobs) == ["a.png", "fake.png"]
    assert len(warnings) == 2
    assert any("notes.txt" in w for w in warnings)
    assert any("sub" in w and "--recursive" in w for w in warnings)


def test_collect_recursive_keeps_layout(tmp_path):
    src = tmp_path / "in"
    save(src / "a.png")
    save(src / "s" / "t" / "c.png")
    out = tmp_path / "out"
    jobs, warnings = collect_inputs([str(src)], recursive=True, output_dir=str(out), suffix="_d")
    assert warnings == []
    assert [job.relative for job in jobs] == ["a.png", "s/t/c.png"]
    assert [job.output for job in jobs] == [
        os.path.join(str(out), "a_d.png"),
        os.path.join(str(out), "s", "t", "c_d.png"),
    ]


def test_collect_never_picks_own_outputs(tmp_path):
    save(tmp_path / "a.png")
    save(tmp_path / "a_denoised.png")  # an output of an earlier run
    save(tmp_path / "out" / "a.png")  # inside the output folder
    jobs, warnings = collect_inputs(
        [str(tmp_path)], recursive=True, output_dir=str(tmp_path / "out"), suffix="_denoised"
    )
    assert [job.relative for job in jobs] == ["a.png"]
    # without recursion the output folder is not even worth a warning
    jobs, warnings = collect_inputs(
        [str(tmp_path)], output_dir=str(tmp_path / "out"), suffix="_denoised"
    )
    assert [job.relative for job in jobs] == ["a.png"]
    assert warnings == []
    # globs do not pick them either
    jobs, _ = collect_inputs([str(tmp_path / "*.png")], output_dir=None, suffix="_denoised")
    assert [job.relative for job in jobs] == ["a.png"]
    # but a file named explicitly is taken
    jobs, _ = collect_inputs(
        [str(tmp_path / "a_denoised.png")], output_dir=None, suffix="_denoised"
    )
    assert [os.path.basename(job.output) for job in jobs] == ["a_denoised_denoised.png"]


def test_collect_output_dir_same_as_input_folder(tmp_path, monkeypatch):
    # `nlattn denoise photos -o photos` and `nlattn denoise '*.png' -o .`: the output folder is
    # the scanned folder itself, so only the suffix tells outputs apart
    save(tmp_path / "a.png")
    save(tmp_path / "a_d.png")
    save(tmp_path / "s" / "b.png")
    for recursive in (False, True):
        jobs, _ = collect_inputs(
            [str(tmp_path)], recursive=recursive, output_dir=str(tmp_path), suffix="_d"
        )
        expected = ["a.png", "s/b.png"] if recursive else ["a.png"]
        assert [job.relative for job in jobs] == expected
        assert all(job.error is None for job in jobs)
        assert jobs[0].output == os.path.join(str(tmp_path), "a_d.png")
    monkeypatch.chdir(tmp_path)
    jobs, _ = collect_inputs(["*.png"], output_dir=".", suffix="_d")
    assert [(job.input, job.output) for job in jobs] == [("a.png", os.path.join(".", "a_d.png"))]
    # an output folder above the scanned one does not hide it either
    jobs, _ = collect_inputs(["s"], output_dir=".", suffix="_d")
    assert [job.input for job in jobs] == [os.path.join("s", "b.png")]


def test_collect_globs(tmp_path):
    save(tmp_path / "x1.png")
    save(tmp_path / "x2.png")
    save(tmp_path / "y.png")
    (tmp_path / "x3.txt").write_text("junk")
    save(tmp_path / "deep" / "x4.png")
    jobs, warnings = collect_inputs([str(tmp_path / "x*")], output_dir=None, suffix="_d")
    assert [job.relative for job in jobs] == ["x1.png", "x2.png"]
    assert len(warnings) == 1 and "x3.txt" in warnings[0]
    jobs, _ = collect_inputs([str(tmp_path / "**" / "x*.png")], recursive=True, suffix="_d")
    assert sorted(job.relative for job in jobs) == ["x1.png", "x2.png", "x4.png"]
    jobs, _ = collect_inputs([str(tmp_path / "nothing*.png")], suffix="_d")
    assert len(jobs) == 1 and "no file matches" in jobs[0].error


def test_collect_missing_and_non_image_inputs_are_job_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    save(tmp_path / "a.png")
    jobs, _ = collect_inputs(
        [str(tmp_path / "missing.png"), str(tmp_path / "notes.txt"), str(tmp_path / "a.png")],
        suffix="_d",
    )
    assert "no such file" in jobs[0].error
    assert "not an image" in jobs[1].error
    assert jobs[2].error is None


def test_collect_removes_duplicates(tmp_path):
    save(tmp_path / "a.png")
    jobs, _ = collect_inputs(
        [str(tmp_path / "a.png"), str(tmp_path), str(tmp_path / "*.png")], suffix="_d"
    )
    assert len(jobs) == 1


def test_check_jobs_protects_inputs_and_unique_outputs(tmp_path):
    save(tmp_path / "a.png")
    # empty suffix, output folder = input folder: the output is the input
    jobs, _ = collect_inputs([str(tmp_path / "a.png")], output_dir=str(tmp_path), suffix="")
    assert "overwrite the input" in jobs[0].error
    # a's output is b, which is itself an input
    a, b = save(tmp_path / "p" / "a.png"), save(tmp_path / "p" / "a_x.png")
    checked = check_jobs([Job(a, b, "a.png"), Job(b, str(tmp_path / "p" / "z.png"), "a_x.png")])
    assert "overwrite the input" in checked[0].error and checked[1].error is None
    # two inputs with the same name from different folders, one output folder
    c = save(tmp_path / "q" / "a.png")
    jobs, _ = collect_inputs([a, c], output_dir=str(tmp_path / "out"), suffix="_d")
    assert jobs[0].error is None and "also the output" in jobs[1].error


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------


def read(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_process_job_writes_denoised_image(tmp_path):
    src = save(tmp_path / "a.png")
    job = Job(src, str(tmp_path / "o" / "a_d.png"), "a.png")
    record = process_job(job, PARAMS)
    assert record["status"] == "ok" and record["error"] is None
    assert record["sigma"] == 10.0 and record["seconds"] > 0
    assert record["method"] == "nlm" and "method" not in record["parameters"]
    assert record["psnr"] is None and record["ssim"] is None
    out = read(job.output)
    assert out.dtype == np.uint8 and out.shape == noisy_image().shape
    assert not np.array_equal(out, noisy_image())
    # sigma None: estimated per image, and the estimate is reported
    job2 = Job(src, str(tmp_path / "a_auto.png"), "a.png")
    record = process_job(job2, dict(PARAMS, sigma=None))
    assert record["status"] == "ok" and record["sigma"] > 0
    assert record["parameters"]["sigma"] is None


def test_process_job_policies(tmp_path):
    src = save(tmp_path / "a.png")
    out = tmp_path / "a_d.png"
    out.write_bytes(b"old")
    job = Job(src, str(out), "a.png")
    record = process_job(job, PARAMS, "error")
    assert record["status"] == "error" and "exists" in record["error"]
    assert out.read_bytes() == b"old"
    record = process_job(job, PARAMS, "skip")
    assert record["status"] == "skipped" and out.read_bytes() == b"old"
    record = process_job(job, PARAMS, "overwrite")
    assert record["status"] == "ok" and read(out).shape == noisy_image().shape
    # never the input, whatever the policy
    before = (tmp_path / "a.png").read_bytes()
    for policy in ("error", "skip", "overwrite"):
        record = process_job(Job(src, src, "a.png"), PARAMS, policy)
        assert record["status"] == "error" and "input" in record["error"]
    assert (tmp_path / "a.png").read_bytes() == before


def test_process_job_never_raises(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    record = process_job(Job(str(bad), str(tmp_path / "bad_d.png"), "bad.png"), PARAMS)
    assert record["status"] == "error" and record["error"]
    assert "\n" not in record["error"]
    assert not (tmp_path / "bad_d.png").exists()
    record = process_job(Job("x.png", "", "x.png", error="no such file or folder"), PARAMS)
    assert record == dict(record, status="error", error="no such file or folder", output=None)
    src = save(tmp_path / "a.png")
    record = process_job(Job(src, str(tmp_path / "a_d.png"), "a.png"), dict(PARAMS, h=-1.0))
    assert record["status"] == "error" and "h" in record["error"]


def test_process_job_reference_metrics(tmp_path):
    clean = np.tile(np.linspace(40, 200, 24).astype(np.uint8), (20, 1))
    ref = save(tmp_path / "clean" / "a.png", clean)
    src = save(tmp_path / "a.png")
    for reference in (ref, str(tmp_path / "clean")):  # a file, or a folder with the same name
        out = tmp_path / "a_d.png"
        record = process_job(Job(src, str(out), "a.png"), PARAMS, "overwrite", None, reference)
        assert record["status"] == "ok"
        psnr, ssim = image_metrics(read(out), clean)
        assert record["psnr"] == pytest.approx(psnr) and record["ssim"] == pytest.approx(ssim)
        noisy_psnr, _ = image_metrics(noisy_image(), clean)
        assert record["psnr"] > noisy_psnr
    # a missing, unreadable or mismatched reference costs the metrics, never the output
    other = tmp_path / "b_d.png"
    folder = str(tmp_path / "clean")
    record = process_job(Job(src, str(other), "b.png"), PARAMS, "error", None, folder)
    assert record["status"] == "ok" and other.exists()
    assert record["psnr"] is None and record["ssim"] is None
    assert "missing" in record["warning"] and "b.png" in record["warning"]
    other.unlink()
    small = save(tmp_path / "small.png", clean[:10])
    record = process_job(Job(src, str(other), "a.png"), PARAMS, "error", None, small)
    assert record["status"] == "ok" and record["psnr"] is None and "shape" in record["warning"]
    other.unlink()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    record = process_job(Job(src, str(other), "a.png"), PARAMS, "error", None, str(broken))
    assert record["status"] == "ok" and "unreadable" in record["warning"]
    assert read(other).shape == clean.shape


def test_image_metrics_and_data_range():
    assert data_range(np.uint8) == 255 and data_range(np.uint16) == 65535
    assert data_range(np.float32) == 1.0
    a = noisy_image()
    psnr, ssim = image_metrics(a, a)
    assert psnr is None and ssim == pytest.approx(1.0)
    b = a.astype(np.int16) + 5
    psnr, _ = image_metrics(b.astype(np.uint8), a)
    assert psnr == pytest.approx(10 * np.log10(255**2 / 25), rel=1e-3)
    with pytest.raises(ValueError, match="shape"):
        image_metrics(a, a[:5])


def test_run_jobs_order_callback_and_bad_files(tmp_path):
    for i in range(3):
        save(tmp_path / f"im{i}.png", seed=i)
    (tmp_path / "im1b.png").write_bytes(b"")
    jobs, _ = collect_inputs([str(tmp_path)], suffix="_d")
    seen = []
    records = run_jobs(jobs, params=PARAMS, on_record=seen.append)
    assert [r["input"] for r in records] == [job.input for job in jobs]
    assert sorted(r["input"] for r in seen) == sorted(job.input for job in jobs)
    assert [r["status"] for r in records] == ["ok", "ok", "error", "ok"]
    with pytest.raises(ValueError, match="policy"):
        run_jobs(jobs, params=PARAMS, policy="replace")
    with pytest.raises(ValueError, match="n_jobs"):
        run_jobs(jobs, params=PARAMS, n_jobs=0)


def test_run_jobs_processes_match_serial(tmp_path):
    for i in range(3):
        save(tmp_path / "in" / f"im{i}.png", seed=i)
    for n_jobs, out in ((1, "one"), (2, "two")):
        jobs, _ = collect_inputs([str(tmp_path / "in")], output_dir=str(tmp_path / out), suffix="")
        records = run_jobs(jobs, params=PARAMS, n_jobs=n_jobs)
        assert [r["status"] for r in records] == ["ok"] * 3
    for i in range(3):
        np.testing.assert_array_equal(
            read(tmp_path / "one" / f"im{i}.png"), read(tmp_path / "two" / f"im{i}.png")
        )


def test_job_is_a_frozen_picklable_dataclass():
    import pickle

    job = Job("a.png", "b.png", "a.png")
    assert pickle.loads(pickle.dumps(job)) == job
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.input = "c.png"


def test_run_jobs_checks_the_new_arguments(tmp_path):
    save(tmp_path / "a.png")
    jobs, _ = collect_inputs([str(tmp_path)])
    with pytest.raises(ValueError, match="max_memory must be >= 65536"):
        run_jobs(jobs, params=PARAMS, max_memory=1000)
    assert not (tmp_path / "a_denoised.png").exists()


def test_remove_stale_temporaries_only_of_the_batch_outputs(tmp_path):
    from nlattn.batch import remove_stale_temporaries

    save(tmp_path / "a.png")
    jobs, _ = collect_inputs([str(tmp_path)], output_dir=str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    mine = tmp_path / "out" / ".a_denoised.png.0123456789ab.tmp.png"
    other = tmp_path / "out" / ".b_denoised.png.0123456789ab.tmp.png"
    kept = tmp_path / "out" / ".a_denoised.png.notatoken.tmp.png"
    hour_ago = time.time() - 3600
    for path in (mine, other, kept):
        path.write_bytes(b"partial")
        os.utime(path, (hour_ago, hour_ago))
    assert remove_stale_temporaries(jobs) == [str(mine)]
    assert not mine.exists() and other.exists() and kept.exists()
    # a write in progress (another batch's, into the same folder) is locked: left alone, as is
    # a temporary file too young to tell
    import fcntl

    mine.write_bytes(b"partial")
    os.utime(mine, (hour_ago, hour_ago))
    with open(mine, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert remove_stale_temporaries(jobs) == [] and mine.exists()
    os.utime(mine, None)
    assert remove_stale_temporaries(jobs) == [] and mine.exists()
    # an output folder that does not exist yet is fine
    jobs, _ = collect_inputs([str(tmp_path / "a.png")], output_dir=str(tmp_path / "new"))
    assert remove_stale_temporaries(jobs) == []
