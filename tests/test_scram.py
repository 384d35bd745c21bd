"""SCRAM attention (method "scram") and PatchMatch-global NLM (nl_means method "scram")."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import nlattn
from nlattn.patchmatch import knn_patchmatch
from tests import naive


def _tokens(shape=(14, 17), d=6, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=shape + (d,)).astype(np.float32)
    k = rng.normal(size=shape + (d,)).astype(np.float32)
    v = rng.normal(size=shape + (3,)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize(("window_radius", "local_radius"), [(0, None), (1, None), (1, 2)])
def test_matches_softmax_over_its_support(window_radius, local_radius):
    q, k, v = _tokens()
    scale = 0.7
    params = dict(k=4, window_radius=window_radius, local_radius=local_radius, n_iters=3)
    out = nlattn.attention(q, k, v, "scram", scale=scale, seed=3, **params)
    matches = knn_patchmatch(q, k, k=4, n_iters=3, seed=3, exclude_self=False,
                             scale=scale).indices
    supports = naive.scram_supports(matches, 14, 17, window_radius, local_radius)
    ref = naive.support_softmax(q, k, v, supports, scale)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    positions = np.array([[0, 0], [5, 9], [13, 16]])
    rows = nlattn.attention_rows(q, k, positions, "scram", scale=scale, seed=3, **params)
    np.testing.assert_allclose(rows.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    for row, (y, x) in zip(rows, positions, strict=True):
        outside = np.ones(14 * 17, bool)
        outside[list(supports[y][x])] = False
        assert np.all(row.ravel()[outside] == 0)
        np.testing.assert_allclose(np.tensordot(row, v, axes=2), ref[y, x], rtol=1e-4,
                                   atol=1e-5)


def test_support_covering_everything_is_exact():
    q, k, v = _tokens((6, 7), 4, seed=1)
    out = nlattn.attention(q, k, v, "scram", k=1, window_radius=7)
    np.testing.assert_allclose(out, nlattn.attention(q, k, v, "exact"), rtol=1e-4, atol=1e-5)


def test_close_to_exact_on_peaked_nlm_tokens():
    yy, xx = np.mgrid[:40, :40]
    image = 100 + 60 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    image += np.random.default_rng(2).normal(0, 5, image.shape)
    q, k, v = nlattn.nlm_tokens(image, patch_radius=1, h=5.0)
    v = v - v.mean()
    exact = nlattn.attention(q, k, v, "exact", scale=1.0)
    approx = nlattn.attention(q, k, v, "scram", scale=1.0, k=16, window_radius=1)
    assert np.linalg.norm(approx - exact) / np.linalg.norm(exact) < 0.1


def test_same_result_at_one_and_two_threads_and_for_a_seed():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    q, k, v = _tokens((30, 23), 5, seed=4)
    one = nlattn.attention(q, k, v, "scram", seed=7, n_threads=1)
    two = nlattn.attention(q, k, v, "scram", seed=7, n_threads=2)
    np.testing.assert_array_equal(one, two)


def test_invalid_parameters_raise():
    q, k, v = _tokens((5, 5), 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        nlattn.attention(q, k, v, "scram", k=0)
    with pytest.raises(ValueError, match="local_radius must be >= 0"):
        nlattn.attention(q, k, v, "scram", local_radius=-2)
    with pytest.raises(TypeError, match="not a parameter"):
        nlattn.attention(q, k, v, "scram", bucket_size=4)


def _texture(size=48, seed=5):
    yy, xx = np.mgrid[:size, :size]
    clean = 128 + 80 * np.sign(np.sin(xx / 2.0 + yy / 7.0))  # stripes repeating far apart
    noisy = clean + np.random.default_rng(seed).normal(0, 20, clean.shape)
    return clean, noisy


def test_nl_means_scram_is_deterministic_and_denoises():
    clean, noisy = _texture()
    a = nlattn.nl_means(noisy, method="scram", sigma=20, k=8, seed=1)
    b = nlattn.nl_means(noisy, method="scram", sigma=20, k=8, seed=1)
    np.testing.assert_array_equal(a, b)
    mse = lambda x: np.mean((x - clean) ** 2)  # noqa: E731
    assert mse(a) < mse(noisy) / 4
    assert mse(a) <= mse(nlattn.nl_means(noisy, "nlm", sigma=20)) * 1.02


def test_nl_means_scram_equals_windowed_nlm_plus_its_matches():
    from nlattn.denoise import _patchmatch_neighbours

    _, noisy = _texture(24)
    noisy = noisy.astype(np.float32)
    extra = _patchmatch_neighbours(noisy, 1, 4, 2)
    out = nlattn.nl_means(noisy, method="scram", sigma=20, h=10, patch_radius=1,
                          search_radius=2, k=4, seed=2)
    ref = naive.nlm(noisy, 1, 2, 10.0, 20.0, "patch", extra=extra)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)
