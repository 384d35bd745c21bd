"""Parameter presets of the denoisers, chosen from the noise level.

The two-stage tables (``NLM2_*``, ``method="nlm2"``) were tuned on Set12 (grey) and on
scikit-image's ``chelsea`` and ``rocket`` (colour) with ``benchmarks/tune_nlm2.py``.

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


class NLM2Preset(NamedTuple):
    """Parameters of the two-stage denoiser (``method="nlm2"``) for one noise range.

    Stage 1 (the pilot) is windowed NLM with ``pilot_patch_radius``, ``pilot_search_radius``
    and ``h = pilot_h_over_sigma * sigma``.  Stage 2 (collaborative Wiener filtering) uses
    ``block x block`` blocks, references every ``step`` pixels, block matching in a window of
    ``2 search_radius + 1`` block positions on the pilot's ``n_coefs`` lowest DCT frequencies
    with threshold ``tau`` (mean squared difference in 8-bit grey levels squared), groups of up
    to ``k`` blocks, and a Kaiser window of parameter ``beta``.
    """

    pilot_patch_radius: int
    pilot_search_radius: int
    pilot_h_over_sigma: float
    block: int
    step: int
    search_radius: int
    k: int
    n_coefs: int
    tau: float
    beta: float


#: (upper sigma bound in 8-bit grey levels, preset); grey images.  Tuned on six Set12 images
#: (01, 02, 04, 05, 09, 11) with ``benchmarks/tune_nlm2.py`` (results in
#: ``benchmarks/results/tune_nlm2_sigma*.json``); the comments give the PSNR of that subset.
NLM2_GREY = (
    (7.5, NLM2Preset(1, 10, 1.00, 8, 3, 16, 16, 32, 2000.0, 2.0)),  # sigma 5: 38.38 dB
    (12.5, NLM2Preset(2, 10, 0.70, 8, 3, 16, 16, 32, 2000.0, 2.0)),  # sigma 10: 34.52 dB
    (17.5, NLM2Preset(2, 10, 0.70, 8, 3, 16, 16, 32, 2000.0, 2.0)),  # sigma 15: 32.47 dB
    (22.5, NLM2Preset(2, 10, 0.70, 8, 3, 16, 16, 32, 2000.0, 2.0)),  # sigma 20: 31.07 dB
    (30.0, NLM2Preset(2, 10, 0.70, 8, 3, 16, 16, 32, 2000.0, 2.0)),  # sigma 25: 29.97 dB
    (42.5, NLM2Preset(2, 10, 0.60, 8, 3, 16, 16, 32, 2000.0, 2.0)),  # sigma 35: 28.35 dB
    (62.5, NLM2Preset(4, 10, 0.50, 8, 3, 16, 16, 32, 2000.0, 2.0)),  # sigma 50: 26.55 dB
    (float("inf"), NLM2Preset(5, 10, 0.40, 8, 3, 16, 16, 32, 2000.0, 2.0)),  # sigma 75: 24.61 dB
)

#: Colour images (after the opponent transform; the pilot's distance is joint over the three
#: channels, so smaller patches suffice).  Tuned on scikit-image's chelsea and rocket
#: (``tune_nlm2.py --colour``); the comments give their mean PSNR.
NLM2_COLOUR = (
    (20.0, NLM2Preset(1, 10, 0.60, 8, 3, 16, 16, 32, 2000.0, 2.0)),  # sigma 15: 35.06 dB
    (float("inf"), NLM2Preset(1, 10, 0.50, 8, 3, 16, 16, 32, 2000.0, 2.0)),  # 25: 32.39, 50: 29.06
)


def nlm2_preset(sigma_8bit: float, n_channels: int) -> NLM2Preset:
    """The two-stage denoiser's preset for a noise level.

    Parameters
    ----------
    sigma_8bit : float
        Noise standard deviation in 8-bit grey levels.
    n_channels : int
        1 picks :data:`NLM2_GREY`, more :data:`NLM2_COLOUR`.

    Returns
    -------
    NLM2Preset
        The first row of the table whose bound is at least ``sigma_8bit``.
    """
    table = NLM2_GREY if n_channels == 1 else NLM2_COLOUR
    for bound, preset in table:
        if sigma_8bit <= bound:
            return preset
    return table[-1][1]
