"""Attention maps: nlattn.render, nlattn.maps and ``nlattn attnmap`` (Click's CliRunner)."""

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

from nlattn.render import attention_figure, display_image, figure_to_array

#: Height and width of the synthetic image (a 48x40 picture).
H, W = 40, 48

#: Small NLM tokens and a flat enough h keep every run quick and the maps readable.
FAST = ["--patch-radius", "1", "--h", "25"]


def synthetic_image() -> np.ndarray:
    """Stripes on the left, a ramp on the right, a flat square: texture, edges, flat region."""
    yy, xx = np.mgrid[0:H, 0:W]
    image = np.where((xx // 4) % 2 == 0, 60.0, 190.0)
    image[:, W // 2 :] = 40 + 3 * xx[:, W // 2 :]
    image[H // 2 :, W // 2 : W // 2 + 12] = 120
    rng = np.random.default_rng(0)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def save(path, image=None) -> str:
    Image.fromarray(synthetic_image() if image is None else image).save(path)
    return os.fspath(path)


def read(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def dense_rows(queries, keys, positions, scale):
    """Exact attention rows by the definition: softmax over all keys of scale * q . k."""
    q = queries.reshape(-1, queries.shape[-1]).astype(np.float64)
    k = keys.reshape(-1, keys.shape[-1]).astype(np.float64)
    width = queries.shape[1]
    out = []
    for y, x in positions:
        s = scale * (k @ q[y * width + x])
        w = np.exp(s - s.max())
        out.append((w / w.sum()).reshape(queries.shape[:2]))
    return np.array(out)


# ----------------------------------------------------------------------------------------------
# render (synthetic rows: no attention kernel needed)
# ----------------------------------------------------------------------------------------------


def test_display_image_ranges():
    assert display_image(np.array([[0, 255]], np.uint8)).tolist() == [[0.0, 1.0]]
    assert display_image(np.array([[0, 65535]], np.uint16)).tolist() == [[0.0, 1.0]]
    np.testing.assert_allclose(display_image(np.array([[2.0, 4.0, 3.0]])), [[0.0, 1.0, 0.5]])
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[..., 1] = 255
    np.testing.assert_allclose(display_image(colour), np.full((2, 2), 0.587))
    assert display_image(colour, grey=False).shape == (2, 2, 3)
    assert display_image(np.zeros((3, 3, 4), np.uint8), grey=False).shape == (3, 3, 3)


def _panel_pixel(fig, ax, picture, fx, fy):
    """The figure pixel at fraction (fx, fy) of a panel (from its top-left corner)."""
    box = ax.get_window_extent()
    height = picture.shape[0]
    col = int(box.x0 + fx * box.width)
    row = int(height - (box.y1 - fy * box.height))
    return picture[row, col].astype(int)


def test_heatmap_lands_where_the_mass_is():
    # a 2x2 token grid stretched over a black image: all the mass in the top-left token
    rows = np.zeros((1, 1, 2, 2))
    rows[0, 0, 0, 0] = 1.0
    fig = attention_figure(np.zeros((H, W), np.uint8), rows, [[H - 1, W - 1]], ["m"],
                           alpha=1.0, scaling="linear")  # fmt: skip
    picture = figure_to_array(fig)
    ax = fig.axes[0]
    top_left = _panel_pixel(fig, ax, picture, 0.25, 0.25)
    bottom_right = _panel_pixel(fig, ax, picture, 0.6, 0.6)
    top_right = _panel_pixel(fig, ax, picture, 0.75, 0.25)
    assert top_left.min() > 150  # magma's brightest colour (pale yellow)
    assert bottom_right.max() < 20 and top_right.max() < 20  # magma's darkest (black)


def test_figure_grid_size_and_titles():
    rng = np.random.default_rng(1)
    rows = rng.random((2, 3, H, W))
    rows /= rows.sum(axis=(2, 3), keepdims=True)
    errors = {"TV": np.array([[0, 0.25, 0.5], [0, 0.1, np.nan]]), "R@16": np.ones((2, 3))}
    fig = attention_figure(synthetic_image(), rows, [[3, 4], [30, 40]], ["exact", "b", "c"],
                           errors=errors, title="t", panel_inches=2.0, dpi=50)  # fmt: skip
    picture = figure_to_array(fig)
    width, height = fig.get_size_inches() * fig.dpi
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    assert abs(picture.shape[0] - height) < 1 and abs(picture.shape[1] - width) < 1
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:3] == ["exact\nreference", "b\nTV 0.25  R@16 1", "c\nTV 0.5  R@16 1"]
    assert titles[5] == "c\nR@16 1"  # NaN errors are left out
    assert fig.axes[0].get_ylabel() == "query x=4, y=3"
    # one colourbar per row of panels
    assert len(fig.axes) == 2 * 3 + 2


@pytest.mark.parametrize("shape", [(3000, 1), (1, 3000), (2, 2000), (H, W)])
def test_figure_size_is_bounded_whatever_the_image_shape(shape):
    from nlattn.render import MAX_PANEL_ASPECT

    # a 3000 x 1 strip once made a 390 x 900102 pixel figure: the panel's sides are now at most
    # MAX_PANEL_ASPECT apart, the strip stretched to fill it
    rows = np.zeros((2, 2) + shape)
    rows[:, :, shape[0] // 2, shape[1] // 2] = 1.0
    panel_inches, dpi = 3.0, 100
    fig = attention_figure(_grey(shape), rows, [[0, 0], [shape[0] - 1, shape[1] - 1]],
                           ["exact", "b"], panel_inches=panel_inches, dpi=dpi)  # fmt: skip
    picture = figure_to_array(fig)
    # the documented bound: (panel_inches n_methods + 0.9) dpi by
    # ((MAX_PANEL_ASPECT panel_inches + 0.62) m + 0.4) dpi
    assert picture.shape[1] <= (panel_inches * 2 + 0.9) * dpi
    assert picture.shape[0] <= ((MAX_PANEL_ASPECT * panel_inches + 0.62) * 2 + 0.4) * dpi
    # no panel is a sliver: each side at least about 1 / MAX_PANEL_ASPECT of the panel width
    for ax in fig.axes[:4]:
        box = ax.get_window_extent()
        assert min(box.width, box.height) > 0.8 * panel_inches * dpi / MAX_PANEL_ASPECT
        assert max(box.width, box.height) / min(box.width, box.height) < 1.2 * MAX_PANEL_ASPECT
    # the (max-pooled) heatmap shows the single key of each row
    heat = fig.axes[0].get_images()[1].get_array()
    assert heat.shape[0] <= MAX_PANEL_ASPECT * panel_inches * dpi
    assert heat.shape[1] <= panel_inches * dpi
    assert np.isclose(heat.max(), 1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rows": np.zeros((1, 4))}, "rows must have shape"),
        ({"rows": -np.ones((1, 1, 4, 4))}, "non-negative"),
        ({"positions": [[H, 0]]}, "outside the image"),
        ({"positions": [[0, 0], [1, 1]]}, "one query per row"),
        ({"method_names": ["a", "b"]}, "method_names"),
        ({"colormap": "nope"}, "colormap"),
        ({"scaling": "sqrt"}, "scaling"),
        ({"alpha": 1.5}, "alpha"),
        ({"errors": {"TV": np.zeros(3)}}, "errors"),
    ],
)
def test_figure_argument_errors(kwargs, match):
    args = {
        "image": np.zeros((H, W)),
        "rows": np.ones((1, 1, 4, 4)),
        "positions": [[0, 0]],
        "method_names": ["a"],
    }
    args.update(kwargs)
    extra = {key: args.pop(key) for key in list(args) if key not in
             ("image", "rows", "positions", "method_names")}  # fmt: skip
    with pytest.raises((TypeError, ValueError), match=match):
        attention_figure(args["image"], args["rows"], args["positions"], args["method_names"],
                         **extra)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# maps
# ----------------------------------------------------------------------------------------------


def test_attention_maps_exact_rows_and_errors():
    import nlattn
    from nlattn.maps import attention_maps

    image = synthetic_image()
    positions = np.array([[5, 6], [30, 40]])
    result = attention_maps(image, positions, "all", patch_radius=1, h=25.0)
    assert result.methods[0] == "exact"
    assert set(result.methods) == set(nlattn.METHODS)
    assert result.rows.shape == (2, len(result.methods), H, W)
    np.testing.assert_allclose(result.rows.sum(axis=(2, 3)), 1.0, atol=1e-5)
    q, k, _ = nlattn.nlm_tokens(image, 1, 25.0)
    np.testing.assert_allclose(result.rows[:, 0], dense_rows(q, k, positions, 1.0), atol=1e-6)
    np.testing.assert_allclose(result.tv[:, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(result.recall[:, 0], 1.0)
    assert (result.tv[:, 1:] >= 0).all() and (result.tv <= 1 + 1e-9).all()
    assert result.description == "NLM tokens: 3x3 patches, h = 25"
    assert len(result.errors()) == 2 * len(result.methods)


def test_compare_rows_routes_parameters_and_measures_against_exact():
    import nlattn
    from nlattn.maps import compare_rows

    q, k, _ = nlattn.nlm_tokens(synthetic_image(), 1, 25.0)
    positions = np.array([[20, 5]])
    result = compare_rows(q, k, positions, ["local"], scale=1.0, window_radius=1, k=4)
    assert list(result) == ["exact", "local"]
    exact, local = result["exact"].rows, result["local"].rows
    assert np.count_nonzero(exact) == H * W  # window_radius went to local only
    assert np.count_nonzero(local) == 9
    np.testing.assert_allclose(result["local"].tv, 0.5 * np.abs(local - exact).sum(axis=(1, 2)))
    # recall@4 by hand: exact's 4 best keys against local's 4 best
    top = set(np.argsort(-exact[0].ravel(), kind="stable")[:4])
    mine = set(np.argsort(-local[0].ravel(), kind="stable")[:4])
    assert result["local"].recall[0] == pytest.approx(len(top & mine) / 4)
    assert result["exact"].kl[0] == 0.0 and result["local"].kl[0] > 0


def test_attention_maps_rejects_bad_queries_and_parameters():
    from nlattn.maps import attention_maps

    image = synthetic_image()
    with pytest.raises(ValueError, match=r"query \(x=48, y=0\) is outside the image"):
        attention_maps(image, [[0, W]], "exact", h=25.0)
    with pytest.raises(ValueError, match="method must be one of"):
        attention_maps(image, [[0, 0]], "nope", h=25.0)
    with pytest.raises(ValueError, match="window_radius is not a parameter of exact"):
        attention_maps(image, [[0, 0]], "exact", h=25.0, window_radius=2)
    with pytest.raises(ValueError, match="h applies to NLM tokens"):
        attention_maps(image, [[0, 0]], "exact", h=25.0, features=np.ones((4, 4, 2)))


# ----------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------


def test_attnmap_help_imports_nothing_heavy():
    code = (
        "import sys, nlattn_cli.main\n"
        "from click.testing import CliRunner\n"
        "r = CliRunner().invoke(nlattn_cli.main.cli, ['attnmap', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert '--query' in r.output and '--features' in r.output\n"
        "bad = [m for m in ('numba', 'nlattn', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_attnmap_png_and_raw_rows(tmp_path):
    import nlattn
    from nlattn.maps import attention_maps
    from nlattn.render import render_maps

    src = save(tmp_path / "in.png")
    out = tmp_path / "maps" / "out.png"
    result = run("attnmap", src, "--query", "6,5", "--query", "40, 30", "--method", "exact,local",
                 *FAST, "--raw", "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and "Traceback" not in result.output
    # the figure: same pixels as the library's rendering of the same maps
    picture = read(out)
    expected = figure_to_array(
        render_maps(attention_maps(synthetic_image(), [[5, 6], [30, 40]], ["exact", "local"],
                                   patch_radius=1, h=25.0))
    )  # fmt: skip
    assert picture.shape == expected.shape and picture.dtype == np.uint8
    # rows on the image grid, each a distribution; exact's equal the definition's
    rows = np.load(tmp_path / "maps" / "out.npy")
    assert rows.shape == (2, 2, H, W) and rows.dtype == np.float32
    np.testing.assert_allclose(rows.sum(axis=(2, 3)), 1.0, atol=1e-5)
    q, k, _ = nlattn.nlm_tokens(synthetic_image(), 1, 25.0)
    np.testing.assert_allclose(rows[:, 0], dense_rows(q, k, [[5, 6], [30, 40]], 1.0), atol=1e-6)
    # local rows vanish outside their window
    record = json.loads((tmp_path / "maps" / "out.json").read_text())
    assert record["methods"] == ["exact", "local"]
    assert record["queries"] == [{"x": 6, "y": 5}, {"x": 40, "y": 30}]
    assert record["rows_shape"] == [2, 2, H, W] and record["h"] == 25.0
    errors = {(e["query"]["x"], e["method"]): e for e in record["errors"]}
    assert errors[(6, "exact")]["tv"] == pytest.approx(0.0, abs=1e-9)
    assert 0 < errors[(6, "local")]["tv"] <= 1
    assert errors[(40, "local")]["support"] < H * W == errors[(40, "exact")]["support"]


def test_attnmap_method_all_and_width_grows(tmp_path):
    import nlattn

    src = save(tmp_path / "in.png")
    one = run("attnmap", src, "--query", "10,10", "--method", "exact", *FAST, "-o",
              tmp_path / "one.png")  # fmt: skip
    assert one.exit_code == 0, one.output
    every = run("attnmap", src, "--query", "10,10", "--method", "all", *FAST, "--raw", "-o",
                tmp_path / "all.png")  # fmt: skip
    assert every.exit_code == 0, every.output
    record = json.loads((tmp_path / "all.json").read_text())
    assert record["methods"][0] == "exact"
    assert sorted(record["methods"]) == sorted(nlattn.METHODS)
    assert np.load(tmp_path / "all.npy").shape == (1, len(nlattn.METHODS), H, W)
    small, big = read(tmp_path / "one.png"), read(tmp_path / "all.png")
    assert small.shape[0] == big.shape[0]
    if len(nlattn.METHODS) > 1:
        assert big.shape[1] > small.shape[1]


@pytest.mark.parametrize(
    "query, needle",
    [
        ("48,3", "--query 48,3 is outside the image"),
        ("3,40", "--query 3,40 is outside the image"),
        ("-1,5", "--query -1,5 is outside the image"),
        ("3;4", "--query '3;4' is not X,Y"),
        ("a,b", "--query 'a,b' is not X,Y"),
        ("1,2,3", "--query '1,2,3' is not X,Y"),
    ],
)
def test_attnmap_bad_query_is_a_one_line_usage_error(tmp_path, query, needle):
    src = save(tmp_path / "in.png")
    result = run("attnmap", src, "--query", "1,1", "--query", query, *FAST, "-o",
                 tmp_path / "out.png")  # fmt: skip
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.png"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--method", "nope"], "--method"),
        (["--method", "all,exact"], "--method all"),
        (["--method", "exact", "--window-radius", "2"], "--window-radius"),
        (["--colormap", "nope"], "--colormap"),
        (["--h", "3", "--temperature", "2"], "mutually exclusive"),
        (["--features", "f.npy", "--h", "3"], "--h applies to NLM tokens"),
    ],
)
def test_attnmap_usage_errors(tmp_path, args, needle):
    src = save(tmp_path / "in.png")
    result = run("attnmap", src, "--query", "1,1", *args, "-o", tmp_path / "out.png")
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "out.png").exists()


def test_attnmap_existing_output_and_unreadable_input(tmp_path):
    src = save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    out.write_bytes(b"previous")
    result = run("attnmap", src, "--query", "1,1", "--method", "exact", *FAST, "-o", out)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"error: {out} exists (use --overwrite to replace it)"]
    assert out.read_bytes() == b"previous"
    # with --raw the rows file counts too
    (tmp_path / "other.npy").write_bytes(b"previous")
    result = run("attnmap", src, "--query", "1,1", "--method", "exact", *FAST, "--raw", "-o",
                 tmp_path / "other.png")  # fmt: skip
    assert result.exit_code == 1 and "other.npy exists" in result.stderr
    assert not (tmp_path / "other.png").exists()
    result = run("attnmap", src, "--query", "1,1", "--method", "exact", *FAST, "--overwrite",
                 "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read(out).ndim == 3
    # inputs are never overwritten, --overwrite or not
    np.save(tmp_path / "f.npy", np.ones((4, 4, 2), np.float32))
    features = ["--features", tmp_path / "f.npy", "--raw", "-o", tmp_path / "f.png"]
    for args in (["-o", src], features):
        result = run("attnmap", src, "--query", "1,1", "--method", "exact", *args, "--overwrite")
        assert result.exit_code == 2 and "would overwrite the input" in result.stderr
    assert read(src).shape == (H, W)
    # an unreadable image: exit 1, one line
    (tmp_path / "bad.png").write_text("not an image")
    result = run("attnmap", tmp_path / "bad.png", "--query", "1,1", "-o", tmp_path / "x.png")
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and "bad.png" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_attnmap_user_features_on_a_coarser_grid(tmp_path):
    src = save(tmp_path / "in.png")
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(10, 12, 8)).astype(np.float32)
    feats[:, :6] += 2.0  # the left half alike
    np.save(tmp_path / "f.npy", feats)
    out = tmp_path / "vit.png"
    result = run("attnmap", src, "--query", "2,3", "--query", "47,39", "--features",
                 tmp_path / "f.npy", "--method", "exact", "--raw", "--temperature", "0.5", "-o",
                 out)  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = np.load(tmp_path / "vit.npy")
    assert rows.shape == (2, 1, 10, 12)
    np.testing.assert_allclose(rows.sum(axis=(2, 3)), 1.0, atol=1e-5)
    # query (x=2, y=3) is token (0, 0) and (47, 39) token (9, 11); scale 1/sqrt(8)/0.5
    expected = dense_rows(feats, feats, [[0, 0], [9, 11]], 2.0 / np.sqrt(8))
    np.testing.assert_allclose(rows[:, 0], expected, atol=1e-6)
    record = json.loads((tmp_path / "vit.json").read_text())
    assert record["grid_shape"] == [10, 12] and record["image_shape"] == [H, W]
    assert record["scale"] == pytest.approx(2.0 / np.sqrt(8))
    assert read(out).ndim == 3
    # features that are not (H, W, d): exit 1, one line
    np.save(tmp_path / "flat.npy", feats[:, :, 0])
    result = run("attnmap", src, "--query", "2,3", "--features", tmp_path / "flat.npy", "-o",
                 tmp_path / "flat.png")  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'flat.npy'}: features must have shape (H, W, d), got shape (10, 12)"
    ]


# ----------------------------------------------------------------------------------------------
# -k against the number of keys; hostile inputs
# ----------------------------------------------------------------------------------------------


def _one_error_line(result, status: int) -> str:
    """The command's only stderr line, after checking the exit status and that nothing leaked."""
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _no_maps(monkeypatch):
    """Make any attention work fail the test: errors must come before it."""
    import nlattn.maps

    def forbidden(*args, **kwargs):
        raise AssertionError("attention maps computed before the error")

    monkeypatch.setattr(nlattn.maps, "attention_maps", forbidden)


def _no_tokens(monkeypatch):
    """Make building NLM tokens or rows fail the test: the check of k must come before them."""
    import nlattn.features
    import nlattn.maps

    def forbidden(*args, **kwargs):
        raise AssertionError("tokens or rows computed before the error")

    monkeypatch.setattr(nlattn.features, "nlm_tokens", forbidden)
    monkeypatch.setattr(nlattn.maps, "compare_rows", forbidden)


def test_maps_refuse_k_above_the_number_of_keys(monkeypatch):
    import nlattn
    from nlattn.maps import attention_maps, compare_rows

    q, k, _ = nlattn.nlm_tokens(synthetic_image()[:3, :4], 1, 25.0)  # 12 keys
    for kwargs, message in (
        ({"k": 13}, "k must be <= 12, got 13"),
        ({"recall_k": 13}, "recall_k must be <= 12, got 13"),
        ({"k": 4, "recall_k": 1000}, "recall_k must be <= 12, got 1000"),
    ):
        with pytest.raises(ValueError) as raised:
            compare_rows(q, k, [[1, 1]], ["exact", "scram"], scale=1.0, **kwargs)
        assert str(raised.value) == message
    result = compare_rows(q, k, [[1, 1]], ["exact", "scram"], scale=1.0, k=12, recall_k=12)
    assert result["scram"].recall[0] == 1.0  # every key found
    # attention_maps: against the image's H W pixels, or the features' grid, before any token
    image = synthetic_image()
    _no_tokens(monkeypatch)
    with pytest.raises(ValueError) as raised:
        attention_maps(image, [[0, 0]], "exact", h=25.0, k=H * W + 1)
    assert str(raised.value) == f"k must be <= {H * W}, got {H * W + 1}"
    with pytest.raises(ValueError) as raised:
        attention_maps(image, [[0, 0]], "exact", features=np.ones((4, 5, 2)), k=21)
    assert str(raised.value) == "k must be <= 20, got 21"
    monkeypatch.undo()
    assert attention_maps(image, [[0, 0]], "exact", features=np.ones((4, 5, 2)), k=20).k == 20


def test_attnmap_k_above_the_number_of_pixels_is_a_usage_error(tmp_path, monkeypatch):
    src = save(tmp_path / "in.png")
    _no_tokens(monkeypatch)
    result = run("attnmap", src, "--query", "1,1", *FAST, "-k", "100000", "-o",
                 tmp_path / "out.png")  # fmt: skip
    line = _one_error_line(result, 2)
    assert line.endswith(f"-k must be <= {H * W}, got 100000")  # the library's check, renamed
    assert sorted(os.listdir(tmp_path)) == ["in.png"]
    monkeypatch.undo()
    result = run("attnmap", src, "--query", "1,1", "--method", "exact", *FAST, "-k",
                 H * W, "--raw", "-o", tmp_path / "out.png")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out.json").read_text())["k"] == H * W


def test_attnmap_k_above_the_number_of_tokens_is_a_usage_error(tmp_path, monkeypatch):
    src = save(tmp_path / "in.png")
    np.save(tmp_path / "f.npy", np.ones((4, 5, 2), np.float32))
    _no_tokens(monkeypatch)
    result = run("attnmap", src, "--query", "1,1", "--features", tmp_path / "f.npy", "-k", "21",
                 "-o", tmp_path / "out.png")  # fmt: skip
    line = _one_error_line(result, 2)
    assert line.endswith("-k must be <= 20, got 21")
    assert not (tmp_path / "out.png").exists()


def _tiff(path, array) -> str:
    import tifffile

    tifffile.imwrite(path, array)
    return os.fspath(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_attnmap_image_with_nan_or_inf_is_a_file_error(tmp_path, monkeypatch, bad):
    image = synthetic_image().astype(np.float32)
    image[3, 4] = bad
    src = _tiff(tmp_path / "bad.tif", image)
    _no_maps(monkeypatch)
    result = run("attnmap", src, "--query", "1,1", *FAST, "-o", tmp_path / "out.png")
    line = _one_error_line(result, 1)
    assert line == f"error: {src}: image contains NaN or infinite values"
    assert not (tmp_path / "out.png").exists()


def test_attnmap_constant_image_gives_uniform_maps(tmp_path):
    src = save(tmp_path / "flat.png", np.full((H, W), 77, np.uint8))
    # the default h: the noise estimate is 0 on a constant image
    result = run("attnmap", src, "--query", "5,5", "--method", "exact", "--raw", "-o",
                 tmp_path / "out.png")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(rows, 1.0 / (H * W), rtol=1e-5)


def _grey(shape) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, shape).astype(np.uint8)


GOOD_ODD_INPUTS = {
    "int32.tif": lambda p: _tiff(p, _grey((12, 10)).astype(np.int32)),
    "float64.tif": lambda p: _tiff(p, _grey((12, 10)) / 255.0),
    "bool.tif": lambda p: _tiff(p, _grey((12, 10)) > 100),
    "uint16.png": lambda p: save(p, _grey((12, 10)).astype(np.uint16) * 257),
    "row.png": lambda p: save(p, _grey((1, 9))),
    "column.png": lambda p: save(p, _grey((6, 1))),
    "pixel.png": lambda p: save(p, _grey((1, 1))),
    "rgba.png": lambda p: save(p, np.dstack([_grey((12, 10))] * 3 + [_grey((12, 10)) // 2])),
    "new\nline.png": lambda p: save(p, _grey((12, 10))),
}


@pytest.mark.parametrize("name", list(GOOD_ODD_INPUTS), ids=repr)
def test_attnmap_odd_but_valid_images(tmp_path, name):
    import nlattn

    src = GOOD_ODD_INPUTS[name](tmp_path / name)
    pixels, _ = nlattn.read_image(src)  # the io policy: int -> float32, bool -> 0/255...
    out = tmp_path / "out.png"
    result = run("attnmap", src, "--query", "0,0", "--method", "exact", "--patch-radius", "1",
                 "--raw", "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and "Traceback" not in result.output
    rows = np.load(tmp_path / "out.npy")
    assert rows.shape == (1, 1) + pixels.shape[:2]
    np.testing.assert_allclose(rows.sum(axis=(2, 3)), 1.0, atol=1e-5)
    assert read(out).ndim == 3


@pytest.mark.parametrize("shape", [(3000, 1), (1, 3000)])
def test_attnmap_on_a_strip_is_quick_and_small(tmp_path, shape):
    import time

    src = save(tmp_path / "strip.png", _grey(shape))
    start = time.perf_counter()
    result = run("attnmap", src, "--query", "0,0", "--method", "exact,local", "--patch-radius",
                 "1", "-o", tmp_path / "out.png")  # fmt: skip
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    height, width = read(tmp_path / "out.png").shape[:2]
    assert height <= 1100 and width <= 700  # not 900102 pixels high
    assert seconds < 30  # was 61 s and 12 GB


def _fifo(path) -> str:
    os.mkfifo(path)
    return os.fspath(path)


def _folder(path) -> str:
    path.mkdir()
    return os.fspath(path)


def _bytes(data: bytes):
    def make(path) -> str:
        path.write_bytes(data)
        return os.fspath(path)

    return make


BAD_INPUTS = {
    "empty.png": (_bytes(b""), "empty file"),
    "folder.png": (_folder, "is a directory"),
    "big.tif": (lambda p: _tiff(p, np.full((4, 4), 2**25, np.int32)), "+-2**24"),
    "new\nline.png": (_bytes(b"junk"), "not a supported image"),
    "fifo.png": (_fifo, "not a regular file"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS), ids=repr)
def test_attnmap_unusable_files_are_one_line_file_errors(tmp_path, monkeypatch, name):
    import contextlib

    from tests.test_io import fifo_rescued

    make, reason = BAD_INPUTS[name]
    if name == "fifo.png" and not hasattr(os, "mkfifo"):
        pytest.skip("needs os.mkfifo")
    src = make(tmp_path / name)
    _no_maps(monkeypatch)
    with fifo_rescued(src) if name == "fifo.png" else contextlib.nullcontext():
        result = run("attnmap", src, "--query", "0,0", *FAST, "-o", tmp_path / "out.png")
    line = _one_error_line(result, 1)
    assert line.startswith("error: ") and reason in line, line
    assert repr(src)[1:-1] in line  # the name, control characters escaped
    assert "\n" not in src or src.replace("\n", " ") not in line  # not mangled
    assert not (tmp_path / "out.png").exists()


def test_attnmap_features_that_are_a_folder_or_a_fifo(tmp_path, monkeypatch):
    src = save(tmp_path / "in.png")
    (tmp_path / "f.npy").mkdir()
    _no_maps(monkeypatch)
    result = run("attnmap", src, "--query", "0,0", "--features", tmp_path / "f.npy", "-o",
                 tmp_path / "out.png")  # fmt: skip
    assert "is a directory" in _one_error_line(result, 1)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "g.npy")
        result = run("attnmap", src, "--query", "0,0", "--features", tmp_path / "g.npy", "-o",
                     tmp_path / "out.png")  # fmt: skip
        assert "not a regular file" in _one_error_line(result, 1)


def test_attnmap_messages_naming_odd_file_names_stay_on_one_line(tmp_path):
    src = save(tmp_path / "in\nput.png")
    shown = repr(src)[1:-1]
    # a usage error naming the image
    result = run("attnmap", src, "--query", "99,1", *FAST, "-o", tmp_path / "out.png")
    assert shown in _one_error_line(result, 2)
    # an existing output, an unsupported output extension
    out = tmp_path / "o\tut\x1b.png"
    out.write_bytes(b"previous")
    result = run("attnmap", src, "--query", "1,1", *FAST, "-o", out)
    assert _one_error_line(result, 1) == (
        f"error: {repr(str(out))[1:-1]} exists (use --overwrite to replace it)"
    )
    result = run("attnmap", src, "--query", "1,1", *FAST, "-o", tmp_path / "x\n.gif")
    assert "\\n" in _one_error_line(result, 2)
    # success: the report names the output on one line
    result = run("attnmap", src, "--query", "1,1", "--method", "exact", *FAST, "--overwrite",
                 "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith(f"wrote {repr(str(out))[1:-1]} (")
