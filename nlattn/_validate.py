"""Argument checks shared by the public functions.

Every check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, wrong value)
with a message that names the argument and the valid range.  Nothing here coerces silently:
``3.0`` is not accepted where an integer is expected, and ``True`` is not an integer.
"""

from __future__ import annotations

import numbers
from contextlib import contextmanager

import numpy as np


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as a Python int after checking its type and range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(
    name: str,
    value,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
) -> float:
    """Return ``value`` as a finite Python float after checking its type and range.

    ``strict_minimum`` makes the lower bound exclusive (``value > minimum``).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None:
        if strict_minimum and value <= minimum:
            raise ValueError(f"{name} must be > {minimum}, got {value}")
        if not strict_minimum and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_choice(name: str, value, choices) -> str:
    """Check that ``value`` is one of ``choices`` (strings)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {sorted(choices)}, got {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_image(name: str, image, *, allow_3d_channels: bool = True) -> np.ndarray:
    """Check an image array: 2-D ``(H, W)`` or 3-D ``(H, W, C)``, real numbers, finite, not empty.

    Returns the array itself (``np.asarray``); conversion is the caller's business.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim not in ((2, 3) if allow_3d_channels else (2,)):
        raise ValueError(f"{name} must have shape (H, W) or (H, W, C), got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {image.shape}")
    if image.dtype == np.bool_ or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise TypeError(f"{name} must hold integers or floats, got dtype {image.dtype}")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return image


def check_n_threads(n_threads) -> int | None:
    """Check ``n_threads`` (None: all of Numba's threads)."""
    if n_threads is None:
        return None
    import numba

    return check_int("n_threads", n_threads, minimum=1, maximum=numba.config.NUMBA_NUM_THREADS)


def check_seed(seed) -> int:
    """Check a random seed: a non-negative integer below 2**63."""
    return check_int("seed", seed, minimum=0, maximum=2**63 - 1)


@contextmanager
def numba_threads(n_threads: int | None):
    """Run the body with Numba's thread count set to ``n_threads`` (None: unchanged)."""
    if n_threads is None:
        yield
        return
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        yield
    finally:
        numba.set_num_threads(previous)
