"""Attention (nlattn.attention, attention_rows, METHODS) against its brute-force twins."""

from __future__ import annotations

import importlib
import inspect

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nlattn
from nlattn.attention import PARAMETER_CHECKS, exact, local
from tests import naive


def _tokens(shape, dv, seed=0, spread=1.0):
    """Random queries, keys (H, W, d) and values (H, W, dv), float32."""
    rng = np.random.default_rng(seed)
    q = (spread * rng.standard_normal(shape)).astype(np.float32)
    k = (spread * rng.standard_normal(shape)).astype(np.float32)
    v = rng.standard_normal(shape[:2] + (dv,)).astype(np.float32)
    return q, k, v


# --------------------------------------------------------------------------------------- exact


@pytest.mark.parametrize(
    ("shape", "dv"),
    [
        ((5, 7, 3), 2),  # small, dv != d
        ((9, 4, 8), 8),  # non-square
        ((1, 40, 6), 3),  # one row: a sequence of tokens
        ((23, 1, 4), 5),  # one column
        ((1, 1, 3), 2),  # a single token
        ((6, 6, 1), 1),  # d = 1
        ((30, 41, 5), 3),  # several query and key blocks, with partial last blocks
    ],
)
def test_exact_matches_naive(shape, dv):
    q, k, v = _tokens(shape, dv, seed=1)
    out = nlattn.attention(q, k, v, "exact", scale=0.8)
    assert out.shape == shape[:2] + (dv,) and out.dtype == np.float32
    np.testing.assert_allclose(out, naive.softmax_attention(q, k, v, 0.8), rtol=1e-4, atol=1e-6)


def test_exact_large_scores_stay_finite():
    # |scale q.k| up to 100, with each query's best key in a late key block (the running maximum
    # must be rescaled several times) and sharp, nearly one-hot rows.
    height, width, d = 24, 50, 16
    rng = np.random.default_rng(2)
    q = rng.standard_normal((height, width, d))
    k = rng.standard_normal((height, width, d))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    k *= np.linspace(1.0, 10.0, height * width).reshape(height, width, 1)  # grows with j
    q *= 10.0
    k[-1, -1] = q[0, 0]  # the first query's best key is the last one: score 100
    v = rng.standard_normal((height, width, 3))
    scores = q.reshape(-1, d) @ k.reshape(-1, d).T
    assert np.abs(scores).max() == pytest.approx(100.0)
    out = nlattn.attention(q, k, v, "exact", scale=1.0)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, naive.softmax_attention(q, k, v, 1.0), rtol=1e-4, atol=1e-5)
    rows = nlattn.attention_rows(q, k, [(0, 0), (23, 49)], "exact", scale=1.0)
    assert np.isfinite(rows).all()
    np.testing.assert_allclose(rows.sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_exact_default_scale_is_one_over_sqrt_d():
    q, k, v = _tokens((6, 5, 9), 2, seed=3)
    np.testing.assert_array_equal(nlattn.attention(q, k, v),
                                  nlattn.attention(q, k, v, scale=1.0 / 3.0))


def test_exact_accepts_integer_and_float64_inputs():
    q, k, v = _tokens((7, 8, 3), 3, seed=4)
    q64, k64 = q.astype(np.float64), k.astype(np.float64)
    v8 = np.clip(np.rint(v * 40 + 128), 0, 255).astype(np.uint8)
    out = nlattn.attention(q64, k64, v8, scale=0.5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, naive.softmax_attention(q, k, v8, 0.5), rtol=1e-4)


@settings(max_examples=12, deadline=None)
@given(
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    d=st.integers(1, 9),
    dv=st.integers(1, 4),
    scale=st.floats(0.05, 3.0),
    seed=st.integers(0, 1000),
)
def test_exact_matches_naive_random_shapes(height, width, d, dv, scale, seed):
    q, k, v = _tokens((height, width, d), dv, seed=seed)
    out = nlattn.attention(q, k, v, "exact", scale=scale)
    np.testing.assert_allclose(out, naive.softmax_attention(q, k, v, scale), rtol=1e-4,
                               atol=1e-6)


# --------------------------------------------------------------------------------------- local


@pytest.mark.parametrize(
    ("shape", "dv", "radius"),
    [
        ((9, 11, 4), 2, 2),  # odd sizes, borders everywhere
        ((13, 7, 3), 3, 3),  # the default radius
        ((6, 5, 2), 1, 7),  # window larger than the grid
        ((1, 30, 5), 4, 3),  # one row of tokens
        ((20, 1, 3), 2, 4),  # one column
        ((1, 1, 2), 2, 3),  # a single token
        ((8, 9, 1), 3, 1),  # d = 1
        ((3, 600, 6), 2, 3),  # several tiles per row (tile 512 at r = 3)
        ((4, 300, 5), 1, 7),  # several tiles per row (tile 288 at r = 7)
    ],
)
def test_local_matches_naive(shape, dv, radius):
    q, k, v = _tokens(shape, dv, seed=5)
    out = nlattn.attention(q, k, v, "local", scale=0.7, window_radius=radius)
    assert out.shape == shape[:2] + (dv,) and out.dtype == np.float32
    ref = naive.windowed_attention(q, k, v, 0.7, radius)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)


def test_local_radius_zero_returns_the_values():
    q, k, v = _tokens((7, 6, 3), 4, seed=6)
    np.testing.assert_array_equal(nlattn.attention(q, k, v, "local", window_radius=0), v)


def test_local_with_a_window_covering_the_grid_is_exact():
    q, k, v = _tokens((9, 12, 4), 3, seed=7)
    np.testing.assert_allclose(nlattn.attention(q, k, v, "local", window_radius=12),
                               nlattn.attention(q, k, v, "exact"), rtol=1e-4, atol=1e-6)


def test_local_large_scores_stay_finite():
    q, k, v = _tokens((15, 17, 8), 2, seed=8, spread=3.5)  # |q.k| up to ~200
    out = nlattn.attention(q, k, v, "local", scale=1.0, window_radius=4)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, naive.windowed_attention(q, k, v, 1.0, 4), rtol=1e-4,
                               atol=1e-5)


def test_local_default_radius_is_three():
    q, k, v = _tokens((10, 9, 3), 2, seed=9)
    default = nlattn.attention(q, k, v, "local")
    np.testing.assert_array_equal(default, nlattn.attention(q, k, v, "local", window_radius=3))
    np.testing.assert_array_equal(default,
                                  nlattn.attention(q, k, v, "local", window_radius=None))
    assert inspect.signature(local.attend).parameters["window_radius"].default == 3


@settings(max_examples=12, deadline=None)
@given(
    height=st.integers(1, 10),
    width=st.integers(1, 10),
    d=st.integers(1, 6),
    dv=st.integers(1, 3),
    radius=st.integers(0, 5),
    seed=st.integers(0, 1000),
)
def test_local_matches_naive_random_shapes(height, width, d, dv, radius, seed):
    q, k, v = _tokens((height, width, d), dv, seed=seed)
    out = nlattn.attention(q, k, v, "local", scale=0.9, window_radius=radius)
    ref = naive.windowed_attention(q, k, v, 0.9, radius)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------- rows


@pytest.mark.parametrize("shape", [(9, 13, 4), (1, 25, 3), (1, 1, 2), (30, 41, 5)])
def test_exact_rows_match_dense_rows(shape):
    q, k, _ = _tokens(shape, 1, seed=10)
    height, width = shape[:2]
    positions = np.array([[0, 0], [height - 1, width - 1], [height // 2, width // 3]])
    rows = nlattn.attention_rows(q, k, positions, "exact", scale=0.6)
    assert rows.shape == (3, height, width) and rows.dtype == np.float32
    np.testing.assert_allclose(rows.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(rows, naive.softmax_rows(q, k, positions, 0.6), rtol=1e-4,
                               atol=1e-7)


@pytest.mark.parametrize(("shape", "radius"), [((9, 13, 4), 2), ((6, 5, 3), 7), ((1, 20, 2), 3)])
def test_local_rows_match_windowed_rows(shape, radius):
    q, k, _ = _tokens(shape, 1, seed=11)
    height, width = shape[:2]
    positions = [(0, 0), (height - 1, width - 1), (height // 2, width // 2)]
    rows = nlattn.attention_rows(q, k, positions, "local", scale=1.3, window_radius=radius)
    np.testing.assert_allclose(rows.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    ref = naive.windowed_rows(q, k, positions, 1.3, radius)
    np.testing.assert_allclose(rows, ref, rtol=1e-4, atol=1e-7)
    assert (rows[ref == 0] == 0).all()  # nothing outside the window


@pytest.mark.parametrize(("method", "params"), [("exact", {}), ("local", {"window_radius": 2})])
def test_rows_reproduce_the_attention_output(method, params):
    q, k, v = _tokens((11, 14, 5), 3, seed=12)
    positions = np.array([(y, x) for y in range(11) for x in range(14)])
    rows = nlattn.attention_rows(q, k, positions, method, **params)
    out = nlattn.attention(q, k, v, method, **params)
    np.testing.assert_allclose(np.einsum("ihw,hwc->ic", rows.astype(np.float64), v),
                               out.reshape(-1, 3), rtol=1e-4, atol=1e-6)


def test_rows_of_no_positions():
    q, k, _ = _tokens((4, 5, 2), 1)
    for method in ("exact", "local"):
        rows = nlattn.attention_rows(q, k, np.zeros((0, 2), np.int64), method)
        assert rows.shape == (0, 4, 5)


# -------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize(("method", "params"), [("exact", {}), ("local", {"window_radius": 3})])
def test_same_result_at_one_and_two_threads(method, params):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    q, k, v = _tokens((40, 50, 8), 4, seed=13)  # 2000 tokens: 8 query blocks, 4 key blocks
    positions = [(0, 0), (17, 33), (39, 49)]
    one = nlattn.attention(q, k, v, method, n_threads=1, **params)
    two = nlattn.attention(q, k, v, method, n_threads=2, **params)
    np.testing.assert_array_equal(one, two)
    rows_one = nlattn.attention_rows(q, k, positions, method, n_threads=1, **params)
    rows_two = nlattn.attention_rows(q, k, positions, method, n_threads=2, **params)
    np.testing.assert_array_equal(rows_one, rows_two)


def test_blas_threads_are_restored():
    try:
        import threadpoolctl  # noqa: F401

        pytest.skip("threadpoolctl manages the BLAS threads")
    except ImportError:
        pass
    with exact.single_threaded_blas():
        controllers = exact._CONTROLLERS
        inside = [get() for get, _ in controllers]
    if not controllers:
        pytest.skip("no BLAS library found to control")
    assert inside == [1] * len(controllers)
    before = [get() for get, _ in controllers]
    with exact.single_threaded_blas():
        pass
    assert [get() for get, _ in controllers] == before


# ---------------------------------------------------------------------------------- registry


def test_registry_entries_are_complete():
    assert set(nlattn.METHODS) >= {"exact", "local"}
    for name, info in nlattn.METHODS.items():
        assert info.name == name and info.description and info.complexity
        module = importlib.import_module(f"nlattn.attention.{name}")
        for function in (module.attend, module.rows):
            accepted = inspect.signature(function).parameters
            assert list(accepted)[:5] in (
                ["queries", "keys", "values", "scale", "seed"],
                ["queries", "keys", "positions", "scale", "seed"],
            )
            for parameter in info.parameters:
                assert parameter in accepted
    assert set(PARAMETER_CHECKS) >= {"k", "window_radius", "n_iters"}


# ------------------------------------------------------------------------------------ errors

_GOOD = _tokens((4, 5, 3), 2)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (dict(queries=np.zeros((4, 5))), ValueError, r"queries must have shape \(H, W, d\)"),
        (dict(keys=np.zeros((4, 6, 3))), ValueError, "keys must have the shape of queries"),
        (dict(keys=np.zeros((4, 5, 2))), ValueError, "keys must have the shape of queries"),
        (dict(values=np.zeros((5, 4, 2))), ValueError, "values must lie on the grid"),
        (dict(values=np.zeros((4, 5))), ValueError, r"values must have shape \(H, W, dv\)"),
        (dict(queries=np.full((4, 5, 3), np.nan)), ValueError, "queries contains NaN"),
        (dict(values=np.full((4, 5, 2), np.inf)), ValueError, "values contains NaN or inf"),
        (dict(keys=np.zeros((4, 5, 3), bool)), TypeError, "keys must hold integers or floats"),
        (dict(queries=[[[1.0]]]), TypeError, "queries must be a numpy array"),
        (dict(queries=np.zeros((0, 5, 3))), ValueError, "queries must not be empty"),
        (dict(keys=np.full((4, 5, 3), 1e37)), ValueError, "overflow float32"),
        (dict(queries=np.full((4, 5, 3), 1e300)), ValueError, "queries holds values beyond"),
        (dict(scale=0.0), ValueError, "scale must be > 0"),
        (dict(scale=float("nan")), ValueError, "scale must be finite"),
        (dict(scale="1"), TypeError, "scale must be a real number"),
        (dict(method="nope"), ValueError, "method must be one of"),
        (dict(method=None), TypeError, "method must be a string"),
        (dict(seed=-1), ValueError, "seed must be >= 0"),
        (dict(n_threads=0), ValueError, "n_threads must be >= 1"),
        (dict(window_radius=2), TypeError,
         r"'window_radius' is not a parameter of attention method 'exact' \(its parameters: "
         r"none\)"),
        (dict(method="local", radius=2), TypeError,
         r"'radius' is not a parameter of attention method 'local' \(its parameters: "
         r"window_radius\)"),
        (dict(method="local", window_radius=-1), ValueError, "window_radius must be >= 0"),
        (dict(method="local", window_radius=1.5), TypeError, "window_radius must be an integer"),
    ],
)
def test_invalid_arguments_raise(change, error, match):
    q, k, v = _GOOD
    kwargs = {"queries": q, "keys": k, "values": v, **change}
    with pytest.raises(error, match=match):
        nlattn.attention(**kwargs)
    if "values" not in change:
        kwargs.pop("values")
        with pytest.raises(error, match=match):
            nlattn.attention_rows(positions=[(0, 0)], **kwargs)


@pytest.mark.parametrize("method", ["scram", "scatterbrain"])
def test_k_above_the_number_of_keys_raises(method):
    # nothing is clipped: k = n is the largest k a 4 x 5 grid takes
    q, k, v = _GOOD
    n = q.shape[0] * q.shape[1]
    for call in (lambda **p: nlattn.attention(q, k, v, method, **p),
                 lambda **p: nlattn.attention_rows(q, k, [(1, 2)], method, **p)):
        for too_many in (n + 1, 1000):
            with pytest.raises(ValueError) as raised:
                call(k=too_many)
            assert str(raised.value) == f"k must be <= {n}, got {too_many}"
        with pytest.raises(ValueError, match="k must be >= 1, got 0"):
            call(k=0)
        assert np.isfinite(call(k=n)).all()
    # the bound is the grid's, whatever its shape: a sequence of 3 tokens takes k <= 3
    row = _tokens((1, 3, 2), 1)
    with pytest.raises(ValueError, match="k must be <= 3, got 4"):
        nlattn.attention(*row, method, k=4)
    assert nlattn.attention(*row, method, k=3).shape == (1, 3, 1)


def test_parameter_checks_take_the_number_of_keys():
    assert PARAMETER_CHECKS["k"](20, 20) == 20
    with pytest.raises(ValueError, match="k must be <= 20, got 21"):
        PARAMETER_CHECKS["k"](21, 20)
    assert PARAMETER_CHECKS["window_radius"](5, 1) == 5  # not a count of keys: no bound by n


@pytest.mark.parametrize(
    ("positions", "error", "match"),
    [
        ([(0, 0), (4, 1)], ValueError, r"positions\[1\] = \(y=4, x=1\) lies outside the 4 x 5"),
        ([(0, -1)], ValueError, r"positions\[0\] = \(y=0, x=-1\) lies outside"),
        ([(0, 5)], ValueError, r"positions\[0\] = \(y=0, x=5\)"),
        ([0, 1], ValueError, r"positions must have shape \(m, 2\)"),
        ([(0, 1, 2)], ValueError, r"positions must have shape \(m, 2\)"),
        ([(0.0, 1.0)], TypeError, "positions must hold integers"),
        ([(True, False)], TypeError, "positions must hold integers"),
    ],
)
def test_invalid_positions_raise(positions, error, match):
    q, k, _ = _GOOD
    for method in ("exact", "local"):
        with pytest.raises(error, match=match):
            nlattn.attention_rows(q, k, positions, method)
