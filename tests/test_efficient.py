"""Efficient Attention (method "efficient") against its dense NumPy twin in tests/naive.py."""

from __future__ import annotations

import inspect

import numba
import numpy as np
import pytest

import nlattn
from nlattn.attention import efficient
from tests import naive


def _tokens(shape, dv, seed=0, spread=1.0):
    """Random queries, keys (H, W, d) and values (H, W, dv), float32."""
    rng = np.random.default_rng(seed)
    q = (spread * rng.standard_normal(shape)).astype(np.float32)
    k = (spread * rng.standard_normal(shape)).astype(np.float32)
    v = rng.standard_normal(shape[:2] + (dv,)).astype(np.float32)
    return q, k, v


@pytest.fixture
def small_blocks(monkeypatch):
    """Tiny key chunks, few context work items and tiny query blocks, so that small grids
    exercise the round-robin chunks, the item reduction and partial last blocks."""
    monkeypatch.setattr(efficient, "KEY_CHUNK", 4)
    monkeypatch.setattr(efficient, "CONTEXT_ITEMS", 3)
    monkeypatch.setattr(efficient, "QUERY_BLOCK", 7)
    monkeypatch.setattr(efficient, "MAX_CHUNK", 5)


# ------------------------------------------------------------------------------- the operator


@pytest.mark.parametrize("variant", ["softmax", "scaling"])
@pytest.mark.parametrize(
    ("shape", "dv", "heads"),
    [
        ((5, 7, 3), 2, 1),  # small, dv != d
        ((9, 4, 6), 3, 3),  # non-square; heads split d and dv
        ((6, 5, 4), 1, 2),  # grey values: heads averaged
        ((4, 6, 6), 4, 3),  # 3 does not divide dv = 4: heads averaged
        ((1, 40, 5), 3, 1),  # one row: a sequence of tokens
        ((1, 1, 4), 2, 4),  # a single token, one channel a head
    ],
)
def test_efficient_matches_dense_product(variant, shape, dv, heads):
    q, k, v = _tokens(shape, dv, seed=1, spread=2.0)
    out = nlattn.attention(q, k, v, "efficient", scale=0.8, variant=variant, heads=heads)
    assert out.shape == shape[:2] + (dv,) and out.dtype == np.float32
    ref = naive.efficient_attention(q, k, v, 0.8, variant, heads)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("variant", "heads"), [("softmax", 1), ("softmax", 2), ("scaling", 2)])
def test_efficient_many_chunks_and_blocks_match_dense_product(small_blocks, variant, heads):
    q, k, v = _tokens((13, 17, 4), 2, seed=2, spread=2.0)
    out = nlattn.attention(q, k, v, "efficient", scale=0.9, variant=variant, heads=heads)
    ref = naive.efficient_attention(q, k, v, 0.9, variant, heads)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    if variant == "softmax":
        positions = [(0, 0), (6, 9), (12, 16)]
        rows = nlattn.attention_rows(q, k, positions, "efficient", scale=0.9, heads=heads)
        np.testing.assert_allclose(rows, naive.efficient_rows(q, k, positions, 0.9, heads),
                                   rtol=1e-5, atol=1e-9)


def test_efficient_defaults():
    assert efficient.DEFAULTS == {"variant": "softmax", "heads": 1}
    for function in (efficient.attend, efficient.rows):
        parameters = inspect.signature(function).parameters
        for name, value in efficient.DEFAULTS.items():
            assert parameters[name].default == value
    q, k, v = _tokens((5, 6, 4), 2, seed=3)
    np.testing.assert_array_equal(
        nlattn.attention(q, k, v, "efficient"),
        nlattn.attention(q, k, v, "efficient", variant="softmax", heads=1, scale=0.5),
    )
    np.testing.assert_array_equal(nlattn.attention(q, k, v, "efficient", heads=None),
                                  nlattn.attention(q, k, v, "efficient"))


def test_efficient_scaling_is_linear_attention():
    q, k, v = _tokens((4, 5, 3), 2, seed=4)
    n = 20
    out = nlattn.attention(q, k, v, "efficient", scale=0.5, variant="scaling")
    qf, kf, vf = (x.reshape(n, -1).astype(np.float64) for x in (q, k, v))
    np.testing.assert_allclose(out.reshape(n, 2), 0.5 * (qf @ kf.T) @ vf / n, rtol=1e-5,
                               atol=1e-6)


def test_efficient_split_heads_use_their_own_value_channels():
    # heads = 2 divides dv = 2: changing the second value channel leaves the first output alone
    q, k, v = _tokens((5, 6, 4), 2, seed=5)
    out = nlattn.attention(q, k, v, "efficient", heads=2)
    w = v.copy()
    w[..., 1] += 3.0
    out2 = nlattn.attention(q, k, w, "efficient", heads=2)
    np.testing.assert_array_equal(out[..., 0], out2[..., 0])
    assert np.abs(out[..., 1] - out2[..., 1]).min() > 1.0


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_efficient_averaged_heads_are_attention_with_the_mean_map(heads):
    q, k, v = _tokens((6, 7, 4), 1, seed=6, spread=2.0)
    positions = np.array([(y, x) for y in range(6) for x in range(7)])
    rows = nlattn.attention_rows(q, k, positions, "efficient", scale=1.0, heads=heads)
    out = nlattn.attention(q, k, v, "efficient", scale=1.0, heads=heads)
    np.testing.assert_allclose(np.einsum("ihw,hwc->ic", rows.astype(np.float64), v),
                               out.reshape(-1, 1), rtol=1e-5, atol=1e-6)


def test_efficient_maps_have_rank_at_most_d():
    q, k, _ = _tokens((6, 8, 3), 1, seed=7, spread=2.0)
    positions = np.array([(y, x) for y in range(6) for x in range(8)])
    maps = nlattn.attention_rows(q, k, positions, "efficient", scale=1.0).reshape(48, 48)
    singular = np.linalg.svd(maps.astype(np.float64), compute_uv=False)
    assert singular[2] > 1e-3 * singular[0]  # three channels, three independent maps
    assert singular[3] < 1e-5 * singular[0]


# ------------------------------------------------------------------------------------- rows


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("shape", [(6, 9, 6), (1, 30, 3), (11, 2, 3)])
def test_efficient_rows_match_dense_rows(heads, shape):
    q, k, _ = _tokens(shape, 1, seed=8, spread=2.0)
    height, width = shape[:2]
    positions = [(0, 0), (height - 1, width - 1), (height // 2, width // 3)]
    rows = nlattn.attention_rows(q, k, positions, "efficient", scale=0.7, heads=heads)
    assert rows.shape == (3, height, width) and rows.dtype == np.float32
    np.testing.assert_allclose(rows, naive.efficient_rows(q, k, positions, 0.7, heads),
                               rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(rows.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert (rows >= 0).all()


def test_efficient_rows_of_no_positions():
    q, k, _ = _tokens((4, 5, 2), 1)
    rows = nlattn.attention_rows(q, k, np.zeros((0, 2), np.int64), "efficient")
    assert rows.shape == (0, 4, 5)


def test_efficient_scaling_variant_has_no_rows():
    q, k, _ = _tokens((4, 5, 2), 1)
    with pytest.raises(ValueError, match="variant='scaling' is plain linear attention"):
        nlattn.attention_rows(q, k, [(0, 0)], "efficient", variant="scaling")


# ------------------------------------------------------------------------------- numerics


def test_efficient_large_norm_tokens_stay_finite():
    rng = np.random.default_rng(9)
    q = rng.standard_normal((9, 11, 6))
    k = rng.standard_normal((9, 11, 6))
    q *= 1e4 / np.linalg.norm(q, axis=-1, keepdims=True)
    k *= 1e4 / np.linalg.norm(k, axis=-1, keepdims=True)
    q, k = q.astype(np.float32), k.astype(np.float32)
    v = rng.standard_normal((9, 11, 2)).astype(np.float32)
    for heads in (1, 2):
        for variant in ("softmax", "scaling"):
            out = nlattn.attention(q, k, v, "efficient", scale=1.0, variant=variant,
                                   heads=heads)
            assert np.isfinite(out).all()
            ref = naive.efficient_attention(q, k, v, 1.0, variant, heads)
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
        rows = nlattn.attention_rows(q, k, [(0, 0), (8, 10)], "efficient", scale=1.0,
                                     heads=heads)
        assert np.isfinite(rows).all()
        np.testing.assert_allclose(rows.sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_efficient_scores_up_to_one_hundred_stay_finite():
    q, k, v = _tokens((8, 10, 4), 3, seed=10)
    q *= 100.0 / np.abs(q).max()
    k *= 100.0 / np.abs(k).max()
    out = nlattn.attention(q, k, v, "efficient", scale=1.0)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, naive.efficient_attention(q, k, v, 1.0), rtol=1e-5,
                               atol=1e-6)


# ---------------------------------------------------------------------------- determinism


@pytest.mark.parametrize(("variant", "heads"), [("softmax", 1), ("scaling", 5)])
def test_efficient_same_result_at_one_and_two_threads(variant, heads):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    q, k, v = _tokens((60, 70, 5), 2, seed=11)  # 4200 tokens: 17 key chunks, 17 query blocks
    one = nlattn.attention(q, k, v, "efficient", n_threads=1, variant=variant, heads=heads)
    two = nlattn.attention(q, k, v, "efficient", n_threads=2, variant=variant, heads=heads)
    np.testing.assert_array_equal(one, two)
    if variant == "softmax":
        positions = [(0, 0), (31, 45), (59, 69)]
        rows_one = nlattn.attention_rows(q, k, positions, "efficient", n_threads=1)
        rows_two = nlattn.attention_rows(q, k, positions, "efficient", n_threads=2)
        np.testing.assert_array_equal(rows_one, rows_two)


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"heads": 2}, ValueError, r"heads must divide .* d = 3 \(one of \[1, 3\]\), got 2"),
        ({"heads": 0}, ValueError, "heads must be >= 1"),
        ({"heads": 1.0}, TypeError, "heads must be an integer"),
        ({"variant": "linear"}, ValueError, "variant must be one of"),
        ({"variant": None, "heads": 4}, ValueError, "heads must divide"),
        ({"p": 2}, TypeError, "'p' is not a parameter of attention method 'efficient'"),
    ],
)
def test_efficient_invalid_parameters_raise(params, error, match):
    q, k, v = _tokens((4, 5, 3), 2)
    with pytest.raises(error, match=match):
        nlattn.attention(q, k, v, "efficient", **params)
    with pytest.raises(error, match=match):
        nlattn.attention_rows(q, k, [(0, 0)], "efficient", **params)


# ----------------------------------------------------------------------------- denoising


def test_nl_means_refuses_efficient():
    # an attention operator, not a denoiser (benchmarks/denoisers.py): nl_means says where to
    # use it instead
    noisy = np.zeros((20, 24), np.uint8)
    with pytest.raises(ValueError, match="'efficient' is an attention operator, not a denoiser"):
        nlattn.nl_means(noisy, method="efficient", sigma=20.0)
