"""Property-based tests of every attention method on the tokens real data has.

Grids of tokens are drawn with the structure of image and model tokens that random Gaussian
tokens lack: exactly zero vectors (flat patches, padding, masked positions), duplicated tokens
(exact ties in the scores), constant regions, rank-deficient tokens (patches centred one by one
lie in a hyperplane), norms from 1e-6 to 1e2, grids of one pixel, one row or one column, and
``k`` or buckets covering every key.  For every method: outputs finite and inside the values'
range (every method's output is a convex combination of the values), rows that are
distributions, exact attention equal to its NumPy twin, supports that cover every key equal to
exact attention, all-zero tokens giving uniform attention, huge scores staying finite.

The shrunk counter-examples that failed before the fixes they pinned are regression tests at the
end of the file.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nlattn
from nlattn.attention import METHODS
from nlattn.attention import _random_features as rf
from nlattn.metrics import recall_at_k, relative_error
from tests import naive

#: Examples per property: 40 in CI (derandomised, so CI runs the same examples every time);
#: ``NLATTN_PROPERTY_EXAMPLES=2000`` hunts with fresh random examples.
EXAMPLES = int(os.environ.get("NLATTN_PROPERTY_EXAMPLES", "40"))
#: Hypothesis settings of the suite: no deadline (the first call of a method may load its
#: kernels).
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 40,
                    suppress_health_check=[HealthCheck.too_slow])

ALL_METHODS = tuple(METHODS)


@st.composite
def token_grids(draw, max_side=7, max_d=6, score_limit=1e4):
    """``(queries, keys, values, scale)``: float32 grids with real data's structure.

    ``scale * |q| * |k|`` stays below ``score_limit``.
    """
    height = draw(st.integers(1, max_side), label="height")
    width = draw(st.integers(1, max_side), label="width")
    d = draw(st.integers(1, max_d), label="d")
    dv = draw(st.integers(1, 3), label="dv")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    n = height * width

    def tokens(side):
        x = rng.standard_normal((n, d))
        if d > 1 and draw(st.booleans(), label=f"{side} centred per token"):
            x -= x.mean(axis=1, keepdims=True)  # rank d - 1, like per-patch centred patches
        x *= 10.0 ** draw(st.sampled_from([0, -6, -3, 1, 2]), label=f"{side} norm exponent")
        zero_share = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]), label=f"{side} zero share")
        x[rng.random(n) < zero_share] = 0.0
        n_duplicates = draw(st.integers(0, n), label=f"{side} duplicates")
        x[rng.integers(0, n, n_duplicates)] = x[rng.integers(0, n, n_duplicates)]
        if draw(st.booleans(), label=f"{side} constant region"):
            grid = x.reshape(height, width, d)
            grid[: (height + 1) // 2, : (width + 1) // 2] = grid[0, 0]
        return x.reshape(height, width, d).astype(np.float32)

    queries = tokens("queries")
    keys = queries if draw(st.booleans(), label="keys are queries") else tokens("keys")
    values = rng.standard_normal((height, width, dv))
    values *= 10.0 ** draw(st.sampled_from([0, -3, 3]), label="value exponent")
    if draw(st.booleans(), label="constant values"):
        values[:] = values[0, 0]
    scale = 10.0 ** draw(st.floats(-2.0, 2.0), label="scale exponent")
    largest = float(np.linalg.norm(queries, axis=-1).max() * np.linalg.norm(keys, axis=-1).max())
    if scale * largest > score_limit:
        scale = score_limit / largest
    return queries, keys, values.astype(np.float32), scale


def method_params(method, queries, scale):
    """A strategy of parameters of ``method`` for the grid ``queries`` at ``scale`` (small,
    varied; fastmax's p = 1 needs ``scale <= 1``, Efficient Attention's heads divide d)."""
    height, width, d = queries.shape
    n = height * width
    if method == "local":
        return st.fixed_dictionaries({"window_radius": st.integers(0, 3)})
    if method == "scram":
        return st.fixed_dictionaries({"k": st.integers(1, n),
                                      "window_radius": st.integers(0, 1),
                                      "n_iters": st.integers(0, 2)})
    if method == "performer":
        return st.fixed_dictionaries({"n_features": st.integers(1, 40)})
    if method == "lsh":
        return st.fixed_dictionaries({"n_hashes": st.integers(1, 3),
                                      "bucket_size": st.integers(1, n + 2)})
    if method == "scatterbrain":
        return st.fixed_dictionaries({"n_features": st.integers(1, 24),
                                      "support": st.sampled_from(["local", "lsh", "patchmatch"]),
                                      "window_radius": st.integers(0, 2),
                                      "bucket_size": st.integers(1, n + 2),
                                      "k": st.integers(1, n)})
    if method == "fast":
        return st.fixed_dictionaries({"p": st.sampled_from([1, 2] if scale <= 1.0 else [2]),
                                      "normalization": st.sampled_from(["unit", "max"])})
    if method == "efficient":  # "scaling" is signed linear attention: no convex combination
        return st.fixed_dictionaries({"variant": st.just("softmax"),
                                      "heads": st.sampled_from([h for h in (1, 2, 3)
                                                                if d % h == 0])})
    return st.just({})


def assert_in_value_range(out, values):
    """Each output channel inside the values' range of that channel (float32 rounding)."""
    flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
    low, high = flat.min(axis=0), flat.max(axis=0)
    slack = 1e-5 * np.maximum(np.abs(low), np.abs(high)) + 1e-30
    got = out.reshape(-1, out.shape[-1])
    assert np.isfinite(got).all()
    assert (got >= low - slack).all() and (got <= high + slack).all(), (
        f"outside the values' range [{low}, {high}]: [{got.min(axis=0)}, {got.max(axis=0)}]")


def assert_distributions(rows):
    assert np.isfinite(rows).all()
    assert (rows >= 0).all()
    np.testing.assert_allclose(rows.reshape(rows.shape[0], -1).sum(axis=1), 1.0, rtol=1e-4)


# ------------------------------------------------------------------------- every method, any grid


@pytest.mark.parametrize("method", ALL_METHODS)
@PROPERTY
@given(data=st.data())
def test_outputs_are_finite_convex_combinations(method, data):
    q, k, v, scale = data.draw(token_grids(), label="grid")
    params = data.draw(method_params(method, q, scale), label="params")
    seed = data.draw(st.integers(0, 1000), label="method seed")
    out = nlattn.attention(q, k, v, method, scale=scale, seed=seed, **params)
    assert out.shape == v.shape and out.dtype == np.float32
    assert_in_value_range(out, v)


@pytest.mark.parametrize("method", ALL_METHODS)
@PROPERTY
@given(data=st.data())
def test_rows_are_distributions(method, data):
    q, k, _, scale = data.draw(token_grids(), label="grid")
    height, width = q.shape[:2]
    params = data.draw(method_params(method, q, scale), label="params")
    flat = data.draw(st.lists(st.integers(0, height * width - 1), min_size=1, max_size=4),
                     label="query pixels")
    positions = np.stack(np.divmod(np.array(flat), width), axis=1)
    rows = nlattn.attention_rows(q, k, positions, method, scale=scale, **params)
    assert rows.shape == (len(flat), height, width)
    assert_distributions(rows)


@PROPERTY
@given(grid=token_grids())
def test_exact_equals_its_twin(grid):
    q, k, v, scale = grid
    out = nlattn.attention(q, k, v, "exact", scale=scale)
    twin = naive.softmax_attention(q, k, v, scale)
    span = float(np.abs(v).max())
    np.testing.assert_allclose(out, twin, rtol=1e-4, atol=1e-5 * span + 1e-30)
    rows = nlattn.attention_rows(q, k, [(0, 0), (q.shape[0] - 1, q.shape[1] - 1)], "exact",
                                 scale=scale)
    twin_rows = naive.softmax_rows(q, k, [(0, 0), (q.shape[0] - 1, q.shape[1] - 1)], scale)
    np.testing.assert_allclose(rows.reshape(2, -1), twin_rows.reshape(2, -1), rtol=1e-4,
                               atol=1e-6)


def covering_params(method, height, width):
    """Parameters under which ``method`` attends to every key (None: no such setting)."""
    n = height * width
    side = max(height, width)
    return {
        "local": {"window_radius": side},
        "scram": {"k": n, "window_radius": 0},
        "lsh": {"n_hashes": 1, "bucket_size": n},
        "scatterbrain": {"support": "local", "window_radius": side, "n_features": 8},
    }.get(method)


@pytest.mark.parametrize("method", ["local", "scram", "lsh", "scatterbrain"])
@PROPERTY
@given(grid=token_grids(score_limit=50.0))
def test_supports_covering_every_key_are_exact(method, grid):
    q, k, v, scale = grid
    params = covering_params(method, *q.shape[:2])
    out = nlattn.attention(q, k, v, method, scale=scale, **params)
    exact = nlattn.attention(q, k, v, "exact", scale=scale)
    span = float(np.abs(v).max())
    np.testing.assert_allclose(out, exact, rtol=1e-4, atol=1e-5 * span + 1e-30)


@pytest.mark.parametrize("method", ["exact", "performer", "fast", "efficient"])
@PROPERTY
@given(grid=token_grids(), n_features=st.integers(1, 40))
def test_all_zero_tokens_give_the_mean_of_the_values(method, grid, n_features):
    _, _, v, scale = grid
    zeros = np.zeros(v.shape[:2] + (3,), np.float32)
    params = {"n_features": n_features} if method == "performer" else {}
    out = nlattn.attention(zeros, zeros, v, method, scale=scale, **params)
    mean = v.reshape(-1, v.shape[-1]).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(out.reshape(-1, v.shape[-1]) - mean, 0.0,
                               atol=1e-5 * float(np.abs(v).max()) + 1e-30)


@pytest.mark.parametrize("method", ALL_METHODS)
@settings(PROPERTY, max_examples=max(15, EXAMPLES // 3))
@given(data=st.data())
def test_huge_scores_stay_finite(method, data):
    q, k, v, _ = data.draw(token_grids(), label="grid")
    largest = float(np.linalg.norm(q, axis=-1).max() * np.linalg.norm(k, axis=-1).max())
    if largest == 0.0:
        return
    scale = data.draw(st.sampled_from([1e3, 1e4, 3e4]), label="largest score") / largest
    params = data.draw(method_params(method, q, scale), label="params")
    out = nlattn.attention(q, k, v, method, scale=scale, **params)
    assert_in_value_range(out, v)


@PROPERTY
@given(grid=token_grids())
def test_random_features_rewrite_the_scores_exactly(grid):
    # Performer's and Scatterbrain's features estimate exp(x.y + u_j + beta_i) on the centred,
    # balanced tokens: that rewriting must give back every score (float rounding aside).
    q, k, _, scale = grid
    d = q.shape[-1]
    flat_q = q.reshape(-1, d)
    flat_k = k.reshape(-1, d)
    query_mean, key_mean, query_map, key_map, key_weight, query_offset, offset, *_ = (
        rf.score_maps(flat_q, flat_k, scale))
    x = (flat_q - query_mean) @ query_map
    y = (flat_k - key_mean) @ key_map
    rewritten = x @ y.T + (flat_k @ key_weight)[None, :] + (flat_q @ query_offset)[:, None] - offset
    scores = naive.dense_scores(q, k, scale)
    bound = scale * np.linalg.norm(flat_q, axis=1).max() * np.linalg.norm(flat_k, axis=1).max()
    np.testing.assert_allclose(rewritten, scores, rtol=0, atol=1e-4 * bound + 1e-30)


# ----------------------------------------------------------------------------------- unbiasedness


@pytest.mark.parametrize("tokens", ["centred with zeros", "constant coordinate"])
def test_random_features_stay_unbiased_on_rank_deficient_tokens(tokens):
    # The seed average of phi(q).phi(k) exp(log-scales) converges to exp(scale q.k) on tokens
    # whose second moments are singular (the case that broke the balancing).
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 4, 5))
    if tokens == "centred with zeros":
        x -= x.mean(axis=-1, keepdims=True)
        x[0, :2] = 0.0
    else:
        x[..., -1] = 1.0
    q = x.astype(np.float32)
    k = np.roll(x, 1, axis=1).astype(np.float32)
    scale = 0.5
    truth = np.exp(naive.dense_scores(q, k, scale))
    seeds = 300
    estimates = []
    for seed in range(seeds):
        phi_q, log_q, phi_k, log_k = rf.feature_maps(q, k, scale, 16, seed)
        estimates.append((phi_q @ phi_k.T.astype(np.float64)) * np.exp(log_q[:, None] + log_k))
    estimates = np.array(estimates)
    mean = estimates.mean(axis=0)
    standard_error = estimates.std(axis=0) / np.sqrt(seeds)
    assert (np.abs(mean - truth) <= 5 * standard_error + 1e-9 * truth).all()


# ------------------------------------------------------------------------------------------ ties


def test_recall_counts_tied_keys_as_found():
    # Ten keys share the best weight: any three of them are a correct top 3.
    reference = np.zeros((1, 20))
    reference[0, 5:15] = 1.0
    reference[0, 0] = 0.5
    found = np.array([[12, 14, 7]])
    assert recall_at_k(found, reference, 3) == 1.0
    rows = np.zeros((1, 20))
    rows[0, [13, 8, 0]] = [3.0, 2.0, 1.0]  # 0 is not tied with the top keys
    assert recall_at_k(rows, reference, 3) == pytest.approx(2 / 3)
    # index lists as reference: their own order decides, no weights to compare
    assert recall_at_k(found, np.array([[5, 6, 7]]), 3) == pytest.approx(1 / 3)


def test_patchmatch_breaks_ties_by_the_smaller_index():
    # Every key equal: the k best are the k smallest indices (excluding the query itself).
    tokens = np.ones((6, 7, 3), np.float32)
    field = nlattn.knn_patchmatch(tokens, tokens, k=4, n_iters=2, seed=1)
    flat = field.indices.reshape(-1, 4)
    for i, row in enumerate(flat):
        expected = [j for j in range(42) if j != i][:4]
        np.testing.assert_array_equal(row, expected)


# ----------------------------------------------------------------------------------- regressions


def _centred_unit_tokens(seed, height=24, width=24, d=9, zero_share=0.05):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 256, (height, width, d)).astype(np.float32)
    t -= t.mean(axis=-1, keepdims=True)
    t /= np.linalg.norm(t, axis=-1, keepdims=True)
    t[rng.random((height, width)) < zero_share] = 0.0
    return t


@pytest.mark.parametrize("seed", [2, 5, 11, 12, 16, 18])
def test_centred_tokens_keep_every_direction_but_the_constant_one(seed):
    # Shrunk from a crop of scikit-image's astronaut: tokens centred one by one have a
    # second moment of rank d - 1 whose null direction holds float32 rounding; the balancing
    # divided that rounding by zero and kept a single, meaningless direction (performer's
    # output then collapsed to the mean of the values: relative error 1.000).
    t = _centred_unit_tokens(seed).reshape(-1, 9)
    *_, projector, _ = rf.score_maps(t, t, 2.0)
    assert round(float(np.trace(projector))) == 8
    np.testing.assert_allclose(projector @ np.ones(9), 0.0, atol=1e-6)


def test_performer_on_centred_tokens_with_zeros_is_not_worse_than_without_zeros():
    t = _centred_unit_tokens(16)
    rng = np.random.default_rng(0)
    zero = np.abs(t).max(axis=-1) == 0
    noisy = t.copy()
    noisy[zero] = 1e-3 * rng.standard_normal((int(zero.sum()), 9))
    v = rng.standard_normal(t.shape[:2] + (1,)).astype(np.float32)
    errors = {}
    for label, tokens in (("zeros", t), ("noise", noisy)):
        exact = nlattn.attention(tokens, tokens, v, "exact", scale=2.0)
        errors[label] = [relative_error(nlattn.attention(tokens, tokens, v, method, scale=2.0,
                                                         seed=seed), exact)
                         for method in ("performer", "scatterbrain") for seed in range(3)]
    assert np.mean(errors["zeros"]) <= 1.1 * np.mean(errors["noise"]) + 0.02
    assert max(errors["zeros"]) < 0.6


def test_fewer_distinct_tiny_tokens_than_dimensions_do_not_break_the_balancing():
    # Shrunk by the suite: six tokens of norm ~2e-6, four of them distinct, in d = 5 (second
    # moments of rank 3): performer raised numpy's LinAlgError "Singular matrix".
    a = [-6.25219002e-07, -4.55508598e-07, -6.66003302e-07, -1.89604327e-06, -7.70915733e-07]
    b = [-7.53143240e-07, -1.22270285e-06, -1.84561350e-06, -7.05113735e-07, -4.42392889e-07]
    c = [2.18694913e-06, 9.62992317e-07, 3.94410591e-07, -1.15548445e-07, 1.06637731e-06]
    e = [-6.80417486e-07, -3.23904743e-08, 1.47532671e-06, -4.70225643e-07, -8.82487655e-07]
    tokens = np.array([[a, a, b], [c, e, a]], np.float32)
    values = np.array([[[-0.21345505], [-0.3081384], [-0.81382006]],
                       [[-1.5775523], [1.2957342], [0.23099478]]], np.float32)
    for method in ("performer", "scatterbrain", "lsh"):
        out = nlattn.attention(tokens, tokens, values, method, scale=1.0)
        assert_in_value_range(out, values)


def test_performer_rows_below_float32_range_still_sum_to_one():
    # Shrunk by the suite: one-dimensional tokens with scores up to 4100; a row's products all
    # lay below float32's range while their float64 sum was positive, and the float32 row
    # divided by that sum came back NaN.
    tokens = np.array([[[12.573022], [-13.210486], [64.04227]]], np.float32)
    rows = nlattn.attention_rows(tokens, tokens, [(0, 0), (0, 1), (0, 2)], "performer",
                                 scale=1.0, n_features=2)
    assert_distributions(rows)


@pytest.mark.parametrize("seed", range(4))
def test_scatterbrain_rows_with_a_tiny_low_rank_mass_sum_to_one(seed):
    # Shrunk by the suite: the same float32 underflow in Scatterbrain's rows (a row summed to
    # 2.4e-5 at seed 0 with 20 features).
    q = np.array([[[0.12573022, -0.13210486]], [[0.64042264, 0.10490011]],
                  [[-0.5356694, 0.36159506]], [[1.304, 0.94708097]]], np.float32)
    k = np.array([[[-23.250307, -2.1879168]], [[-12.459109, -7.3226733]],
                  [[-5.4425898, -3.1630015]], [[4.1163054, 10.425134]]], np.float32)
    for n_features in (11, 20):
        rows = nlattn.attention_rows(q, k, [(0, 0), (3, 0)], "scatterbrain", scale=5.6234,
                                     n_features=n_features, support="local", window_radius=0,
                                     seed=seed)
        assert_distributions(rows)


def test_performer_output_with_a_subnormal_normaliser_is_finite():
    # Shrunk by the suite (NLATTN_PROPERTY_EXAMPLES=600): keys of rank one (centred per token,
    # d = 2) and scores up to 6600; a query's normaliser was subnormal, its reciprocal infinite
    # and the output NaN.
    rng = np.random.default_rng(11)
    queries = (10.0 * rng.standard_normal((4, 5, 2))).astype(np.float32)
    keys = (100.0 * rng.standard_normal((4, 5, 1)) * np.array([-1.0, 1.0])).astype(np.float32)
    values = (1e-3 * rng.standard_normal((4, 5, 1))).astype(np.float32)
    for seed in range(20):
        out = nlattn.attention(queries, keys, values, "performer", scale=1.0, n_features=14,
                               seed=seed)
        assert_in_value_range(out, values)
