"""The project's one Numba decorator.

Every kernel in nlattn is compiled through :func:`jit` so that the compilation options live in
one place: on-disk caching, and the fast-math flags that are safe for image kernels.  The set
leaves out ``nnan`` and ``ninf`` on purpose: with them LLVM may assume no NaN or infinity ever
occurs and delete the very checks that guard against them.
"""

from __future__ import annotations

import os
import tempfile

FASTMATH_FLAGS = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


def _ensure_cache_dir() -> None:
    """Point Numba's cache to a user directory when the package directory is read-only."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    package_dir = os.path.dirname(os.path.abspath(__file__))
    if os.access(package_dir, os.W_OK):
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.access(os.path.dirname(base) or ".", os.W_OK):
        base = tempfile.gettempdir()
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(base, "nlattn", "numba")


_ensure_cache_dir()

import numba  # noqa: E402  (the cache directory must be chosen before Numba reads its config)

if os.environ.get("NUMBA_CACHE_DIR") and not numba.config.CACHE_DIR:
    numba.config.reload_config()


def jit(func=None, *, parallel: bool = False):
    """Compile ``func`` lazily with nlattn's options (cache on, safe fast-math, nogil).

    Usable bare (``@jit``) or with ``parallel=True`` for driver kernels that own a ``prange``.
    No signatures are given, so nothing compiles at import time.
    """

    def wrap(f):
        return numba.njit(
            f, cache=True, fastmath=set(FASTMATH_FLAGS), parallel=parallel, nogil=True
        )

    if func is None:
        return wrap
    return wrap(func)


#: Every function compiled through :func:`jit`, for ``nlattn warmup``.
__all__ = ["jit", "FASTMATH_FLAGS"]
