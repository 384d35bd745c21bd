"""Windowed NLM (nlattn.nl_means, method "nlm") against its brute-force twin and on quality."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nlattn
from nlattn._fastexp import exp_neg
from nlattn._jit import jit
from tests import naive


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("aggregation", ["patch", "pixel"])
@pytest.mark.parametrize(
    ("shape", "patch_radius", "search_radius", "sigma"),
    [
        ((9, 11), 1, 2, 0.0),  # odd sizes
        ((13, 7, 3), 2, 3, 0.1),  # colour, sigma term
        ((70, 9), 1, 3, 0.05),  # several strips (halo merge across strips)
        ((1, 12), 1, 2, 0.0),  # one row
        ((40, 1), 2, 4, 0.0),  # one column
        ((1, 1), 1, 1, 0.0),  # a single pixel
        ((37, 23), 3, 5, 0.1),  # search window larger than the patch, borders everywhere
        ((6, 5), 2, 7, 0.0),  # search window larger than the image
        ((12, 10, 2), 0, 2, 0.0),  # 1x1 patches, two channels
    ],
)
def test_matches_naive(shape, patch_radius, search_radius, sigma, aggregation):
    image = _rng(1).random(shape).astype(np.float32)
    out = nlattn.nl_means(image, "nlm", sigma=sigma, h=0.3, patch_radius=patch_radius,
                          search_radius=search_radius, aggregation=aggregation)
    ref = naive.nlm(image, patch_radius, search_radius, 0.3, sigma, aggregation)
    assert out.shape == image.shape and out.dtype == image.dtype
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(
    height=st.integers(1, 14),
    width=st.integers(1, 14),
    channels=st.sampled_from([0, 1, 3]),
    patch_radius=st.integers(0, 2),
    search_radius=st.integers(0, 4),
    aggregation=st.sampled_from(["patch", "pixel"]),
    seed=st.integers(0, 1000),
)
def test_matches_naive_random_shapes(height, width, channels, patch_radius, search_radius,
                                     aggregation, seed):
    shape = (height, width) if channels == 0 else (height, width, channels)
    image = _rng(seed).random(shape).astype(np.float32)
    out = nlattn.nl_means(image, "nlm", sigma=0.05, h=0.25, patch_radius=patch_radius,
                          search_radius=search_radius, aggregation=aggregation)
    ref = naive.nlm(image, patch_radius, search_radius, 0.25, 0.05, aggregation)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)


def test_constant_image_is_unchanged():
    image = np.full((20, 17), 0.375, np.float32)
    for aggregation in ("patch", "pixel"):
        out = nlattn.nl_means(image, "nlm", sigma=0.1, aggregation=aggregation)
        np.testing.assert_allclose(out, image, rtol=1e-6)


@pytest.mark.parametrize("aggregation", ["patch", "pixel"])
def test_same_result_at_one_and_two_threads(aggregation):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    image = _rng(2).random((150, 41, 3)).astype(np.float32)
    kwargs = dict(sigma=0.1, patch_radius=2, search_radius=4, aggregation=aggregation)
    one = nlattn.nl_means(image, "nlm", n_threads=1, **kwargs)
    two = nlattn.nl_means(image, "nlm", n_threads=2, **kwargs)
    np.testing.assert_array_equal(one, two)


def _psnr(clean, image):
    return 10 * np.log10(255.0**2 / np.mean((clean.astype(np.float64) - image) ** 2))


def _test_scene(size=96):
    yy, xx = np.mgrid[:size, :size]
    scene = 60 + 120 * ((xx // 16 + yy // 16) % 2) + 40 * np.sin(xx / 9.0)
    return scene.astype(np.float32)


@pytest.mark.parametrize("aggregation", ["patch", "pixel"])
def test_denoising_raises_psnr(aggregation):
    clean = _test_scene()
    noisy = clean + _rng(3).normal(0, 20, clean.shape).astype(np.float32)
    out = nlattn.nl_means(noisy, "nlm", sigma=20, aggregation=aggregation)
    assert _psnr(clean, out) > _psnr(clean, noisy) + 6


def test_patchwise_beats_pixelwise():
    clean = _test_scene()
    noisy = clean + _rng(4).normal(0, 25, clean.shape).astype(np.float32)
    patch = nlattn.nl_means(noisy, "nlm", sigma=25, aggregation="patch")
    pixel = nlattn.nl_means(noisy, "nlm", sigma=25, aggregation="pixel")
    assert _psnr(clean, patch) > _psnr(clean, pixel)


@pytest.mark.parametrize("aggregation", ["patch", "pixel"])
def test_tiny_h_returns_the_input(aggregation):
    image = _rng(5).random((16, 19)).astype(np.float32)
    out = nlattn.nl_means(image, "nlm", sigma=0.0, h=1e-6, aggregation=aggregation)
    np.testing.assert_array_equal(out, image)


def test_dtypes_are_kept():
    clean = _test_scene(40)
    noisy = clean + _rng(6).normal(0, 15, clean.shape)
    as_u8 = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    out8 = nlattn.nl_means(as_u8, "nlm", sigma=15)
    assert out8.dtype == np.uint8 and _psnr(clean, out8) > _psnr(clean, as_u8)
    as_u16 = (as_u8.astype(np.uint16) * 257)
    out16 = nlattn.nl_means(as_u16, "nlm", sigma=15 * 257)
    assert out16.dtype == np.uint16
    np.testing.assert_allclose(out16 / 257.0, out8, atol=1.01)
    out64 = nlattn.nl_means(noisy.astype(np.float64), "nlm", sigma=15)
    assert out64.dtype == np.float64


def test_sigma_none_is_estimated():
    clean = _test_scene(64)
    noisy = clean + _rng(7).normal(0, 20, clean.shape).astype(np.float32)
    sigma = nlattn.estimate_sigma(noisy)
    np.testing.assert_array_equal(nlattn.nl_means(noisy, "nlm"),
                                  nlattn.nl_means(noisy, "nlm", sigma=sigma))


def test_zero_sigma_without_h_returns_a_copy():
    image = _rng(8).random((10, 10)).astype(np.float32)
    out = nlattn.nl_means(image, "nlm", sigma=0.0)
    np.testing.assert_array_equal(out, image)
    assert out is not image


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(h=0.0), ValueError, "h must be > 0"),
        (dict(h=-1.0), ValueError, "h must be > 0"),
        (dict(h=float("nan")), ValueError, "h must be finite"),
        (dict(sigma=-1.0), ValueError, "sigma must be >= 0"),
        (dict(patch_radius=-1), ValueError, "patch_radius must be >= 0"),
        (dict(patch_radius=2.0), TypeError, "patch_radius must be an integer"),
        (dict(search_radius=True), TypeError, "search_radius must be an integer"),
        (dict(method="bm3d"), ValueError, "method must be one of"),
        (dict(aggregation="mean"), ValueError, "aggregation must be one of"),
        (dict(k=4), ValueError, "k is not a parameter"),
        (dict(n_threads=0), ValueError, "n_threads must be >= 1"),
        (dict(seed=-1), ValueError, "seed must be >= 0"),
    ],
)
def test_invalid_arguments_raise(kwargs, error, match):
    image = np.zeros((8, 8), np.float32)
    kwargs = {"sigma": 0.1, "method": "nlm", **kwargs}
    with pytest.raises(error, match=match):
        nlattn.nl_means(image, **kwargs)


@pytest.mark.parametrize(
    ("image", "error"),
    [
        (np.zeros((0, 5)), ValueError),
        (np.zeros((4, 4, 3, 2)), ValueError),
        (np.full((4, 4), np.nan), ValueError),
        (np.zeros((4, 4), bool), TypeError),
        ([[1.0, 2.0]], TypeError),
    ],
)
def test_invalid_images_raise(image, error):
    with pytest.raises(error):
        nlattn.nl_means(image, "nlm", sigma=1.0)


@pytest.mark.parametrize("sigma", [5.0, 15.0, 40.0])
def test_estimate_sigma_on_a_synthetic_scene(sigma):
    clean = _test_scene(128)
    noisy = clean + _rng(9).normal(0, sigma, clean.shape)
    assert abs(nlattn.estimate_sigma(noisy) - sigma) < 0.1 * sigma
    colour = np.stack([noisy, noisy[::-1], noisy[:, ::-1]], axis=-1)
    assert abs(nlattn.estimate_sigma(colour) - sigma) < 0.1 * sigma


def test_estimate_sigma_of_a_clean_ramp_is_zero():
    ramp = np.add.outer(np.arange(20.0), np.arange(30.0))
    assert nlattn.estimate_sigma(ramp) == pytest.approx(0.0, abs=1e-9)


@jit
def _exp_neg_all(y, out):
    for i in range(y.size):
        out[i] = exp_neg(y[i])


def test_fast_exp_matches_numpy():
    y = np.concatenate([np.linspace(0, 87, 20001), [0.0, 1e-30, 88.0, 1e30]]).astype(np.float32)
    out = np.empty_like(y)
    _exp_neg_all(y, out)
    ref = np.exp(-y.astype(np.float64))
    keep = ref > 1e-36
    # y itself is float32: its rounding alone moves exp(-y) by up to y * 2**-24 relative
    tolerance = ref[keep] * (1e-6 + y[keep] * 2.0**-23)
    assert np.all(np.abs(out[keep] - ref[keep]) <= tolerance)
    assert out[-1] == 0.0 and out[-2] == 0.0


@pytest.mark.parametrize("aggregation", ["patch", "pixel"])
@pytest.mark.parametrize("shape", [(23, 19), (17, 21, 3)])
def test_extra_neighbours_match_naive(shape, aggregation):
    from nlattn.denoise.nlm import nlm_windowed

    rng = _rng(11)
    image = rng.random(shape).astype(np.float32)
    height, width = shape[:2]
    extra = rng.integers(-1, height * width, size=(height, width, 5)).astype(np.int32)
    planar = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
    out = nlm_windowed(np.ascontiguousarray(planar), 1, 2, 0.3, 0.05, aggregation, extra)
    out = out[0] if image.ndim == 2 else np.moveaxis(out, 0, -1)
    ref = naive.nlm(image, 1, 2, 0.3, 0.05, aggregation, extra=extra)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)


def _global_nlm_twin(image, patch_radius, h):
    """Global NLM by its definition: every pixel (itself included) weighted exp(-d2 / h^2)."""
    p = naive.patches(image, patch_radius)
    flat = p.reshape(-1, p.shape[-1])
    d2 = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1)
    weights = np.exp(-(d2 - d2.min(axis=1, keepdims=True)) / h**2)
    values = np.asarray(image, np.float64).reshape(flat.shape[0], -1)
    out = weights @ values / weights.sum(axis=1, keepdims=True)
    return out.reshape(image.shape)


@pytest.mark.parametrize("shape", [(9, 11), (7, 6, 3)])
def test_exact_attention_on_nlm_tokens_is_global_nlm(shape):
    # what a refused attention operator's message points to: attention over the NLM tokens.
    # 3x3 patches have at most 27 elements and PCA keeps min(16, elements) of them: for the
    # grey image it is a rotation (9 <= 16) and distances are exact
    image = _rng(3).random(shape).astype(np.float32)
    n_elements = 9 * (1 if len(shape) == 2 else shape[2])
    queries, keys, values = nlattn.nlm_tokens(image, 1, 0.3, pca=min(16, n_elements))
    out = nlattn.attention(queries, keys, values, "exact", scale=1.0).reshape(shape)
    if len(shape) == 2:
        np.testing.assert_allclose(out, _global_nlm_twin(image, 1, 0.3), rtol=2e-4, atol=2e-5)
    else:
        assert np.abs(out - _global_nlm_twin(image, 1, 0.3)).max() < 0.05


def test_denoisers_and_attention_operators():
    from nlattn.denoise import ATTENTION_OPERATORS

    assert list(nlattn.DENOISE_METHODS) == ["nlm2", "nlm", "scram"]
    # every attention method is either an operator only or also a denoiser, never both
    assert set(ATTENTION_OPERATORS) == set(nlattn.METHODS) - {"scram"}
    assert not set(ATTENTION_OPERATORS) & set(nlattn.DENOISE_METHODS)


@pytest.mark.parametrize("method", ["exact", "local", "performer", "lsh", "scatterbrain", "fast",
                                    "efficient"])
def test_attention_operators_are_not_denoisers(method):
    image = _rng(4).random((12, 10)).astype(np.float32)
    with pytest.raises(ValueError) as info:
        nlattn.nl_means(image, method, sigma=0.1)
    message = str(info.value)
    assert "\n" not in message
    assert f"method {method!r} is an attention operator, not a denoiser" in message
    assert "nlattn.attention" in message and f"nlattn attnmap --method {method}" in message
    assert "'nlm2'" not in message and "nlm2, nlm, scram" in message


def test_unknown_parameters_raise():
    image = _rng(5).random((8, 8)).astype(np.float32)
    with pytest.raises(TypeError, match="n_features"):
        nlattn.nl_means(image, "nlm", sigma=0.1, n_features=8)
    with pytest.raises(ValueError, match="method must be one of"):
        nlattn.nl_means(image, "bm3d", sigma=0.1)


@pytest.mark.parametrize("method", ["nlm", "nlm2", "scram"])
def test_tiny_h_is_its_limit_not_nan(method):
    """h far below the image's resolution (1/h**2 beyond float32) gives the limit of small h,
    as h = 1e-8 does, with no overflow warning."""
    import warnings

    rng = np.random.default_rng(3)
    image = np.clip(rng.normal(120, 25, (24, 28)), 0, 255).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = nlattn.nl_means(image, method, sigma=10.0, h=1e-8)
        tiny = nlattn.nl_means(image, method, sigma=10.0, h=1e-30)
        tinier = nlattn.nl_means(image.astype(np.float32) * 1e-35, method, sigma=1e-34, h=1e-70)
    np.testing.assert_array_equal(tiny, small)
    assert np.isfinite(tinier).all()
