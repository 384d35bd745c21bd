"""``nlattn warmup``: compile every kernel once (later runs load them from the cache)."""

from __future__ import annotations

import time

import click


@click.command(short_help="Compile every kernel once and report the time.")
def warmup() -> None:
    """Compile (or load from the on-disk cache) every Numba kernel and print the times.

    The first run after installing takes a few minutes; each group of kernels is reported as
    soon as it is compiled.  Afterwards every process loads the compiled kernels from the cache
    in about a second.
    """
    click.echo("compiling kernels (the first time takes a few minutes)...", err=True)
    start = time.perf_counter()
    import nlattn

    def report(name: str, seconds: float) -> None:
        click.echo(f"{name:<44}  {seconds:8.2f} s  ({time.perf_counter() - start:.0f} s so far)")

    nlattn.warmup(on_step=report)
    click.echo(f"{'total':<44}  {time.perf_counter() - start:8.2f} s")
