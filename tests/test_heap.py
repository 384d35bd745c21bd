"""k-best heaps on flat arrays (nlattn._heap) against heapq / sorting on random streams."""

from __future__ import annotations

import heapq

import numpy as np
import pytest

from nlattn._heap import (
    heap_accepts,
    heap_contains,
    heap_push,
    heap_push_tagged,
    heap_replace_root,
    heap_sort,
)
from nlattn._jit import jit


def _empty(k):
    return np.full(k, -np.inf, np.float32), np.full(k, -1, np.int32)


@jit
def _push_all(scores, ids, stream_scores, stream_ids, inserted):
    for t in range(stream_scores.shape[0]):
        inserted[t] = heap_push(scores, ids, stream_scores[t], stream_ids[t])


@jit
def _push_all_tagged(scores, ids, tags, stream_scores, stream_ids, stream_tags):
    for t in range(stream_scores.shape[0]):
        heap_push_tagged(scores, ids, tags, stream_scores[t], stream_ids[t], stream_tags[t])


def _reference(k, stream_scores, stream_ids):
    """heapq model: keep the k best distinct ids (higher score, then smaller id, is better)."""
    heap = []  # (score, -id): heapq's minimum is the worst entry kept
    kept = set()
    inserted = []
    for score, id_ in zip(stream_scores.tolist(), stream_ids.tolist(), strict=True):
        if np.isnan(score) or score == -np.inf or id_ in kept:
            inserted.append(False)
            continue
        entry = (score, -id_)
        if len(heap) < k:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            kept.discard(-heapq.heapreplace(heap, entry)[1])
        else:
            inserted.append(False)
            continue
        kept.add(id_)
        inserted.append(True)
    best = sorted(heap, reverse=True)
    return [s for s, _ in best], [-i for _, i in best], inserted


def _stream(rng, length, n_ids, n_levels):
    """Scores are a fixed function of the id (as in PatchMatch) on few levels (ties)."""
    level_of_id = rng.integers(0, n_levels, n_ids).astype(np.float32) / 4
    ids = rng.integers(0, n_ids, length).astype(np.int32)
    return level_of_id[ids], ids


@pytest.mark.parametrize("k", [1, 2, 5, 16, 33])
@pytest.mark.parametrize(("length", "n_ids", "n_levels"), [
    (10, 1000, 1000),  # fewer pushes than k for large k: padding
    (500, 50, 1000),  # many duplicates
    (500, 1000, 3),  # many ties
    (2000, 200, 7),  # both
])
def test_push_matches_heapq(k, length, n_ids, n_levels):
    rng = np.random.default_rng(k * 1000 + length + n_levels)
    stream_scores, stream_ids = _stream(rng, length, n_ids, n_levels)
    scores, ids = _empty(k)
    inserted = np.zeros(length, np.bool_)
    _push_all(scores, ids, stream_scores, stream_ids, inserted)
    ref_scores, ref_ids, ref_inserted = _reference(k, stream_scores, stream_ids)
    np.testing.assert_array_equal(inserted, ref_inserted)
    assert len(set(ids[ids >= 0].tolist())) == int((ids >= 0).sum())  # no duplicates
    assert set(ids[ids >= 0].tolist()) == set(ref_ids)
    heap_sort(scores, ids)
    m = len(ref_ids)
    np.testing.assert_array_equal(ids[:m], ref_ids)
    np.testing.assert_array_equal(scores[:m], np.array(ref_scores, np.float32))
    assert np.all(ids[m:] == -1) and np.all(scores[m:] == -np.inf)


def test_result_does_not_depend_on_the_order_of_the_stream():
    rng = np.random.default_rng(7)
    stream_scores, stream_ids = _stream(rng, 3000, 300, 5)
    results = []
    for _ in range(3):
        order = rng.permutation(len(stream_ids))
        scores, ids = _empty(16)
        _push_all(scores, ids, stream_scores[order], stream_ids[order], np.zeros(3000, np.bool_))
        heap_sort(scores, ids)
        results.append((scores, ids))
    for scores, ids in results[1:]:
        np.testing.assert_array_equal(ids, results[0][1])
        np.testing.assert_array_equal(scores, results[0][0])


def test_sort_orders_like_lexsort():
    rng = np.random.default_rng(3)
    for k in (1, 2, 7, 16, 64):
        scores, ids = _empty(k)
        values = rng.integers(0, 5, 4 * k).astype(np.float32)
        keys = rng.permutation(10 * k)[: 4 * k].astype(np.int32)
        _push_all(scores, ids, values, keys, np.zeros(4 * k, np.bool_))
        expected = np.lexsort((ids, -scores))  # by score descending, then id ascending
        want_scores, want_ids = scores[expected], ids[expected]
        heap_sort(scores, ids)
        np.testing.assert_array_equal(scores, want_scores)
        np.testing.assert_array_equal(ids, want_ids)


def test_root_is_the_worst_entry_kept():
    rng = np.random.default_rng(4)
    scores, ids = _empty(9)
    values = rng.random(200).astype(np.float32)
    _push_all(scores, ids, values, np.arange(200, dtype=np.int32), np.zeros(200, np.bool_))
    assert scores[0] == scores.min() == np.sort(values)[-9]
    assert heap_accepts(scores, ids, np.float32(1.5), 1000)
    assert not heap_accepts(scores, ids, scores[0], ids[0] + 1)  # tie with a larger id loses
    assert heap_accepts(scores, ids, scores[0], ids[0] - 1)  # tie with a smaller id wins
    assert heap_contains(ids, ids[4]) and not heap_contains(ids, 1000)


def test_nan_and_minus_infinity_are_never_inserted():
    scores, ids = _empty(4)
    assert not heap_push(scores, ids, np.float32(np.nan), 1)
    assert not heap_push(scores, ids, np.float32(-np.inf), 2)
    assert np.all(ids == -1)
    assert heap_push(scores, ids, np.float32(-1e30), 3)
    assert not heap_push(scores, ids, np.float32(-1e30), 3)  # duplicate
    assert sorted(ids.tolist()) == [-1, -1, -1, 3]


def test_replace_root_keeps_the_heap_property():
    rng = np.random.default_rng(5)
    scores, ids = _empty(15)
    for t in range(200):
        score = np.float32(rng.random())
        if heap_accepts(scores, ids, score, t):
            heap_replace_root(scores, ids, score, t)
        for parent in range(15):
            for child in (2 * parent + 1, 2 * parent + 2):
                if child < 15:
                    assert (scores[parent], -ids[parent]) <= (scores[child], -ids[child])


def test_tags_travel_with_their_ids():
    rng = np.random.default_rng(6)
    stream_scores, stream_ids = _stream(rng, 1000, 150, 40)
    stream_tags = (stream_ids * 3 + 1).astype(np.int32)  # a function of the id
    scores, ids = _empty(12)
    tags = np.zeros(12, np.int32)
    _push_all_tagged(scores, ids, tags, stream_scores, stream_ids, stream_tags)
    np.testing.assert_array_equal(tags, ids * 3 + 1)
    ref_scores, ref_ids, _ = _reference(12, stream_scores, stream_ids)
    assert set(ids.tolist()) == set(ref_ids)
