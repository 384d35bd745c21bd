"""Exact softmax attention, blocked, with an online softmax (method ``"exact"``).

Definitions (the naive twins ``softmax_attention`` and ``softmax_rows`` in ``tests/naive.py``
implement exactly these): with ``n = H * W`` tokens in row-major order,

    out_i = sum_j w_ij v_j / sum_j w_ij,    w_ij = exp(s_ij - max_j s_ij),    s_ij = scale q_i.k_j

over *all* keys ``j`` (the query's own key included, like any softmax attention).

Algorithm (Milakov & Gimelshein's online normaliser, Rabe & Staats' blocking): the queries are cut
into blocks of :data:`QUERY_BLOCK`; each block is owned by one thread, which streams over the keys
in blocks of :data:`KEY_BLOCK`.  For a (query block, key block) pair the scores
``S = (scale Q) K^T`` come from one BLAS ``sgemm`` into a buffer that fits in the core's L2
cache; every query row then updates its running maximum ``m`` and running sum ``l`` (float64),
turns its scores into weights ``exp(s - m)`` in place (a vectorised float32 exponential), rescales
its float64 output accumulator by ``exp(m_old - m)`` and adds ``P V`` (a second ``sgemm``).  No
n x n array ever exists: memory is ``O(n d)`` for the inputs and output plus
``O(QUERY_BLOCK * KEY_BLOCK)`` per thread.  Block sizes are fixed, so the summation order, hence
the result, is the same at any thread count.

BLAS is called from every Numba thread at once, so its own threads must not compete with them:
:func:`single_threaded_blas` holds the BLAS libraries of the process to one thread while the
kernel runs (through ``threadpoolctl`` when it is installed, else through the libraries' own
``*_set_num_threads`` entry points; without either, the kernel is correct but slower).
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager

import numpy as np
from numba import prange

from nlattn._fastexp import _bits_to_float32, exp_neg
from nlattn._jit import jit

#: Queries per block, owned by one thread.  With :data:`KEY_BLOCK` the float32 score block is
#: 256 x 512 x 4 B = 512 KiB, half of a Zen 4/5 core's L2 cache (measured: 256-512 queries x
#: 512 keys run at 85-90 % of the BLAS rate at d = dv = 64).
QUERY_BLOCK = 256
#: Keys per block.
KEY_BLOCK = 512
#: Keys per chunk of the parallel loops of :func:`rows`.
ROW_CHUNK = 4096

_SIGN_MASK = np.int32(0x7FFFFFFF)
_INT32_MIN = np.int32(-(2**31))


# ---------------------------------------------------------------------------------------------
# BLAS threads


def _blas_controllers():
    """``(get, set)`` ctypes pairs for every BLAS library loaded in this process (Linux)."""
    import ctypes

    import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS that Numba's np.dot calls)

    try:
        with open("/proc/self/maps") as maps:
            fields = [line.split(None, 5) for line in maps]
        paths = {f[5].strip() for f in fields if len(f) == 6}
    except OSError:
        return []
    pattern = re.compile(r"(openblas|libblis|mkl_rt)[^/]*\.so", re.IGNORECASE)
    names = [
        (prefix + "openblas_get_num_threads" + suffix, prefix + "openblas_set_num_threads" + suffix)
        for prefix in ("", "scipy_")
        for suffix in ("", "64_", "_64")
    ] + [("bli_thread_get_num_threads", "bli_thread_set_num_threads"),
         ("MKL_Get_Max_Threads", "MKL_Set_Num_Threads")]
    found = []
    for path in sorted(p for p in paths if pattern.search(os.path.basename(p))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in names:
            getter = getattr(lib, get_name, None)
            setter = getattr(lib, set_name, None)
            if getter is not None and setter is not None:
                getter.restype = ctypes.c_int
                setter.argtypes = [ctypes.c_int]
                found.append((getter, setter))
                break
    return found


_CONTROLLERS: list | None = None


@contextmanager
def single_threaded_blas():
    """Hold the process's BLAS libraries to one thread inside the ``with`` block.

    Kernels that call BLAS (``np.dot``) from several Numba threads at once need this: a
    multi-threaded BLAS called from every thread oversubscribes the cores (measured: 2.5x slower
    on two cores).  The previous thread counts are restored on exit.  Other Python threads using
    BLAS meanwhile also run single-threaded.
    """
    global _CONTROLLERS
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        import scipy.linalg.cython_blas  # noqa: F401

        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    if _CONTROLLERS is None:
        _CONTROLLERS = _blas_controllers()
    previous = [getter() for getter, _ in _CONTROLLERS]
    for _, setter in _CONTROLLERS:
        setter(1)
    try:
        yield
    finally:
        for (_, setter), count in zip(_CONTROLLERS, previous, strict=True):
            setter(max(1, count))


# ---------------------------------------------------------------------------------------------
# Kernels


@jit
def _row_max(bits):
    """Largest of a float32 row given as its int32 bit patterns.

    Floats map to int32 keys in the same order (``b ^ ((b >> 31) & 0x7fffffff)``), and an
    integer max reduction vectorises where a float one does not (it would need ``nnan``).
    """
    best = _INT32_MIN
    for c in range(bits.shape[0]):
        b = bits[c]
        best = max(best, np.int32(b ^ ((b >> 31) & _SIGN_MASK)))
    return _bits_to_float32(np.int32(best ^ ((best >> 31) & _SIGN_MASK)))


@jit
def _softmax_block(scores, bits, m_run, l_run, acc):
    """Online-softmax update of a block's query rows with their scores against a key block.

    ``scores`` (rows x keys, float32, ``bits`` its int32 view) becomes the weights
    ``exp(s - m_new)``; the running maxima ``m_run``, sums ``l_run`` and the float64 output
    accumulator ``acc`` are rescaled to the new maxima (the block's ``P V`` is added later).
    """
    n_rows, n_keys = scores.shape
    dv = acc.shape[1]
    for r in range(n_rows):
        row = scores[r]
        m_old = m_run[r]
        m_new = max(m_old, np.float64(_row_max(bits[r])))
        shift = np.float32(m_new)  # exact: every maximum is a float32 score
        total = np.float32(0.0)
        for c in range(n_keys):
            p = exp_neg(shift - row[c])
            row[c] = p
            total += p
        correction = math.exp(m_old - m_new)  # 0 on the first block (m_old = -inf)
        l_run[r] = l_run[r] * correction + total
        m_run[r] = m_new
        a = acc[r]
        for c in range(dv):
            a[c] *= correction


@jit
def _add_into(acc, part):
    """``acc += part`` for (rows, dv) arrays (float64 += float32)."""
    for r in range(acc.shape[0]):
        a = acc[r]
        b = part[r]
        for c in range(a.shape[0]):
            a[c] += b[c]


@jit(parallel=True)
def _attend_blocks(q, k, v, query_block, key_block, out):
    """Blocked exact attention: ``q`` (n, d) pre-scaled, ``k`` (n, d), ``v`` (n, dv), ``out``
    (n, dv), all float32 C-contiguous.  One prange iteration per query block."""
    n, d = q.shape
    n_keys = k.shape[0]
    dv = v.shape[1]
    n_blocks = (n + query_block - 1) // query_block
    for b in prange(n_blocks):
        i0 = b * query_block
        i1 = min(n, i0 + query_block)
        rows = i1 - i0
        qb = q[i0:i1]
        acc = np.zeros((rows, dv), np.float64)
        m_run = np.full(rows, -np.inf)
        l_run = np.zeros(rows)
        buffer = np.empty(rows * key_block, np.float32)
        buffer_bits = buffer.view(np.int32)
        pv = np.empty((rows, dv), np.float32)
        for j0 in range(0, n_keys, key_block):
            j1 = min(n_keys, j0 + key_block)
            size = rows * (j1 - j0)
            scores = buffer[:size].reshape((rows, j1 - j0))
            bits = buffer_bits[:size].reshape((rows, j1 - j0))
            np.dot(qb, k[j0:j1].T, scores)
            _softmax_block(scores, bits, m_run, l_run, acc)
            np.dot(scores, v[j0:j1], pv)
            _add_into(acc, pv)
        for r in range(rows):
            inv = 1.0 / l_run[r]
            o = out[i0 + r]
            a = acc[r]
            for c in range(dv):
                o[c] = np.float32(a[c] * inv)


@jit
def _scores_chunk(qi, k, scale, j0, j1, row):
    """``row[j] = scale * qi . k[j]`` in float64 for ``j`` in ``[j0, j1)``; returns their max."""
    d = qi.shape[0]
    best = -np.inf
    for j in range(j0, j1):
        kj = k[j]
        s = 0.0
        for c in range(d):
            s += np.float64(qi[c]) * np.float64(kj[c])
        s *= scale
        row[j] = s
        best = max(best, s)
    return best


@jit(parallel=True)
def _rows_kernel(q_sel, k, scale, chunk, out):
    """Softmax rows over all keys: ``q_sel`` (m, d), ``k`` (n, d), ``out`` (m, n) float32.

    Scores and weights in float64; each row is split into chunks of ``chunk`` keys processed in
    parallel, partial maxima and sums reduced serially in chunk order (deterministic).
    """
    m = q_sel.shape[0]
    n = k.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    scores = np.empty(n, np.float64)
    chunk_max = np.empty(n_chunks, np.float64)
    chunk_sum = np.empty(n_chunks, np.float64)
    for r in range(m):
        qi = q_sel[r]
        for c in prange(n_chunks):
            chunk_max[c] = _scores_chunk(qi, k, scale, c * chunk, min(n, (c + 1) * chunk), scores)
        best = chunk_max[0]
        for c in range(n_chunks):
            best = max(best, chunk_max[c])
        for c in prange(n_chunks):
            total = 0.0
            for j in range(c * chunk, min(n, (c + 1) * chunk)):
                w = math.exp(scores[j] - best)
                scores[j] = w
                total += w
            chunk_sum[c] = total
        total = 0.0
        for c in range(n_chunks):
            total += chunk_sum[c]
        inv = 1.0 / total
        row = out[r]
        for c in prange(n_chunks):
            for j in range(c * chunk, min(n, (c + 1) * chunk)):
                row[j] = np.float32(scores[j] * inv)


# ---------------------------------------------------------------------------------------------
# Method interface (arguments already validated by nlattn.attention)


def attend(queries: np.ndarray, keys: np.ndarray, values: np.ndarray, scale: float,
           seed: int) -> np.ndarray:
    """Exact softmax attention of float32 C-contiguous ``(H, W, d)`` / ``(H, W, dv)`` arrays.

    ``seed`` is unused (the method is deterministic).  Returns ``(H, W, dv)`` float32.
    """
    height, width, d = queries.shape
    dv = values.shape[2]
    n = height * width
    q = (queries.reshape(n, d) * np.float32(scale)).astype(np.float32, copy=False)
    k = keys.reshape(n, d)
    v = values.reshape(n, dv)
    out = np.empty((n, dv), np.float32)
    with single_threaded_blas():
        _attend_blocks(q, k, v, QUERY_BLOCK, KEY_BLOCK, out)
    return out.reshape(height, width, dv)


def rows(queries: np.ndarray, keys: np.ndarray, positions: np.ndarray, scale: float,
         seed: int) -> np.ndarray:
    """Exact attention rows: for each ``(y, x)`` of ``positions`` (m, 2), the softmax of
    ``scale * q_(y, x) . k_j`` over all keys, as an ``(m, H, W)`` float32 array."""
    height, width, d = queries.shape
    n = height * width
    q_sel = np.ascontiguousarray(queries[positions[:, 0], positions[:, 1]], dtype=np.float32)
    out = np.empty((positions.shape[0], n), np.float32)
    if positions.shape[0]:
        _rows_kernel(q_sel, keys.reshape(n, d), float(scale), ROW_CHUNK, out)
    return out.reshape(-1, height, width)
