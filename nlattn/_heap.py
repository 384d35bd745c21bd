"""Fixed-size k-best heaps on flat arrays, for kernels.

A heap is two arrays of length ``k``: ``scores`` (float32, ``-inf`` marks an empty slot) and
``ids`` (int32, ``-1`` marks an empty slot), optionally a third ``tags`` array (int32) whose
entries travel with their ids (PatchMatch stores there when an entry was inserted).  It is a
binary *min*-heap on quality, so its root ``[0]`` is the worst entry kept and a candidate only
needs one comparison to be rejected.  Quality is a total order: a higher score is better, and
on equal scores the smaller id is better, so the heap always ends up holding the ``k`` best
distinct ids of the stream, whatever the order they came in.

Ids are non-negative.  Candidates whose score is ``-inf`` or NaN are never inserted (so empty
slots are always the worst entries), and an id already present is never inserted twice.

A new heap is ``scores[:] = -inf; ids[:] = -1``.  :func:`heap_sort` turns a heap into a list
sorted best first (empty slots last), after which it is no longer a heap.

Every function here is a *leaf*: it calls no other jitted function with array arguments (only
the scalar comparison :func:`_worse`).  A jitted call that passes arrays on to another jitted
call is not inlined by LLVM and costs some 20-30 ns in reference counting, more than the push
itself, so the sift and the duplicate scan are written out in each push function.

Notes
-----
Push: O(1) to reject a candidate that does not beat the root, O(k) for the duplicate scan
(branch-free, vectorised) and O(log k) for the sift.  Sort: O(k log k).
"""

from __future__ import annotations

from nlattn._jit import jit


@jit
def _worse(score_a, id_a, score_b, id_b):
    """Whether entry a ranks below entry b (lower score, or same score and larger id)."""
    return score_a < score_b or (score_a == score_b and id_a > id_b)


@jit
def heap_accepts(scores, ids, score, id):
    """Whether a candidate beats the root (is better than the worst entry kept).

    False for a NaN or ``-inf`` score.  Does not look for duplicates.
    """
    return score > scores[0] or (score == scores[0] and id < ids[0])


@jit
def heap_contains(ids, id):
    """Whether ``id`` is in the heap (a full scan without early exit, which LLVM vectorises)."""
    found = False
    for t in range(ids.shape[0]):
        found |= ids[t] == id
    return found


@jit
def heap_replace_root(scores, ids, score, id):
    """Replace the root by ``(score, id)`` and sift it down.  No checks: see :func:`heap_push`."""
    k = scores.shape[0]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        right = child + 1
        if right < k and _worse(scores[right], ids[right], scores[child], ids[child]):
            child = right
        if _worse(scores[child], ids[child], score, id):
            scores[pos] = scores[child]
            ids[pos] = ids[child]
            pos = child
        else:
            break
    scores[pos] = score
    ids[pos] = id


@jit
def heap_replace_root_tagged(scores, ids, tags, score, id, tag):
    """:func:`heap_replace_root` with a ``tags`` array whose entries move with their ids."""
    k = scores.shape[0]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        right = child + 1
        if right < k and _worse(scores[right], ids[right], scores[child], ids[child]):
            child = right
        if _worse(scores[child], ids[child], score, id):
            scores[pos] = scores[child]
            ids[pos] = ids[child]
            tags[pos] = tags[child]
            pos = child
        else:
            break
    scores[pos] = score
    ids[pos] = id
    tags[pos] = tag


@jit
def heap_push(scores, ids, score, id):
    """Offer ``(score, id)`` to the heap; returns whether it was inserted.

    It is inserted when it beats the worst entry kept (the root, which it then replaces) and
    ``id`` is not already in the heap.
    """
    if not heap_accepts(scores, ids, score, id) or heap_contains(ids, id):
        return False
    heap_replace_root(scores, ids, score, id)
    return True


@jit
def heap_push_tagged(scores, ids, tags, score, id, tag):
    """:func:`heap_push` with a ``tags`` array; the inserted entry gets ``tag``."""
    if not heap_accepts(scores, ids, score, id) or heap_contains(ids, id):
        return False
    heap_replace_root_tagged(scores, ids, tags, score, id, tag)
    return True


@jit
def heap_sort(scores, ids):
    """Sort a heap in place, best first (highest score, then smallest id); empty slots last."""
    k = scores.shape[0]
    for end in range(k - 1, 0, -1):
        # the root (worst of [0, end]) goes to the end; the old last entry sifts down in [0, end)
        score = scores[end]
        id = ids[end]
        scores[end] = scores[0]
        ids[end] = ids[0]
        pos = 0
        while True:
            child = 2 * pos + 1
            if child >= end:
                break
            right = child + 1
            if right < end and _worse(scores[right], ids[right], scores[child], ids[child]):
                child = right
            if _worse(scores[child], ids[child], score, id):
                scores[pos] = scores[child]
                ids[pos] = ids[child]
                pos = child
            else:
                break
        scores[pos] = score
        ids[pos] = id


__all__ = [
    "heap_accepts",
    "heap_contains",
    "heap_push",
    "heap_push_tagged",
    "heap_replace_root",
    "heap_replace_root_tagged",
    "heap_sort",
]
