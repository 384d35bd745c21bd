"""Parameter presets of the denoisers, chosen from the noise level.

The windowed NLM table starts from the IPOL one (Buades, Coll & Morel, "Non-Local Means
Denoising", IPOL 2011, table 1), which uses the same distance as nlattn (mean squared difference
with the ``2 sigma**2`` offset) and patch-wise aggregation; h was then tuned on Set12
(``benchmarks/tune_nlm.py``, results in ``benchmarks/results/``).
"""

from __future__ import annotations

from typing import NamedTuple


class NLMPreset(NamedTuple):
    """Parameters of windowed NLM for one noise range."""

    patch_radius: int
    search_radius: int
    h_over_sigma: float


#: (upper sigma bound in 8-bit grey levels, preset); grey images.
NLM_GREY = (
    (15.0, NLMPreset(1, 10, 0.40)),
    (30.0, NLMPreset(2, 10, 0.40)),
    (45.0, NLMPreset(3, 17, 0.35)),
    (75.0, NLMPreset(4, 17, 0.35)),
    (float("inf"), NLMPreset(5, 17, 0.30)),
)

#: Colour images (joint distance over the channels).
NLM_COLOUR = (
    (25.0, NLMPreset(1, 10, 0.55)),
    (55.0, NLMPreset(2, 17, 0.40)),
    (float("inf"), NLMPreset(3, 17, 0.35)),
)


def nlm_preset(sigma_8bit: float, n_channels: int) -> NLMPreset:
    """The windowed-NLM preset for a noise level given in 8-bit grey levels."""
    table = NLM_GREY if n_channels == 1 else NLM_COLOUR
    for bound, preset in table:
        if sigma_8bit <= bound:
            return preset
    return table[-1][1]
