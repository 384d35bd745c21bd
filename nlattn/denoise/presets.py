"""Parameter presets of the denoisers, chosen from the noise level.

The windowed NLM tables start from the IPOL one (Buades, Coll & Morel, "Non-Local Means
Denoising", IPOL 2011, table 1), which uses the same distance as nlattn (mean squared difference
with the ``2 sigma**2`` offset) and patch-wise aggregation.  For grey images the patch size, search
window and h were then tuned on Set12 (``benchmarks/tune_nlm.py``, results in
``benchmarks/results/tune_nlm_*.json``); the colour table is IPOL's.
"""

from __future__ import annotations

from typing import NamedTuple


class NLMPreset(NamedTuple):
    """Parameters of windowed NLM for one noise range."""

    patch_radius: int
    search_radius: int
    h_over_sigma: float


#: (upper sigma bound in 8-bit grey levels, preset); grey images.  Each row is the best of the
#: Set12 sweep at the sigma in the comment (average PSNR, patch-wise aggregation); the bounds sit
#: between the tuned sigmas.  Small search windows win: a wider one finds more look-alike noise.
NLM_GREY = (
    (7.5, NLMPreset(1, 7, 0.50)),  # sigma 5: 37.31 dB
    (17.5, NLMPreset(2, 7, 0.60)),  # sigma 10: 33.66 dB, sigma 15: 31.70 dB
    (22.5, NLMPreset(3, 7, 0.55)),  # sigma 20: 30.28 dB
    (30.0, NLMPreset(4, 7, 0.50)),  # sigma 25: 29.18 dB
    (42.5, NLMPreset(4, 7, 0.45)),  # sigma 35: 27.48 dB
    (62.5, NLMPreset(5, 7, 0.40)),  # sigma 50: 25.67 dB
    (float("inf"), NLMPreset(6, 7, 0.35)),  # sigma 75: 23.61 dB
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
