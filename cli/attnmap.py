"""``nlattn attnmap``: attention maps of query pixels, one panel per method, as a figure."""

from __future__ import annotations

import io
import json
import os
import re

import click
from nlattn_cli.options import ParameterError, seed_option, threads_option

#: File extensions the figure can be written as (those of nlattn.write_image, spelled out so that
#: building the command needs no import of the library).
FIGURE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

_QUERY = re.compile(r"^\s*([+-]?\d+)\s*,\s*([+-]?\d+)\s*$")

#: Control characters (C0, DEL, C1) and their escapes: a ``\n`` in a file name must not split an
#: error line, nor an escape sequence drive the terminal.
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(32), *range(127, 160))}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


@click.command(short_help="Draw attention maps of query pixels (methods side by side).")
@click.argument("image", type=click.Path(), metavar="IMAGE")
@click.option(
    "--query",
    "queries",
    multiple=True,
    required=True,
    metavar="X,Y",
    help="Query pixel: column X, row Y, from the top-left corner (0-based). Repeat for more "
    "queries (one row of panels each).",
)
@click.option(
    "--method",
    "methods",
    multiple=True,
    metavar="M[,M...]",
    help="Methods to compare, comma-separated or repeated, or 'all' [default: all]. exact is "
    "always computed and shown first: it is the reference of the errors.",
)
@click.option(
    "--features",
    type=click.Path(),
    default=None,
    metavar="FEATS.npy",
    help="Token features (H, W, d) to attend with (e.g. a vision transformer's), used as "
    "queries and keys with scale 1/sqrt(d)/temperature; a grid coarser than the image is "
    "stretched over it [default: NLM tokens of the image].",
)
@click.option(
    "--patch-radius",
    type=click.IntRange(min=0, max=64),
    default=None,
    metavar="R",
    help="NLM tokens: patch radius (patches 2R+1 wide) [default: 2].",
)
@click.option(
    "--h",
    "h",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="N",
    help="NLM tokens: filter strength in the image's units; larger is flatter [default: the "
    "nl_means preset for the estimated noise, very peaked on clean images: try 10-30 for 8-bit].",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="T",
    help="Divide the scores by T (larger is flatter) [default: 1].",
)
@click.option(
    "-k",
    "k",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="Top-k matches of the kNN methods (scram), and the k of the recall@k shown; at most "
    "the number of keys (pixels, or --features tokens) [default: 16].",
)
@click.option(
    "--window-radius",
    type=click.IntRange(min=0),
    default=None,
    metavar="R",
    help="Window radius of the windowed methods (local; scram's window around each match) "
    "[default: each method's].",
)
@seed_option
@threads_option
@click.option(
    "--colormap",
    default="magma",
    show_default=True,
    metavar="NAME",
    help="Matplotlib colormap of the heatmaps (magma, inferno, viridis, cividis, ...).",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0.0, 1.0),
    default=0.6,
    show_default=True,
    metavar="A",
    help="Opacity of the heatmap over the image.",
)
@click.option(
    "--scaling",
    type=click.Choice(("log", "power", "linear")),
    default="log",
    show_default=True,
    help="Colour scale of weight / row max: log (over --decades decades), power (exponent "
    "--gamma) or linear.",
)
@click.option(
    "--decades",
    type=click.FloatRange(min=0, min_open=True, max=300),
    default=3.0,
    show_default=True,
    metavar="D",
    help="Range of the log scale below each row's maximum.",
)
@click.option(
    "--gamma",
    type=click.FloatRange(min=0, min_open=True),
    default=0.5,
    show_default=True,
    metavar="G",
    help="Exponent of the power scale.",
)
@click.option(
    "--raw",
    is_flag=True,
    help="Also save the rows as OUT.npy, shape (queries, methods, H, W) on the token grid, and "
    "their errors and parameters as OUT.json.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    required=True,
    metavar="OUT.png",
    help="The figure to write (.png, .jpg, .tif, .webp, .bmp).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT (and its .npy/.json) if they exist.")
@click.pass_context
def attnmap(
    ctx: click.Context,
    image: str,
    queries: tuple[str, ...],
    methods: tuple[str, ...],
    features: str | None,
    patch_radius: int | None,
    h: float | None,
    temperature: float | None,
    k: int | None,
    window_radius: int | None,
    seed: int,
    n_threads: int | None,
    colormap: str,
    alpha: float,
    scaling: str,
    decades: float,
    gamma: float,
    raw: bool,
    output: str,
    overwrite: bool,
) -> None:
    """Draw the attention map of each query pixel of IMAGE over the whole image.

    Each map is the query's softmax distribution over all pixels (keys), by each method,
    drawn as a heatmap over the image (weight / row max, log scale by default) with the query
    ringed in cyan.  Rows of panels are queries, columns are methods (exact first); each panel
    is titled with its total variation from the exact map (TV) and the fraction of the exact
    top-k keys it finds (R@k).  The features are the NLM tokens of the image (the maps are
    global non-local means weights) or --features.  Exit status: 0 on success; 1 when a
    file cannot be read or written, the image or features hold NaN or infinite values, or OUT
    exists; 2 on usage errors (-k above the number of keys among them).

    \b
    Examples:
      nlattn attnmap photo.png --query 120,45 -o map.png --h 20
      nlattn attnmap photo.png --query 120,45 --query 30,200 --method exact,scram -o maps.png
      nlattn attnmap photo.png --query 64,64 --features vit.npy --method all --raw -o vit.png
    """
    points = [_parse_query(text) for text in queries]
    names = _parse_methods(methods)
    ext = os.path.splitext(output)[1].lower()
    if ext not in FIGURE_EXTENSIONS:
        raise ParameterError(
            f"-o {_printable(output)}: unsupported extension {ext or '(none)'!r} "
            f"(use one of {', '.join(FIGURE_EXTENSIONS)})"
        )
    if features is not None:
        for option, value in (("--h", h), ("--patch-radius", patch_radius)):
            if value is not None:
                raise ParameterError(f"{option} applies to NLM tokens; it cannot be used with "
                                     "--features")
    elif h is not None and temperature is not None:
        raise ParameterError("--h and --temperature are mutually exclusive (both set how flat "
                             "NLM maps are)")

    from matplotlib import colormaps

    if colormap not in colormaps:
        raise ParameterError(
            f"--colormap {colormap!r} is not a Matplotlib colormap (e.g. magma, inferno, "
            "viridis, cividis)"
        )

    import numpy as np

    import nlattn  # imports Numba: only here, never when the CLI module is imported
    from nlattn.io import write_bytes
    from nlattn.maps import attention_maps, resolve_methods
    from nlattn.render import figure_to_array, render_maps

    try:
        names = resolve_methods("all" if names == ["all"] else names)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"--method: {exc}") from None

    stem = os.path.splitext(output)[0]
    targets = [output] + ([stem + ".npy", stem + ".json"] if raw else [])
    inputs = {os.path.realpath(path) for path in (image, features) if path is not None}
    for path in targets:
        if os.path.realpath(path) in inputs:
            raise ParameterError(
                f"-o {_printable(output)} would overwrite the input {_printable(path)}"
            )
    existing = [path for path in targets if os.path.exists(path)]
    if existing and not overwrite:
        for path in existing:
            shown = _printable(path)
            click.echo(f"error: {shown} exists (use --overwrite to replace it)", err=True)
        ctx.exit(1)

    pixels = _load_image(ctx, image, nlattn)
    height, width = pixels.shape[:2]
    for text, (x, y) in zip(queries, points, strict=True):
        if not (0 <= x < width and 0 <= y < height):
            raise ParameterError(
                f"--query {_printable(text.strip())} is outside the image {_printable(image)} "
                f"({width}x{height}: 0 <= X < {width}, 0 <= Y < {height})"
            )
    feats = None
    if features is not None:
        feats = _load_features(ctx, features, np)

    params = {"window_radius": window_radius} if window_radius is not None else {}
    try:
        result = attention_maps(
            pixels, np.array([(y, x) for x, y in points], dtype=np.int64), names,
            features=feats, patch_radius=patch_radius, h=h, temperature=temperature, k=k,
            seed=seed, n_threads=n_threads, **params,
        )  # fmt: skip
        figure = render_maps(
            result, colormap=colormap, alpha=alpha, scaling=scaling, decades=decades,
            gamma=gamma,
        )  # fmt: skip
        picture = figure_to_array(figure)
    except (TypeError, ValueError) as exc:
        raise ParameterError(_option_names(str(exc))) from None

    try:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        if raw:
            buffer = io.BytesIO()
            np.save(buffer, result.rows)
            write_bytes(targets[1], buffer.getvalue())
            record = _sidecar(result, image, features, os.path.basename(targets[1]))
            write_bytes(targets[2], (json.dumps(record, indent=1) + "\n").encode())
        nlattn.write_image(output, picture)
    except (OSError, ValueError) as exc:
        _fail(ctx, f"cannot write {_printable(output)}: {_reason(exc)}")

    _report(result, picture.shape, targets)


def _printable(text: str) -> str:
    """``text`` (a file name) with control characters escaped (``\\n``, ``\\x1b``), so that a
    message naming it stays on one line; surrogates of undecodable names become ``\\udcXX``."""
    text = str(text).translate(_ESCAPES)
    return "".join(f"\\u{ord(c):04x}" if "\ud800" <= c <= "\udfff" else c for c in text)


def _reason(exc: BaseException) -> str:
    """An exception's message on one line (whitespace runs joined), control characters escaped;
    its type's name when it has none."""
    return _printable(" ".join(str(exc).split()) or type(exc).__name__)


def _fail(ctx: click.Context, message: str) -> None:
    """Print ``error: message`` on one line (control characters escaped) and exit 1."""
    click.echo(f"error: {_printable(message)}", err=True)
    ctx.exit(1)


def _load_image(ctx: click.Context, path: str, nlattn):
    """The pixels of IMAGE, checked as the library checks images, or exit 1 with one line.

    A file that cannot be read, and an image the attention maps cannot use (NaN or infinite
    values), are file problems: ``error: PATH: reason``.
    """
    from nlattn._validate import check_image

    try:
        pixels, _ = nlattn.read_image(path)
    except (OSError, ValueError) as exc:  # ImageReadError: the message names the file
        _fail(ctx, _reason(exc))
    try:
        return check_image("image", pixels)
    except (TypeError, ValueError) as exc:
        _fail(ctx, f"{_printable(path)}: {_reason(exc)}")


def _parse_query(text: str) -> tuple[int, int]:
    match = _QUERY.match(text)
    if match is None:
        raise ParameterError(
            f"--query {text!r} is not X,Y (two integers, column then row, e.g. --query 120,45)"
        )
    x, y = int(match.group(1)), int(match.group(2))
    return x, y


def _parse_methods(methods: tuple[str, ...]) -> list[str]:
    names = [name.strip() for text in methods for name in text.split(",")]
    if any(not name for name in names):
        raise ParameterError(f"--method {','.join(methods)!r} has an empty method name")
    if not names:
        return ["all"]
    if "all" in names and len(names) > 1:
        raise ParameterError("--method all cannot be combined with other methods")
    return names


def _load_features(ctx: click.Context, path: str, np):
    """The user's (H, W, d) feature array, or exit 1 with one line."""
    shown = _printable(path)
    if os.path.isdir(path):
        _fail(ctx, f"{shown}: cannot read features: is a directory")
    if os.path.exists(path) and not os.path.isfile(path):  # np.load would wait on a FIFO
        _fail(ctx, f"{shown}: cannot read features: not a regular file")
    try:
        feats = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        _fail(ctx, f"{shown}: cannot read features: {_reason(exc)}")
    if not isinstance(feats, np.ndarray):
        _fail(ctx, f"{shown}: cannot read features: not a single .npy array")
    if feats.ndim != 3 or min(feats.shape) == 0:
        _fail(ctx, f"{shown}: features must have shape (H, W, d), got shape {feats.shape}")
    if not (np.issubdtype(feats.dtype, np.floating) or np.issubdtype(feats.dtype, np.integer)):
        _fail(ctx, f"{shown}: features must hold numbers, got dtype {feats.dtype}")
    if not np.isfinite(feats).all():
        _fail(ctx, f"{shown}: features contain NaN or infinite values")
    return feats


def _option_names(message: str) -> str:
    """Name the command-line options in a library message (``window_radius`` -> --window-radius)."""
    for name, option in (
        ("window_radius", "--window-radius"),
        ("patch_radius", "--patch-radius"),
        ("n_threads", "--threads"),
        ("temperature", "--temperature"),
        ("seed", "--seed"),
        ("h", "--h"),
        ("k", "-k"),
    ):
        if message.startswith(name + " "):
            return option + message[len(name) :]
    return message


def _sidecar(result, image: str, features: str | None, rows_file: str) -> dict:
    """The JSON record saved with ``--raw``."""
    return {
        "image": image,
        "image_shape": list(result.image.shape[:2]),
        "features": features,
        "description": result.description,
        "grid_shape": list(result.rows.shape[2:]),
        "patch_radius": result.patch_radius,
        "h": result.h,
        "temperature": result.temperature,
        "scale": result.scale,
        "k": result.k,
        "params": result.params,
        "methods": list(result.methods),
        "queries": [{"x": int(x), "y": int(y)} for y, x in result.positions],
        "rows_file": rows_file,
        "rows_shape": list(result.rows.shape),
        "rows_axes": ["query", "method", "y", "x"],
        "errors": result.errors(),
    }


def _report(result, shape: tuple[int, ...], targets: list[str]) -> None:
    """A table of the errors and the files written, on stdout."""
    recall = f"R@{result.k}"
    click.echo(f"{'query':>11}  {'method':<12} {'TV':>7} {'KL':>8} {recall:>6} "
               f"{'support':>9} {'seconds':>8}")
    for record in result.errors():
        query = f"{record['query']['x']},{record['query']['y']}"
        shown_recall = "-" if record["recall"] is None else f"{record['recall']:.3f}"
        click.echo(
            f"{query:>11}  {record['method']:<12} {record['tv']:7.4f} {record['kl']:8.4f} "
            f"{shown_recall:>6} {record['support']:>9,} {record['seconds']:8.3f}"
        )
    click.echo(f"{result.description}")
    height, width = shape[:2]
    click.echo(f"wrote {_printable(targets[0])} ({width}x{height})" + "".join(
        f", {_printable(path)}" for path in targets[1:]
    ))
