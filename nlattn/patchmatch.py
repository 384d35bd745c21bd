"""k-nearest-neighbour PatchMatch over any grid of query and key vectors.

For every query pixel ``i`` of an ``(H, W, d)`` grid, :func:`knn_patchmatch` finds the ``k`` key
pixels ``j`` with the highest scores ``scale * q_i . k_j``.  Squared Euclidean distances (NLM's
patch distances) come through augmented vectors (:func:`nlattn.nlm_tokens`): with ``q = [p, 1]`` and
``k = [2p, -|p|**2]`` the score is ``|p_i|**2 - |p_i - p_j|**2``, so the best scores are the
nearest patches.

Algorithm: PatchMatch (Barnes et al. 2009) in its k-NN form (Barnes et al. 2010), with the
neighbour-of-neighbour enrichment of NN-descent (Dong et al. 2011).

1. Initialisation: the best keys among each pixel's leaf-mates in a forest of random-projection
   trees of the query vectors (:mod:`nlattn._forest`, the start of NN-descent in PyNNDescent),
   or ``k`` distinct random keys per pixel with ``n_trees=0``.  On 512 x 512 patch vectors the
   forest finds about half of the 16 nearest patches, so one or two iterations do the work
   that four to six do from random keys.
2. Each iteration runs four sweeps over the grid: rows left to right, columns top to bottom, rows
   right to left, columns bottom to top.  A sweep is classic PatchMatch propagation along one
   axis: pixel ``i`` tries the matches of the pixel before it in the sweep, shifted by one pixel,
   so a good match travels the whole length of a row or column in one sweep.
3. The last sweep of an iteration also runs enrichment and random search, which treat the field
   as a k-NN graph and find the far-away matches that propagation cannot reach:

   - forward enrichment proposes the matches of ``i``'s matches (NN-descent);
   - reverse enrichment proposes the pixels that have ``i`` among their matches, and their
     matches (at most ``k`` such pixels, a random window of the list);
   - co-citation proposes the matches of a random pixel that shares one of ``i``'s best
     ``COCITED_MATCHES`` matches.  The first two assume that a pixel's query and key are alike
     (true of NLM tokens and of ``queries is keys``); co-citation does not, and keeps the recall
     up when queries and keys differ (attention with separate projections).  It starts in the
     second iteration: in the first, every entry is new and the other two already propose
     hundreds of candidates a pixel;
   - random search draws one key around a few of ``i``'s matches in windows of radius
     ``max(H, W) / 2**t``, ``t = 0, 1, ...``, down to 1 pixel.

   Enrichment reads at most ``ENRICH_MATCHES`` entries of any list (a random cyclic window of
   it when ``k`` is larger), as NN-descent samples at most ``max_candidates``: otherwise a
   pixel would be offered ``O(k**2)`` candidates, which dominates the time for large ``k``.

4. Every heap entry carries the pass that inserted it, and every pixel the last pass that changed
   its heap.  A propagated or enriched candidate is only proposed when an entry it comes from is
   new since the same kind of step last ran: older combinations were proposed then, and a
   rejected candidate stays rejected because a heap's worst score only rises.  Candidates already
   in the heap or already proposed to the pixel in this pass are skipped before being scored.
   This removes most of the work once the field settles, without changing the result.

Determinism: the lines of a sweep (rows or columns) are processed in parallel, each by one
thread, in a fixed order.  A sweep reads the previous pass's field as a read-only snapshot and
writes a new one; within a line, pixel ``i`` also reads the new heap of the pixel before it,
which the same thread has just written.  The reverse lists are built from the snapshot, each
list in increasing pixel order.  All randomness is a hash of ``(seed, pixel, pass,
trial)`` (:mod:`nlattn._rng`).  So the field is bit-identical at any thread count.

Performance notes: the hot loops call only small helpers that LLVM inlines.  A jitted call that
is not inlined costs 20-30 ns of reference counting when it passes arrays, more than scoring a
candidate, so candidates are gathered, scored and pushed in batches per pixel, and the scoring
loop prefetches the key vectors a few candidates ahead.  Candidates are not deduplicated
before scoring (a hash-set lookup costs more than the score); the push skips those already in
the heap.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from nlattn._forest import DEFAULT_N_TREES, forest_init, leaf_sizes
from nlattn._heap import heap_accepts, heap_contains, heap_replace_root_tagged, heap_sort
from nlattn._jit import jit
from nlattn._prefetch import prefetch_row
from nlattn._rng import randint, randint2
from nlattn._validate import check_float, check_int, check_n_threads, check_seed, numba_threads

#: Iterations run when ``n_iters`` is None.
DEFAULT_N_ITERS = 2

#: Matches per pixel that random search explores around, in the first two iterations and after.
SEARCH_MATCHES = (2, 1)

#: Matches per pixel that co-citation enrichment starts from (one co-citing pixel each).
COCITED_MATCHES = 4

#: Most entries of a list that one enrichment step reads (NN-descent's ``max_candidates``): a
#: pixel expands a random window of this many of its matches, and of each expanded pixel's
#: matches, so enrichment proposes O(min(k, cap)**2) candidates a pixel instead of O(k**2).
#: With ``k <= ENRICH_MATCHES`` every entry is read, as without a cap.
ENRICH_MATCHES = 32

#: Candidates the scoring loop prefetches ahead.
_PREFETCH_AHEAD = 32

_NEG_INF = np.float32(-np.inf)
_SHIFT = np.uint64(32)
# trial counters of the random windows into reverse lists (random search uses small ones)
_REVERSE_ROUND = np.uint64(0xFFFFFFFF)
# ... and of the windows into lists that enrichment reads when k > ENRICH_MATCHES
_FORWARD_ROUND = np.uint64(0xFFEFFFFF)
_COCITED_ROUND = np.uint64(0xFFDFFFFF)
_REVERSE_ENTRY_ROUND = np.uint64(0xFFCFFFFF)


class KnnField(NamedTuple):
    """A k-nearest-neighbour field over an ``(H, W)`` grid, sorted best first.

    Attributes
    ----------
    indices : ndarray, shape (H, W, k), int32
        Flat key index ``y * W + x`` of each match; ``-1`` in empty slots.
    scores : ndarray, shape (H, W, k), float32
        ``scale * q_i . k_j`` of each match, non-increasing along the last axis; ``-inf`` in
        empty slots.
    """

    indices: np.ndarray
    scores: np.ndarray


# --------------------------------------------------------------------------- serial helpers


@jit
def _dot(a, b):
    acc = 0.0
    for t in range(a.shape[0]):
        acc += np.float64(a[t]) * np.float64(b[t])
    return acc


@jit
def _gather(exclude_self, i, cand, buf, n):
    """Append ``cand`` to ``buf[:n]`` and return the new length, unless it is ``i`` (excluded).

    Candidates already in the heap or gathered twice are not filtered here: scoring one costs
    less than a hash-set lookup, and the push rejects them (see ``_sweep_line``)."""
    if exclude_self and cand == i:
        return n
    buf[n] = cand
    return n + 1


@jit
def _window_start(seed, i, counter, length, count):
    """First slot of a random cyclic window of ``count`` of ``length`` slots (0 when the
    window covers them all, so that no number is drawn)."""
    if count >= length:
        return 0
    return randint(seed, i, counter, length)


@jit
def _cyclic(start, e, length):
    """Slot ``e`` of the cyclic window that starts at ``start`` in ``length`` slots
    (``0 <= start, e < length``)."""
    slot = start + e
    return slot - length if slot >= length else slot


@jit
def _init_pixel(query, keys, i, exclude_self, scale, seed, scores, ids, tags):
    """``min(k, keys available)`` distinct random keys: random draws, then a scan if needed."""
    k = scores.shape[0]
    n_keys = keys.shape[0]
    for t in range(k):
        scores[t] = _NEG_INF
        ids[t] = -1
        tags[t] = 0
    wanted = min(k, n_keys - (1 if exclude_self else 0))
    found = 0
    for trial in range(2 * k):
        if found == wanted:
            break
        cand = randint(seed, i, trial, n_keys)
        if (exclude_self and cand == i) or heap_contains(ids, cand):
            continue
        score = np.float32(scale * _dot(query, keys[cand]))
        heap_replace_root_tagged(scores, ids, tags, score, cand, 0)
        found += 1
    if found < wanted:  # tiny grids: walk on from a random key until the heap is full
        cand = randint(seed, i, 2 * k, n_keys)
        while found < wanted:
            if not ((exclude_self and cand == i) or heap_contains(ids, cand)):
                score = np.float32(scale * _dot(query, keys[cand]))
                heap_replace_root_tagged(scores, ids, tags, score, cand, 0)
                found += 1
            cand += 1
            if cand == n_keys:
                cand = 0


@jit
def _sweep_line(queries, keys, height, width, line, kind, enrich, n_search, exclude_self, scale,
                seed, pass_no, fresh_prop, fresh_enrich, cocited, enrich_cap, old_scores, old_ids,
                old_tags, old_mod, new_scores, new_ids, new_tags, new_mod, rev_off, rev_ids,
                rev_tags, buf, sbuf):
    """One line (a row for kinds 0 and 2, a column for 1 and 3) of a sweep.

    Kinds: 0 rows left to right, 1 columns top to bottom, 2 rows right to left, 3 columns bottom
    to top.  ``old_*``: the read-only snapshot (``old_mod[j]``: the last pass that changed
    ``j``'s heap); ``new_*``: the field being written (this line's pixels only).  Entries tagged
    ``>= fresh_prop`` (``>= fresh_enrich``) are new since the last sweep of this kind (the last
    enrichment).  ``rev_*``: reverse lists in CSR form (used when ``enrich``).  Enrichment reads
    at most ``enrich_cap`` entries of a list: a random cyclic window of the pixel's matches
    (forward), of its reverse list, and of each expanded pixel's matches.  ``buf``, ``sbuf``:
    scratch.
    """
    k = new_scores.shape[1]
    cap = min(k, enrich_cap)
    rows = kind == 0 or kind == 2
    forward = kind == 0 or kind == 1
    line_len = width if rows else height
    oy = 0 if rows else (-1 if forward else 1)  # offset of the previous pixel of the sweep
    ox = (-1 if forward else 1) if rows else 0
    base = np.uint64(pass_no) << _SHIFT  # random-number rounds of this pass
    for step in range(line_len):
        pos = step if forward else line_len - 1 - step
        y = line if rows else pos
        x = pos if rows else line
        i = y * width + x
        scores = new_scores[i]
        ids = new_ids[i]
        tags = new_tags[i]
        src_scores = old_scores[i]
        src_ids = old_ids[i]
        src_tags = old_tags[i]
        for t in range(k):
            scores[t] = src_scores[t]
            ids[t] = src_ids[t]
            tags[t] = src_tags[t]
        new_mod[i] = old_mod[i]
        n = 0
        if enrich:  # start loading the lists that enrichment will read
            f_start = _window_start(seed, i, base | _FORWARD_ROUND, k, cap)
            for e in range(cap):
                t = _cyclic(f_start, e, k)
                j = ids[t]
                if j >= 0 and (tags[t] >= fresh_enrich or old_mod[j] >= fresh_enrich):
                    prefetch_row(old_ids, j)
                    prefetch_row(old_tags, j)
            r0 = rev_off[i]
            r_n = rev_off[i + 1] - r0
            take = min(r_n, cap)
            start = _window_start(seed, i, base | _REVERSE_ROUND, r_n, take)
            for e in range(take):
                slot = r0 + _cyclic(start, e, r_n)
                v = rev_ids[slot]
                if rev_tags[slot] >= fresh_enrich or old_mod[v] >= fresh_enrich:
                    prefetch_row(old_ids, v)
                    prefetch_row(old_tags, v)
        # propagation: the previous pixel's matches, shifted
        if step > 0:
            p = i + oy * width + ox
            p_ids = new_ids[p]
            p_tags = new_tags[p]
            for t in range(k):
                m = p_ids[t]
                if m < 0 or p_tags[t] < fresh_prop:
                    continue
                my = m // width
                cy = my - oy
                cx = m - my * width - ox
                if cy < 0 or cy >= height or cx < 0 or cx >= width:
                    continue
                n = _gather(exclude_self, i, cy * width + cx, buf, n)
        if enrich:
            # forward: the matches of my matches; co-citation: the matches of the pixels that
            # share a match with me
            for t in range(k):
                j = ids[t]
                if j < 0:
                    continue
                j_new = tags[t] >= fresh_enrich
                in_window = t - f_start if t >= f_start else t - f_start + k
                if in_window < cap and (j_new or old_mod[j] >= fresh_enrich):
                    j_ids = old_ids[j]
                    j_tags = old_tags[j]
                    u0 = _window_start(seed, i, base | (_FORWARD_ROUND - np.uint64(1 + t)), k,
                                       cap)
                    for e in range(cap):
                        u = _cyclic(u0, e, k)
                        m = j_ids[u]
                        if m < 0 or not (j_new or j_tags[u] >= fresh_enrich):
                            continue
                        n = _gather(exclude_self, i, m, buf, n)
                # co-citation from the best few matches: one random pixel v other than i that
                # also has j among its matches
                c0 = rev_off[j]
                c_n = rev_off[j + 1] - c0
                if t < k - cocited or c_n < 2:
                    continue
                slot = c0 + randint(seed, i, base | (_REVERSE_ROUND - np.uint64(1 + t)), c_n)
                if rev_ids[slot] == i:
                    slot = slot + 1 if slot + 1 < c0 + c_n else c0
                v = rev_ids[slot]
                v_new = j_new or rev_tags[slot] >= fresh_enrich
                if not (v_new or old_mod[v] >= fresh_enrich):
                    continue
                v_ids = old_ids[v]
                v_tags = old_tags[v]
                u0 = _window_start(seed, i, base | (_COCITED_ROUND - np.uint64(1 + t)), k, cap)
                for e in range(cap):
                    u = _cyclic(u0, e, k)
                    m = v_ids[u]
                    if m < 0 or not (v_new or v_tags[u] >= fresh_enrich):
                        continue
                    n = _gather(exclude_self, i, m, buf, n)
            # reverse: the pixels that have me among their matches, and their matches
            for e in range(take):
                slot = r0 + _cyclic(start, e, r_n)
                v = rev_ids[slot]
                v_new = rev_tags[slot] >= fresh_enrich
                if v_new:
                    n = _gather(exclude_self, i, v, buf, n)
                elif old_mod[v] < fresh_enrich:
                    continue
                v_ids = old_ids[v]
                v_tags = old_tags[v]
                u0 = _window_start(seed, i, base | (_REVERSE_ENTRY_ROUND - np.uint64(e)), k, cap)
                for e2 in range(cap):
                    u = _cyclic(u0, e2, k)
                    m = v_ids[u]
                    if m < 0 or not (v_new or v_tags[u] >= fresh_enrich):
                        continue
                    n = _gather(exclude_self, i, m, buf, n)
        # random search around a few matches (the heap's last slots, leaves, tend to be the
        # better ones), radius halving from the image size down to 1 pixel
        trial = 0
        for t in range(k - 1, k - 1 - min(k, n_search), -1):
            m = ids[t]
            if m < 0:
                continue
            my = m // width
            mx = m - my * width
            r = max(height, width)
            while r >= 1:
                y0 = max(0, my - r)
                y1 = min(height - 1, my + r)
                x0 = max(0, mx - r)
                x1 = min(width - 1, mx + r)
                a, b = randint2(seed, i, base | np.uint64(trial), y1 - y0 + 1, x1 - x0 + 1)
                trial += 1
                n = _gather(exclude_self, i, (y0 + a) * width + x0 + b, buf, n)
                r //= 2
        # score the batch (prefetching ahead), then push
        query = queries[i]
        for t in range(min(n, _PREFETCH_AHEAD)):
            prefetch_row(keys, buf[t])
        for t in range(n):
            if t + _PREFETCH_AHEAD < n:
                prefetch_row(keys, buf[t + _PREFETCH_AHEAD])
            sbuf[t] = np.float32(scale * _dot(query, keys[buf[t]]))
        for t in range(n):
            if heap_accepts(scores, ids, sbuf[t], buf[t]) and not heap_contains(ids, buf[t]):
                heap_replace_root_tagged(scores, ids, tags, sbuf[t], buf[t], pass_no)
                new_mod[i] = pass_no


@jit(parallel=True)
def _build_reverse(ids, tags, n_chunks, rev_off, rev_ids, rev_tags):
    """Reverse lists of the field ``ids`` in CSR form: the pixels ``i`` with ``j`` among their
    matches are ``rev_ids[rev_off[j]:rev_off[j + 1]]`` in increasing order, and ``rev_tags``
    holds the tags of those entries.

    Each of the ``n_chunks`` ranges of target pixels is filled by one thread scanning the whole
    field, so the lists do not depend on ``n_chunks``.
    """
    n, k = ids.shape
    chunk = (n + n_chunks - 1) // n_chunks
    rev_off[0] = 0
    for c in prange(n_chunks):
        lo = c * chunk
        hi = min(n, lo + chunk)
        for j in range(lo, hi):
            rev_off[j + 1] = 0
        for i in range(n):
            for t in range(k):
                j = ids[i, t]
                if lo <= j < hi:
                    rev_off[j + 1] += 1
    for j in range(n):
        rev_off[j + 1] += rev_off[j]
    for c in prange(n_chunks):
        lo = c * chunk
        hi = min(n, lo + chunk)
        fill = rev_off[lo:hi].copy()
        for i in range(n):
            for t in range(k):
                j = ids[i, t]
                if lo <= j < hi:
                    rev_ids[fill[j - lo]] = i
                    rev_tags[fill[j - lo]] = tags[i, t]
                    fill[j - lo] += 1


# --------------------------------------------------------------------------- driver


@jit(parallel=True)
def _knn_driver(queries, keys, height, width, n_iters, n_trees, leaf_size, min_leaf,
                search_early, search_late, cocited, enrich_cap, exclude_self, scale, seed,
                n_chunks, out_ids, out_scores):
    """Initialise (random keys, or a forest of ``n_trees`` random-projection trees), sweep,
    sort.  ``queries``/``keys``: ``(H * W, d)`` float32; ``out_*``: ``(H * W, k)``;
    ``n_chunks``: parallel chunks of the reverse-list build and of the sweeps (any value gives
    the same result; the number of threads is best)."""
    n, k = out_ids.shape
    ids_a = np.empty((n, k), np.int32)
    scores_a = np.empty((n, k), np.float32)
    tags_a = np.empty((n, k), np.int32)
    mod_a = np.zeros(n, np.int32)
    ids_b = np.empty((n, k), np.int32)
    scores_b = np.empty((n, k), np.float32)
    tags_b = np.empty((n, k), np.int32)
    mod_b = np.zeros(n, np.int32)
    rev_off = np.zeros(n + 1, np.int64)
    rev_ids = np.empty(n * k if n_iters > 0 else 0, np.int32)
    rev_tags = np.empty(n * k if n_iters > 0 else 0, np.int32)
    if n_trees > 0:
        forest_init(queries, keys, n_trees, leaf_size, min_leaf, exclude_self, scale, seed,
                    scores_a, ids_a, tags_a)
    else:
        for i in prange(n):
            _init_pixel(queries[i], keys, i, exclude_self, scale, seed, scores_a[i], ids_a[i],
                        tags_a[i])
    # scratch per line: candidates from propagation (k), forward enrichment (c * c, with c =
    # min(k, enrich_cap)), co-citation, reverse enrichment (c * (c + 1)) and random search
    n_radii = 1
    while (1 << n_radii) <= max(height, width):
        n_radii += 1
    c = min(k, enrich_cap)
    cap = (k + c * c + min(k, cocited) * c + c * (c + 1)
           + min(k, max(search_early, search_late)) * n_radii)
    last_of_kind = np.zeros(4, np.int64)
    last_enrich = 0
    pass_no = 0
    for it in range(n_iters):
        n_search = search_early if it < 2 else search_late
        # co-citation from the second iteration on: the first one's enrichment already offers
        # every pixel hundreds of fresh candidates
        cocited_here = cocited if it > 0 else 0
        for kind in range(4):
            pass_no += 1
            last = kind == 3
            if last:
                _build_reverse(ids_a, tags_a, n_chunks, rev_off, rev_ids, rev_tags)
            n_here = n_search if last else 0
            fresh_prop = last_of_kind[kind]
            n_lines = height if kind % 2 == 0 else width
            # lines in blocks that share scratch space; which block a line falls in does not
            # change its result
            n_blocks = min(n_lines, 4 * n_chunks)
            block = (n_lines + n_blocks - 1) // n_blocks
            for b in prange(n_blocks):
                buf = np.empty(cap, np.int32)
                sbuf = np.empty(cap, np.float32)
                for line in range(b * block, min(n_lines, (b + 1) * block)):
                    _sweep_line(queries, keys, height, width, line, kind, last, n_here,
                                exclude_self, scale, seed, pass_no, fresh_prop, last_enrich,
                                cocited_here, enrich_cap, scores_a, ids_a, tags_a, mod_a,
                                scores_b, ids_b, tags_b, mod_b, rev_off, rev_ids, rev_tags, buf,
                                sbuf)
            last_of_kind[kind] = pass_no
            if last:
                last_enrich = pass_no
            ids_a, ids_b = ids_b, ids_a
            scores_a, scores_b = scores_b, scores_a
            tags_a, tags_b = tags_b, tags_a
            mod_a, mod_b = mod_b, mod_a
    for i in prange(n):
        dst_s = out_scores[i]
        dst_i = out_ids[i]
        src_s = scores_a[i]
        src_i = ids_a[i]
        for t in range(k):
            dst_s[t] = src_s[t]
            dst_i[t] = src_i[t]
        heap_sort(dst_s, dst_i)


# --------------------------------------------------------------------------- public function


def _check_grid(name: str, array) -> np.ndarray:
    """Check an ``(H, W, d)`` grid of vectors and return it as float32, C-contiguous."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape (H, W, d), got "
                        f"{type(array).__name__}")
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape (H, W, d), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise TypeError(f"{name} must hold integers or floats, got dtype {array.dtype}")
    with np.errstate(over="ignore"):
        converted = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(converted).all():
        raise ValueError(f"{name} contains NaN or infinite values, or values too large for "
                         "float32")
    return converted


def knn_patchmatch(
    queries: np.ndarray,
    keys: np.ndarray,
    k: int = 16,
    *,
    n_iters: int | None = None,
    seed: int = 0,
    exclude_self: bool = True,
    scale: float = 1.0,
    n_trees: int | None = None,
    n_threads: int | None = None,
) -> KnnField:
    """The ``k`` best keys of every query by PatchMatch: highest ``scale * q_i . k_j``.

    Parameters
    ----------
    queries, keys : ndarray, shape (H, W, d)
        Query and key vectors on the same pixel grid (patch vectors, NLM tokens from
        :func:`nlattn.nlm_tokens`, PCA-reduced patches, a network's features...).  Integer or
        float; computed in float32.
    k : int
        Matches per query, ``>= 1``.  When fewer keys exist (``H * W``, minus one with
        ``exclude_self``) all of them are returned, best first, and the remaining slots are
        empty.
    n_iters : int, optional
        Iterations, ``>= 0`` (0: the initial field only).  None: 2, which reaches a recall@16
        of 0.98 to 0.99 against the exact top 16 on the 512 x 512 Set12 images (5 x 5 patches,
        NLM tokens) from the default forest; one iteration reaches 0.958 to 0.987.
    seed : int
        Seed of the counter-based random numbers, ``0 <= seed < 2**63``.
    exclude_self : bool
        Never match a query with the key at its own pixel (``j == i``).
    scale : float
        Positive factor of the scores; it does not change which keys are found.
    n_trees : int, optional
        Random-projection trees of the initial field, ``>= 0`` (0: ``k`` random keys per
        pixel instead).  None: 10.  The trees split the query vectors, so they help most when
        a query's best keys sit at pixels with similar queries (NLM tokens, self-attention);
        more trees give a better start at about a tenth of an iteration's time each.  When
        queries and keys are unrelated (attention with separate projections), the forest's
        start is no better than random keys and its leaf-mates lack random keys' long links:
        ``n_trees=0`` with 4 to 6 iterations finds more there.
    n_threads : int, optional
        Numba threads (None: all of them).  The result does not depend on it.

    Returns
    -------
    KnnField
        ``indices`` (H, W, k) int32 flat key indices ``y * W + x`` and ``scores`` (H, W, k)
        float32 ``scale * q_i . k_j``, best first (equal scores: smaller index first);
        ``-1`` / ``-inf`` in empty slots.

    Raises
    ------
    TypeError
        If an argument has the wrong type (a list instead of an array, ``k=2.0``,
        ``exclude_self=1``...).
    ValueError
        If an argument is out of range, the grids' shapes differ, or they hold NaN or infinity.

    Notes
    -----
    The initial field scores every pair of pixels that share a leaf (at most
    ``max(64, 2 (k + 1))`` pixels) in one of ``n_trees`` trees: ``O(n_trees n (log n + 64 d))``.
    An iteration is four propagation sweeps (rows and columns, both ways), then forward, reverse
    and co-citation enrichment and random search (see the module docstring).  Enrichment reads
    at most ``c = min(k, ENRICH_MATCHES)`` (32) entries of a list, as NN-descent caps its
    candidates, so an iteration proposes at most ``2 c**2 + (COCITED_MATCHES + 1) c + 4 k +
    SEARCH_MATCHES log2(max(H, W))`` candidates a pixel, each scored in ``O(d)`` and pushed in
    ``O(k)``: ``O(n_iters n (c**2 + k) (d + k))`` time in the worst case for ``n = H W``
    pixels, and ``O(n (k + d))`` memory (about ``40 n k`` bytes).  Candidates whose sources have
    not changed since they were last proposed are skipped, so iterations get cheaper as the
    field settles.  The cap changes no field up to ``k = 32`` (the window bookkeeping costs
    about 5 %: 2.22-2.25 s against 2.10-2.15 s at 512 x 512, ``k = 16``); beyond, it trades a
    little recall for time that grows about linearly in ``k`` instead of quadratically: on 128 x
    128 unit 5 x 5 patch vectors (2 cores), ``k = 256`` takes 1.2-1.3 s at a recall@256 of
    0.98-0.99, where reading whole lists takes 12-14 s for 0.9998-1.0 (``k = 64``: 0.43-0.45 s
    and 0.985-0.992, against 0.92-0.99 s and 0.997-0.999; ``benchmarks/scram.py``, section
    ``largek``).  On 512 x 512 patch vectors a default run scores about 1500 candidates a pixel
    in all, against ``n = 262144`` for brute force (``O(n**2 d)``), and takes about 2.5 s on 2
    cores (one iteration: 1.8 s); exact top-16 by ``faiss.IndexFlatL2`` takes 38-67 s there, by
    NumPy (BLAS products and ``argpartition``) 550-740 s.  Each sweep reads the previous field
    as a read-only snapshot and all randomness is a hash of ``(seed, pixel, pass, trial)``, so
    the same seed gives the same field at any thread count.

    References
    ----------
    .. [1] C. Barnes, E. Shechtman, A. Finkelstein, D. B. Goldman, "PatchMatch: a randomized
       correspondence algorithm for structural image editing", ACM TOG (SIGGRAPH) 28(3), 2009.
    .. [2] C. Barnes, E. Shechtman, D. B. Goldman, A. Finkelstein, "The generalized PatchMatch
       correspondence algorithm", ECCV 2010.
    .. [3] W. Dong, M. Charikar, K. Li, "Efficient k-nearest neighbor graph construction for
       generic similarity measures", WWW 2011.
    .. [4] S. Dasgupta, Y. Freund, "Random projection trees and low dimensional manifolds",
       STOC 2008.

    Examples
    --------
    NLM patch neighbours through the augmented vectors of :func:`nlattn.nlm_tokens`:

    >>> import numpy as np, nlattn
    >>> image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    >>> p = nlattn.extract_patches(image, 2, centre=True)
    >>> sq = (p ** 2).sum(-1, keepdims=True)
    >>> q = np.concatenate([p, np.ones_like(sq)], -1)
    >>> k = np.concatenate([2 * p, -sq], -1)
    >>> field = nlattn.knn_patchmatch(q, k, 8)
    >>> field.indices.shape, field.scores.dtype
    ((32, 32, 8), dtype('float32'))
    """
    queries = _check_grid("queries", queries)
    keys = _check_grid("keys", keys)
    if queries.shape != keys.shape:
        raise ValueError(
            f"queries and keys must have the same shape (H, W, d), got {queries.shape} and "
            f"{keys.shape}"
        )
    height, width, d = queries.shape
    n = height * width
    if n >= 2**31:
        raise ValueError(f"queries must have fewer than 2**31 pixels, got {n}")
    k = check_int("k", k, minimum=1)
    if n_iters is None:
        n_iters = DEFAULT_N_ITERS
    n_iters = check_int("n_iters", n_iters, minimum=0)
    seed = check_seed(seed)
    if not isinstance(exclude_self, (bool, np.bool_)):
        raise TypeError(f"exclude_self must be a bool, got {type(exclude_self).__name__}")
    scale = check_float("scale", scale, minimum=0.0, strict_minimum=True)
    if n_trees is None:
        n_trees = DEFAULT_N_TREES
    n_trees = check_int("n_trees", n_trees, minimum=0)
    n_threads = check_n_threads(n_threads)
    leaf_size, min_leaf = leaf_sizes(k, bool(exclude_self))
    out_ids = np.empty((n, k), np.int32)
    out_scores = np.empty((n, k), np.float32)
    with numba_threads(n_threads):
        _knn_driver(queries.reshape(n, d), keys.reshape(n, d), height, width, n_iters,
                    n_trees, leaf_size, min_leaf, SEARCH_MATCHES[0], SEARCH_MATCHES[1],
                    COCITED_MATCHES, ENRICH_MATCHES, bool(exclude_self), scale, seed,
                    numba.get_num_threads(), out_ids, out_scores)
    return KnnField(out_ids.reshape(height, width, k), out_scores.reshape(height, width, k))


__all__ = ["DEFAULT_N_ITERS", "KnnField", "knn_patchmatch"]
