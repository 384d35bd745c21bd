"""The ``nlattn`` command group.

Nothing here imports ``nlattn``: the version comes from the installed distribution's metadata,
and each command imports the library inside its function.
"""

from __future__ import annotations

import click
from nlattn_cli.attnmap import attnmap
from nlattn_cli.bench import bench
from nlattn_cli.denoise import denoise
from nlattn_cli.methods import methods
from nlattn_cli.warmup import warmup

#: Used when the distribution's metadata cannot be read (running from a source tree).
FALLBACK_VERSION = "0.1.0"


def package_version() -> str:
    """The installed nlattn version, read without importing nlattn (and Numba)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return FALLBACK_VERSION
    try:
        return version("nlattn")
    except PackageNotFoundError:
        return FALLBACK_VERSION


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"nlattn, version {package_version()}")
    ctx.exit(0)


@click.group()
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
def cli() -> None:
    """Fast non-local means denoising and image attention on the CPU (Numba kernels).

    \b
    First run:  nlattn denoise --demo
    Many files: nlattn denoise photos/ -o clean/ --recursive -j 2
    """


cli.add_command(denoise)
cli.add_command(attnmap)
cli.add_command(methods)
cli.add_command(warmup)
cli.add_command(bench)


if __name__ == "__main__":  # pragma: no cover
    cli()
