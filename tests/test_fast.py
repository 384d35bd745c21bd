"""Fastmax attention (method "fast") against its dense NumPy twin in tests/naive.py."""

from __future__ import annotations

import inspect

import numba
import numpy as np
import pytest

import nlattn
from nlattn.attention import fast
from tests import naive

NORMALIZATIONS = ("unit", "max", "centred", "none")
# p = 1 without normalisation is refused (its weights 1 + s could be negative).
PAIRS = [(p, norm) for p in (1, 2) for norm in NORMALIZATIONS if (p, norm) != (1, "none")]


def _tokens(shape, dv, seed=0, spread=1.0, offset=0.0):
    """Random queries, keys (H, W, d) and values (H, W, dv), float32."""
    rng = np.random.default_rng(seed)
    q = (offset + spread * rng.standard_normal(shape)).astype(np.float32)
    k = (offset + spread * rng.standard_normal(shape)).astype(np.float32)
    v = rng.standard_normal(shape[:2] + (dv,)).astype(np.float32)
    return q, k, v


@pytest.fixture
def small_blocks(monkeypatch):
    """Tiny key chunks, few moment work items and tiny query blocks, so that small grids
    exercise the round-robin chunks, the item reduction and partial last blocks."""
    monkeypatch.setattr(fast, "MOMENT_CHUNK", 4)
    monkeypatch.setattr(fast, "MOMENT_ITEMS", 3)
    monkeypatch.setattr(fast, "QUERY_BLOCK", 7)
    monkeypatch.setattr(fast, "KEY_CHUNK", 5)


# ------------------------------------------------------------------------------- the operator


@pytest.mark.parametrize(("p", "normalization"), PAIRS)
@pytest.mark.parametrize(
    ("shape", "dv"),
    [
        ((5, 7, 3), 2),  # small, dv != d
        ((9, 4, 6), 1),  # non-square, grey values
        ((1, 40, 5), 3),  # one row: a sequence of tokens
        ((1, 1, 4), 2),  # a single token
    ],
)
def test_fast_matches_dense_formula(p, normalization, shape, dv):
    # offset: tokens not centred on 0, so "centred" differs from "max"
    q, k, v = _tokens(shape, dv, seed=1, offset=0.3)
    out = nlattn.attention(q, k, v, "fast", scale=0.9, p=p, normalization=normalization)
    assert out.shape == shape[:2] + (dv,) and out.dtype == np.float32
    ref = naive.fastmax_attention(q, k, v, 0.9, p, normalization)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("p", "normalization"), [(2, "unit"), (1, "centred"), (2, "none")])
def test_fast_many_chunks_and_blocks_match_dense_formula(small_blocks, p, normalization):
    q, k, v = _tokens((13, 17, 4), 3, seed=2, offset=0.2)
    out = nlattn.attention(q, k, v, "fast", scale=0.7, p=p, normalization=normalization)
    ref = naive.fastmax_attention(q, k, v, 0.7, p, normalization)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    positions = [(0, 0), (6, 9), (12, 16)]
    rows = nlattn.attention_rows(q, k, positions, "fast", scale=0.7, p=p,
                                 normalization=normalization)
    np.testing.assert_allclose(rows, naive.fastmax_rows(q, k, positions, 0.7, p,
                                                             normalization),
                               rtol=1e-5, atol=1e-9)


def test_fast_with_wide_features_matches_dense_formula():
    # d = 9 (the symmetric second moment has 45 entries, two groups of four and a tail per row)
    q, k, v = _tokens((6, 8, 9), 5, seed=3)
    for p in (1, 2):
        out = nlattn.attention(q, k, v, "fast", scale=1.0, p=p)
        np.testing.assert_allclose(out, naive.fastmax_attention(q, k, v, 1.0, p, "unit"),
                                   rtol=1e-5, atol=1e-6)


def test_fast_defaults():
    assert fast.DEFAULTS == {"p": 2, "normalization": "unit"}
    for function in (fast.attend, fast.rows):
        parameters = inspect.signature(function).parameters
        for name, value in fast.DEFAULTS.items():
            assert parameters[name].default == value
    q, k, v = _tokens((5, 6, 3), 2, seed=4, offset=0.5)
    np.testing.assert_array_equal(
        nlattn.attention(q, k, v, "fast"),
        nlattn.attention(q, k, v, "fast", p=2, normalization="unit", scale=1 / np.sqrt(3)),
    )
    # None stands for the default
    np.testing.assert_array_equal(nlattn.attention(q, k, v, "fast", p=None),
                                  nlattn.attention(q, k, v, "fast"))


def test_fast_normalizations_differ():
    q, k, v = _tokens((5, 6, 3), 2, seed=5, offset=0.5, spread=2.0)
    outs = [nlattn.attention(q, k, v, "fast", scale=1.0, normalization=norm)
            for norm in NORMALIZATIONS]
    for a in range(len(outs)):
        for b in range(a + 1, len(outs)):
            assert np.abs(outs[a] - outs[b]).max() > 1e-3


def test_fast_unit_weights_have_a_dynamic_range_of_at_most_five():
    # p = 2 on unit vectors at scale 1: f(s) in [f(-1), f(1)] = [0.5, 2.5]
    q, k, _ = _tokens((12, 12, 2), 1, seed=6)
    positions = [(y, x) for y in range(0, 12, 3) for x in range(0, 12, 4)]
    rows = nlattn.attention_rows(q, k, positions, "fast", scale=1.0)
    ratio = rows.max(axis=(1, 2)) / rows.min(axis=(1, 2))
    assert (ratio <= 5.0 * (1 + 1e-5)).all()
    assert ratio.max() > 4.5  # d = 2: some key nearly opposite, some nearly aligned


def test_fast_zero_tokens_get_uniform_weights():
    q, k, v = _tokens((4, 5, 3), 2, seed=7)
    q[1, 2] = 0.0
    for normalization in ("unit", "none"):
        out = nlattn.attention(q, k, v, "fast", normalization=normalization)
        np.testing.assert_allclose(out[1, 2], v.reshape(-1, 2).mean(axis=0), rtol=1e-5,
                                   atol=1e-6)
    # every key equal: "centred" leaves zero vectors, every weight f(0) = 1
    k[:] = 1.5
    out = nlattn.attention(q, k, v, "fast", normalization="centred")
    np.testing.assert_allclose(out, np.broadcast_to(v.reshape(-1, 2).mean(axis=0), out.shape),
                               rtol=1e-5, atol=1e-6)


def test_fast_p1_all_weights_zero_gives_the_uniform_average():
    # p = 1 at scale 1: keys pointing exactly away from the query have weight 1 + (-1) = 0
    q = np.zeros((3, 4, 2), np.float32)
    q[..., 0] = 1.0
    k = np.zeros((3, 4, 2), np.float32)
    k[..., 0] = -2.0
    v = np.arange(24, dtype=np.float32).reshape(3, 4, 2)
    out = nlattn.attention(q, k, v, "fast", scale=1.0, p=1)
    np.testing.assert_allclose(out, np.broadcast_to(v.reshape(-1, 2).mean(axis=0), out.shape))
    np.testing.assert_allclose(out, naive.fastmax_attention(q, k, v, 1.0, 1, "unit"))
    rows = nlattn.attention_rows(q, k, [(0, 0), (2, 3)], "fast", scale=1.0, p=1)
    np.testing.assert_allclose(rows, 1.0 / 12)
    # one key turned aside takes all the weight
    k[2, 3] = (0.0, 1.0)
    rows = nlattn.attention_rows(q, k, [(1, 1)], "fast", scale=1.0, p=1)
    assert rows[0, 2, 3] == pytest.approx(1.0) and rows[0].sum() == pytest.approx(1.0)
    out = nlattn.attention(q, k, v, "fast", scale=1.0, p=1)
    np.testing.assert_allclose(out[0, 0], v[2, 3], rtol=1e-5)


# ------------------------------------------------------------------------------------- rows


@pytest.mark.parametrize(("p", "normalization"), PAIRS)
@pytest.mark.parametrize("shape", [(6, 9, 4), (1, 30, 3), (11, 2, 5)])
def test_fast_rows_match_dense_rows(p, normalization, shape):
    q, k, _ = _tokens(shape, 1, seed=8, offset=0.3)
    height, width = shape[:2]
    positions = [(0, 0), (height - 1, width - 1), (height // 2, width // 3)]
    rows = nlattn.attention_rows(q, k, positions, "fast", scale=0.8, p=p,
                                 normalization=normalization)
    assert rows.shape == (3, height, width) and rows.dtype == np.float32
    ref = naive.fastmax_rows(q, k, positions, 0.8, p, normalization)
    np.testing.assert_allclose(rows, ref, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(rows.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert (rows > 0).all()  # positive weights: scale < 1 for p = 1, f >= 1/2 for p = 2


@pytest.mark.parametrize(("p", "normalization"), [(2, "unit"), (1, "max"), (2, "none")])
def test_fast_rows_reproduce_the_output(p, normalization):
    q, k, v = _tokens((7, 8, 3), 2, seed=9, offset=0.2)
    positions = np.array([(y, x) for y in range(7) for x in range(8)])
    rows = nlattn.attention_rows(q, k, positions, "fast", scale=0.9, p=p,
                                 normalization=normalization)
    out = nlattn.attention(q, k, v, "fast", scale=0.9, p=p, normalization=normalization)
    np.testing.assert_allclose(np.einsum("ihw,hwc->ic", rows.astype(np.float64), v),
                               out.reshape(-1, 2), rtol=1e-5, atol=1e-6)


def test_fast_rows_of_no_positions():
    q, k, _ = _tokens((4, 5, 2), 1)
    assert nlattn.attention_rows(q, k, np.zeros((0, 2), np.int64), "fast").shape == (0, 4, 5)


# ------------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_fast_large_norm_tokens_stay_finite(normalization):
    rng = np.random.default_rng(10)
    q = rng.standard_normal((9, 11, 6))
    k = rng.standard_normal((9, 11, 6))
    q *= 1e4 / np.linalg.norm(q, axis=-1, keepdims=True)
    k *= 1e4 / np.linalg.norm(k, axis=-1, keepdims=True)
    k[0, :4] *= 1e-3  # norms spanning 10 to 1e4
    q, k = q.astype(np.float32), k.astype(np.float32)
    v = rng.standard_normal((9, 11, 2)).astype(np.float32)
    scale = 1e-8 if normalization == "none" else 1.0  # |s| up to 1: the none weights stay mixed
    for s in (scale, 1.0):
        out = nlattn.attention(q, k, v, "fast", scale=s, normalization=normalization)
        assert np.isfinite(out).all()
        ref = naive.fastmax_attention(q, k, v, s, 2, normalization)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
        rows = nlattn.attention_rows(q, k, [(0, 0), (8, 10)], "fast", scale=s,
                                     normalization=normalization)
        assert np.isfinite(rows).all()
        np.testing.assert_allclose(rows.sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_fast_scores_up_to_one_hundred_stay_finite():
    rng = np.random.default_rng(11)
    q = rng.standard_normal((8, 10, 4))
    k = rng.standard_normal((8, 10, 4))
    q *= 10.0 / np.linalg.norm(q, axis=-1, keepdims=True)
    k *= 10.0 / np.linalg.norm(k, axis=-1, keepdims=True)
    k[-1, -1] = q[0, 0]
    q, k = q.astype(np.float32), k.astype(np.float32)
    v = rng.standard_normal((8, 10, 3)).astype(np.float32)
    assert np.abs(q.reshape(-1, 4) @ k.reshape(-1, 4).T).max() == pytest.approx(100.0, rel=1e-5)
    out = nlattn.attention(q, k, v, "fast", scale=1.0, normalization="none")
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, naive.fastmax_attention(q, k, v, 1.0, 2, "none"),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- determinism


@pytest.mark.parametrize(("p", "normalization"), [(2, "unit"), (1, "centred")])
def test_fast_same_result_at_one_and_two_threads(p, normalization):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    q, k, v = _tokens((60, 70, 5), 2, seed=12)  # 4200 tokens: 17 key chunks, 17 query blocks
    positions = [(0, 0), (31, 45), (59, 69)]
    params = {"p": p, "normalization": normalization}
    one = nlattn.attention(q, k, v, "fast", n_threads=1, **params)
    two = nlattn.attention(q, k, v, "fast", n_threads=2, **params)
    np.testing.assert_array_equal(one, two)
    rows_one = nlattn.attention_rows(q, k, positions, "fast", n_threads=1, **params)
    rows_two = nlattn.attention_rows(q, k, positions, "fast", n_threads=2, **params)
    np.testing.assert_array_equal(rows_one, rows_two)


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"p": 3}, ValueError, "p must be 1 or 2"),
        ({"p": 0}, ValueError, "p must be 1 or 2"),
        ({"p": 2.0}, TypeError, "p must be an integer"),
        ({"p": True}, TypeError, "p must be an integer"),
        ({"normalization": "l2"}, ValueError, "normalization must be one of"),
        ({"normalization": 1}, TypeError, "normalization must be a string"),
        ({"p": 1, "normalization": "none"}, ValueError, "p=1 needs normalised tokens"),
        ({"p": 1, "scale": 1.5}, ValueError, "p=1 needs scale <= 1"),
        ({"heads": 2}, TypeError, "'heads' is not a parameter of attention method 'fast'"),
    ],
)
def test_fast_invalid_parameters_raise(params, error, match):
    q, k, v = _tokens((4, 5, 3), 2)
    with pytest.raises(error, match=match):
        nlattn.attention(q, k, v, "fast", **params)
    with pytest.raises(error, match=match):
        nlattn.attention_rows(q, k, [(0, 0)], "fast", **params)


# ----------------------------------------------------------------------------- denoising


def test_nl_means_refuses_fast():
    # an attention operator, not a denoiser (benchmarks/denoisers.py): nl_means says where to
    # use it instead
    noisy = np.zeros((20, 24), np.uint8)
    with pytest.raises(ValueError, match="'fast' is an attention operator, not a denoiser"):
        nlattn.nl_means(noisy, method="fast", sigma=20.0)
