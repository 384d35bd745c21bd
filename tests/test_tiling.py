"""Tiled NLM (nlattn.tiling): bit-identical to the untiled denoiser, bounded memory, refusals."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import nlattn
from nlattn import tiling


def _image(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    clean = 120 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + 40 * ((xx // 13 + yy // 17) % 2)
    if len(shape) == 3:
        clean = np.stack([clean * (0.6 + 0.2 * c) for c in range(shape[2])], axis=-1)
    noisy = clean + rng.normal(0, 20, shape)
    if np.issubdtype(dtype, np.integer):
        return np.clip(np.rint(noisy), 0, 255).astype(dtype)
    return noisy.astype(dtype)


# (shape, dtype, aggregation, patch_radius, search_radius, max_memory): float images show any
# difference in the last bit; the budgets force column bands, and row cuts as well
CASES = [
    ((61, 47), np.float32, "patch", 2, 3, 1 << 16),  # odd sizes, bands
    ((61, 47), np.float32, "pixel", 2, 3, 1 << 16),
    ((250, 61), np.float32, "patch", 2, 3, 180_000),  # row cuts and bands
    ((250, 61), np.float32, "pixel", 2, 3, 150_000),
    ((97, 53, 3), np.float32, "patch", 1, 4, 200_000),  # colour
    ((97, 53, 3), np.float64, "pixel", 1, 4, 150_000),
    ((133, 71), np.uint8, "patch", 3, 2, 200_000),  # integers; patch wider than the window
    ((77, 40, 3), np.uint16, "patch", 2, 5, 250_000),
]


@pytest.mark.parametrize(("shape", "dtype", "aggregation", "f", "s", "max_memory"), CASES)
def test_tiled_equals_untiled(shape, dtype, aggregation, f, s, max_memory):
    image = _image(shape, dtype)
    # even one tile at a time with the whole budget needs several tiles
    plan = tiling.plan_tiles(shape, image.dtype.itemsize, f, s, aggregation, max_memory, 1)
    assert len(plan) > 2
    kwargs = dict(sigma=20.0, h=12.0, patch_radius=f, search_radius=s, aggregation=aggregation)
    expected = nlattn.nl_means(image, "nlm", **kwargs)
    got = tiling.nl_means_tiled(image, max_memory=max_memory, **kwargs)
    assert got.dtype == image.dtype and got.shape == image.shape
    assert np.array_equal(got, expected)


def test_row_cuts_are_exercised():
    plan = tiling.plan_tiles((250, 61), 4, 2, 3, "patch", 180_000, 1)
    assert len({tile.out_rows for tile in plan}) > 1
    plan = tiling.plan_tiles((250, 61), 4, 2, 3, "pixel", 150_000, 1)
    assert len({tile.out_rows for tile in plan}) > 1


@pytest.mark.parametrize(("aggregation", "max_memory"), [("patch", 500_000), ("pixel", 500_000)])
def test_tiled_equals_untiled_tall_image(aggregation, max_memory):
    # over 1024 rows: the kernel's patch-wise strips are 128 rows tall, and tiles that cut the
    # rows start on multiples of them and keep at least 1024 rows
    image = _image((2600, 24), np.float32, seed=3)
    kwargs = dict(sigma=20.0, h=10.0, patch_radius=1, search_radius=2, aggregation=aggregation)
    plan = tiling.plan_tiles(image.shape, 4, 1, 2, aggregation, max_memory, 1)
    assert len({tile.out_rows for tile in plan}) > 2
    got = tiling.nl_means_tiled(image, max_memory=max_memory, **kwargs)
    assert np.array_equal(got, nlattn.nl_means(image, "nlm", **kwargs))


def test_defaults_and_sigma_estimated_once():
    # sigma=None: one estimate for the whole image (streamed here), then the preset
    image = _image((120, 90), np.float32, seed=1)
    got = tiling.nl_means_tiled(image, max_memory=400_000)
    assert np.array_equal(got, nlattn.nl_means(image, "nlm"))
    colour = _image((70, 50, 3), np.uint8, seed=2)
    got = tiling.nl_means_tiled(colour, max_memory=400_000, aggregation="pixel")
    assert np.array_equal(got, nlattn.nl_means(colour, "nlm", aggregation="pixel"))


def test_thread_counts_agree():
    image = _image((90, 70), np.float32, seed=4)
    kwargs = dict(sigma=20.0, patch_radius=2, search_radius=3, max_memory=150_000)
    one = tiling.nl_means_tiled(image, n_threads=1, **kwargs)
    all_threads = tiling.nl_means_tiled(image, n_threads=numba.config.NUMBA_NUM_THREADS,
                                        **kwargs)
    assert np.array_equal(one, all_threads)


def test_out_memmap(tmp_path):
    image = _image((80, 64), np.uint8)
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.uint8,
                                    shape=image.shape)
    result = tiling.nl_means_tiled(image, max_memory=300_000, sigma=20.0, out=out)
    assert result is out
    out.flush()
    assert np.array_equal(np.load(tmp_path / "out.npy"), nlattn.nl_means(image, "nlm", sigma=20.0))


def test_sigma_zero_returns_the_image():
    image = _image((30, 20), np.uint8)
    got = tiling.nl_means_tiled(image, sigma=0.0, max_memory=300_000)
    assert np.array_equal(got, image) and got is not image


def test_plan_covers_the_image_once():
    shape = (250, 170)
    for aggregation in ("patch", "pixel"):
        plan = tiling.plan_tiles(shape, 1, 2, 4, aggregation, 150_000, 1)
        cover = np.zeros(shape, np.int32)
        halo = tiling.nlm_halo(2, 4, aggregation)
        for tile in plan:
            (r0, r1), (c0, c1) = tile.rows, tile.cols
            (y0, y1), (x0, x1) = tile.out_rows, tile.out_cols
            assert 0 <= r0 <= y0 < y1 <= r1 <= shape[0]
            assert 0 <= c0 <= x0 < x1 <= c1 <= shape[1]
            assert x0 - c0 == min(halo, x0) and c1 - x1 == min(halo, shape[1] - x1)
            assert tiling.nlm_tile_bytes(r1 - r0, c1 - c0, 1, 1, 2, 4, aggregation, 1) <= 150_000
            cover[y0:y1, x0:x1] += 1
        assert (cover == 1).all()


def test_budget_too_small():
    image = _image((60, 60), np.uint8)
    with pytest.raises(ValueError, match="max_memory=.*too small.*smallest tile"):
        tiling.nl_means_tiled(image, sigma=20.0, patch_radius=6, search_radius=20,
                              max_memory=1 << 16)


@pytest.mark.parametrize("method", ["scram"])
def test_global_methods_refuse_clearly(method):
    image = _image((200, 200), np.uint8)
    with pytest.raises(ValueError, match=rf"method '{method}' cannot be cut into tiles without "
                                         r"changing its result \(it is global: .*more than "
                                         r"max_memory"):
        tiling.nl_means_tiled(image, method, sigma=20.0, max_memory=1 << 20)


def test_global_method_runs_untiled_when_it_fits():
    image = _image((20, 18), np.uint8)
    kwargs = dict(sigma=20.0, h=10.0, patch_radius=1)
    got = tiling.nl_means_tiled(image, "scram", max_memory=1 << 26, **kwargs)
    assert np.array_equal(got, nlattn.nl_means(image, "scram", **kwargs))


def test_invalid_arguments():
    image = _image((20, 20), np.uint8)
    with pytest.raises(TypeError, match="max_memory"):
        tiling.nl_means_tiled(image, max_memory=1.5e9)
    with pytest.raises(ValueError, match="max_memory must be >="):
        tiling.nl_means_tiled(image, max_memory=1000)
    with pytest.raises(ValueError, match="method must be one of"):
        tiling.nl_means_tiled(image, "bogus")
    with pytest.raises(TypeError, match="'window' is not a parameter"):
        tiling.nl_means_tiled(image, sigma=5.0, window=3)
    with pytest.raises(ValueError, match="k is not a parameter of method 'nlm'"):
        tiling.nl_means_tiled(image, sigma=5.0, k=3)
    with pytest.raises(ValueError, match="h must be > 0"):
        tiling.nl_means_tiled(image, sigma=5.0, h=0.0)
    with pytest.raises(ValueError, match="out must have the image's shape"):
        tiling.nl_means_tiled(image, sigma=5.0, out=np.empty((20, 21), np.uint8))
    with pytest.raises(TypeError, match="force must be a bool"):
        tiling.nl_means_tiled(image, sigma=5.0, force=1)


def test_default_max_memory():
    budget = tiling.default_max_memory()
    assert isinstance(budget, int) and budget >= tiling.MIN_MEMORY
    available = tiling.available_memory()
    if available is not None:
        assert budget <= max(available, tiling.MIN_MEMORY)


def test_sigma_of_the_whole_image_when_it_fits():
    image = _image((90, 70, 3), np.float64, seed=5)
    assert tiling.estimate_sigma_bounded(image, 1 << 20) == nlattn.estimate_sigma(image)


def test_sigma_from_crops_when_the_image_does_not_fit():
    # a budget below 8 bytes a pixel: the median of the estimates on a 3 x 3 grid of crops
    image = _image((400, 300), np.uint8, seed=6)
    budget = 8 * 120 * 120
    crops = [image[y : y + 120, x : x + 120] for y in (0, 140, 280) for x in (0, 90, 180)]
    expected = float(np.median([nlattn.estimate_sigma(c) for c in crops]))
    assert tiling.estimate_sigma_bounded(image, budget) == expected
    assert 15.0 < expected < 25.0  # the noise added is 20


def test_check_feasible():
    # 64^2 tokens: instant; 4096^2 tokens: weeks
    assert tiling.check_feasible("exact", 64 * 64) < 1.0
    with pytest.raises(ValueError, match=r"'exact' on 16777216 pixels .* would take about "
                                         r"[\d.]+ (days|hours).*force"):
        tiling.check_feasible("exact", 4096 * 4096)
    seconds = tiling.check_feasible("exact", 4096 * 4096, force=True)
    assert seconds > tiling.MAX_FEASIBLE_SECONDS
    assert tiling.check_feasible("nlm", 10**12) is None
    assert tiling.check_feasible("scram", 10**12) is None
    with pytest.raises(ValueError, match="method must be one of"):
        tiling.check_feasible("bogus", 10)
    with pytest.raises(TypeError, match="n_pixels"):
        tiling.check_feasible("exact", 10.0)


def test_attention_operators_refused_through_nl_means_tiled():
    image = np.zeros((2048, 2048), np.uint8)
    with pytest.raises(ValueError, match="'exact' is an attention operator, not a denoiser"):
        tiling.nl_means_tiled(image, "exact", sigma=10.0, max_memory=1 << 40)
