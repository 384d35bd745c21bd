"""Random-projection forest: the starting k-NN field of PatchMatch.

A random-projection tree splits the pixels recursively by a random hyperplane until every leaf
holds at most ``leaf_size`` of them; pixels whose vectors are alike tend to share leaves.  Each
tree of the forest starts from different random hyperplanes, and every pair of pixels that
share a leaf in some tree is scored exactly and offered to the query's heap.  This is the
initialisation of NN-descent in PyNNDescent (McInnes), after Dasgupta and Freund's RP trees:
at 512 x 512 patch vectors, ten trees of at most 64-pixel leaves find about 55 % of each
pixel's 16 nearest patches, where random keys find none, and PatchMatch then needs one or two
iterations instead of four to six.

A node's hyperplane is the perpendicular bisector of two of its pixels drawn at random, as in
PyNNDescent (a data-driven direction, which an isotropic random direction is not); a split that
would leave fewer than ``min_leaf`` pixels on one side (equal vectors, e.g. a flat region) is
replaced by cutting the node's list in half, so every leaf holds at least ``min_leaf`` pixels
and the heaps fill in the first tree.

The trees split the *query* vectors.  That helps when a query's best keys sit at pixels with
similar queries: NLM tokens (``q = [p, 1]``, where the key's norm term would swamp the
direction), ``queries is keys`` self-attention.  Otherwise the starting field is no better than
random and PatchMatch does the work, as it would from random keys.

Determinism: the random draws of a node are a hash of ``(seed, tree, node)``, each tree is built
by one thread, and leaves are scored tree by tree with each pixel in one leaf per tree; the
field does not depend on the number of threads.

References
----------
.. [1] S. Dasgupta, Y. Freund, "Random projection trees and low dimensional manifolds",
   STOC 2008.
.. [2] L. McInnes, PyNNDescent (RP-forest initialisation of NN-descent), 2018.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from nlattn._heap import heap_accepts, heap_contains, heap_replace_root_tagged
from nlattn._jit import jit
from nlattn._prefetch import prefetch_row
from nlattn._rng import randint

#: Trees of the forest when PatchMatch starts from one.
DEFAULT_N_TREES = 10

#: Pixels per leaf at most (raised to ``2 (k + 1)`` for large ``k``, so leaves fill a heap).
LEAF_SIZE = 64

_NEG_INF = np.float32(-np.inf)
# random-number rounds of the forest: the top bit set, apart from PatchMatch's rounds
_FOREST_ROUND = np.uint64(1) << np.uint64(63)


def leaf_sizes(k: int, exclude_self: bool) -> tuple[int, int]:
    """``(leaf_size, min_leaf)`` for heaps of ``k`` keys: leaves of at least ``k + 1`` pixels
    (``k`` when a pixel may match itself) fill every heap in the first tree, and at most
    ``max(LEAF_SIZE, 2 min_leaf)`` so that a split can leave ``min_leaf`` on each side."""
    min_leaf = k + 1 if exclude_self else k
    return max(LEAF_SIZE, 2 * min_leaf), min_leaf


@jit
def _build_tree(vectors, seed, tree, leaf_size, min_leaf, perm, leaf_bounds, stack, direction):
    """One tree: reorder ``perm`` so that every leaf is a contiguous range, and write the leaf
    boundaries to ``leaf_bounds`` (``leaf_bounds[l]:leaf_bounds[l + 1]`` is leaf ``l``).
    Returns the number of leaves.  ``stack``: scratch of ``2 * (n // min_leaf + 1)`` int64
    (depth first, left child first: the stack holds one pending right sibling per level, and
    a path has at most ``n // min_leaf`` splits since each leaves ``min_leaf`` pixels aside);
    ``direction``: scratch of ``d`` float64.
    """
    n, d = vectors.shape
    for i in range(n):
        perm[i] = i
    n_leaves = 0
    leaf_bounds[0] = 0
    stack[0] = 0
    stack[1] = n
    top = 1
    node = np.uint64(1)
    while top > 0:
        top -= 1
        lo = stack[2 * top]
        hi = stack[2 * top + 1]
        m = hi - lo
        if m <= leaf_size:
            n_leaves += 1
            leaf_bounds[n_leaves] = hi
            continue
        # bisector of two distinct members a, b: keep v on a's side when v.(a - b) > thr
        node += np.uint64(1)
        counter = _FOREST_ROUND | (node << np.uint64(1))
        a = perm[lo + randint(seed, tree, counter, m)]
        b_off = randint(seed, tree, counter | np.uint64(1), m - 1)
        b = perm[lo + b_off]
        if b == a:
            b = perm[hi - 1]
        thr = 0.0
        for t in range(d):
            va = np.float64(vectors[a, t])
            vb = np.float64(vectors[b, t])
            direction[t] = va - vb
            thr += 0.5 * (va * va - vb * vb)
        i0 = lo
        i1 = hi - 1
        while i0 <= i1:
            v = perm[i0]
            row = vectors[v]
            acc = 0.0
            for t in range(d):
                acc += np.float64(row[t]) * direction[t]
            if acc > thr:
                i0 += 1
            else:
                perm[i0] = perm[i1]
                perm[i1] = v
                i1 -= 1
        mid = i0
        if mid - lo < min_leaf or hi - mid < min_leaf:
            mid = lo + m // 2
        # push the right child first so that the left one is split first (leaves in order)
        stack[2 * top] = mid
        stack[2 * top + 1] = hi
        stack[2 * top + 2] = lo
        stack[2 * top + 3] = mid
        top += 2
    return n_leaves


@jit
def _score_leaf(queries, keys, members, exclude_self, scale, qbuf, kbuf_t, acc, scores, ids,
                tags):
    """Offer every pair of a leaf's ``members`` to the queries' heaps (entries tagged 0).

    ``qbuf`` (m, d), ``kbuf_t`` (d, m) and ``acc`` (m,): float64 scratch; the keys are
    transposed so that one query's scores against the whole leaf vectorise over the leaf.
    """
    m = members.shape[0]
    d = queries.shape[1]
    for a in range(m):
        for t in range(d):
            qbuf[a, t] = queries[members[a], t]
            kbuf_t[t, a] = keys[members[a], t]
    for a in range(m):
        for b in range(m):
            acc[b] = 0.0
        for t in range(d):
            q_t = qbuf[a, t]
            k_t = kbuf_t[t]
            for b in range(m):
                acc[b] += q_t * k_t[b]
        i = members[a]
        h_scores = scores[i]
        h_ids = ids[i]
        h_tags = tags[i]
        for b in range(m):
            j = members[b]
            if exclude_self and j == i:
                continue
            score = np.float32(scale * acc[b])
            if heap_accepts(h_scores, h_ids, score, j) and not heap_contains(h_ids, j):
                heap_replace_root_tagged(h_scores, h_ids, h_tags, score, j, 0)


@jit(parallel=True)
def forest_init(queries, keys, n_trees, leaf_size, min_leaf, exclude_self, scale, seed, scores,
                ids, tags):
    """Fill the heaps ``scores``/``ids``/``tags`` (``(n, k)``, tags 0) with the best keys among
    each query's leaf-mates in ``n_trees`` random-projection trees of the query vectors.

    ``min_leaf <= leaf_size // 2``; with ``min_leaf >= k + 1`` (or one leaf of all ``n``
    pixels) every heap is full after the first tree.
    """
    n, d = queries.shape
    k = ids.shape[1]
    for i in prange(n):
        for t in range(k):
            scores[i, t] = _NEG_INF
            ids[i, t] = -1
            tags[i, t] = 0
    perms = np.empty((n_trees, n), np.int32)
    bounds = np.empty((n_trees, n + 1), np.int32)
    n_leaves = np.empty(n_trees, np.int64)
    for tree in prange(n_trees):
        stack = np.empty(2 * (n // min_leaf + 1), np.int64)
        direction = np.empty(d, np.float64)
        n_leaves[tree] = _build_tree(queries, seed, tree, leaf_size, min_leaf, perms[tree],
                                     bounds[tree], stack, direction)
    for tree in range(n_trees):
        perm = perms[tree]
        bound = bounds[tree]
        for leaf in prange(n_leaves[tree]):
            lo = bound[leaf]
            hi = bound[leaf + 1]
            if leaf + 1 < n_leaves[tree]:  # start loading the next leaf's rows
                for a in range(hi, bound[leaf + 2]):
                    v = perm[a]
                    prefetch_row(queries, v)
                    prefetch_row(keys, v)
                    prefetch_row(scores, v)
                    prefetch_row(ids, v)
                    prefetch_row(tags, v)
            qbuf = np.empty((hi - lo, d), np.float64)
            kbuf_t = np.empty((d, hi - lo), np.float64)
            acc = np.empty(hi - lo, np.float64)
            _score_leaf(queries, keys, perm[lo:hi], exclude_self, scale, qbuf, kbuf_t, acc,
                        scores, ids, tags)
