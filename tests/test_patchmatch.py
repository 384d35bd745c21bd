"""kNN PatchMatch (nlattn.knn_patchmatch) against brute-force top-k."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import nlattn
from nlattn import KnnField, knn_patchmatch
from tests import naive


def _textured(height, width, seed=0):
    """A smooth, textured synthetic image with a little noise (no two patches alike)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    image = (np.sin(xx / 2.3 + 0.4 * np.sin(yy / 5.0)) + 0.8 * np.cos((xx + 2 * yy) / 3.1)
             + 0.5 * ((xx // 7 + yy // 6) % 2) + 0.05 * rng.standard_normal((height, width)))
    return image.astype(np.float32)


def _nlm_tokens(image, patch_radius=2):
    """Augmented NLM vectors (design section 1): q = [p, 1], k = [2p, -|p|^2]."""
    p = nlattn.extract_patches(image, patch_radius, centre=True)
    sq = (p.astype(np.float64) ** 2).sum(-1, keepdims=True).astype(np.float32)
    q = np.concatenate([p, np.ones_like(sq)], axis=-1)
    k = np.concatenate([2 * p, -sq], axis=-1)
    return q, k


def _recall(found, exact):
    found = found.reshape(-1, found.shape[-1])
    exact = exact.reshape(-1, exact.shape[-1])
    return np.mean((found[:, :, None] == exact[:, None, :]).any(-1))


def _check_field(field, queries, keys, k, scale=1.0, exclude_self=True):
    """Invariants every field satisfies: types, scores, order, no duplicates, no self."""
    height, width, d = queries.shape
    n = height * width
    assert isinstance(field, KnnField)
    assert field.indices.shape == field.scores.shape == (height, width, k)
    assert field.indices.dtype == np.int32 and field.scores.dtype == np.float32
    ids = field.indices.reshape(n, k).astype(np.int64)
    scores = field.scores.reshape(n, k)
    filled = ids >= 0
    assert np.all(ids < n)
    # padding only at the end, with -inf
    assert np.all(np.diff(filled.astype(np.int8), axis=1) <= 0)
    assert np.all(scores[~filled] == -np.inf) and np.all(np.isfinite(scores[filled]))
    # scores are scale * q . k of the returned keys
    q = queries.reshape(n, d).astype(np.float64)
    kk = keys.reshape(n, d).astype(np.float64)
    rows, cols = np.nonzero(filled)
    expected = scale * np.einsum("id,id->i", q[rows], kk[ids[rows, cols]])
    np.testing.assert_allclose(scores[rows, cols], expected, rtol=1e-5, atol=1e-5)
    # sorted best first, ties by smaller index
    s, i = scores[:, :-1], ids[:, :-1]
    s_next, i_next = scores[:, 1:], ids[:, 1:]
    both = filled[:, 1:]
    assert np.all(~both | (s > s_next) | ((s == s_next) & (i < i_next)))
    # no duplicates, no self
    for row in ids:
        real = row[row >= 0]
        assert len(np.unique(real)) == len(real)
    if exclude_self:
        assert not np.any(ids == np.arange(n)[:, None])


@pytest.mark.parametrize(("shape", "k"), [((40, 37), 16), ((23, 52), 8), ((1, 300), 6)])
def test_recall_on_patch_vectors(shape, k):
    queries, keys = _nlm_tokens(_textured(*shape, seed=shape[0]))
    field = knn_patchmatch(queries, keys, k, seed=1)
    _check_field(field, queries, keys, k)
    exact, exact_scores = naive.topk_dot(queries, keys, k)
    assert _recall(field.indices, exact) >= 0.95
    # what it returns is close to the best: its k-th score is near the exact k-th score
    spread = exact_scores[..., 0] - exact_scores[..., -1]
    gap = exact_scores[..., -1] - field.scores[..., -1]
    assert np.quantile(gap / (spread + 1e-12), 0.95) < 0.1


def test_recall_on_other_features():
    # plain dot products of smooth unit vectors, not NLM tokens, and a scale
    rng = np.random.default_rng(2)
    height, width, d = 30, 33, 8
    coarse = rng.standard_normal((height // 3 + 2, width // 3 + 2, d))
    feats = np.repeat(np.repeat(coarse, 3, 0), 3, 1)[:height, :width]
    feats = feats + 0.3 * rng.standard_normal((height, width, d))
    feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    keys = np.roll(feats, 5, axis=1) + 0.1 * rng.standard_normal(feats.shape)
    # queries and keys unrelated: random start and more iterations, as documented
    field = knn_patchmatch(feats, keys, 10, scale=2.5, exclude_self=False, n_trees=0,
                           n_iters=6)
    _check_field(field, feats.astype(np.float32), keys.astype(np.float32), 10, scale=2.5,
                 exclude_self=False)
    exact, _ = naive.topk_dot(feats.astype(np.float32), keys.astype(np.float32), 10, 2.5, False)
    assert _recall(field.indices, exact) >= 0.95
    # self-attention (queries are keys): the defaults
    field = knn_patchmatch(feats, feats, 10, scale=2.5)
    _check_field(field, feats.astype(np.float32), feats.astype(np.float32), 10, scale=2.5)
    exact, _ = naive.topk_dot(feats.astype(np.float32), feats.astype(np.float32), 10, 2.5)
    assert _recall(field.indices, exact) >= 0.95


def test_tiny_grids_are_exact_and_padded():
    # 3 x 3 grid, k larger than the 8 other keys: all of them, best first, then padding
    queries, keys = _nlm_tokens(_textured(3, 3, seed=4), patch_radius=1)
    for exclude_self, available in ((True, 8), (False, 9)):
        field = knn_patchmatch(queries, keys, 12, exclude_self=exclude_self)
        _check_field(field, queries, keys, 12, exclude_self=exclude_self)
        exact, exact_scores = naive.topk_dot(queries, keys, 12, exclude_self=exclude_self)
        np.testing.assert_array_equal(field.indices, exact)
        np.testing.assert_allclose(field.scores[..., :available], exact_scores[..., :available],
                                   rtol=1e-5, atol=1e-6)
        assert np.all(field.indices[..., available:] == -1)
        assert np.all(field.scores[..., available:] == -np.inf)
    # a single pixel: nothing to match when excluding itself
    one = np.ones((1, 1, 3), np.float32)
    field = knn_patchmatch(one, one, 2)
    assert np.all(field.indices == -1) and np.all(field.scores == -np.inf)
    field = knn_patchmatch(one, one, 2, exclude_self=False)
    assert field.indices[0, 0].tolist() == [0, -1] and field.scores[0, 0, 0] == 3.0


@pytest.mark.parametrize("shape", [(1, 9), (9, 1), (2, 5)])
def test_thin_grids_with_k_at_the_number_of_keys(shape):
    rng = np.random.default_rng(5)
    queries = rng.standard_normal((*shape, 4)).astype(np.float32)
    keys = rng.standard_normal((*shape, 4)).astype(np.float32)
    n = shape[0] * shape[1]
    field = knn_patchmatch(queries, keys, n - 1, n_iters=1)
    _check_field(field, queries, keys, n - 1)
    exact, _ = naive.topk_dot(queries, keys, n - 1)
    np.testing.assert_array_equal(field.indices, exact)


def test_self_is_the_best_match_of_nlm_tokens_when_kept():
    queries, keys = _nlm_tokens(_textured(20, 18, seed=6))
    field = knn_patchmatch(queries, keys, 4, exclude_self=False)
    own = np.arange(20 * 18).reshape(20, 18)
    np.testing.assert_array_equal(field.indices[..., 0], own)
    assert not np.any(knn_patchmatch(queries, keys, 4).indices == own[..., None])


def test_iterations_improve_the_field():
    queries, keys = _nlm_tokens(_textured(40, 37, seed=7))
    exact, _ = naive.topk_dot(queries, keys, 16)
    recalls = [_recall(knn_patchmatch(queries, keys, 16, n_iters=it, n_trees=0).indices, exact)
               for it in (0, 1, 3)]
    assert recalls[0] < 0.1 < recalls[1] < recalls[2]
    # the random initialisation is k distinct keys per pixel
    _check_field(knn_patchmatch(queries, keys, 16, n_iters=0, n_trees=0), queries, keys, 16)
    # the forest starts far ahead of random keys, and more trees start further
    forest = [_recall(knn_patchmatch(queries, keys, 16, n_iters=0, n_trees=t).indices, exact)
              for t in (1, 8)]
    assert recalls[0] + 0.1 < forest[0] < forest[1]
    _check_field(knn_patchmatch(queries, keys, 16, n_iters=0, n_trees=8), queries, keys, 16)
    one = _recall(knn_patchmatch(queries, keys, 16, n_iters=1).indices, exact)
    assert one > recalls[1]


@pytest.mark.parametrize(("n", "k", "exclude_self"), [(1000, 16, True), (300, 5, False),
                                                      (40, 16, True)])
def test_forest_start_is_the_best_of_the_leaf_mates(n, k, exclude_self):
    # the twin: exact top-k among the pixels that share a leaf with i in some tree
    from nlattn._forest import _build_tree, forest_init, leaf_sizes

    rng = np.random.default_rng(n)
    queries = rng.standard_normal((n, 6)).astype(np.float32)
    keys = rng.standard_normal((n, 6)).astype(np.float32)
    leaf_size, min_leaf = leaf_sizes(k, exclude_self)
    groups = []
    for tree in range(3):
        perm = np.empty(n, np.int32)
        bounds = np.empty(n + 1, np.int32)
        n_leaves = _build_tree(queries, 7, tree, leaf_size, min_leaf, perm, bounds,
                               np.empty(2 * (n // min_leaf + 1), np.int64),
                               np.empty(6, np.float64))
        assert sorted(perm) == list(range(n))  # a permutation, cut into leaves
        sizes = np.diff(bounds[: n_leaves + 1])
        assert bounds[0] == 0 and bounds[n_leaves] == n
        if n > leaf_size:
            assert sizes.min() >= min_leaf and sizes.max() <= leaf_size
        else:
            assert n_leaves == 1
        groups += [list(perm[lo:hi])
                   for lo, hi in zip(bounds[:n_leaves], bounds[1:n_leaves + 1], strict=True)]
    scores = np.empty((n, k), np.float32)
    ids = np.empty((n, k), np.int32)
    tags = np.empty((n, k), np.int32)
    forest_init(queries, keys, 3, leaf_size, min_leaf, exclude_self, 1.5, 7, scores, ids, tags)
    expected = naive.topk_dot_in_groups(queries, keys, groups, k, 1.5, exclude_self)
    for i in range(n):
        assert set(ids[i][ids[i] >= 0].tolist()) == expected[i]
    assert np.all(ids >= 0) and np.all(tags == 0)  # leaves of >= min_leaf pixels fill heaps
    np.testing.assert_allclose(scores, 1.5 * np.einsum("id,ikd->ik", queries, keys[ids]),
                               rtol=1e-5, atol=1e-5)


def test_scale_changes_scores_not_matches():
    queries, keys = _nlm_tokens(_textured(25, 21, seed=8))
    one = knn_patchmatch(queries, keys, 8)
    three = knn_patchmatch(queries, keys, 8, scale=3.0)
    np.testing.assert_array_equal(one.indices, three.indices)
    np.testing.assert_allclose(three.scores, 3.0 * one.scores, rtol=1e-6)


def test_deterministic_for_a_seed():
    queries, keys = _nlm_tokens(_textured(40, 37, seed=9))
    a = knn_patchmatch(queries, keys, 16, n_iters=2, seed=3)
    b = knn_patchmatch(queries, keys, 16, n_iters=2, seed=3)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.scores, b.scores)
    # two iterations converge to the exact field here whatever the seed; the starts differ
    start = knn_patchmatch(queries, keys, 16, n_iters=0, seed=3)
    other = knn_patchmatch(queries, keys, 16, n_iters=0, seed=4)
    assert not np.array_equal(start.indices, other.indices)
    for n_trees in (0, 10):
        again = knn_patchmatch(queries, keys, 16, n_iters=1, n_trees=n_trees, seed=4)
        np.testing.assert_array_equal(
            again.indices, knn_patchmatch(queries, keys, 16, n_iters=1, n_trees=n_trees,
                                          seed=4).indices)


def test_same_field_at_one_and_two_threads():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    queries, keys = _nlm_tokens(_textured(61, 45, seed=10))
    for n_iters, n_trees in ((0, 8), (1, 8), (3, 0), (3, 5)):
        one = knn_patchmatch(queries, keys, 12, n_iters=n_iters, n_trees=n_trees, n_threads=1)
        two = knn_patchmatch(queries, keys, 12, n_iters=n_iters, n_trees=n_trees, n_threads=2)
        np.testing.assert_array_equal(one.indices, two.indices)
        np.testing.assert_array_equal(one.scores, two.scores)
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS  # restored


def test_input_types_are_converted_once():
    queries, keys = _nlm_tokens(_textured(12, 14, seed=11))
    as_float32 = knn_patchmatch(queries, keys, 5)
    as_float64 = knn_patchmatch(queries.astype(np.float64), np.asfortranarray(keys), 5)
    np.testing.assert_array_equal(as_float32.indices, as_float64.indices)
    ints = np.arange(2 * 3 * 2).reshape(2, 3, 2)
    field = knn_patchmatch(ints, ints, 2)
    _check_field(field, ints.astype(np.float32), ints.astype(np.float32), 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(queries=[[[1.0]]]), TypeError, "queries must be a numpy array"),
        (dict(keys=np.zeros((4, 5), np.float32)), ValueError, r"keys must have shape \(H, W, d\)"),
        (dict(keys=np.zeros((4, 5, 2), np.float32)), ValueError, "same shape"),
        (dict(queries=np.zeros((0, 5, 3), np.float32)), ValueError, "queries must not be empty"),
        (dict(queries=np.zeros((4, 5, 3), bool)), TypeError, "queries must hold"),
        (dict(keys=np.full((4, 5, 3), np.nan, np.float32)), ValueError, "keys contains NaN"),
        (dict(keys=np.full((4, 5, 3), 1e39)), ValueError, "keys contains NaN or infinite"),
        (dict(k=0), ValueError, "k must be >= 1"),
        (dict(k=2.0), TypeError, "k must be an integer"),
        (dict(n_iters=-1), ValueError, "n_iters must be >= 0"),
        (dict(n_iters=True), TypeError, "n_iters must be an integer"),
        (dict(seed=-1), ValueError, "seed must be >= 0"),
        (dict(seed=1.5), TypeError, "seed must be an integer"),
        (dict(exclude_self=1), TypeError, "exclude_self must be a bool"),
        (dict(scale=0.0), ValueError, "scale must be > 0"),
        (dict(scale=float("inf")), ValueError, "scale must be finite"),
        (dict(scale="1"), TypeError, "scale must be a real number"),
        (dict(n_threads=0), ValueError, "n_threads must be >= 1"),
        (dict(n_trees=-1), ValueError, "n_trees must be >= 0"),
        (dict(n_trees=2.0), TypeError, "n_trees must be an integer"),
    ],
)
def test_invalid_arguments_raise(kwargs, error, match):
    grid = np.zeros((4, 5, 3), np.float32)
    arguments = {"queries": grid, "keys": grid, **kwargs}
    queries = arguments.pop("queries")
    keys = arguments.pop("keys")
    with pytest.raises(error, match=match):
        knn_patchmatch(queries, keys, **arguments)


def test_large_k_reads_capped_lists_and_keeps_its_recall():
    # k above ENRICH_MATCHES: enrichment reads random windows of the lists
    assert 48 > nlattn.patchmatch.ENRICH_MATCHES
    queries, keys = _nlm_tokens(_textured(44, 41, seed=12))
    field = knn_patchmatch(queries, keys, 48, seed=2)
    _check_field(field, queries, keys, 48)
    exact, _ = naive.topk_dot(queries, keys, 48)
    assert _recall(field.indices, exact) >= 0.95
    if numba.config.NUMBA_NUM_THREADS >= 2:
        one = knn_patchmatch(queries, keys, 48, seed=2, n_threads=1)
        np.testing.assert_array_equal(one.indices, field.indices)


def test_enrichment_cap_changes_nothing_up_to_the_cap(monkeypatch):
    queries, keys = _nlm_tokens(_textured(30, 29, seed=13))
    k = nlattn.patchmatch.ENRICH_MATCHES
    capped = knn_patchmatch(queries, keys, k, n_iters=3, n_trees=0, seed=5)
    monkeypatch.setattr(nlattn.patchmatch, "ENRICH_MATCHES", 10 * k)
    whole = knn_patchmatch(queries, keys, k, n_iters=3, n_trees=0, seed=5)
    np.testing.assert_array_equal(capped.indices, whole.indices)
    # above the cap the windows do change what is proposed
    wider = knn_patchmatch(queries, keys, 2 * k, n_iters=1, n_trees=0, seed=5)
    monkeypatch.setattr(nlattn.patchmatch, "ENRICH_MATCHES", k)
    narrower = knn_patchmatch(queries, keys, 2 * k, n_iters=1, n_trees=0, seed=5)
    assert not np.array_equal(wider.indices, narrower.indices)
