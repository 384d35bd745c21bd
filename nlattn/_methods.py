"""The description every method registry uses (denoisers and attention methods alike)."""

from __future__ import annotations

from typing import NamedTuple


class MethodInfo(NamedTuple):
    """What a method is, what it costs and which parameters it takes."""

    name: str
    description: str
    complexity: str
    parameters: tuple[str, ...]
