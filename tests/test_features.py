"""Patch vectors (nlattn.features) against their definition."""

from __future__ import annotations

import numpy as np
import pytest

from nlattn.features import extract_patches
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
