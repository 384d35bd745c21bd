"""Small serial vector helpers shared by the factorised attention kernels (fast, efficient).

Each is jitted alone and inlined by LLVM into its callers' loops.
"""

from __future__ import annotations

from nlattn._jit import jit


@jit
def vector_sum(x, m):
    """``x[0] + ... + x[m - 1]``."""
    total = 0.0
    for t in range(m):
        total += x[t]
    return total


@jit
def vector_dot(x, y, m):
    """``x[:m] . y[:m]``."""
    total = 0.0
    for t in range(m):
        total += x[t] * y[t]
    return total


@jit
def sum_chunks(partial, out):
    """``out = sum over c of partial[c]``, in chunk order (the same at any thread count)."""
    out[:] = 0.0
    for c in range(partial.shape[0]):
        out += partial[c]
