"""``nlattn warmup``: compile every kernel once (later runs load them from the cache)."""

from __future__ import annotations

import time

import click


@click.command(short_help="Compile every kernel once and report the time.")
def warmup() -> None:
    """Compile (or load from the on-disk cache) every Numba kernel and print the times.

    The first run after installing takes a while; afterwards every process loads the compiled
    kernels from the cache in about a second.
    """
    click.echo("compiling kernels (the first time takes a while)...", err=True)
    start = time.perf_counter()
    import nlattn

    timings = nlattn.warmup()
    total = time.perf_counter() - start
    width = max([len("total")] + [len(name) for name in timings])
    for name, seconds in timings.items():
        click.echo(f"{name:<{width}}  {seconds:8.2f} s")
    click.echo(f"{'total':<{width}}  {total:8.2f} s")
