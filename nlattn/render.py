"""Pictures of attention maps: a query pixel's attention row as a heatmap over its image.

Arrays in, figures and arrays out; no file I/O (write :func:`figure_to_array`'s pixels with
:func:`nlattn.write_image`, which is atomic).  Figures are built with Matplotlib's object API on
the Agg canvas (``matplotlib.figure.Figure``, never ``pyplot``): no GUI backend, no global figure
state, safe in worker processes.

How a row is shown
------------------
Attention rows are very peaked (a softmax over n keys; NLM weights fall as
``exp(-d**2 / h**2)``), so each panel divides its row by the row's own maximum and draws
``weight / max`` through one of three scalings (:data:`SCALINGS`):

* ``"log"`` (default): a logarithmic colour scale over ``decades`` decades below the maximum
  (values further down get the lowest colour).  For NLM tokens ``log(w)`` is linear in the
  patch distance, so the map reads as "how similar is each patch to the query's".
* ``"power"``: ``(weight / max) ** gamma`` (gamma < 1 lifts the small weights).
* ``"linear"``: ``weight / max``; shows where the mass is, usually a few pixels.

Keys outside a sparse method's support (weight exactly 0) get the lowest colour too, so sparse
and dense maps are drawn alike; each panel's caption gives the support size (non-zero keys) and
the row's maximum.  The heatmap is laid over the (grey) image with opacity ``alpha``.  Rows on a
coarser grid than the image (features of a vision transformer, say) are stretched over the whole
image, each token a block (``upsample="nearest"``) or smoothly (``"bilinear"``).  A grid with
more cells than the panel has pixels is max-pooled for display (each displayed cell shows the
largest ``weight / max`` it covers), so that isolated keys of very peaked or sparse rows do not
vanish in the downsampling.

A panel's shape follows the image's up to a ratio of :data:`MAX_PANEL_ASPECT` between its
sides; a taller or wider image is stretched to the panel (non-square pixels) rather than drawn
as a sliver, so the figure's size is bounded whatever the image's shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from nlattn._validate import check_choice, check_float, check_image, check_int

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from nlattn.maps import MapsResult

__all__ = [
    "MAX_PANEL_ASPECT",
    "SCALINGS",
    "attention_figure",
    "display_image",
    "figure_to_array",
    "render_maps",
]

#: The ways a row can be mapped to colours (see the module docstring).
SCALINGS = ("log", "power", "linear")

#: Interpolations of a row grid coarser than the image.
UPSAMPLINGS = ("nearest", "bilinear")

#: Colour of the query marker (stands out against the perceptual colormaps and grey images).
MARKER_COLOUR = "#00e5ff"

#: Largest ratio of a panel's long side to its short side.  A panel is ``panel_inches`` wide
#: and ``panel_inches * H / W`` high, that ratio clipped to ``[1 / MAX_PANEL_ASPECT,
#: MAX_PANEL_ASPECT]``; an image beyond it (a 3000 x 1 strip) is stretched to fill its panel.
MAX_PANEL_ASPECT = 3.0


def display_image(image: np.ndarray, *, grey: bool = True) -> np.ndarray:
    """An image as float values in [0, 1] for display.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Any integer or float image.  Integer images are divided by their dtype's maximum (8- and
        16-bit alike); float images are stretched from their minimum to their maximum.
    grey : bool
        Convert colour images to grey (Rec. 601 luma), so that the heatmap's colours are not
        confused with the image's.

    Returns
    -------
    ndarray, shape (H, W) or (H, W, 3), float64 in [0, 1]
        Grey or RGB; one channel becomes (H, W), two or four channels lose the last (alpha).

    Notes
    -----
    O(n).
    """
    image = check_image("image", image)
    data = image.astype(np.float64)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        data = (data - min(info.min, 0)) / (info.max - min(info.min, 0))
    else:
        lo, hi = float(data.min()), float(data.max())
        data = (data - lo) / (hi - lo) if hi > lo else np.zeros_like(data)
    if data.ndim == 3:
        channels = data.shape[2]
        if channels in (2, 4):
            data = data[:, :, : channels - 1]
        if data.shape[2] == 1:
            data = data[:, :, 0]
        elif grey:
            data = data[:, :, :3] @ np.array([0.299, 0.587, 0.114])
        else:
            data = data[:, :, :3]
    return np.clip(data, 0.0, 1.0)


def _norm(scaling: str, gamma: float, decades: float):
    from matplotlib import colors

    if scaling == "log":
        return colors.LogNorm(vmin=10.0**-decades, vmax=1.0, clip=False)
    if scaling == "power":
        return colors.PowerNorm(gamma=gamma, vmin=0.0, vmax=1.0)
    return colors.Normalize(vmin=0.0, vmax=1.0)


def _format_number(value: float) -> str:
    """Compact text of a metric value (3 significant digits)."""
    if not np.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.2e}"


def attention_figure(
    image: np.ndarray,
    rows: np.ndarray,
    positions: np.ndarray,
    method_names: Sequence[str],
    *,
    errors: Mapping[str, np.ndarray] | None = None,
    reference: str | None = "exact",
    colormap: str = "magma",
    alpha: float = 0.6,
    scaling: str = "log",
    decades: float = 3.0,
    gamma: float = 0.5,
    upsample: str = "nearest",
    title: str | None = None,
    grey: bool = True,
    panel_inches: float = 3.0,
    dpi: int = 100,
) -> Figure:
    """A grid of attention maps: one row of panels per query, one column per method.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        The image the maps are drawn on (any dtype; see :func:`display_image`).
    rows : ndarray, shape (m, n_methods, Hf, Wf) or (m, Hf, Wf)
        Attention rows (non-negative, finite; normally summing to 1) on the token grid, which
        is the image's pixel grid or a coarser one stretched over the whole image.  A 3-D array
        is one method.
    positions : array_like of int, shape (m, 2)
        The query pixels ``(y, x)`` in image coordinates, one per row of panels.
    method_names : sequence of str
        Column titles, ``n_methods`` of them.
    errors : mapping of str to ndarray (m, n_methods), optional
        Metrics printed under each method's name, e.g. ``{"TV": tv, "R@16": recall}``, in the
        mapping's order; NaN entries are left out.
    reference : str, optional
        The method whose panels are captioned "reference" instead of their errors (None: none).
    colormap : str
        A Matplotlib colormap name (a perceptual one: magma, inferno, viridis, cividis...).
    alpha : float
        Opacity of the heatmap over the image, in [0, 1].
    scaling : {"log", "power", "linear"}
        Colour scale of ``weight / max`` (module docstring).
    decades : float
        Range of the ``"log"`` scale below the maximum, in decades (> 0).
    gamma : float
        Exponent of the ``"power"`` scale (> 0).
    upsample : {"nearest", "bilinear"}
        How a token grid coarser than the image is stretched over it.
    title : str, optional
        Figure title (e.g. the features and temperature the maps were computed with).
    grey : bool
        Draw colour images in grey (see :func:`display_image`).
    panel_inches : float
        Width of one panel in inches; its height follows the image's aspect ratio, between
        ``panel_inches / MAX_PANEL_ASPECT`` and ``panel_inches * MAX_PANEL_ASPECT`` (an image
        beyond is stretched to fill the panel).
    dpi : int
        Dots per inch of the figure (panel width in pixels = ``panel_inches * dpi``).

    Returns
    -------
    matplotlib.figure.Figure
        On an Agg canvas; :func:`figure_to_array` renders it.

    Raises
    ------
    TypeError, ValueError
        On arrays of the wrong shape or values (negative or non-finite rows, queries outside
        the image), an unknown colormap, scaling or upsampling, or parameters out of range.

    Notes
    -----
    Each panel: the image, the row divided by its maximum as a heatmap over it, the query pixel
    marked by a cyan ring with a clear inside (and, on a coarser token grid, the query's token
    outlined), a title with the method's name and errors, and a caption with the support size
    and maximum weight.
    One colourbar per row of panels (all panels share the ``weight / max`` scale).  The figure
    is ``(panel_inches n_methods + 0.9) dpi`` pixels wide and at most
    ``((MAX_PANEL_ASPECT panel_inches + 0.62) m + 0.4) dpi`` high, whatever the image's shape.
    Cost O(m n_methods (n + Hf Wf)) plus Matplotlib's drawing (of at most one displayed cell a
    panel pixel).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    background = display_image(image, grey=grey)
    height, width = background.shape[:2]
    rows = np.asarray(rows)
    if rows.ndim == 3:
        rows = rows[:, None]
    if rows.ndim != 4 or rows.size == 0:
        raise ValueError(
            f"rows must have shape (m, n_methods, Hf, Wf) or (m, Hf, Wf), got shape {rows.shape}"
        )
    if not (np.issubdtype(rows.dtype, np.floating) or np.issubdtype(rows.dtype, np.integer)):
        raise TypeError(f"rows must hold numbers, got dtype {rows.dtype}")
    rows = rows.astype(np.float64)
    if not np.isfinite(rows).all():
        raise ValueError("rows contains NaN or infinite values")
    if (rows < 0).any():
        raise ValueError("rows must be non-negative")
    n_queries, n_methods, grid_h, grid_w = rows.shape
    positions = _check_positions(positions, n_queries, height, width)
    names = [str(name) for name in method_names]
    if len(names) != n_methods:
        raise ValueError(
            f"method_names must name the {n_methods} methods of rows, got {len(names)} names"
        )
    error_items = []
    for label, values in (errors or {}).items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (n_queries, n_methods):
            raise ValueError(
                f"errors[{label!r}] must have shape {(n_queries, n_methods)}, got {values.shape}"
            )
        error_items.append((str(label), values))
    if colormap not in colormaps:
        raise ValueError(f"colormap must be a Matplotlib colormap name, got {colormap!r}")
    alpha = check_float("alpha", alpha, minimum=0.0, maximum=1.0)
    check_choice("scaling", scaling, SCALINGS)
    decades = check_float("decades", decades, minimum=0.0, strict_minimum=True, maximum=300.0)
    gamma = check_float("gamma", gamma, minimum=0.0, strict_minimum=True)
    check_choice("upsample", upsample, UPSAMPLINGS)
    panel_inches = check_float("panel_inches", panel_inches, minimum=0.5, maximum=20.0)
    dpi = check_int("dpi", dpi, minimum=20, maximum=600)

    cmap = colormaps[colormap].with_extremes(under=colormaps[colormap](0.0))
    norm = _norm(scaling, gamma, decades)
    same_grid = (grid_h, grid_w) == (height, width)
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    # the panel's height over its width, clipped: a strip is stretched, not drawn as a sliver
    panel_aspect = min(max(height / width, 1.0 / MAX_PANEL_ASPECT), MAX_PANEL_ASPECT)
    stretched = panel_aspect != height / width
    panel_h = panel_inches * panel_aspect
    # a grid finer than the panel's pixels is max-pooled, so that isolated keys stay visible
    pool_h = max(1, math.ceil(grid_h / (panel_h * dpi)))
    pool_w = max(1, math.ceil(grid_w / (panel_inches * dpi)))
    interpolation = "nearest" if same_grid or pool_h * pool_w > 1 else upsample
    heat_extent = (
        -0.5,
        -0.5 + math.ceil(grid_w / pool_w) * pool_w * width / grid_w,
        -0.5 + math.ceil(grid_h / pool_h) * pool_h * height / grid_h,
        -0.5,
    )
    cell_h, cell_w = height / grid_h, width / grid_w
    grid_pos = np.stack(
        [(positions[:, 0] * grid_h) // height, (positions[:, 1] * grid_w) // width], axis=1
    )

    fig_h = (panel_h + 0.62) * n_queries + (0.4 if title else 0.0)
    fig = Figure(
        figsize=(panel_inches * n_methods + 0.9, fig_h),
        dpi=dpi,
        layout="constrained",
    )
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.02)
    axes = fig.subplots(n_queries, n_methods, squeeze=False)
    ring = max(6.0, min(14.0, 0.04 * panel_inches * dpi))
    for i in range(n_queries):
        y, x = int(positions[i, 0]), int(positions[i, 1])
        mappable = None
        for j in range(n_methods):
            ax = axes[i, j]
            row = rows[i, j]
            peak = float(row.max())
            shown = row / peak if peak > 0 else row
            ax.imshow(
                background, cmap="gray", vmin=0.0, vmax=1.0, extent=extent,
                interpolation="antialiased", aspect="auto" if stretched else "equal",
            )  # fmt: skip
            # zeros (outside a sparse support) take the lowest colour, like values under the
            # scale's floor; LogNorm would otherwise mask them
            shown = np.where(shown > 0, shown, 10.0**-decades / 10) if scaling == "log" else shown
            mappable = ax.imshow(
                _max_pool(shown, pool_h, pool_w), cmap=cmap, norm=norm, alpha=alpha,
                extent=heat_extent, interpolation=interpolation,
                aspect="auto" if stretched else "equal",
            )  # fmt: skip
            if not same_grid:
                gy, gx = grid_pos[i]
                ax.add_patch(
                    Rectangle(
                        (gx * cell_w - 0.5, gy * cell_h - 0.5), cell_w, cell_h, fill=False,
                        edgecolor=MARKER_COLOUR, linewidth=0.8, alpha=0.8,
                    )
                )  # fmt: skip
            ax.plot(
                [x], [y], marker="o", markersize=ring, markerfacecolor="none",
                markeredgecolor=MARKER_COLOUR, markeredgewidth=1.4,
            )  # fmt: skip
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_linewidth(0.5)
            ax.set_title(
                _panel_title(names[j], reference, [(lab, v[i, j]) for lab, v in error_items]),
                fontsize=9,
            )
            support = int(np.count_nonzero(row))
            ax.set_xlabel(
                f"max {_format_number(peak)} · {support:,} non-zero keys", fontsize=7, labelpad=2
            )
            if j == 0:
                ax.set_ylabel(f"query x={x}, y={y}", fontsize=9)
        bar = fig.colorbar(mappable, ax=list(axes[i, :]), fraction=0.05, pad=0.01, aspect=25)
        bar.set_label("weight / row max" + (" (log)" if scaling == "log" else ""), fontsize=8)
        bar.ax.tick_params(labelsize=7)
        bar.solids.set_alpha(1.0)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _max_pool(values: np.ndarray, pool_h: int, pool_w: int) -> np.ndarray:
    """Largest value of each ``pool_h x pool_w`` block (the last blocks padded with zeros)."""
    if pool_h == pool_w == 1:
        return values
    grid_h, grid_w = values.shape
    padded = np.zeros((math.ceil(grid_h / pool_h) * pool_h, math.ceil(grid_w / pool_w) * pool_w))
    padded[:grid_h, :grid_w] = values
    blocks = padded.reshape(padded.shape[0] // pool_h, pool_h, padded.shape[1] // pool_w, pool_w)
    return blocks.max(axis=(1, 3))


def _panel_title(name: str, reference: str | None, values: list[tuple[str, float]]) -> str:
    if reference is not None and name == reference:
        return f"{name}\nreference"
    shown = [f"{label} {_format_number(value)}" for label, value in values if not np.isnan(value)]
    return name + ("\n" + "  ".join(shown) if shown else "")


def _check_positions(positions, n_queries: int, height: int, width: int) -> np.ndarray:
    """Query pixels ``(m, 2)`` as int64 ``(y, x)`` inside an ``height x width`` image."""
    positions = np.asarray(positions)
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise ValueError(f"positions must have shape (m, 2) of (y, x), got shape {positions.shape}")
    if positions.dtype == np.bool_ or not np.issubdtype(positions.dtype, np.integer):
        raise TypeError(f"positions must hold integers, got dtype {positions.dtype}")
    if positions.shape[0] != n_queries:
        raise ValueError(
            f"positions must give one query per row of rows ({n_queries}), got {positions.shape[0]}"
        )
    for y, x in positions:
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(
                f"query (y={y}, x={x}) is outside the image (height {height}, width {width})"
            )
    return positions.astype(np.int64)


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure on its Agg canvas and return its pixels.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        E.g. from :func:`attention_figure`.

    Returns
    -------
    ndarray, shape (height, width, 3), uint8
        RGB pixels (the figure's white background is opaque), ready for
        :func:`nlattn.write_image`.

    Notes
    -----
    O(pixels).  The size is ``fig.get_size_inches() * fig.dpi``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.array(canvas.buffer_rgba())[:, :, :3]


def render_maps(result: MapsResult, **style) -> Figure:
    """The figure of a :class:`nlattn.maps.MapsResult` (see :func:`attention_figure`).

    Parameters
    ----------
    result : MapsResult
        From :func:`nlattn.maps.attention_maps`.
    **style
        Keyword arguments of :func:`attention_figure` (``colormap``, ``alpha``, ``scaling``,
        ``decades``, ``gamma``, ``upsample``, ``panel_inches``, ``dpi``, ``title``...).

    Returns
    -------
    matplotlib.figure.Figure
        Panels titled with each method's total variation from the exact row ("TV") and
        recall of the exact top-k keys ("R@k"); the title names the features and the scale
        unless ``title`` is given.

    Notes
    -----
    Cost as :func:`attention_figure`.
    """
    errors = {"TV": result.tv, f"R@{result.k}": result.recall}
    style.setdefault("title", result.description)
    return attention_figure(
        result.image, result.rows, result.positions, result.methods, errors=errors,
        reference="exact", **style,
    )  # fmt: skip
