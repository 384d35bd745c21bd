"""nlattn.denoise_nl_means against scikit-image's denoise_nl_means and against NumPy twins.

Three layers of checks:

1. ``_twin_fast`` / ``_twin_slow`` below are brute-force NumPy transcriptions of scikit-image's
   definitions (``restoration/_nl_means_denoising.pyx``, 0.26), with the exponential as a
   parameter.  With scikit-image's own approximate exponential (``_schraudolph_exp``, a copy of
   ``_shared/fast_exp.h``) they reproduce scikit-image to ~1e-15: the twins *are* its definition.
2. nlattn's kernels, which use the exact exponential, match the twins with ``np.exp`` to float64
   rounding (float32 rounding for float32 images).
3. nlattn against scikit-image directly, within the bound that the approximate exponential
   implies (see ``_FAST_EXP_BOUND``), plus dtypes, shapes, argument errors and thread
   determinism.
"""

from __future__ import annotations

import warnings

import numba
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from nlattn.denoise.skimage_compat import (
    UnsupportedImageError,
    _convert_to_float,
    _warmup,
    denoise_nl_means,
)
from tests.naive import schraudolph_exp as _schraudolph_exp
from tests.naive import skimage_nlm_fast as _twin_fast
from tests.naive import skimage_nlm_slow as _twin_slow

skimage_restoration = pytest.importorskip("skimage.restoration")
skimage_util = pytest.importorskip("skimage.util")

# scikit-image's _fast_exp(y) = exp(y) * r(y) with r in [0.96061, 1.01966] on [-40, 0] (measured
# on a 2e6-point grid; r is periodic in y with period ln 2).  An output is a weighted mean
# sum_j w_j r_j x_j / sum_j w_j r_j, so it moves from the exact-exp mean m by
# |sum_j w_j (r_j - rbar)(x_j - m)| / sum_j w_j r_j
#     <= (r_max - r_min) / (2 r_min) * max_j |x_j - m|,
# i.e. by at most 3.07% of the spread of the values averaged (bounded here by the image's range).
# Observed on the noisy [0, 1] images below: max differences 2e-3 to 5e-3, mean 1e-4 to 1.5e-3.
_R_MIN, _R_MAX = 0.96061, 1.01966
_FAST_EXP_BOUND = (_R_MAX - _R_MIN) / (2 * _R_MIN)


def _twin(image, s, d, h, sigma, fast, channel_axis=None, expfn=np.exp):
    x = image[..., None] if channel_axis is None else image
    out = (_twin_fast if fast else _twin_slow)(x, s, d, h, sigma, expfn)
    return out[..., 0] if channel_axis is None else out


def _skimage(image, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return skimage_restoration.denoise_nl_means(image, *args, **kwargs)


def _noisy(shape, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    clean = np.zeros(shape)
    clean[tuple(slice(n // 4, 3 * n // 4) for n in shape[:2])] = 0.8
    return np.clip(clean + 0.15 * rng.standard_normal(shape) + 0.1, 0, 1).astype(dtype)


GREY = _noisy((30, 37), seed=1)
COLOUR = _noisy((20, 23, 3), seed=2)
VOLUME = _noisy((10, 12, 14), seed=3)

# (name, image, channel_axis, patch_size, patch_distance, h, sigma, modes)
CASES = [
    ("grey-default", GREY, None, 7, 11, 0.1, 0.0, (True, False)),
    ("grey-sigma", GREY, None, 5, 4, 0.12, 0.15, (True, False)),
    ("grey-even-patch", GREY, None, 4, 3, 0.2, 0.1, (True, False)),
    ("colour", COLOUR, -1, 5, 3, 0.15, 0.0, (True, False)),
    ("colour-sigma", COLOUR, -1, 3, 4, 0.1, 0.1, (True, False)),
    ("volume", VOLUME, None, 3, 2, 0.25, 0.0, (True, False)),
    ("volume-sigma", VOLUME, None, 5, 1, 0.2, 0.15, (True, False)),
    ("volume-colour", _noisy((6, 7, 8, 2), seed=6), -1, 3, 1, 0.2, 0.05, (True,)),
    ("thin-strips", _noisy((6, 40), seed=4), None, 3, 5, 0.1, 0.0, (True, False)),
    ("4d", _noisy((4, 5, 6, 5), seed=5), None, 3, 1, 0.3, 0.1, (True,)),
]
PARAMS = [
    pytest.param(image, ca, s, d, h, sigma, fast, id=f"{name}-{'fast' if fast else 'slow'}")
    for name, image, ca, s, d, h, sigma, modes in CASES
    for fast in modes
]


@pytest.mark.parametrize(("image", "channel_axis", "s", "d", "h", "sigma", "fast"), PARAMS)
def test_twin_with_schraudolph_exp_is_skimage(image, channel_axis, s, d, h, sigma, fast):
    """Layer 1: the twins, given scikit-image's exp, reproduce scikit-image (float64)."""
    if image.ndim == 4 and fast:
        image = image[:3, :4, :5, :4]  # keep the 4-D twin quick
    expected = _skimage(image, s, d, h, fast_mode=fast, sigma=sigma, channel_axis=channel_axis)
    twin = _twin(image, s, d, h, sigma, fast, channel_axis, expfn=_schraudolph_exp)
    np.testing.assert_allclose(twin, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("image", "channel_axis", "s", "d", "h", "sigma", "fast"), PARAMS)
def test_matches_twin_float64(image, channel_axis, s, d, h, sigma, fast):
    """Layer 2: nlattn is the definition with the exact exp, to float64 rounding."""
    out = denoise_nl_means(image, s, d, h, fast_mode=fast, sigma=sigma,
                           channel_axis=channel_axis)
    assert out.dtype == np.float64
    assert out.shape == image.shape
    np.testing.assert_allclose(out, _twin(image, s, d, h, sigma, fast, channel_axis),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("image", "channel_axis", "s", "d", "h", "sigma", "fast"), PARAMS)
def test_matches_twin_float32(image, channel_axis, s, d, h, sigma, fast):
    """float32 images: float32 result, equal to the definition up to the final rounding."""
    image32 = image.astype(np.float32)
    out = denoise_nl_means(image32, s, d, h, fast_mode=fast, sigma=sigma,
                           channel_axis=channel_axis)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _twin(image32, s, d, h, sigma, fast, channel_axis),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("image", "channel_axis", "s", "d", "h", "sigma", "fast"), PARAMS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_close_to_skimage(image, channel_axis, s, d, h, sigma, fast, dtype):
    """Layer 3: within the approximate exponential's bound of scikit-image itself."""
    image = image.astype(dtype)
    expected = _skimage(image, s, d, h, fast_mode=fast, sigma=sigma, channel_axis=channel_axis)
    out = denoise_nl_means(image, s, d, h, fast_mode=fast, sigma=sigma,
                           channel_axis=channel_axis)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    spread = float(image.max() - image.min())
    # float32: scikit-image's slow mode sums in float32 (about 1e-6 relative).
    slack = 1e-12 if dtype == np.float64 else 2e-5
    assert np.abs(out - expected).max() <= _FAST_EXP_BOUND * spread + slack
    assert np.abs(out - expected).max() > 0 or s == 1 or d == 0  # the two exps do differ


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("preserve_range", [True, False])
@pytest.mark.parametrize("kind", ["uint8", "float64", "float32", "float16", "uint16", "int16",
                                  "bool"])
def test_dtypes_and_preserve_range(kind, preserve_range, fast):
    """Conversion, result dtype and range as scikit-image (uint8 -> [0, 1] unless preserved)."""
    base = GREY[:16, :19]
    if kind == "bool":
        image = base > 0.5
    elif kind in ("uint8", "uint16", "int16"):
        info = np.iinfo(kind)
        image = np.round(base * info.max).astype(kind)
    else:
        image = base.astype(kind)
    converted = _convert_to_float(image, preserve_range)
    scale = float(np.abs(converted).max()) or 1.0
    h, sigma = 0.15 * scale, 0.1 * scale
    expected = _skimage(image, 5, 3, h, fast_mode=fast, sigma=sigma, preserve_range=preserve_range)
    out = denoise_nl_means(image, 5, 3, h, fast_mode=fast, sigma=sigma,
                           preserve_range=preserve_range)
    assert out.dtype == expected.dtype
    assert out.dtype == (np.float32 if kind in ("float32", "float16") else np.float64)
    spread = float(converted.max() - converted.min())
    slack = 2e-5 * scale if out.dtype == np.float32 else 1e-12 * scale
    assert np.abs(out - expected).max() <= _FAST_EXP_BOUND * spread + slack
    np.testing.assert_allclose(
        out, _twin(converted, 5, 3, h, sigma, fast),
        rtol=1e-6 if out.dtype == np.float32 else 1e-10, atol=1e-7 * scale)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32,
                                   np.int64, np.bool_, np.float16, np.float32, np.float64])
@pytest.mark.parametrize("preserve_range", [True, False])
def test_conversion_is_skimage_convert_to_float(dtype, preserve_range):
    rng = np.random.default_rng(7)
    if dtype == np.bool_:
        image = rng.random((5, 6)) > 0.5
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        image = rng.integers(info.min, info.max, (5, 6), dtype=dtype, endpoint=True)
        image.flat[:2] = (info.min, info.max)
    else:
        image = rng.random((5, 6)).astype(dtype)
    ours = _convert_to_float(image, preserve_range)
    if preserve_range:
        theirs = image.astype(np.float32 if dtype == np.float16 else
                              (image.dtype if image.dtype.char in "df" else np.float64))
    else:
        theirs = skimage_util.img_as_float(image)
        if dtype == np.float16:
            theirs = image.astype(np.float32)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("fast", [True, False])
def test_channel_axis_first_and_tuple(fast):
    image = np.moveaxis(COLOUR, -1, 0)  # (3, 20, 23)
    expected = _skimage(image, 5, 3, 0.15, fast_mode=fast, channel_axis=0)
    for axis in (0, -3, (0,)):
        out = denoise_nl_means(image, 5, 3, 0.15, fast_mode=fast, channel_axis=axis)
        assert out.shape == expected.shape == image.shape
        assert np.abs(out - expected).max() <= _FAST_EXP_BOUND * 1.0 + 1e-12
        np.testing.assert_array_equal(
            out, np.moveaxis(denoise_nl_means(COLOUR, 5, 3, 0.15, fast_mode=fast,
                                              channel_axis=-1), -1, 0))


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(("shape", "channel_axis"), [((1, 13), None), ((12, 1, 13), None),
                                                     ((12, 13, 1), -1), ((1, 12, 13), None),
                                                     ((1, 12, 13), 0)])
def test_result_shapes_follow_skimage(shape, channel_axis, fast):
    """scikit-image squeezes axes of length 1 (not in slow 3-D mode): so does the drop-in."""
    image = np.random.default_rng(0).random(shape)
    expected = _skimage(image, 3, 2, 0.2, fast_mode=fast, channel_axis=channel_axis)
    out = denoise_nl_means(image, 3, 2, 0.2, fast_mode=fast, channel_axis=channel_axis)
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= _FAST_EXP_BOUND + 1e-12


@pytest.mark.parametrize("fast", [True, False])
def test_special_sizes(fast):
    """Even patch = next odd; patch_distance 0 = identity; patch_size 1 = plain window mean."""
    np.testing.assert_array_equal(denoise_nl_means(GREY, 4, 3, 0.1, fast_mode=fast),
                                  denoise_nl_means(GREY, 5, 3, 0.1, fast_mode=fast))
    np.testing.assert_array_equal(denoise_nl_means(GREY, 5, 0, 0.1, fast_mode=fast), GREY)
    d = 2
    if fast:
        padded = np.pad(GREY, d, mode="reflect")
        mean = sliding_window_view(padded, (2 * d + 1,) * 2).mean(axis=(2, 3))
    else:
        mean = np.array([[GREY[max(0, r - d) : r + d + 1, max(0, c - d) : c + d + 1].mean()
                          for c in range(GREY.shape[1])] for r in range(GREY.shape[0])])
    np.testing.assert_allclose(denoise_nl_means(GREY, 1, d, 0.1, fast_mode=fast), mean,
                               rtol=0, atol=1e-14)
    np.testing.assert_allclose(_skimage(GREY, 1, d, 0.1, fast_mode=fast), mean, atol=1e-14)


def test_sigma_and_h_change_the_result():
    a = denoise_nl_means(GREY, 5, 4, 0.12)
    assert not np.array_equal(a, denoise_nl_means(GREY, 5, 4, 0.12, sigma=0.1))
    assert not np.array_equal(a, denoise_nl_means(GREY, 5, 4, 0.2))
    assert np.abs(a - GREY).max() > 0.05  # it does denoise


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("image", [_noisy((70, 41), seed=6), COLOUR, VOLUME],
                         ids=["grey", "colour", "volume"])
def test_bit_identical_at_1_and_2_threads(image, fast):
    if image.ndim == 3 and image is not VOLUME:
        kwargs = {"channel_axis": -1}
    else:
        kwargs = {}
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = denoise_nl_means(image, 5, 4, 0.1, fast_mode=fast, sigma=0.05, **kwargs)
        numba.set_num_threads(2)
        two = denoise_nl_means(image, 5, 4, 0.1, fast_mode=fast, sigma=0.05, **kwargs)
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"patch_size": 0}, ValueError, "patch_size"),
        ({"patch_size": -3}, ValueError, "patch_size"),
        ({"patch_size": 7.0}, TypeError, "patch_size"),
        ({"patch_size": True}, TypeError, "patch_size"),
        ({"patch_distance": -1}, ValueError, "patch_distance"),
        ({"patch_distance": 2.5}, TypeError, "patch_distance"),
        ({"h": 0.0}, ValueError, "h"),
        ({"h": -0.1}, ValueError, "h"),
        ({"h": float("nan")}, ValueError, "h"),
        ({"h": "0.1"}, TypeError, "h"),
        ({"sigma": -0.1}, ValueError, "sigma"),
        ({"sigma": float("inf")}, ValueError, "sigma"),
        ({"fast_mode": "yes"}, TypeError, "fast_mode"),
        ({"fast_mode": 1}, TypeError, "fast_mode"),
        ({"preserve_range": None}, TypeError, "preserve_range"),
        ({"channel_axis": 2}, ValueError, "channel_axis"),
        ({"channel_axis": -3}, ValueError, "channel_axis"),
        ({"channel_axis": (0, 1)}, ValueError, "channel_axis"),
        ({"channel_axis": 1.0}, TypeError, "channel_axis"),
        ({"channel_axis": -1}, UnsupportedImageError, "channel_axis"),  # 1 spatial axis left
    ],
)
def test_invalid_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        denoise_nl_means(GREY, **kwargs)


@pytest.mark.parametrize(
    ("image", "kwargs", "error", "match"),
    [
        (GREY.tolist(), {}, TypeError, "image"),
        (GREY.astype(complex), {}, TypeError, "image"),
        (np.array(["a", "b"]), {}, TypeError, "image"),
        (np.zeros((0, 5)), {}, ValueError, "image"),
        (np.where(GREY > 0.5, np.nan, GREY), {}, ValueError, "image"),
        (GREY.astype(np.longdouble), {}, TypeError, "preserve_range"),
        (np.zeros(7), {}, UnsupportedImageError, "image"),
        (np.zeros((3,) * 5), {}, UnsupportedImageError, "image"),
        (np.zeros((3, 4, 5, 6)), {"fast_mode": False}, UnsupportedImageError, "fast_mode"),
        (COLOUR[..., None].repeat(2, -1), {"fast_mode": False, "channel_axis": -1},
         UnsupportedImageError, "fast_mode"),
    ],
)
def test_invalid_images(image, kwargs, error, match):
    with pytest.raises(error, match=match):
        denoise_nl_means(image, **kwargs)


def test_unsupported_layouts_are_also_not_implemented_errors():
    """Code written for scikit-image catches NotImplementedError: it still works."""
    with pytest.raises(NotImplementedError):
        denoise_nl_means(np.zeros((3, 4, 5, 6)), fast_mode=False)


def test_longdouble_with_preserve_range_is_float64():
    out = denoise_nl_means(GREY.astype(np.longdouble), 3, 2, 0.1, preserve_range=True)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, denoise_nl_means(GREY, 3, 2, 0.1))


def test_warmup_runs():
    _warmup()
