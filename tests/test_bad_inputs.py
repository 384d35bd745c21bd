"""The bad-input corpus (tests/make_bad_corpus.py) through ``nlattn denoise``.

Every bad file gives exactly one error line naming it and the reason, the exit status is 1, and
every good file, however unusual (1x1, 1xN, palette, CMYK, grey + alpha, 16-bit, float TIFF,
content that does not match its extension), is denoised correctly; the inputs are never
modified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from nlattn_cli.main import cli

import nlattn

from .make_bad_corpus import make_corpus

FAST = ["--patch-radius", "1", "--search-radius", "2", "--sigma", "10"]
PARAMS = {"sigma": 10.0, "patch_radius": 1, "search_radius": 2}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    expected = make_corpus(folder)
    return str(folder), expected


def digests(folder) -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def output_name(name: str) -> str:
    stem, ext = os.path.splitext(name)
    return f"{stem}_denoised{ext}"


def test_corpus_has_every_kind_of_file(corpus):
    _, expected = corpus
    outcomes = {name: e.outcome for name, e in expected.items()}
    for name in ("truncated.png", "truncated.jpg", "truncated.tif", "empty.png", "text.png",
                 "bomb.png", "float_nan.tif", "float_inf.tif"):
        assert outcomes[name] == "error", name
    for name in ("pixel_1x1.png", "row_1x40.png", "palette.png", "cmyk.jpg", "grey_alpha.png",
                 "grey16.png", "jpeg_named.png", "good_grey.png"):
        assert outcomes[name] == "ok", name
    assert sum(o == "ok" for o in outcomes.values()) >= 10
    assert sum(o == "error" for o in outcomes.values()) >= 10


def test_folder_of_bad_and_good_files(corpus, tmp_path):
    folder, expected = corpus
    before = digests(folder)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["denoise", folder, "-o", str(out), "--json", *FAST])
    assert result.exit_code == 1, result.output
    assert digests(folder) == before  # inputs never modified, nothing added beside them

    # one error line per bad file, naming it, with its reason
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    bad = sorted(name for name, e in expected.items() if e.outcome == "error")
    assert len(errors) == len(bad), "\n".join(errors)
    for name in bad:
        head = f"error: {os.path.join(folder, name)}: "
        lines = [line for line in errors if line.startswith(head)]
        assert len(lines) == 1, name
        assert re.search(expected[name].reason, lines[0]), lines[0]
    # files that are not images by name: one warning each, no error
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    for name in (n for n, e in expected.items() if e.outcome == "skipped"):
        assert [line for line in warnings if name in line] != [], name

    rows = [json.loads(line) for line in result.stdout.splitlines()]
    records = {os.path.basename(row["input"]): row for row in rows}
    assert len(records) == len(rows)
    images = {n for n, e in expected.items() if e.outcome != "skipped"}
    assert set(records) == images
    for name in bad:
        assert records[name]["status"] == "error" and "\n" not in records[name]["error"]
        assert not (out / output_name(name)).exists()

    # every good file is denoised, in its own dtype and mode, as the library does it
    good = sorted(name for name, e in expected.items() if e.outcome == "ok")
    assert sorted(os.listdir(out)) == sorted(output_name(name) for name in good)
    for name in good:
        assert records[name]["status"] == "ok", records[name]
        image, meta = nlattn.read_image(os.path.join(folder, name))
        assert (image.dtype.name, meta.mode) == (expected[name].dtype, expected[name].mode), name
        result_image, result_meta = nlattn.read_image(out / output_name(name))
        assert result_image.shape == image.shape and result_image.dtype == image.dtype, name
        assert result_meta.mode == meta.mode, name
        if meta.alpha is not None:
            np.testing.assert_array_equal(result_meta.alpha, meta.alpha, err_msg=name)
        denoised = nlattn.nl_means(image, **PARAMS)
        if result_meta.format == "JPEG":  # lossy: compare with the same encoding of the result
            again = tmp_path / f"again_{name}.jpg"
            nlattn.write_image(again, denoised, meta=meta)
            denoised = nlattn.read_image(again)[0]
        np.testing.assert_array_equal(result_image, denoised, err_msg=name)
    # the 1x1 image has no other pixel to average with: it is its own result
    tiny, _ = nlattn.read_image(out / "pixel_1x1_denoised.png")
    assert tiny.tolist() == [[137]]
    # content that does not match the extension: read by content, written by the output's name
    assert nlattn.read_image(out / "jpeg_named_denoised.png")[1].format == "PNG"
    assert nlattn.read_image(out / "png_named_denoised.tif")[1].format == "TIFF"


def test_bad_files_named_one_by_one(corpus, tmp_path):
    folder, expected = corpus
    named = ["truncated.jpg", "bomb.jpg", "float_nan.tif", "notes.txt", "good_grey.png"]
    result = CliRunner().invoke(
        cli, ["denoise", *(os.path.join(folder, n) for n in named), "-o", str(tmp_path), *FAST]
    )
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 4
    by_name = {}
    for line in errors:
        path = line[len("error: ") :].split(": ", 1)[0]
        by_name[os.path.basename(path)] = line
    for name in named[:3]:
        assert re.search(expected[name].reason, by_name[name]), by_name[name]
    # a file named directly is taken at its word: a non-image name is an error, not a warning
    assert by_name["notes.txt"].startswith(
        f"error: {os.path.join(folder, 'notes.txt')}: not an image file"
    )
    assert os.listdir(tmp_path) == ["good_grey_denoised.png"]


def test_float_tiff_with_nan_is_one_clear_line(corpus, tmp_path):
    folder, _ = corpus
    for sigma in (["--sigma", "0.05"], []):  # a given sigma, and sigma estimated
        result = CliRunner().invoke(
            cli, ["denoise", os.path.join(folder, "float_inf.tif"), "-o", str(tmp_path), *sigma]
        )
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0] == (
            f"error: {os.path.join(folder, 'float_inf.tif')}: image contains NaN or infinite values"
        )


def test_corpus_script_writes_the_folder(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "make_bad_corpus.py")
    target = tmp_path / "data" / "bad"
    done = subprocess.run(
        [sys.executable, script, str(target)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    names = sorted(os.listdir(target))
    assert names == sorted(make_corpus(tmp_path / "again"))
    assert len(done.stdout.splitlines()) == len(names)
    bad_usage = subprocess.run([sys.executable, script], capture_output=True, timeout=120)
    assert bad_usage.returncode == 2
