"""``nlattn methods``: the denoising and attention methods, their cost and parameters."""

from __future__ import annotations

import textwrap

import click


def _table(title: str, registry: dict, roles: dict | None = None) -> None:
    rows = list(registry.values())
    name_w = max(len("name"), *(len(info.name) for info in rows))
    cost_w = max(len("complexity"), *(len(info.complexity) for info in rows))
    cost_w = min(cost_w, 48)
    click.echo(title)
    click.echo(f"{'name':<{name_w}}  {'complexity':<{cost_w}}  description")
    click.echo(f"{'-' * name_w}  {'-' * cost_w}  {'-' * 11}")
    indent = " " * (name_w + cost_w + 4)
    for info in rows:
        lines = textwrap.wrap(info.description, width=max(40, 100 - len(indent))) or [""]
        costs = textwrap.wrap(info.complexity, width=cost_w) or [""]
        for i in range(max(len(lines), len(costs))):
            name = info.name if i == 0 else ""
            cost = costs[i] if i < len(costs) else ""
            text = lines[i] if i < len(lines) else ""
            click.echo(f"{name:<{name_w}}  {cost:<{cost_w}}  {text}".rstrip())
        if info.parameters:
            click.echo(indent + "parameters: " + ", ".join(info.parameters))
        if roles is not None:
            click.echo(indent + roles[info.name])


@click.command(short_help="List the denoising and attention methods.")
def methods() -> None:
    """List the methods (denoisers for `nlattn denoise --method`, attention methods for
    `nlattn attnmap --method`): name, complexity, description and parameters, and which
    attention methods are attention operators only, not denoisers."""
    from nlattn import DENOISE_METHODS, METHODS
    from nlattn.denoise import ATTENTION_OPERATORS

    _table("Denoising methods (nlattn denoise --method, nlattn.nl_means):", DENOISE_METHODS)
    click.echo("")
    roles = {
        name: "attention operator only: not a denoiser"
        if name in ATTENTION_OPERATORS
        else f"also a denoiser: nlattn denoise --method {name}"
        for name in METHODS
    }
    _table("Attention methods (nlattn attnmap --method, nlattn.attention):", METHODS, roles)
    click.echo("")
    summary = (
        "Denoisers: " + ", ".join(DENOISE_METHODS) + ".  Attention operators only, not "
        "denoisers (with their defaults they gain less than 1 dB of PSNR, or lose, on some "
        "images): " + ", ".join(ATTENTION_OPERATORS) + "."
    )
    click.echo("\n".join(textwrap.wrap(summary, width=100)))
