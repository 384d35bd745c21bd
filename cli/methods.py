"""``nlattn methods``: the denoising methods, their cost and parameters."""

from __future__ import annotations

import textwrap

import click


@click.command(short_help="List the denoising methods.")
def methods() -> None:
    """List the denoising methods: name, complexity, description and parameters."""
    from nlattn import DENOISE_METHODS

    rows = [(info.name, info.complexity, info.description) for info in DENOISE_METHODS.values()]
    name_w = max(len("name"), *(len(row[0]) for row in rows))
    cost_w = max(len("complexity"), *(len(row[1]) for row in rows))
    click.echo(f"{'name':<{name_w}}  {'complexity':<{cost_w}}  description")
    click.echo(f"{'-' * name_w}  {'-' * cost_w}  {'-' * 11}")
    indent = " " * (name_w + cost_w + 4)
    for info in DENOISE_METHODS.values():
        lines = textwrap.wrap(info.description, width=max(40, 100 - len(indent))) or [""]
        click.echo(f"{info.name:<{name_w}}  {info.complexity:<{cost_w}}  {lines[0]}")
        for line in lines[1:]:
            click.echo(indent + line)
        if info.parameters:
            click.echo(indent + "parameters: " + ", ".join(info.parameters))
