"""``nlattn bench``: time methods over image sizes, fit their scaling, compare with peers."""

from __future__ import annotations

import click
from nlattn_cli.options import ParameterError

DEFAULT_SIZES = "64,128,256,512,1024"


def _sizes(text: str) -> list[int]:
    sizes = []
    for part in text.split(","):
        part = part.strip()
        try:
            sizes.append(int(part))
        except ValueError:
            raise ParameterError(f"--sizes: {part!r} is not an integer side length") from None
    return sizes


def _names(values: tuple[str, ...]) -> list[str] | None:
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return names or None


@click.command(short_help="Time methods over image sizes and fit time ~ n^a.")
@click.option(
    "--methods",
    "methods",
    multiple=True,
    metavar="M[,M...]",
    help="What to time, comma-separated or repeated: attention methods (exact, local, scram, "
    "...), denoisers (denoise:nlm, or nlm when it is no attention method), tokens, peers "
    "(peer:skimage, peer:opencv, peer:faiss-flat, peer:faiss-hnsw) and knn:patchmatch "
    "[default: tokens, every attention method and every denoiser].",
)
@click.option(
    "--sizes",
    default=DEFAULT_SIZES,
    show_default=True,
    metavar="S[,S...]",
    help="Image side lengths (n = S^2 pixels), at least 8.",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Timed calls per size; the median is reported.",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    help="Per-size cap: a size predicted to take longer is extrapolated (marked ~), not run.",
)
@click.option(
    "--peers/--no-peers",
    default=None,
    help="Also time scikit-image, OpenCV and faiss (when installed) and knn:patchmatch "
    "[default: on without --methods, off with it].",
)
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    metavar="PATH",
    help="Use this image (central square, resized to each size) instead of the synthetic "
    "dead-leaves image.",
)
@click.option(
    "--noise",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    metavar="SIGMA",
    help="Gaussian noise added (8-bit grey levels); the denoisers are given it.",
)
@click.option(
    "--threads",
    "n_threads",
    type=click.IntRange(min=1),
    default=None,
    metavar="T",
    help="Threads of nlattn's kernels, OpenCV and faiss [default: all cores].",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the synthetic image and the noise.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document on stdout instead of the table.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE.png",
    help="Write a log-log plot of time against pixels, one line per method.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def bench(methods, sizes, repeats, max_seconds, peers, image, noise, n_threads, seed, as_json,
          plot, quiet) -> None:
    """Time attention methods and denoisers on square images of growing size.

    Each method is timed on NLM tokens (5x5 patches, PCA-16) of a noisy synthetic image (or
    --image) at every size: the first call (JIT compilation) apart, then the median of
    --repeats calls.  Sizes predicted to exceed --max-seconds are extrapolated from the
    measured ones.  The exponent a of time ~ n^a is fitted over the measured sizes from 128^2
    up.  Methods that cannot be imported are reported in one line and skipped.

    \b
    Example: nlattn bench --methods local,scram --plot scaling.png
    """
    size_list = _sizes(sizes)
    from nlattn import bench as harness

    try:
        entries = harness.select_entries(_names(methods), peers, n_threads)
    except ValueError as exc:
        raise ParameterError(f"--methods: {exc}") from None
    progress = None if quiet else (lambda line: click.echo(line, err=True))
    try:
        report = harness.run_bench([e.name for e in entries], size_list, repeats=repeats,
                                   max_seconds=max_seconds, peers=False, image=image,
                                   noise=noise, n_threads=n_threads, seed=seed,
                                   progress=progress)
    except (TypeError, ValueError) as exc:
        raise ParameterError(str(exc)) from None
    if as_json:
        click.echo(harness.dumps(report))
    else:
        click.echo(harness.format_table(report))
    if plot:
        harness.plot_scaling(report, plot)
        if not quiet:
            click.echo(f"plot written to {plot}", err=True)
