"""nlattn.metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from nlattn.metrics import (
    KL_FLOOR,
    psnr,
    recall_at_k,
    relative_error,
    row_kl,
    row_total_variation,
    ssim,
)

# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------


def test_psnr_by_hand():
    reference = np.full((8, 9), 100.0)
    # MSE 1 -> 10 log10(255^2 / 1) = 20 log10(255)
    assert psnr(reference + 1.0, reference, data_range=255) == pytest.approx(48.130803608679)
    # MSE 4 in [0, 1] units with data_range 1: 10 log10(1 / 4)
    assert psnr(np.full((4, 4), 2.0), np.zeros((4, 4)), data_range=1.0) == pytest.approx(
        -6.020599913279624
    )
    assert psnr(reference, reference, data_range=255) == math.inf


def test_psnr_and_ssim_match_skimage_with_explicit_range():
    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 255, (32, 30))
    noisy = clean + rng.normal(0, 10, clean.shape)
    assert psnr(noisy, clean, data_range=255) == pytest.approx(
        peak_signal_noise_ratio(clean, noisy, data_range=255)
    )
    assert ssim(noisy, clean, data_range=255) == pytest.approx(
        structural_similarity(clean, noisy, data_range=255)
    )
    colour = rng.uniform(0, 1, (20, 21, 3))
    noisy_colour = colour + rng.normal(0, 0.05, colour.shape)
    assert ssim(noisy_colour, colour, data_range=1.0) == pytest.approx(
        structural_similarity(colour, noisy_colour, data_range=1.0, channel_axis=-1)
    )
    assert ssim(clean, clean, data_range=255) == pytest.approx(1.0)


def test_image_metric_errors():
    a = np.zeros((8, 8))
    with pytest.raises(TypeError):
        psnr(a, a)  # data_range is required
    with pytest.raises(ValueError, match="data_range"):
        psnr(a + 1, a, data_range=0)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, np.zeros((8, 7)), data_range=1)
    with pytest.raises(ValueError, match="NaN"):
        ssim(a * np.nan, a, data_range=1)
    with pytest.raises(ValueError, match="7 pixels"):
        ssim(np.zeros((5, 9)), np.zeros((5, 9)), data_range=1)


def test_relative_error_by_hand():
    assert relative_error(np.array([3.0, 5.0]), np.array([3.0, 4.0])) == pytest.approx(0.2)
    # Frobenius norm over all axes: diff (1, 2, 2) -> 3, reference norm 6
    ref = np.array([[2.0, 4.0], [4.0, 0.0]])
    est = ref + np.array([[1.0, 2.0], [2.0, 0.0]])
    assert relative_error(est, ref) == pytest.approx(0.5)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.ones(3), np.zeros(3)) == math.inf


# ----------------------------------------------------------------------------------------------
# attention rows
# ----------------------------------------------------------------------------------------------


def test_row_total_variation_by_hand():
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    q = np.array([[0.25, 0.25, 0.5], [0.0, 0.0, 1.0]])
    tv = row_total_variation(p, q)
    assert tv.shape == (2,)
    np.testing.assert_allclose(tv, [0.5, 1.0])
    assert row_total_variation(p[0], q[0]) == pytest.approx(0.5)  # one 1-D row: a float
    # (m, H, W) rows: each (H, W) map is one distribution
    maps = np.zeros((2, 2, 3))
    maps[0, 0, 0] = maps[1, 1, 2] = 1.0
    other = np.full((2, 2, 3), 1 / 6)
    np.testing.assert_allclose(row_total_variation(maps, other), [5 / 6, 5 / 6])
    np.testing.assert_allclose(row_total_variation(maps, maps), [0.0, 0.0])
    with pytest.raises(ValueError, match="same shape"):
        row_total_variation(maps, other[:1])


def test_row_kl_by_hand():
    p = np.array([0.5, 0.5])
    q = np.array([0.25, 0.75])
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(0.5 / 0.75)
    assert row_kl(p, q) == pytest.approx(expected)
    # a key the approximation misses costs p log(p / eps); a key only it has costs nothing
    missed = row_kl(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), eps=1e-10)
    assert missed == pytest.approx(math.log(1e10))
    both = row_kl(np.array([[0.5, 0.5], [1.0, 0.0]]), np.array([[0.25, 0.75], [0.0, 1.0]]),
                  per_row=True)  # fmt: skip
    np.testing.assert_allclose(both, [expected, math.log(1 / KL_FLOOR)])
    assert row_kl(np.array([[0.5, 0.5], [1.0, 0.0]]), np.array([[0.25, 0.75], [0.0, 1.0]])) == (
        pytest.approx((expected + math.log(1 / KL_FLOOR)) / 2)
    )
    assert row_kl(p, p) == 0.0
    # only zeros are floored: tiny probabilities are kept, so KL(p || p) is 0 for any p
    tiny = np.array([1.0 - 2e-12, 1e-12, 1e-12])
    assert row_kl(tiny, tiny) == 0.0
    assert row_kl(tiny, np.array([1.0, 0.0, 0.0]), eps=1e-12) == pytest.approx(0.0, abs=1e-11)
    for eps in (0.0, 1.0, -1e-3):
        with pytest.raises(ValueError, match="eps"):
            row_kl(p, q, eps)
    with pytest.raises(ValueError, match="non-negative"):
        row_kl(p, np.array([1.5, -0.5]))


def test_recall_at_k_rows_by_hand():
    ref = np.array([[0.4, 0.3, 0.2, 0.1, 0.0]])
    approx = np.array([[0.1, 0.4, 0.0, 0.3, 0.2]])
    assert recall_at_k(approx, ref, 2) == pytest.approx(0.5)  # {0, 1} vs {1, 3}
    assert recall_at_k(approx, ref, 4) == pytest.approx(0.75)  # {0,1,2,3} vs {0,1,3,4}
    assert recall_at_k(ref, ref, 3) == 1.0
    # a sparse row offers only its non-zero keys; ties go to the smaller index
    sparse = np.array([[0.6, 0.4, 0.0, 0.0, 0.0]])
    tied = np.array([[0.3, 0.3, 0.2, 0.2, 0.0]])
    assert recall_at_k(sparse, tied, 3) == pytest.approx(2 / 3)  # {0, 1} vs {0, 1, 2}
    # a reference with fewer than k non-zero keys: recall over those
    assert recall_at_k(np.array([[0.5, 0, 0.5, 0]]), np.array([[0.5, 0.5, 0, 0]]), 3) == 0.5
    # (m, H, W) maps, per row
    maps = np.zeros((2, 2, 2))
    maps[0, 0, 0], maps[0, 1, 1] = 0.9, 0.1
    maps[1, 0, 1] = 1.0
    found = np.zeros((2, 2, 2))
    found[0, 0, 0] = 1.0
    found[1, 1, 0] = 1.0
    np.testing.assert_allclose(recall_at_k(found, maps, 2, per_row=True), [0.5, 0.0])
    assert recall_at_k(found, maps, 2) == pytest.approx(0.25)


def test_recall_at_k_indices_and_mixed():
    ref = np.array([[0, 1, 2], [7, 8, 9]], dtype=np.int32)
    approx = np.array([[2, 5, -1], [9, 8, 7]], dtype=np.int64)
    np.testing.assert_allclose(recall_at_k(approx, ref, 3, per_row=True), [1 / 3, 1.0])
    np.testing.assert_allclose(recall_at_k(approx, ref, 1, per_row=True), [0.0, 0.0])
    # approximate rows against exact top-k indices
    rows = np.array([[0.0, 0.2, 0.5, 0.3]])
    assert recall_at_k(rows, np.array([[2, 3]]), 2) == 1.0
    assert recall_at_k(rows, np.array([[2, 0]]), 2) == 0.5


def test_recall_at_k_empty_reference_and_errors():
    ref = np.array([[0.0, 0.0], [1.0, 0.0]])
    approx = np.array([[0.5, 0.5], [1.0, 0.0]])
    per_row = recall_at_k(approx, ref, 1, per_row=True)
    assert np.isnan(per_row[0]) and per_row[1] == 1.0
    assert recall_at_k(approx, ref, 1) == 1.0  # the empty reference row is left out
    with pytest.raises(ValueError, match="no key"):
        recall_at_k(approx, np.zeros((2, 2)), 1)
    with pytest.raises(ValueError, match="number of rows"):
        recall_at_k(approx, ref[:1], 1)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(approx, ref, 0)
    with pytest.raises(TypeError):
        recall_at_k(approx.astype(bool), ref, 1)
