"""A vectorisable ``exp(-y)`` for kernels.

Numba's ``math.exp`` becomes a call to the C library unless LLVM has a vector math library, which
the stock llvmlite wheels do not: a call per weight then dominates the NLM kernels.  ``exp_neg``
is pure arithmetic (range reduction to ``2**-n * 2**-r``, a degree-8 polynomial for ``2**-r``,
``2**-n`` built from its exponent bits), so LLVM vectorises the loops that use it.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from nlattn._jit import jit

# float32 constants keep the whole computation in float32 (8 lanes per AVX register).
_LN2 = 0.6931471805599453
_LOG2E = np.float32(1.4426950408889634)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_MAX_Z = np.float32(126.0)
# Taylor coefficients of exp(-r ln 2) = 2**-r on r in [0, 1): truncation error < 1e-7 relative.
_C1 = np.float32(-_LN2)
_C2 = np.float32(_LN2**2 / 2)
_C3 = np.float32(-(_LN2**3) / 6)
_C4 = np.float32(_LN2**4 / 24)
_C5 = np.float32(-(_LN2**5) / 120)
_C6 = np.float32(_LN2**6 / 720)
_C7 = np.float32(-(_LN2**7) / 5040)
_C8 = np.float32(_LN2**8 / 40320)


@intrinsic
def _bits_to_float32(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (no conversion)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@jit
def exp_neg(y):
    """``exp(-y)`` in float32 for float32 ``y >= 0``: relative error below 1e-6; 0 past 87."""
    z = min(max(y * _LOG2E, _ZERO), _MAX_Z)
    n = np.int32(z)
    r = z - np.float32(n)
    p = _C7 + r * _C8
    p = _C6 + r * p
    p = _C5 + r * p
    p = _C4 + r * p
    p = _C3 + r * p
    p = _C2 + r * p
    p = _C1 + r * p
    p = _ONE + r * p
    scale = _bits_to_float32(np.int32((127 - n) << 23))
    if z >= _MAX_Z:
        scale = _ZERO
    return p * scale
