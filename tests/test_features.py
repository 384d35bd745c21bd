"""Patch vectors (nlattn.features) against their definition."""

from __future__ import annotations

import numpy as np
import pytest

from nlattn.features import extract_patches, nlm_tokens, pca_reduce
from tests import naive


@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 3), (1, 4), (3, 1, 2)])
@pytest.mark.parametrize("patch_radius", [0, 1, 2])
@pytest.mark.parametrize("gaussian_sigma", [None, 1.5])
def test_matches_naive(shape, patch_radius, gaussian_sigma):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    out = extract_patches(image, patch_radius, gaussian_sigma=gaussian_sigma)
    np.testing.assert_allclose(out, naive.patches(image, patch_radius, gaussian_sigma),
                               rtol=1e-6, atol=1e-7)


def test_distance_is_the_mean_squared_patch_difference():
    image = np.random.default_rng(1).random((9, 9, 3)) * 255
    vectors = extract_patches(image, 2).astype(np.float64)
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="reflect")
    p, q = padded[2:7, 2:7], padded[4:9, 3:8]  # patches centred on (2, 2) and (4, 3)
    assert np.sum((vectors[2, 2] - vectors[4, 3]) ** 2) == pytest.approx(np.mean((p - q) ** 2),
                                                                         rel=1e-5)


def test_centring_removes_the_mean_and_keeps_distances():
    image = np.random.default_rng(2).random((12, 10))
    raw = extract_patches(image, 1)
    centred = extract_patches(image, 1, centre=True)
    np.testing.assert_allclose(centred.reshape(-1, 9).mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(raw[3, 4] - raw[7, 1], centred[3, 4] - centred[7, 1], atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (dict(patch_radius=-1), ValueError),
        (dict(patch_radius=1.0), TypeError),
        (dict(patch_radius=1, gaussian_sigma=0.0), ValueError),
        (dict(patch_radius=1, centre=1), TypeError),
    ],
)
def test_invalid_arguments_raise(kwargs, error):
    with pytest.raises(error):
        extract_patches(np.zeros((4, 4)), **kwargs)


def test_nlm_tokens_scores_are_nlm_log_weights_up_to_a_query_term():
    image = np.random.default_rng(3).random((6, 7)) * 255
    q, k, v = nlm_tokens(image, patch_radius=1, h=20.0)
    p = extract_patches(image, 1, centre=True).astype(np.float64).reshape(42, -1)
    scores = q.reshape(42, -1).astype(np.float64) @ k.reshape(42, -1).T.astype(np.float64)
    log_w = -((p[:, None, :] - p[None, :, :]) ** 2).sum(-1) / 20.0**2
    shift = scores - log_w  # must depend on the query (row) only
    np.testing.assert_allclose(shift, np.broadcast_to(shift[:, :1], shift.shape), atol=1e-3)
    assert v.shape == (6, 7, 1) and v.dtype == np.float32
    np.testing.assert_allclose(v[..., 0], image, rtol=1e-6)


def test_nlm_tokens_with_pca_and_default_h():
    image = np.random.default_rng(4).random((9, 8, 3)).astype(np.float32)
    q, k, v = nlm_tokens(image, patch_radius=1, pca=5)
    assert q.shape == (9, 8, 6) and k.shape == (9, 8, 6) and v.shape == (9, 8, 3)
    np.testing.assert_array_equal(q[..., -1], 1.0)
    assert np.isfinite(k).all()


def test_pca_keeps_distances_when_no_energy_is_dropped():
    vectors = np.random.default_rng(5).random((10, 11, 4))
    reduced = pca_reduce(vectors, 4)
    d_full = np.sum((vectors[2, 3] - vectors[7, 1]) ** 2)
    d_red = np.sum((reduced[2, 3].astype(np.float64) - reduced[7, 1]) ** 2)
    assert d_red == pytest.approx(d_full, rel=1e-5)
    with pytest.raises(ValueError, match="pca"):
        pca_reduce(vectors, 5)
