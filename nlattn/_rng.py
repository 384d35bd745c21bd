"""Counter-based random numbers for kernels.

A draw is a pure function of three integers, ``hash(seed, index, round)``, so kernels need no
generator state: pixel ``index`` at iteration ``round`` gets the same numbers whichever thread
handles it and in whatever order, and results are bit-identical at any thread count.

The hash chains three applications of the SplitMix64 output function (Steele et al. 2014), one
per input word, so that neighbouring counters (``index`` and ``index + 1``, or ``round`` and
``round + 1``) give unrelated outputs.  It is not a cryptographic hash and need not be: it only
has to be fast, well spread, and stateless.

References
----------
.. [1] G. L. Steele, D. Lea, C. H. Flood, "Fast splittable pseudorandom number generators",
   OOPSLA 2014.
.. [2] J. K. Salmon, M. A. Moraes, R. O. Dror, D. E. Shaw, "Parallel random numbers: as easy as
   1, 2, 3", SC 2011 (counter-based generators).
.. [3] D. Lemire, "Fast random integer generation in an interval", ACM TOMACS 29(1), 2019.
"""

from __future__ import annotations

import numpy as np

from nlattn._jit import jit

# All arithmetic is on uint64 (Numba promotes int64 op uint64 to float64, so every operand is
# cast explicitly); multiplications wrap modulo 2**64 as intended.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_S11 = np.uint64(11)
_LOW32 = np.uint64(0xFFFFFFFF)
_INV_2_53 = 1.0 / 9007199254740992.0


@jit
def mix64(x):
    """SplitMix64 output function of ``x + golden``: a bijection of uint64 with full avalanche."""
    z = np.uint64(x) + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@jit
def hash3(seed, index, round):
    """64 well-mixed bits from the counters ``(seed, index, round)`` (integers, taken mod 2**64)."""
    h = mix64(np.uint64(seed))
    h = mix64(h ^ np.uint64(index))
    return mix64(h ^ np.uint64(round))


@jit
def uniform(seed, index, round):
    """A float64 uniform on ``[0, 1)`` (53 random bits) from the counters."""
    return np.float64(hash3(seed, index, round) >> _S11) * _INV_2_53


@jit
def bounded(bits32, n):
    """Map 32 random bits (held in a uint64 below 2**32) to ``[0, n)``, ``1 <= n <= 2**32``.

    Lemire's multiply-shift: ``(bits * n) >> 32``, exact bounds, bias below ``n / 2**32``.
    """
    return np.int64((bits32 * np.uint64(n)) >> _S32)


@jit
def randint(seed, index, round, n):
    """An integer uniform on ``[0, n)`` from the counters; ``1 <= n <= 2**32``."""
    return bounded(hash3(seed, index, round) >> _S32, n)


@jit
def randint2(seed, index, round, n_hi, n_lo):
    """Two integers, uniform on ``[0, n_hi)`` and ``[0, n_lo)``, from one hash (its two halves)."""
    h = hash3(seed, index, round)
    return bounded(h >> _S32, n_hi), bounded(h & _LOW32, n_lo)


__all__ = ["bounded", "hash3", "mix64", "randint", "randint2", "uniform"]
