"""``nlattn bench`` and its harness (nlattn.bench): report, exponent, plot, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from nlattn_cli.main import cli

from nlattn import bench


def _run(args):
    return CliRunner().invoke(cli, ["bench", *args])


def test_json_report_parses_with_exponent():
    result = _run(["--sizes", "16,32", "--methods", "local", "--repeats", "1", "--json", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["sizes"] == [16, 32] and report["repeats"] == 1
    (local,) = report["results"]
    assert local["name"] == "local" and local["status"] == "ok"
    assert set(local["seconds"]) == {"16", "32"}
    assert all(t > 0 for t in local["seconds"].values())
    assert not any(local["extrapolated"].values())
    assert isinstance(local["exponent"], float) and local["fit_sizes"] == [16, 32]
    assert local["compile_seconds"] >= 0


def test_table_and_plot(tmp_path):
    png = tmp_path / "scaling.png"
    result = _run(["--sizes", "16,24", "--methods", "local,denoise:nlm", "--repeats", "1",
                   "--plot", str(png)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split()[:3] == ["method", "16^2", "24^2"]
    assert [line.split()[0] for line in lines[2:4]] == ["local", "denoise:nlm"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_method_is_one_line_exit_2():
    result = _run(["--sizes", "16", "--methods", "local,bogus"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "bogus" in lines[0] and "local" in lines[0]


def test_bad_sizes_exit_2():
    result = _run(["--sizes", "16,x"])
    assert result.exit_code == 2 and "--sizes" in result.output
    result = _run(["--sizes", "4", "--methods", "local"])
    assert result.exit_code == 2 and "sizes must be >= 8" in result.output


def test_missing_module_is_reported_and_others_go_on(monkeypatch):
    entries = bench.select_entries(["local", "exact"], peers=False)

    def broken(case):
        raise ModuleNotFoundError("No module named 'nlattn.attention.exact'")

    entries[1].prepare = broken
    monkeypatch.setattr(bench, "select_entries", lambda *args, **kwargs: entries)
    lines = []
    report = bench.run_bench(["local", "exact"], [16], repeats=1, progress=lines.append)
    status = {r["name"]: r["status"] for r in report["results"]}
    assert status == {"local": "ok", "exact": "unavailable"}
    assert sum("exact: unavailable: ModuleNotFoundError" in line for line in lines) == 1
    assert "exact: unavailable" in bench.format_table(report)


def test_extrapolates_above_the_cap():
    entry = bench.Entry("slow", "attention", lambda case: (lambda: None), "fake")
    timing = bench.Timing("slow", "attention", "fake")
    timing.seconds = {64: 1.0, 128: 4.0}
    timing.extrapolated = {64: False, 128: False}
    timing.compile_seconds = 0.0
    case = bench.Case(256, np.zeros((256, 256), np.uint8), 20.0)
    bench.time_entry(entry, case, timing, repeats=1, max_seconds=10.0, n_threads=None)
    # time ~ n^1 measured: 4 s at 128^2 -> 16 s at 256^2, above the 10 s cap
    assert timing.extrapolated[256] and timing.runs[256] == 0
    assert timing.seconds[256] == pytest.approx(16.0)
    case = bench.Case(512, np.zeros((512, 512), np.uint8), 20.0)
    bench.time_entry(entry, case, timing, repeats=1, max_seconds=1e9, n_threads=None)
    assert timing.extrapolated[512]  # larger sizes follow an extrapolated one
    bench._fit(timing)
    assert timing.fit_sizes == [64, 128] and timing.exponent == pytest.approx(1.0)


def test_exact_predicted_from_its_rate_before_running():
    timing = bench.Timing("exact", "attention", "exact")
    entry = bench.Entry("exact", "attention", lambda case: pytest.fail("must not run"), "")
    case = bench.Case(2048, np.zeros((8, 8), np.uint8), 20.0)
    bench.time_entry(entry, case, timing, repeats=1, max_seconds=20.0, n_threads=2)
    assert timing.extrapolated[2048] and timing.seconds[2048] > 20.0


def test_fit_exponent():
    sizes = [128, 256, 512]
    assert bench.fit_exponent(sizes, [s**3 * 1e-9 for s in sizes]) == pytest.approx(1.5)
    assert bench.fit_exponent([128], [1.0]) is None


def test_names_resolve():
    names = [e.name for e in bench.select_entries(["nlm", "scram", "denoise:scram", "skimage"])]
    assert names == ["denoise:nlm", "scram", "denoise:scram", "peer:skimage"]
    with pytest.raises(ValueError, match="unknown method 'nope'; valid: tokens, exact"):
        bench.select_entries(["nope"])


def test_dead_leaves_is_deterministic_and_spans_the_range():
    a = bench.dead_leaves(64, seed=3)
    assert a.shape == (64, 64) and a.dtype == np.float32
    assert np.array_equal(a, bench.dead_leaves(64, seed=3))
    assert a.min() >= 0 and a.max() <= 255 and len(np.unique(a)) > 20
