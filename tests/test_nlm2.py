"""The two-stage denoiser (nl_means method "nlm2") and the noise estimator against their
brute-force twins, on determinism, quality and dtypes."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import nlattn
from nlattn.denoise import noise
from nlattn.denoise.nlm2 import (
    _haar_forward,
    _haar_inverse,
    collaborative_wiener,
    nlm2_planar,
)
from nlattn.denoise.presets import NLM2_COLOUR, NLM2_GREY, nlm2_preset
from tests import naive


def _rng(seed=0):
    return np.random.default_rng(seed)


def _scene(size, seed=3):
    """A piecewise-smooth test picture in [0, 255]: shapes, a ramp, stripes."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    img = 60.0 + 0.4 * x
    img[(y - size / 3) ** 2 + (x - size / 3) ** 2 < (size / 5) ** 2] = 200.0
    img[size // 2 :, size // 2 :] = 120.0 + 50.0 * np.sin(x[size // 2 :, size // 2 :] / 2.0)
    img[: size // 4, 2 * size // 3 :] = 30.0
    return img


def _psnr(clean, estimate):
    err = np.mean((np.clip(estimate.astype(np.float64), 0, 255) - clean) ** 2)
    return 10 * np.log10(255.0**2 / err)


@pytest.mark.parametrize("m", [1, 2, 4, 8, 16])
def test_haar_butterflies_match_the_haar_matrix(m):
    """The in-place transform is the Haar basis of the twin (rows in some order and sign), and
    its inverse undoes it."""
    eye = np.zeros((16, 16), np.float32)
    eye[:m, :m] = np.eye(m)
    tmp = np.empty_like(eye)
    _haar_forward(eye, m, tmp)
    h = eye[:m, :m].astype(np.float64)
    twin = naive.haar_matrix(m)
    np.testing.assert_allclose(h @ h.T, np.eye(m), atol=1e-6)
    np.testing.assert_allclose(np.abs(h @ twin.T).max(axis=1), 1.0, atol=1e-6)
    data = _rng(0).random((16, 5)).astype(np.float32)
    work = data.copy()
    _haar_forward(work, m, np.empty((16, 5), np.float32))
    np.testing.assert_allclose(work[:m], h @ data[:m], rtol=1e-5, atol=1e-6)
    _haar_inverse(work, m, np.empty((16, 5), np.float32))
    np.testing.assert_allclose(work[:m], data[:m], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "block", "step", "search_radius", "k", "n_coefs", "tau"),
    [
        ((1, 17, 19), 4, 2, 3, 4, 16, 1e9),  # every candidate allowed
        ((1, 16, 21), 4, 3, 2, 8, 5, 1e9),  # truncated distance, step 3 (last row/col)
        ((2, 14, 15), 3, 2, 3, 4, 9, 1e9),  # two channels: matching on the first
        ((1, 18, 16), 4, 2, 3, 8, 16, 40.0),  # the threshold tau drops candidates
        ((1, 15, 16), 4, 2, 2, 16, 16, 1e9),  # groups of 16
        ((1, 3, 9), 8, 3, 2, 4, 64, 1e9),  # block larger than the image: reduced to 3
        ((1, 1, 7), 8, 3, 3, 2, 64, 1e9),  # one row: 1x1 blocks, step reduced to 1
        ((1, 12, 12), 4, 1, 1, 1, 16, 1e9),  # k = 1: groups of one block
    ],
)
def test_collaborative_filter_matches_naive(shape, block, step, search_radius, k, n_coefs, tau):
    rng = _rng(1)
    clean = rng.random(shape) * 100.0
    noisy = (clean + rng.normal(0, 10, shape)).astype(np.float32)
    pilot = (clean + rng.normal(0, 3, shape)).astype(np.float32)
    sigmas = np.linspace(10.0, 14.0, shape[0])
    out = collaborative_wiener(noisy, pilot, sigmas, block, step, search_radius, k, n_coefs, tau,
                               2.0)
    ref = naive.collaborative(noisy, pilot, sigmas, block, step, search_radius, k, n_coefs,
                                   tau, 2.0)
    assert out.shape == shape and out.dtype == np.float32
    assert np.isfinite(out).all()  # every pixel is covered by a reference block
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)


def test_several_tiles_match_naive():
    """An image large enough for several tiles in both directions (four phases)."""
    rng = _rng(2)
    shape = (1, 70, 160)
    clean = np.repeat(rng.random((1, 70, 40)) * 100.0, 4, axis=2)
    noisy = (clean + rng.normal(0, 10, shape)).astype(np.float32)
    pilot = (clean + rng.normal(0, 3, shape)).astype(np.float32)
    out = collaborative_wiener(noisy, pilot, np.array([10.0]), 4, 2, 2, 4, 6, 1e9, 2.0)
    ref = naive.collaborative(noisy, pilot, np.array([10.0]), 4, 2, 2, 4, 6, 1e9, 2.0)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("channels", [0, 3])
def test_both_stages_match_naive(channels):
    rng = _rng(4)
    shape = (14, 17) if channels == 0 else (14, 17, channels)
    image = (rng.random(shape) * 200.0).astype(np.float32)
    params = dict(pilot_patch_radius=1, pilot_search_radius=2, pilot_h=40.0, block=4, step=2,
                  search_radius=2, k=4, n_coefs=16, tau=1e9, beta=2.0)
    planar = image[None] if channels == 0 else np.moveaxis(image, -1, 0)
    n_ch = planar.shape[0]
    out = nlm2_planar(np.ascontiguousarray(planar), np.full(n_ch, 12.0), aggregation="patch",
                      **params)
    out = out[0] if channels == 0 else np.moveaxis(out, 0, -1)
    ref = naive.nlm2(image, 12.0, **params)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-3)


def test_nl_means_nlm2_uses_the_preset_and_the_image_units():
    """uint8 grey: nl_means equals nlm2_planar with the preset's parameters, and a [0, 1] float
    image gives the same result scaled."""
    clean = _scene(48)
    noisy = np.clip(clean + _rng(5).normal(0, 20, clean.shape), 0, 255)
    u8 = np.rint(noisy).astype(np.uint8)
    p = nlm2_preset(20.0, 1)
    out = nlattn.nl_means(u8, "nlm2", sigma=20.0)
    ref = nlm2_planar(u8[None].astype(np.float32), np.array([20.0]), p.pilot_patch_radius,
                      p.pilot_search_radius, p.pilot_h_over_sigma * 20.0, "patch", p.block,
                      p.step, p.search_radius, p.k, p.n_coefs, p.tau, p.beta)[0]
    np.testing.assert_array_equal(out, np.clip(np.rint(ref), 0, 255).astype(np.uint8))
    unit = nlattn.nl_means(u8 / 255.0, "nlm2", sigma=20.0 / 255.0)
    np.testing.assert_allclose(unit * 255.0, ref, atol=2e-3)


@pytest.mark.parametrize("channels", [0, 3])
def test_deterministic_at_one_and_two_threads(channels):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    shape = (90, 170) if channels == 0 else (90, 170, channels)
    clean = _scene(170)[:90]
    if channels:
        clean = np.stack([clean, clean[::-1], clean[:, ::-1]], axis=-1)
    noisy = (clean + _rng(6).normal(0, 25, shape)).astype(np.float32)
    one = nlattn.nl_means(noisy, "nlm2", sigma=25.0, n_threads=1)
    two = nlattn.nl_means(noisy, "nlm2", sigma=25.0, n_threads=2)
    again = nlattn.nl_means(noisy, "nlm2", sigma=25.0, n_threads=2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(two, again)


@pytest.mark.parametrize("sigma", [15.0, 30.0])
def test_beats_one_stage_nlm(sigma):
    clean = _scene(96)
    noisy = clean + _rng(7).normal(0, sigma, clean.shape)
    two = _psnr(clean, nlattn.nl_means(noisy, "nlm2", sigma=sigma))
    one = _psnr(clean, nlattn.nl_means(noisy, "nlm", sigma=sigma))
    assert two > one + 0.3, (two, one)


def test_colour_beats_one_stage_nlm_and_keeps_channels_apart():
    clean = np.stack([_scene(64), _scene(64)[::-1], 255.0 - _scene(64)], axis=-1)
    noisy = clean + _rng(8).normal(0, 20, clean.shape)
    out = nlattn.nl_means(noisy, "nlm2", sigma=20.0)
    assert out.shape == clean.shape
    assert _psnr(clean, out) > _psnr(clean, nlattn.nl_means(noisy, "nlm", sigma=20.0)) + 0.3
    # a grey image given as three equal channels stays grey
    grey3 = np.repeat(noisy[:, :, :1], 3, axis=2)
    out3 = nlattn.nl_means(grey3, "nlm2", sigma=20.0)
    np.testing.assert_allclose(out3[:, :, 0], out3[:, :, 1], atol=1e-3)
    np.testing.assert_allclose(out3[:, :, 0], out3[:, :, 2], atol=1e-3)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [0, 3, 4])
def test_dtype_and_shape_round_trip(dtype, channels):
    clean = _scene(40)
    shape = clean.shape if channels == 0 else clean.shape + (channels,)
    if channels:
        clean = np.repeat(clean[:, :, None], channels, axis=2)
    scale = 257.0 if dtype == np.uint16 else 1.0
    noisy = (clean + _rng(9).normal(0, 15, shape)) * scale
    if np.issubdtype(dtype, np.integer):
        noisy = np.clip(np.rint(noisy), 0, np.iinfo(dtype).max)
    image = noisy.astype(dtype)
    before = image.copy()
    out = nlattn.nl_means(image, "nlm2", sigma=15.0 * scale)
    assert out.shape == shape and out.dtype == image.dtype
    np.testing.assert_array_equal(image, before)  # the input is not modified
    assert _psnr(clean, out / scale) > _psnr(clean, image / scale) + 3.0


def test_uint16_matches_uint8_scaled():
    clean = _scene(48)
    u8 = np.clip(np.rint(clean + _rng(10).normal(0, 15, clean.shape)), 0, 255).astype(np.uint8)
    out8 = nlattn.nl_means(u8, "nlm2", sigma=15.0)
    out16 = nlattn.nl_means(u8.astype(np.uint16) * 257, "nlm2", sigma=15.0 * 257)
    np.testing.assert_allclose(out16 / 257.0, out8, atol=1.01)


def test_alpha_round_trip_through_files(tmp_path):
    """RGBA file: the alpha is set aside on reading, re-attached on writing, untouched."""
    rgb = np.clip(np.stack([_scene(32)] * 3, axis=-1) + _rng(11).normal(0, 15, (32, 32, 3)),
                  0, 255)
    alpha = np.tile(np.linspace(0, 255, 32), (32, 1))
    rgba = np.rint(np.concatenate([rgb, alpha[:, :, None]], axis=-1)).astype(np.uint8)
    src = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(rgba, "RGBA").save(src)
    image, meta = nlattn.read_image(src)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    out = nlattn.nl_means(image, "nlm2", sigma=15.0)
    dst = tmp_path / "out.png"
    nlattn.write_image(dst, out, meta=meta)
    back = np.asarray(Image.open(dst))
    assert back.shape == (32, 32, 4)
    np.testing.assert_array_equal(back[:, :, 3], rgba[:, :, 3])
    np.testing.assert_array_equal(back[:, :, :3], out)


def test_sigma_none_is_estimated_and_zero_sigma_copies():
    clean = _scene(64)
    noisy = (clean + _rng(12).normal(0, 20, clean.shape)).astype(np.float32)
    sigma = nlattn.estimate_sigma(noisy)
    np.testing.assert_array_equal(nlattn.nl_means(noisy, "nlm2"),
                                  nlattn.nl_means(noisy, "nlm2", sigma=sigma))
    out = nlattn.nl_means(noisy, "nlm2", sigma=0.0)
    np.testing.assert_array_equal(out, noisy)
    assert out is not noisy


@pytest.mark.parametrize("shape", [(20, 17), (1, 1), (3, 2), (24, 30, 3)])
def test_constant_and_tiny_images_are_unchanged(shape):
    """The group mean keeps gain 1: a flat image, or one too small to hold any structure the
    pilot could see, comes back as it was."""
    image = np.full(shape, 0.375, np.float32)
    np.testing.assert_allclose(nlattn.nl_means(image, "nlm2", sigma=0.1), image, rtol=1e-5)
    pixel = np.array([[137]], np.uint8)
    assert nlattn.nl_means(pixel, "nlm2", sigma=10.0).tolist() == [[137]]


def test_parameters_change_the_result():
    clean = _scene(48)
    noisy = clean + _rng(13).normal(0, 20, clean.shape)
    base = nlattn.nl_means(noisy, "nlm2", sigma=20.0)
    for kwargs in (dict(h=5.0), dict(patch_radius=1), dict(search_radius=3), dict(k=2),
                   dict(aggregation="pixel")):
        assert not np.array_equal(base, nlattn.nl_means(noisy, "nlm2", sigma=20.0, **kwargs))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(k=0), ValueError, "k must be >= 1"),
        (dict(k=2.0), TypeError, "k must be an integer"),
        (dict(search_radius=-1), ValueError, "search_radius must be >= 0"),
        (dict(patch_radius=-1), ValueError, "patch_radius must be >= 0"),
        (dict(h=0.0), ValueError, "h must be > 0"),
        (dict(sigma=-1.0), ValueError, "sigma must be >= 0"),
        (dict(aggregation="mean"), ValueError, "aggregation must be one of"),
        (dict(n_features=4), TypeError, "n_features"),  # no method takes extra parameters
    ],
)
def test_invalid_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        nlattn.nl_means(np.zeros((8, 8), np.float32), "nlm2", **{"sigma": 1.0, **kwargs})


def test_presets_are_ordered_and_complete():
    for table in (NLM2_GREY, NLM2_COLOUR):
        bounds = [bound for bound, _ in table]
        assert bounds == sorted(bounds) and bounds[-1] == float("inf")
        for _, p in table:
            assert p.block >= 1 and p.step >= 1 and p.k >= 1 and 1 <= p.n_coefs <= p.block**2
    assert nlm2_preset(1e6, 1) == NLM2_GREY[-1][1]
    assert nlm2_preset(1e6, 3) == NLM2_COLOUR[-1][1]


# ------------------------------------------------------------------------------------------
# noise estimation


def _twin_sigma(channel):
    return naive.channel_sigma(channel, noise.PATCH, noise.STRIDE, noise.GRADIENT_QUANTILE,
                                    noise.SELECTION_BIAS, noise.MIN_PATCHES)


@pytest.mark.parametrize(
    "image",
    [
        _scene(40) + _rng(14).normal(0, 10, (40, 40)),
        np.clip(_scene(36) * 1.5 + _rng(15).normal(0, 20, (36, 36)), 0, 255),  # clipped
        np.rint(_scene(30) + _rng(16).normal(0, 5, (30, 30))).astype(np.uint8),
        _rng(17).random((20, 20)),  # too few patches: Immerkaer
    ],
)
def test_estimate_sigma_matches_naive(image):
    assert noise.estimate_sigma(image) == pytest.approx(_twin_sigma(image), rel=1e-6)


def test_estimate_sigma_is_the_same_at_one_and_two_threads():
    image = _scene(80) + _rng(18).normal(0, 12, (80, 80))
    with nlattn._validate.numba_threads(1):
        one = noise.estimate_sigma(image)
    with nlattn._validate.numba_threads(min(2, numba.config.NUMBA_NUM_THREADS)):
        two = noise.estimate_sigma(image)
    assert one == two


@pytest.mark.parametrize("sigma", [3.0, 10.0, 30.0])
def test_estimate_sigma_is_accurate_on_textured_and_clipped_scenes(sigma):
    clean = _scene(128)
    noisy = clean + _rng(19).normal(0, sigma, clean.shape)
    assert abs(noise.estimate_sigma(noisy) / sigma - 1.0) < 0.1
    # a third of the picture saturated at the largest value: no noise there, it must not count
    saturated = noisy.copy()
    saturated[:40] = noisy.max()
    assert abs(noise.estimate_sigma(saturated) / sigma - 1.0) < 0.1



def test_calibration_constants_hold():
    quantile, bias = noise.calibrate(size=1024, seed=1)
    assert quantile == pytest.approx(noise.GRADIENT_QUANTILE, rel=0.01)
    assert bias == pytest.approx(noise.SELECTION_BIAS, rel=0.01)


def test_channel_sigmas_of_colour():
    clean = _scene(128)
    image = np.stack([clean + _rng(20 + c).normal(0, s, clean.shape)
                      for c, s in enumerate((5.0, 10.0, 20.0))], axis=-1)
    sigmas = noise.channel_sigmas(image)
    np.testing.assert_allclose(sigmas, [5.0, 10.0, 20.0], rtol=0.1)
    assert noise.estimate_sigma(image) == pytest.approx(np.mean(sigmas))


# ------------------------------------------------------------- images of any magnitude


def _unit_noisy(shape, seed=23):
    """A noisy picture in [0, 1] reaching 1, on a grid of 2**-16 (no value of it or of it
    scaled by 2**-100 in float32 is subnormal)."""
    clean = _scene(shape[0])[:, : shape[1]] / 255.0
    if len(shape) == 3:
        clean = np.stack([clean, clean[::-1], clean[:, ::-1]], axis=-1)
    noisy = np.clip(clean + _rng(seed).normal(0, 0.1, clean.shape), 0.0, 1.0)
    noisy = np.round(noisy * 2**16) / 2**16
    noisy.flat[0] = 1.0
    return noisy


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("method", list(nlattn.DENOISE_METHODS))
@pytest.mark.parametrize(("dtype", "shape"), [(np.float32, (40, 36)), (np.float64, (32, 30, 3))])
@pytest.mark.parametrize("exponent", [100, -100])
def test_huge_and_tiny_images_give_the_scaled_result(method, dtype, shape, exponent):
    # non-local means is equivariant to scaling the image with sigma and h: an image out of
    # float32's range is denoised scaled into it, exactly, and no overflow warning escapes
    image = _unit_noisy(shape).astype(dtype)
    scaled = np.ldexp(image, exponent)
    for sigma in (0.1, None):
        expected = np.ldexp(nlattn.nl_means(image, method, sigma=sigma), exponent)
        got = nlattn.nl_means(scaled, method,
                              sigma=None if sigma is None else np.ldexp(sigma, exponent))
        assert got.dtype == dtype and np.isfinite(got).all()
        np.testing.assert_array_equal(got, expected)
    expected = np.ldexp(nlattn.nl_means(image, method, sigma=0.1, h=0.07), exponent)
    got = nlattn.nl_means(scaled, method, sigma=np.ldexp(0.1, exponent),
                          h=np.ldexp(0.07, exponent))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("exponent", [900, -900])
def test_float64_beyond_float32_gives_the_scaled_result(exponent):
    image = _unit_noisy((32, 32))
    scaled = np.ldexp(image, exponent)
    for method in nlattn.DENOISE_METHODS:
        expected = np.ldexp(nlattn.nl_means(image, method), exponent)
        np.testing.assert_array_equal(nlattn.nl_means(scaled, method), expected)
    assert noise.estimate_sigma(scaled) == np.ldexp(noise.estimate_sigma(image), exponent)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("method", list(nlattn.DENOISE_METHODS))
def test_float32_image_scaled_by_1e30_is_denoised(method):
    # the report: a float32 TIFF with values up to 1e30 came back all NaN
    clean = (_scene(48) / 255.0).astype(np.float32)
    noisy = (clean + _rng(24).normal(0, 0.1, clean.shape)).astype(np.float32)
    for scale in (np.float32(1e30), np.float32(1e-30)):
        out = nlattn.nl_means(noisy * scale, method)
        assert out.dtype == np.float32 and np.isfinite(out).all()
        error = np.mean((out / scale - clean) ** 2)
        assert error < 0.25 * np.mean((noisy - clean) ** 2)


def test_images_in_range_are_not_rescaled():
    image = _unit_noisy((16, 16))
    for scale in (1.0, 255.0, 65535.0, 2.0**40, 2.0**-40):
        assert noise.value_exponent(image * scale) == 0
    assert noise.value_exponent(np.zeros((4, 4))) == 0
    assert noise.value_exponent((image * 2.0**63).astype(np.uint64)) == 63
    assert noise.value_exponent(image * 2.0**41) == 41
    assert noise.value_exponent(-image * 2.0**-41) == -41
    assert noise.value_exponent(image * 3.0**30) == 48  # 3**30 = 1.6 * 2**47
    assert noise.value_exponent(image, 2.0**50) == 50  # sigma or h count too
    from nlattn.denoise import data_range

    assert data_range(image) == 1.0 and data_range(image * 255) == 255.0
    assert data_range(np.ldexp(image, 100)) == 2.0**100
    assert data_range(np.ldexp(image, -100)) == 2.0**-100


def test_h_too_small_for_a_huge_image_raises_one_line():
    image = _unit_noisy((16, 16)).astype(np.float32) * np.float32(1e30)
    with pytest.raises(ValueError, match=r"^h must be > 0 next to the image's largest value"):
        nlattn.nl_means(image, "nlm", sigma=1e29, h=1e-300)


@pytest.mark.filterwarnings("error")
def test_integers_near_their_dtype_maximum_do_not_wrap():
    for dtype in (np.int32, np.uint32, np.uint64):
        top = np.iinfo(dtype).max
        image = np.full((12, 12), top, dtype)
        image[::2] = top // 2
        out = nlattn.nl_means(image, "nlm", sigma=float(top) / 20)
        assert out.dtype == dtype and out.min() >= top // 4  # no wrap to negative or zero
