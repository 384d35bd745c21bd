"""Performer, LSH and Scatterbrain attention against their brute-force twins and exact attention."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import nlattn
from nlattn.attention import _random_features as rf
from nlattn.attention import lsh, scram
from nlattn.metrics import relative_error
from tests import naive

POSITIONS = np.array([[0, 0], [3, 4], [6, 8]])


def _tokens(shape=(7, 9, 4), dv=2, seed=0, spread=1.0, offset=0.3):
    """Random queries and keys (shifted off the origin, so that centring matters) and values."""
    rng = np.random.default_rng(seed)
    q = (spread * rng.standard_normal(shape) + offset).astype(np.float32)
    k = (spread * rng.standard_normal(shape) - offset).astype(np.float32)
    v = rng.standard_normal(shape[:2] + (dv,)).astype(np.float32)
    return q, k, v


def _nlm_like(size=10, seed=1):
    """Tokens shaped like NLM's (q = [p, 1], k = [2p, -|p|^2] / h^2): a constant coordinate and a
    key coordinate the centred queries never multiply."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((size, size, 3))
    q = np.concatenate([p, np.ones((size, size, 1))], axis=-1)
    k = np.concatenate([2 * p, -(p**2).sum(-1, keepdims=True)], axis=-1) / 4.0
    return q.astype(np.float32), k.astype(np.float32)


def _flat(positions, width):
    return [int(y) * width + int(x) for y, x in positions]


# ------------------------------------------------------------------------------ random features


@pytest.mark.parametrize("n_features", [6, 7])
@pytest.mark.parametrize("tokens", ["random", "nlm"])
def test_feature_estimates_match_naive(n_features, tokens):
    if tokens == "random":
        q, k, _ = _tokens((5, 6, 4))
    else:
        q, k = _nlm_like(6)
    scale = 0.6
    phi_q, log_q, phi_k, log_k = rf.feature_maps(q, k, scale, n_features, seed=3)
    assert phi_q.shape == phi_k.shape == (q.shape[0] * q.shape[1], n_features)
    assert np.all(phi_q <= 1.0) and np.all(phi_k <= 1.0) and phi_k.max() == 1.0
    ours = (phi_q @ phi_k.T.astype(np.float64)) * np.exp(log_q[:, None] + log_k)
    projections = rf.orthogonal_projections(q.shape[-1], (n_features + 1) // 2, seed=3)
    twin = naive.favor_estimates(q, k, scale, projections, n_features)
    np.testing.assert_allclose(ours, twin, rtol=2e-5)


def test_rewritten_scores_are_exact_and_balanced():
    q, k = _nlm_like(8)
    x, y, u, beta = naive.balanced_tokens(q, k, 1.0)
    np.testing.assert_allclose(x @ y.T + u[None, :] + beta[:, None],
                               naive.dense_scores(q, k, 1.0), atol=1e-9)
    # the key's augmented coordinate is projected out: both sides equally large
    assert abs((x**2).sum(1).mean() - (y**2).sum(1).mean()) < 1e-6 * (x**2).sum(1).mean()


def test_projections_are_orthogonal_blocks_with_gaussian_norms():
    w = rf.orthogonal_projections(5, 4000, seed=1)
    assert w.shape == (5, 4000)
    np.testing.assert_array_equal(w, rf.orthogonal_projections(5, 4000, seed=1))
    assert not np.array_equal(w, rf.orthogonal_projections(5, 4000, seed=2))
    block = w[:, 5:10]
    gram = block.T @ block
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-12)
    # each column N(0, I): squared norms chi-square(5), mean 5, variance 10 (4000 draws)
    norms2 = (w**2).sum(axis=0)
    assert abs(norms2.mean() - 5.0) < 4 * np.sqrt(10 / 4000)
    assert abs(np.cov(w).trace() / 5 - 1.0) < 0.05


@pytest.mark.parametrize("rho", [0.0, 0.05, 1.0, 8.0])
def test_optimal_a_minimises_the_second_moment(rho):
    # per-dimension log second moment of f_A(w, x) f_A(w, y) for |x + y|^2 = rho * dim,
    # up to terms free of A; minimised over a fine grid of A < 1/8
    grid = np.linspace(-4.0, 0.1249, 400001)
    moment = (np.log1p(-4 * grid) - 0.5 * np.log1p(-8 * grid)
              + 2 * rho * (1 - 4 * grid) / (1 - 8 * grid))
    best = grid[np.argmin(moment)]
    assert rf.optimal_a(rho) == pytest.approx(best, abs=2e-5)
    assert rf.optimal_a(rho) <= 0.0


def test_feature_estimate_is_unbiased_over_seeds():
    # Small scores, so that the estimator's variance (exp(|x + y|^2) - 1 per feature) is
    # moderate and 400 seeds pin the mean down to about 1 %.
    q, k, _ = _tokens((4, 5, 3), seed=2)
    scale = 0.15
    exact = np.exp(naive.dense_scores(q, k, scale))
    draws = []
    for seed in range(400):
        phi_q, log_q, phi_k, log_k = rf.feature_maps(q, k, scale, 8, seed)
        draws.append((phi_q @ phi_k.T.astype(np.float64)) * np.exp(log_q[:, None] + log_k))
    ratio = np.array(draws) / exact
    mean = ratio.mean(axis=0)
    standard_error = ratio.std(axis=0) / np.sqrt(len(draws))
    assert abs(mean.mean() - 1.0) < 0.01
    assert np.all(np.abs(mean - 1.0) < 5 * standard_error)


# ------------------------------------------------------------------------------------ performer


def test_performer_matches_naive():
    q, k, v = _tokens()
    scale = 0.5
    out = nlattn.attention(q, k, v, "performer", scale=scale, seed=4, n_features=9)
    assert out.shape == v.shape and out.dtype == np.float32
    phi_q, log_q, phi_k, log_k = rf.feature_maps(q, k, scale, 9, seed=4)
    weights = phi_q @ phi_k.T.astype(np.float64)
    ref = naive.weighted_attention(weights, v).reshape(v.shape)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    rows = nlattn.attention_rows(q, k, POSITIONS, "performer", scale=scale, seed=4, n_features=9)
    ref_rows = naive.weighted_rows(weights, _flat(POSITIONS, q.shape[1]))
    np.testing.assert_allclose(rows.reshape(len(POSITIONS), -1), ref_rows, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(rows.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.tensordot(rows, v, axes=2), out[POSITIONS[:, 0],
                               POSITIONS[:, 1]], rtol=1e-4, atol=1e-5)


def test_performer_approaches_exact_on_diffuse_maps():
    q, k, v = _tokens((16, 16, 4), dv=1, seed=5, spread=0.5)
    exact = nlattn.attention(q, k, v, "exact", scale=0.5)
    errors = [relative_error(
        nlattn.attention(q, k, v, "performer", scale=0.5, n_features=m), exact) for m in (8, 512)]
    assert errors[1] < 0.1 and errors[1] < errors[0] / 2


# ------------------------------------------------------------------------------------------ lsh


def test_lsh_single_bucket_is_exact():
    q, k, v = _tokens()
    n = q.shape[0] * q.shape[1]
    out = nlattn.attention(q, k, v, "lsh", scale=0.7, n_hashes=1, bucket_size=n)
    np.testing.assert_allclose(out, nlattn.attention(q, k, v, "exact", scale=0.7), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize(("n_hashes", "bucket_size"), [(1, 8), (3, 5)])
def test_lsh_matches_naive_given_the_buckets(n_hashes, bucket_size):
    q, k, v = _tokens()
    scale = 0.7
    query_bucket, key_bucket = lsh.bucket_assignment(q, k, scale, 6, n_hashes, bucket_size)
    n = q.shape[0] * q.shape[1]
    for r in range(n_hashes):  # equal-size key buckets, the last one holding the remainder
        counts = np.bincount(key_bucket[r])
        assert np.all(counts[:-1] == bucket_size) and 0 < counts[-1] <= bucket_size
        assert query_bucket[r].min() >= 0 and query_bucket[r].max() < len(counts)
    supports = naive.lsh_supports(query_bucket, key_bucket)
    weights = naive.support_weights(q, k, scale, supports)
    out = nlattn.attention(q, k, v, "lsh", scale=scale, seed=6, n_hashes=n_hashes,
                           bucket_size=bucket_size)
    np.testing.assert_allclose(out, naive.weighted_attention(weights, v).reshape(v.shape),
                               rtol=1e-4, atol=1e-5)
    rows = nlattn.attention_rows(q, k, POSITIONS, "lsh", scale=scale, seed=6, n_hashes=n_hashes,
                                 bucket_size=bucket_size).reshape(len(POSITIONS), n)
    flat = _flat(POSITIONS, q.shape[1])
    np.testing.assert_allclose(rows, naive.weighted_rows(weights, flat), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-5)
    for row, i in zip(rows, flat, strict=True):
        assert set(np.flatnonzero(row)) <= supports[i]


def _clustered(n_clusters=16, size=32, d=6, seed=7):
    rng = np.random.default_rng(seed)
    centres = 4.0 * rng.standard_normal((n_clusters, d))
    labels = rng.integers(0, n_clusters, size * size)
    return (centres[labels] + 0.3 * rng.standard_normal((size * size, d))).reshape(size, size, d)


def _found(query_bucket, key_bucket, best):
    return np.mean([(key_bucket[:, best[i]] == query_bucket[:, i]).any()
                    for i in range(len(best))])


def test_lsh_buckets_find_the_nearest_patch():
    # NLM tokens of clustered patches: the best key of a query (itself aside) is its nearest
    # patch, which shares one of its 2 buckets (of 64 among 1024 keys) far more often than the
    # 12 % of chance.
    p = _clustered()
    q = np.concatenate([p, np.ones(p.shape[:2] + (1,))], axis=-1).astype(np.float32)
    k = np.concatenate([2 * p, -(p**2).sum(-1, keepdims=True)], axis=-1).astype(np.float32)
    scores = naive.dense_scores(q, k, 1.0)
    np.fill_diagonal(scores, -np.inf)
    query_bucket, key_bucket = lsh.bucket_assignment(q, k, 1.0, 0, 2, 64)
    assert _found(query_bucket, key_bucket, scores.argmax(axis=1)) > 0.85


def test_lsh_buckets_find_large_dot_products():
    # Dot products (q ~ k): the embedding is the inner-product-to-distance transform.
    k = _clustered().astype(np.float32)
    q = (k + 0.1 * np.random.default_rng(8).standard_normal(k.shape)).astype(np.float32)
    best = naive.dense_scores(q, k, 1.0).argmax(axis=1)
    found = np.mean([_found(*lsh.bucket_assignment(q, k, 1.0, seed, 2, 64), best)
                     for seed in range(4)])
    assert found > 0.3 > 2 * (1 - (1 - 64 / 1024) ** 2)


# ---------------------------------------------------------------------------------- scatterbrain


@pytest.mark.parametrize(("support", "params"), [
    ("local", {"window_radius": 9}),
    ("lsh", {"bucket_size": 63}),
    ("patchmatch", {"k": 1, "window_radius": 9}),
])
def test_scatterbrain_with_a_covering_support_is_exact(support, params):
    q, k, v = _tokens()
    exact = nlattn.attention(q, k, v, "exact", scale=0.8)
    out = nlattn.attention(q, k, v, "scatterbrain", scale=0.8, n_features=5, support=support,
                           **params)
    np.testing.assert_allclose(out, exact, rtol=1e-4, atol=1e-5)
    rows = nlattn.attention_rows(q, k, POSITIONS, "scatterbrain", scale=0.8, n_features=5,
                                 support=support, **params)
    np.testing.assert_allclose(rows, nlattn.attention_rows(q, k, POSITIONS, "exact", scale=0.8),
                               rtol=1e-4, atol=1e-6)


def _supports(q, k, scale, seed, support, params):
    height, width = q.shape[:2]
    if support == "local":
        return naive.window_supports(height, width, params["window_radius"])
    if support == "lsh":
        return naive.lsh_supports(*lsh.bucket_assignment(q, k, scale, seed, params["n_hashes"],
                                                          params["bucket_size"]))
    matches = scram._field(q, k, scale, seed, params["k"], None)
    return naive.match_supports(matches, height, width, params["window_radius"])


@pytest.mark.parametrize(("support", "params"), [
    ("local", {"window_radius": 1}),
    ("lsh", {"n_hashes": 2, "bucket_size": 6}),
    ("patchmatch", {"k": 2, "window_radius": 1}),
])
@pytest.mark.parametrize("tokens", ["random", "nlm"])
def test_scatterbrain_matches_naive(support, params, tokens):
    if tokens == "random":
        q, k, v = _tokens()
    else:
        q, k = _nlm_like(9)
        v = np.random.default_rng(3).standard_normal((9, 9, 2)).astype(np.float32)
    scale, seed, m = 0.5, 8, 11
    out = nlattn.attention(q, k, v, "scatterbrain", scale=scale, seed=seed, n_features=m,
                           support=support, **params)
    phi_q, log_q, phi_k, log_k = rf.feature_maps(q, k, scale, m, seed)
    estimates = (phi_q @ phi_k.T.astype(np.float64)) * np.exp(log_q[:, None] + log_k)
    supports = _supports(q, k, scale, seed, support, params)
    weights = naive.scatterbrain_weights(q, k, scale, supports, estimates)
    np.testing.assert_allclose(out, naive.weighted_attention(weights, v).reshape(v.shape),
                               rtol=1e-4, atol=1e-5)
    rows = nlattn.attention_rows(q, k, POSITIONS, "scatterbrain", scale=scale, seed=seed,
                                 n_features=m, support=support, **params)
    rows = rows.reshape(len(POSITIONS), -1)
    flat = _flat(POSITIONS, q.shape[1])
    np.testing.assert_allclose(rows, naive.weighted_rows(weights, flat), rtol=1e-4, atol=1e-7)
    assert rows.min() >= 0.0
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-5)


def test_scatterbrain_beats_its_parts_when_the_support_holds_the_peaks():
    # q = k = [random unit vector, smooth features]: each token's own key is a sharp peak
    # (the pair the features estimate worst), the smooth part spreads the rest of the mass.
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[:24, :24] / 24.0
    peak = rng.standard_normal((24, 24, 8))
    peak *= 1.5 / np.linalg.norm(peak, axis=-1, keepdims=True)
    smooth = 2.0 * np.stack([np.sin(3 * xx), np.cos(2 * yy), xx * yy], axis=-1)
    q = k = np.concatenate([peak, smooth], axis=-1).astype(np.float32)
    v = (np.sin(5 * xx + yy) + 0.3 * rng.standard_normal((24, 24)))[..., None]
    v = (v - v.mean()).astype(np.float32)
    exact = nlattn.attention(q, k, v, "exact", scale=1.0)

    def error(method, **params):
        return np.mean([relative_error(
            nlattn.attention(q, k, v, method, scale=1.0, seed=s, **params), exact)
            for s in range(5)])

    both = error("scatterbrain", n_features=128, window_radius=0)
    assert both < 0.95 * error("performer", n_features=128)
    assert both < 0.5 * error("local", window_radius=0)


# ------------------------------------------------------------------------ all three: properties


METHODS = [
    ("performer", {}),
    ("lsh", {"bucket_size": 16}),
    ("scatterbrain", {}),
    ("scatterbrain", {"support": "lsh", "bucket_size": 16}),
    ("scatterbrain", {"support": "patchmatch", "k": 4}),
]


@pytest.mark.parametrize(("method", "params"), METHODS)
def test_same_result_at_one_and_two_threads(method, params):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    q, k, v = _tokens((23, 30, 5), dv=3, seed=10)
    one = nlattn.attention(q, k, v, method, seed=5, n_threads=1, **params)
    two = nlattn.attention(q, k, v, method, seed=5, n_threads=2, **params)
    np.testing.assert_array_equal(one, two)
    rows_one = nlattn.attention_rows(q, k, POSITIONS, method, seed=5, n_threads=1, **params)
    rows_two = nlattn.attention_rows(q, k, POSITIONS, method, seed=5, n_threads=2, **params)
    np.testing.assert_array_equal(rows_one, rows_two)
    other = nlattn.attention(q, k, v, method, seed=6, **params)
    assert not np.array_equal(one, other)  # the seed is used


@pytest.mark.parametrize(("method", "params"), METHODS)
@pytest.mark.parametrize("case", ["scores 100", "norm 1e4"])
def test_large_inputs_stay_finite(method, params, case):
    rng = np.random.default_rng(11)
    q = rng.standard_normal((12, 14, 8))
    k = rng.standard_normal((12, 14, 8))
    if case == "scores 100":  # unit vectors, |scale q.k| up to 100
        q /= np.linalg.norm(q, axis=-1, keepdims=True)
        k /= np.linalg.norm(k, axis=-1, keepdims=True)
        scale = 100.0
    else:  # tokens of norm 1e4, default scale 1/sqrt(d)
        q *= 1e4 / np.linalg.norm(q, axis=-1, keepdims=True)
        k *= 1e4 / np.linalg.norm(k, axis=-1, keepdims=True)
        scale = None
    v = rng.standard_normal((12, 14, 2))
    out = nlattn.attention(q, k, v, method, scale=scale, **params)
    assert np.isfinite(out).all()
    assert np.all(out >= v.min(axis=(0, 1)) - 1e-4) and np.all(out <= v.max(axis=(0, 1)) + 1e-4)
    rows = nlattn.attention_rows(q, k, POSITIONS, method, scale=scale, **params)
    assert np.isfinite(rows).all() and rows.min() >= 0.0
    np.testing.assert_allclose(rows.sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_invalid_parameters_raise():
    q, k, v = _tokens((5, 5, 3))
    with pytest.raises(ValueError, match="support must be one of"):
        nlattn.attention(q, k, v, "scatterbrain", support="global")
    with pytest.raises(TypeError, match="support must be a string"):
        nlattn.attention_rows(q, k, [(0, 0)], "scatterbrain", support=1)
    with pytest.raises(ValueError, match="n_features must be >= 1"):
        nlattn.attention(q, k, v, "performer", n_features=0)
    with pytest.raises(TypeError, match="bucket_size must be an integer"):
        nlattn.attention(q, k, v, "lsh", bucket_size=4.0)
    with pytest.raises(TypeError, match="not a parameter"):
        nlattn.attention(q, k, v, "performer", window_radius=2)


def test_defaults_are_the_signatures():
    import inspect

    from nlattn.attention import performer, scatterbrain

    for module in (performer, lsh, scatterbrain):
        for function in (module.attend, module.rows):
            signature = inspect.signature(function)
            for name, default in module.DEFAULTS.items():
                assert signature.parameters[name].default == default
