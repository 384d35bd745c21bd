"""The command line: nlattn denoise / methods / warmup / --version (Click's CliRunner)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from nlattn_cli.main import cli
from PIL import Image

#: Small radii and a given sigma keep every run tiny.
FAST = ["--patch-radius", "1", "--search-radius", "2", "--sigma", "10"]

RECORD_FIELDS = {
    "input",
    "output",
    "status",
    "error",
    "warning",
    "method",
    "parameters",
    "sigma",
    "seconds",
    "psnr",
    "ssim",
}


def clean_image(shape=(20, 24)) -> np.ndarray:
    ramp = np.linspace(40, 200, shape[1])[None, :] * np.ones(shape)
    ramp[shape[0] // 2 :, : shape[1] // 2] = 90
    return ramp.astype(np.uint8)


def noisy_image(seed: int = 0, shape=(20, 24)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = clean_image(shape).astype(np.float64) + rng.normal(0, 12, shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def save(path, image=None, seed: int = 0) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(noisy_image(seed) if image is None else image).save(path)
    return path


def read(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def run(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def records(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------
# the group
# ----------------------------------------------------------------------------------------------


def test_version():
    from importlib.metadata import version

    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout == f"nlattn, version {version('nlattn')}\n"
    import nlattn

    assert version("nlattn") == nlattn.__version__


def test_cli_import_does_not_import_numba():
    # `nlattn --help` must answer at once: building the command tree imports neither nlattn nor
    # Numba (checked in a fresh interpreter, since this one has imported them already).
    code = (
        "import sys, nlattn_cli.main\n"
        "from click.testing import CliRunner\n"
        "r = CliRunner().invoke(nlattn_cli.main.cli, ['denoise', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(nlattn_cli.main.cli, ['--version'])\n"
        "assert r.exit_code == 0, r.output\n"
        "bad = [m for m in ('numba', 'nlattn') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_lists_commands_and_options():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("denoise", "methods", "warmup"):
        assert command in result.stdout
    result = run("denoise", "--help")
    assert result.exit_code == 0
    for option in (
        "--output", "--method", "--sigma", "--h", "--patch-radius", "--search-radius", "-k",
        "--seed", "--aggregation", "--recursive", "--suffix", "--overwrite", "--skip-existing",
        "--jobs", "--threads", "--json", "--reference", "--demo", "--verbose",
    ):  # fmt: skip
        assert option in result.stdout


def test_methods_table():
    import nlattn

    result = run("methods")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Denoising methods")
    assert lines[1].split()[:2] == ["name", "complexity"]
    for registry in (nlattn.DENOISE_METHODS, nlattn.METHODS):
        for name, info in registry.items():
            assert any(line.startswith(name + " ") and info.complexity[:20] in line
                       for line in lines), name
            assert any(", ".join(info.parameters) in line for line in lines)
    # each attention method says whether it also denoises
    attention = lines[lines.index(next(x for x in lines if x.startswith("Attention methods"))):]
    roles = [line.strip() for line in attention if line.strip().startswith(("attention operator",
                                                                            "also a denoiser"))]
    expected = ["also a denoiser: nlattn denoise --method scram" if name == "scram"
                else "attention operator only: not a denoiser" for name in nlattn.METHODS]
    assert roles == expected
    summary = " ".join(result.stdout.split("Denoisers: ")[1].split())
    assert summary.startswith("nlm2, nlm, scram. Attention operators only, not denoisers")
    assert summary.endswith("exact, local, performer, lsh, scatterbrain, fast, efficient.")


def test_warmup_reports_each_kernel_and_total():
    import nlattn

    result = run("warmup")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("total") and lines[-1].endswith(" s")
    assert len(lines) >= 2
    steps = []
    kernels = nlattn.warmup(on_step=lambda name, seconds: steps.append((name, seconds)))
    assert steps == list(kernels.items())  # each group reported as soon as it is done
    for name in kernels:
        assert any(line.startswith(name) for line in lines)


# ----------------------------------------------------------------------------------------------
# denoise: files, naming, options
# ----------------------------------------------------------------------------------------------


def test_denoise_one_file_next_to_input(tmp_path):
    src = save(tmp_path / "a.png")
    result = run("denoise", src, *FAST)
    assert result.exit_code == 0, result.output
    out = read(tmp_path / "a_denoised.png")
    assert out.dtype == np.uint8 and out.shape == (20, 24)
    # denoised: closer to the clean image than the input was
    err_in = np.abs(noisy_image().astype(float) - clean_image()).mean()
    err_out = np.abs(out.astype(float) - clean_image()).mean()
    assert err_out < err_in
    assert "denoised 1 of 1 input" in result.stdout
    assert result.stderr.splitlines() == [f"[1/1] {src} -> {tmp_path / 'a_denoised.png'}"]


def test_denoise_output_dir_suffix_and_dtype(tmp_path):
    image16 = (noisy_image().astype(np.uint16) * 257).astype(np.uint16)
    src = save(tmp_path / "in" / "deep.png", image16)
    out_dir = tmp_path / "made" / "here"
    result = run("denoise", src, "-o", out_dir, "--suffix", "_x", *FAST[:4], "--sigma", "3000")
    assert result.exit_code == 0, result.output
    out = read(out_dir / "deep_x.png")
    assert out.dtype == image16.dtype and out.shape == image16.shape
    assert not np.array_equal(out, image16)
    assert sorted(os.listdir(tmp_path / "in")) == ["deep.png"]


def test_denoise_folder_with_junk(tmp_path):
    folder = tmp_path / "photos"
    save(folder / "a.png", seed=1)
    save(folder / "b.png", seed=2)
    (folder / "notes.txt").write_text("not an image")
    (folder / "text.png").write_text("a text file with an image's name")
    (folder / "empty.png").write_bytes(b"")
    save(folder / "sub" / "c.png")
    result = run("denoise", folder, *FAST)
    assert result.exit_code == 1
    assert sorted(os.listdir(folder)) == sorted(
        ["a.png", "b.png", "a_denoised.png", "b_denoised.png", "notes.txt", "text.png",
         "empty.png", "sub"]
    )  # fmt: skip
    errors = error_lines(result)
    assert len(errors) == 2
    assert errors[0].startswith(f"error: {folder / 'empty.png'}: ")
    assert errors[1].startswith(f"error: {folder / 'text.png'}: ")
    assert "Traceback" not in result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert "notes.txt" in warnings[0] and "sub" in warnings[1]
    assert os.listdir(folder / "sub") == ["c.png"]
    assert "denoised 2 of 4 inputs, 2 failed" in result.stdout


def test_denoise_recursive_keeps_layout(tmp_path):
    save(tmp_path / "in" / "a.png")
    save(tmp_path / "in" / "x" / "y" / "b.png", seed=3)
    result = run("denoise", tmp_path / "in", "-o", tmp_path / "out", "--recursive", *FAST)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a_denoised.png").is_file()
    assert (tmp_path / "out" / "x" / "y" / "b_denoised.png").is_file()
    assert sorted(os.listdir(tmp_path / "out")) == ["a_denoised.png", "x"]


def test_rerun_never_picks_outputs(tmp_path):
    folder = tmp_path / "photos"
    save(folder / "a.png")
    save(folder / "sub" / "b.png")
    first = run("denoise", folder, "--recursive", "--json", *FAST)
    assert first.exit_code == 0, first.output
    assert len(records(first)) == 2
    # outputs next to the inputs: picked up neither from the folder nor through a glob
    for target in (folder, folder / "*.png"):
        again = run("denoise", target, "--recursive", "--skip-existing", "--json", *FAST)
        assert again.exit_code == 0, again.output
        assert {r["status"] for r in records(again)} == {"skipped"}
    # an output folder inside the input folder is not entered either
    for _ in range(2):
        result = run("denoise", folder, "-r", "-o", folder / "out", "--skip-existing", *FAST)
        assert result.exit_code == 0, result.output
    assert not list(folder.rglob("*_denoised_denoised.png"))
    assert not (folder / "out" / "out").exists()
    assert sorted(p.name for p in (folder / "out").rglob("*.png")) == [
        "a_denoised.png",
        "b_denoised.png",
    ]


def test_output_dir_is_the_input_folder(tmp_path):
    save(tmp_path / "a.png")
    for policy in ("--overwrite", "--skip-existing"):
        result = run("denoise", tmp_path, "-o", tmp_path, policy, "--json", *FAST)
        assert result.exit_code == 0, result.output
        assert [os.path.basename(r["input"]) for r in records(result)] == ["a.png"]
    assert sorted(os.listdir(tmp_path)) == ["a.png", "a_denoised.png"]


def test_existing_output_refused_overwritten_or_skipped(tmp_path):
    src = save(tmp_path / "a.png")
    out = tmp_path / "a_denoised.png"
    out.write_bytes(b"previous result")
    result = run("denoise", src, *FAST)
    assert result.exit_code == 1
    assert out.read_bytes() == b"previous result"
    assert error_lines(result) == [
        f"error: {src}: output {out} exists (use --overwrite or --skip-existing)"
    ]
    result = run("denoise", src, "--skip-existing", *FAST, "--json")
    assert result.exit_code == 0
    assert out.read_bytes() == b"previous result"
    assert records(result)[0]["status"] == "skipped"
    result = run("denoise", src, "--overwrite", *FAST)
    assert result.exit_code == 0, result.output
    assert read(out).shape == (20, 24)


def test_never_overwrites_the_input(tmp_path):
    src = save(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    for extra in ([], ["--overwrite"], ["--skip-existing"]):
        result = run("denoise", src, "-o", tmp_path, "--suffix", "", *FAST, *extra)
        assert result.exit_code == 1
        assert len(error_lines(result)) == 1 and "overwrite the input" in error_lines(result)[0]
        assert (tmp_path / "a.png").read_bytes() == before
    # a.png's output would be a_denoised.png, itself an input named on the command line
    other = save(tmp_path / "a_denoised.png", seed=5)
    other_before = (tmp_path / "a_denoised.png").read_bytes()
    result = run("denoise", src, other, "--overwrite", *FAST)
    assert result.exit_code == 1
    assert (tmp_path / "a_denoised.png").read_bytes() == other_before
    assert (tmp_path / "a_denoised_denoised.png").is_file()


def test_json_records(tmp_path):
    save(tmp_path / "a.png")
    save(tmp_path / "b.png", seed=1)
    (tmp_path / "c.png").write_bytes(b"")
    result = run(
        "denoise", tmp_path, "--json", "--patch-radius", "1", "--search-radius", "2",
        "--h", "6", "--aggregation", "pixel", "-o", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 1
    recs = records(result)
    assert len(recs) == len(result.stdout.splitlines()) == 3
    assert all(set(r) == RECORD_FIELDS for r in recs)
    by_name = {os.path.basename(r["input"]): r for r in recs}
    ok = by_name["a.png"]
    assert ok["status"] == "ok" and ok["error"] is None and ok["method"] == "nlm2"
    assert ok["output"] == str(tmp_path / "out" / "a_denoised.png")
    assert ok["parameters"] == {
        "sigma": None, "h": 6.0, "patch_radius": 1, "search_radius": 2, "k": None,
        "seed": 0, "aggregation": "pixel",
    }  # fmt: skip
    assert ok["sigma"] > 0  # --sigma auto (the default): estimated per image
    assert ok["seconds"] > 0 and ok["psnr"] is None and ok["ssim"] is None
    bad = by_name["c.png"]
    assert bad["status"] == "error" and bad["error"]
    # errors still go to stderr, one line each; nothing but records on stdout
    assert len(error_lines(result)) == 1
    assert "[1/3]" not in result.stderr


def test_sigma_values(tmp_path):
    src = save(tmp_path / "a.png")
    fixed = run("denoise", src, *FAST[:4], "--sigma", "7.5", "--json", "-o", tmp_path / "f")
    auto = run("denoise", src, *FAST[:4], "--sigma", "auto", "--json", "-o", tmp_path / "a")
    assert fixed.exit_code == 0 and auto.exit_code == 0
    assert records(fixed)[0]["sigma"] == 7.5
    import nlattn

    image, _ = nlattn.read_image(src)
    assert records(auto)[0]["sigma"] == pytest.approx(nlattn.estimate_sigma(image))
    # sigma changes the result
    assert not np.array_equal(read(tmp_path / "f" / "a_denoised.png"),
                              read(tmp_path / "a" / "a_denoised.png"))  # fmt: skip


def test_parameters_change_the_output(tmp_path):
    src = save(tmp_path / "a.png")
    outputs = {}
    for name, extra in {
        "base": [],
        "h": ["--h", "30"],
        "patch": ["--patch-radius", "2"],
        "search": ["--search-radius", "3"],
        "pixel": ["--aggregation", "pixel"],
    }.items():
        result = run("denoise", src, "-o", tmp_path / name, *FAST, *extra, "--threads", "1")
        assert result.exit_code == 0, result.output
        outputs[name] = read(tmp_path / name / "a_denoised.png")
    for name in ("h", "patch", "search", "pixel"):
        assert not np.array_equal(outputs[name], outputs["base"]), name
    # the seed is accepted (windowed NLM is deterministic)
    result = run("denoise", src, "-o", tmp_path / "seed", *FAST, "--seed", "7")
    assert result.exit_code == 0
    np.testing.assert_array_equal(read(tmp_path / "seed" / "a_denoised.png"), outputs["base"])


def test_reference_metrics(tmp_path):
    clean = clean_image()
    save(tmp_path / "clean" / "a.png", clean)
    save(tmp_path / "clean" / "s" / "b.png", clean)
    save(tmp_path / "noisy" / "a.png")
    save(tmp_path / "noisy" / "s" / "b.png", seed=1)
    # a folder of clean images, looked up by relative name
    result = run(
        "denoise", tmp_path / "noisy", "-r", "-o", tmp_path / "out", *FAST,
        "--reference", tmp_path / "clean", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    recs = records(result)
    assert len(recs) == 2
    from nlattn.batch import image_metrics

    for r in recs:
        out = read(r["output"])
        psnr, ssim = image_metrics(out, clean)
        noisy_psnr, _ = image_metrics(read(r["input"]), clean)
        assert r["psnr"] == pytest.approx(psnr) and r["ssim"] == pytest.approx(ssim)
        assert r["psnr"] > noisy_psnr
    # one clean file; the human summary carries the mean
    result = run(
        "denoise", tmp_path / "noisy" / "a.png", "-o", tmp_path / "out2", *FAST,
        "--reference", tmp_path / "clean" / "a.png", "-v",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mean PSNR" in result.stdout and "SSIM" in result.stdout
    assert "PSNR" in result.stderr  # the verbose line
    # a clean image of the wrong size, or none under the name: the output is written, the
    # metric skipped with a warning
    save(tmp_path / "small.png", clean[:8, :8])
    result = run("denoise", tmp_path / "noisy" / "a.png", "-o", tmp_path / "out3", *FAST,
                 "--reference", tmp_path / "small.png", "--json")  # fmt: skip
    assert result.exit_code == 0 and not error_lines(result)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "shape" in warnings[0] and "a.png" in warnings[0]
    (rec,) = records(result)
    assert rec["status"] == "ok" and rec["psnr"] is None and "shape" in rec["warning"]
    assert (tmp_path / "out3" / "a_denoised.png").exists()
    save(tmp_path / "noisy" / "c.png", seed=2)
    result = run("denoise", tmp_path / "noisy" / "c.png", "-o", tmp_path / "out4", *FAST,
                 "--reference", tmp_path / "clean")  # fmt: skip
    assert result.exit_code == 0 and "missing: PSNR and SSIM not computed" in result.stderr
    assert (tmp_path / "out4" / "c_denoised.png").exists()
    # a reference that does not exist is a usage error
    result = run("denoise", tmp_path / "noisy" / "a.png", *FAST, "--reference", tmp_path / "nope")
    assert result.exit_code == 2


def test_jobs_two_match_one(tmp_path):
    for i in range(3):
        save(tmp_path / "in" / f"im{i}.png", seed=i)
    for jobs, out in (("1", "one"), ("2", "two")):
        result = run("denoise", tmp_path / "in", "-o", tmp_path / out, *FAST, "-j", jobs, "--json")
        assert result.exit_code == 0, result.output
        assert len(records(result)) == 3
    for i in range(3):
        np.testing.assert_array_equal(
            read(tmp_path / "one" / f"im{i}_denoised.png"),
            read(tmp_path / "two" / f"im{i}_denoised.png"),
        )


def test_globs_and_missing_inputs(tmp_path):
    save(tmp_path / "a1.png")
    save(tmp_path / "a2.png", seed=1)
    save(tmp_path / "b.png", seed=2)
    result = run("denoise", tmp_path / "a*.png", tmp_path / "missing.png", *FAST)
    assert result.exit_code == 1
    assert (tmp_path / "a1_denoised.png").is_file() and (tmp_path / "a2_denoised.png").is_file()
    assert not (tmp_path / "b_denoised.png").exists()
    assert error_lines(result) == [f"error: {tmp_path / 'missing.png'}: no such file or folder"]
    result = run("denoise", tmp_path / "zz*.png", *FAST)
    assert result.exit_code == 1 and "no file matches" in error_lines(result)[0]


def test_no_images_found_is_exit_1(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = run("denoise", tmp_path, *FAST)
    assert result.exit_code == 1
    assert error_lines(result) == [f"error: no images found in {tmp_path}"]


def test_verbose_and_quiet(tmp_path):
    src = save(tmp_path / "a.png")
    result = run("denoise", src, *FAST, "-v", "-o", tmp_path / "v")
    assert result.exit_code == 0
    (line,) = result.stderr.splitlines()
    assert "sigma 10" in line and line.endswith(" s")
    result = run("denoise", src, *FAST, "-q", "-o", tmp_path / "q")
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""
    (tmp_path / "bad.png").write_bytes(b"")
    result = run("denoise", tmp_path / "bad.png", *FAST, "-q")
    assert result.exit_code == 1 and len(error_lines(result)) == 1


# ----------------------------------------------------------------------------------------------
# usage errors: exit 2, one line, no file touched
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "INPUT"),
        (["--overwrite", "--skip-existing"], "mutually exclusive"),
        (["--sigma", "abc"], "--sigma"),
        (["--sigma", "-1"], "--sigma"),
        (["--sigma", "nan"], "--sigma"),
        (["--h", "0"], "--h"),
        (["--h", "-2"], "--h"),
        (["--h", "inf"], "--h"),
        (["--patch-radius", "-1"], "--patch-radius"),
        (["--patch-radius", "1.5"], "--patch-radius"),
        (["--patch-radius", "1000"], "--patch-radius"),
        (["--search-radius", "-3"], "--search-radius"),
        (["-k", "0"], "-k"),
        (["--method", "nlm", "-k", "4"], "-k"),  # windowed NLM takes no k: the library says so
        (["--method", "nope"], "--method"),
        (["--aggregation", "tile"], "--aggregation"),
        (["--seed", "-1"], "--seed"),
        (["--jobs", "0"], "--jobs"),
        (["--threads", "0"], "--threads"),
        (["--threads", "100000"], "--threads"),
        (["--suffix", "a/b"], "--suffix"),
        (["--max-memory", "abc"], "--max-memory"),
        (["--max-memory", "0"], "--max-memory"),
        (["--max-memory", "-2G"], "--max-memory"),
        (["--max-memory", "1K"], "--max-memory"),  # below the smallest budget
        (["--scheduler", "tcp://127.0.0.1:1", "-j", "2"], "mutually exclusive"),
        (["--scheduler", " "], "--scheduler"),
    ],
)
def test_usage_errors(tmp_path, args, needle):
    src = save(tmp_path / "a.png")
    before = sorted(os.listdir(tmp_path))
    inputs = [] if args == [] else [src]
    result = run("denoise", *inputs, *args)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr
    assert "Traceback" not in result.output
    assert sorted(os.listdir(tmp_path)) == before


def test_cli_method_choices_are_the_library_methods():
    from nlattn_cli.options import ATTENTION_OPERATOR_NAMES, DENOISE_METHOD_NAMES

    import nlattn
    from nlattn.denoise import ATTENTION_OPERATORS

    assert list(DENOISE_METHOD_NAMES) == list(nlattn.DENOISE_METHODS)
    assert list(ATTENTION_OPERATOR_NAMES) == list(ATTENTION_OPERATORS)


def test_unknown_method_is_a_usage_error(tmp_path):
    src = save(tmp_path / "a.png")
    result = run("denoise", src, "--method", "bm3d")
    assert result.exit_code == 2
    assert "Invalid value for '--method'" in result.stderr
    assert not (tmp_path / "a_denoised.png").exists()


def test_library_parameter_error_is_one_line(tmp_path):
    src = save(tmp_path / "a.png")
    result = run("denoise", src, "--method", "nlm", "-k", "4")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "Error: -k is not a parameter of method 'nlm'; leave it None"
    ]


# ----------------------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------------------


def test_demo(tmp_path):
    args = ["denoise", "--demo", "-o", tmp_path, "--patch-radius", "1", "--search-radius", "3"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    noisy, denoised = read(tmp_path / "demo_noisy.png"), read(tmp_path / "demo_denoised.png")
    assert noisy.shape == denoised.shape == (512, 512) and denoised.dtype == np.uint8
    lines = result.stdout.splitlines()
    before = float(lines[1].split("PSNR ")[1].split(" dB")[0])
    after = float(lines[2].split("PSNR ")[1].split(" dB")[0])
    assert lines[1].startswith("before:") and lines[2].startswith("after:")
    assert 19.0 < before < 22.0 and after > before + 5
    # the same seed gives the same noisy picture; a rerun replaces the demo's own two files
    stamp = (tmp_path / "demo_noisy.png").read_bytes()
    result = run(*args, "--json")
    assert result.exit_code == 0
    (rec,) = records(result)
    assert rec["psnr"] > rec["psnr_noisy"] and rec["sigma"] == 25.0
    assert (tmp_path / "demo_noisy.png").read_bytes() == stamp
    # --demo takes no INPUT, nor batch options
    assert run("denoise", "--demo", tmp_path / "demo_noisy.png").exit_code == 2
    assert run("denoise", "--demo", "-j", "2").exit_code == 2


# ----------------------------------------------------------------------------------------------
# memory budget and infeasible runs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("2G", 2 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", 3 * 2**29), ("300MB", 3 * 10**8),
     ("1048576", 2**20), ("64k", 2**16)],
)
def test_memory_sizes(text, size):
    from nlattn_cli.options import MEMORY_SIZE

    assert MEMORY_SIZE.convert(text, None, None) == size


def test_max_memory_denoises_in_tiles_with_the_same_result(tmp_path, monkeypatch):
    import nlattn.tiling

    tiled_runs = []
    run_tiles = nlattn.tiling.run_tiles

    def counting(image, tiles, *args, **kwargs):
        tiled_runs.append(len(tiles))
        return run_tiles(image, tiles, *args, **kwargs)

    monkeypatch.setattr(nlattn.tiling, "run_tiles", counting)
    save(tmp_path / "in" / "wide.png", noisy_image(3, shape=(64, 200)))
    args = ["denoise", tmp_path / "in", "--method", "nlm", "--patch-radius", "1",
            "--search-radius", "3"]
    args += ["--sigma", "12"]
    whole = run(*args, "-o", tmp_path / "whole", "--json")
    tiled = run(*args, "-o", tmp_path / "tiled", "--max-memory", "128K", "--json")
    assert whole.exit_code == tiled.exit_code == 0, tiled.output
    assert len(tiled_runs) == 1 and tiled_runs[0] > 1  # the budget did cut the image
    name = "wide_denoised.png"
    np.testing.assert_array_equal(read(tmp_path / "whole" / name), read(tmp_path / "tiled" / name))


@pytest.mark.parametrize("method", ["exact", "local", "performer", "lsh", "scatterbrain", "fast",
                                    "efficient"])
def test_attention_operators_are_not_denoise_methods(tmp_path, method):
    src = save(tmp_path / "a.png")
    result = run("denoise", src, "--method", method, "--sigma", "10")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"{method!r} is an attention operator, not a denoiser" in result.stderr
    assert f"nlattn attnmap --method {method}" in result.stderr
    assert not (tmp_path / "a_denoised.png").exists()
