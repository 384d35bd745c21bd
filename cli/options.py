"""Options and parameter types shared by the commands.

Only Click is imported here: nothing from ``nlattn`` (which imports Numba), so that building the
command tree costs nothing.
"""

from __future__ import annotations

import click

#: The names of ``nlattn.DENOISE_METHODS``, spelled out so that ``--help`` needs no import of
#: the library (a test keeps the two equal).  The other attention methods are not denoisers.
DENOISE_METHOD_NAMES = ("nlm2", "nlm", "scram")
#: The names of ``nlattn.denoise.ATTENTION_OPERATORS``: attention methods that are not denoisers
#: (``--method`` says so and where to use them; a test keeps the two equal).
ATTENTION_OPERATOR_NAMES = (
    "exact",
    "local",
    "performer",
    "lsh",
    "scatterbrain",
    "fast",
    "efficient",
)


class ParameterError(click.ClickException):
    """A bad parameter value found after parsing (by the library's checks): one line, exit 2."""

    exit_code = 2


class DenoiseMethodChoice(click.Choice):
    """A denoising method; an attention operator is refused with where to use it instead."""

    def __init__(self):
        super().__init__(DENOISE_METHOD_NAMES)

    def convert(self, value, param, ctx):
        if value in ATTENTION_OPERATOR_NAMES:
            self.fail(
                f"{value!r} is an attention operator, not a denoiser: use `nlattn attnmap "
                f"--method {value}`; the denoisers are {', '.join(DENOISE_METHOD_NAMES)}",
                param,
                ctx,
            )
        return super().convert(value, param, ctx)


class SigmaType(click.ParamType):
    """``auto`` or a float >= 0 (noise standard deviation in the image's units)."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value == "auto":
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        try:
            number = float(text)
        except ValueError:
            self.fail(f"{value!r} is neither 'auto' nor a number", param, ctx)
        if not number >= 0 or number == float("inf"):
            self.fail(f"{value!r} must be 'auto' or a finite number >= 0", param, ctx)
        return number


SIGMA = SigmaType()


def threads_option(func):
    """``--threads T``: Numba threads per image (default: all, shared among ``-j`` workers)."""
    return click.option(
        "--threads",
        "n_threads",
        type=click.IntRange(min=1),
        default=None,
        metavar="T",
        help="Numba threads per image [default: all cores, divided among the -j workers].",
    )(func)


def seed_option(func):
    """``--seed S``: seed of the counter-based random numbers (same seed, same output)."""
    return click.option(
        "--seed",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        metavar="S",
        help="Random seed (randomised methods; same seed gives the same output).",
    )(func)


def json_option(func):
    """``--json``: machine-readable records on stdout, one JSON object a line."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print one JSON record per result on stdout (one line each).",
    )(func)


def verbose_option(func):
    """``-v/--verbose``."""
    return click.option(
        "-v", "--verbose", is_flag=True, help="Say more (one line per file with sigma and time)."
    )(func)


def quiet_option(func):
    """``-q/--quiet``."""
    return click.option(
        "-q", "--quiet", is_flag=True, help="Print nothing but errors (and --json records)."
    )(func)


def method_option(func):
    """``--method``: the denoising method (choices: ``nlattn.denoise`` methods)."""
    return click.option(
        "--method",
        type=DenoiseMethodChoice(),
        default="nlm2",
        show_default=True,
        help="Denoising method (`nlattn methods` describes them; the other attention methods "
        "are not denoisers: use them with `nlattn attnmap`).",
    )(func)


def denoise_parameter_options(func):
    """``--sigma --h --patch-radius --search-radius -k --aggregation`` (nl_means parameters)."""
    options = [
        click.option(
            "--sigma",
            type=SIGMA,
            default=None,
            help="Noise standard deviation in the image's units (grey levels for 8-bit), "
            "or 'auto' to estimate it per image [default: auto].",
        ),
        click.option(
            "--h",
            "h",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            metavar="N",
            help="Filter strength in the image's units [default: preset from sigma].",
        ),
        click.option(
            "--patch-radius",
            type=click.IntRange(min=0),
            default=None,
            metavar="R",
            help="Patch radius (patch 2R+1 wide) [default: preset from sigma].",
        ),
        click.option(
            "--search-radius",
            type=click.IntRange(min=0),
            default=None,
            metavar="R",
            help="Search window radius (window 2R+1 wide) [default: preset from sigma].",
        ),
        click.option(
            "-k",
            "k",
            type=click.IntRange(min=1),
            default=None,
            metavar="K",
            help="Neighbours per pixel (kNN methods) [default: method's preset].",
        ),
        click.option(
            "--aggregation",
            type=click.Choice(("patch", "pixel")),
            default="patch",
            show_default=True,
            help="patch: average the whole weighted patches; pixel: centre pixels only.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


class MemorySizeType(click.ParamType):
    """A size in bytes: ``2G``, ``512M``, ``1.5GiB``, ``300MB``, ``1048576``.

    ``K``/``M``/``G``/``T`` (also ``KiB``... and lower case) are powers of 1024, ``KB``/``MB``/
    ``GB``/``TB`` powers of 1000, a bare number is bytes; the result is a positive int.
    """

    name = "SIZE"
    _BINARY = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    _DECIMAL = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                self.fail(f"{value!r} must be at least 1 byte", param, ctx)
            return value
        text = str(value).strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number) :]
        if unit.endswith("ib"):
            unit = unit[:-2]
        factor = self._BINARY.get(unit) or self._DECIMAL.get(unit)
        try:
            amount = float(number)
        except ValueError:
            amount = float("nan")
        if factor is None or not amount > 0 or amount == float("inf"):
            self.fail(
                f"{value!r} is not a size: give bytes or a number with K, M, G or T "
                "(powers of 1024; KB, MB, GB, TB: powers of 1000), e.g. 2G or 512M",
                param,
                ctx,
            )
        size = int(amount * factor)
        if size < 1:
            self.fail(f"{value!r} must be at least 1 byte", param, ctx)
        return size


MEMORY_SIZE = MemorySizeType()
