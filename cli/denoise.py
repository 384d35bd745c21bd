"""``nlattn denoise``: denoise files, folders and globs (or the built-in demo)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time

import click
from click.core import ParameterSource
from nlattn_cli.options import (
    MEMORY_SIZE,
    ParameterError,
    denoise_parameter_options,
    json_option,
    method_option,
    quiet_option,
    seed_option,
    threads_option,
    verbose_option,
)

DEMO_SIGMA = 25.0
DEMO_FILES = ("demo_noisy.png", "demo_denoised.png")


@click.command(short_help="Denoise images with non-local means.")
@click.argument("inputs", nargs=-1, type=click.Path(), metavar="[INPUT]...")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="Folder for the outputs (created if needed) [default: next to each input].",
)
@method_option
@denoise_parameter_options
@seed_option
@click.option("--recursive", "-r", is_flag=True, help="Also denoise images in sub-folders.")
@click.option(
    "--suffix",
    default="_denoised",
    show_default=True,
    help="Appended to each input's stem to name its output.",
)
@click.option("--overwrite", is_flag=True, help="Replace outputs that exist already.")
@click.option("--skip-existing", is_flag=True, help="Leave outputs that exist alone (resume).")
@click.option(
    "-j",
    "--jobs",
    "n_jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="Images denoised at once, in N worker processes.",
)
@threads_option
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Send the jobs to an existing Dask distributed cluster (tcp://HOST:PORT) instead of "
    "local worker processes; its workers must see the files under the same absolute paths. "
    "Needs the dask extra: pip install 'nlattn[dask]'.",
)
@click.option(
    "--max-memory",
    type=MEMORY_SIZE,
    default=None,
    metavar="SIZE",
    help="Memory budget per image (bytes, or with K, M, G: 512M, 2G): large images are "
    "denoised in tiles that fit it.",
)
@json_option
@click.option(
    "--reference",
    type=click.Path(exists=True),
    default=None,
    metavar="CLEAN",
    help="Clean image (or folder of clean images with the inputs' relative names): "
    "report PSNR and SSIM.",
)
@click.option(
    "--demo",
    is_flag=True,
    help="No INPUT: add noise (sigma 25) to scikit-image's camera picture, denoise it, report "
    "PSNR before and after, write demo_noisy.png and demo_denoised.png into -o (replacing "
    "those of an earlier demo).",
)
@verbose_option
@quiet_option
@click.pass_context
def denoise(
    ctx: click.Context,
    inputs: tuple[str, ...],
    output: str | None,
    method: str,
    sigma,
    h: float | None,
    patch_radius: int | None,
    search_radius: int | None,
    k: int | None,
    aggregation: str,
    seed: int,
    recursive: bool,
    suffix: str,
    overwrite: bool,
    skip_existing: bool,
    n_jobs: int,
    n_threads: int | None,
    scheduler: str | None,
    max_memory: int | None,
    as_json: bool,
    reference: str | None,
    demo: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Denoise INPUT images (files, folders or glob patterns) with non-local means.

    Each output is named {stem}{suffix}{ext}, in -o DIR (keeping the layout of folder inputs) or
    next to its input.  Inputs are only read, never overwritten; outputs that exist are an error
    unless --overwrite or --skip-existing.  Exit status: 0 when every input succeeded (or was
    skipped), 1 when any failed (the others are still done: one error line each), 2 on usage
    errors.

    Outputs are written to a hidden temporary file (.NAME.XXXXXXXXXXXX.tmp.EXT) and renamed when
    complete, so a batch that is killed leaves no partial output; rerun it with
    --skip-existing to finish the rest (the leftover temporary files are removed then).

    Jobs run in this process, in -j N worker processes, or on a Dask cluster (--scheduler):
    the same jobs, names, records and exit status whichever runs them.

    \b
    Examples:
      nlattn denoise --demo
      nlattn denoise noisy.png --sigma 20
      nlattn denoise photos/ -o clean/ --recursive -j 2 --json > records.jsonl
      nlattn denoise scans/ -o clean/ --scheduler tcp://10.0.0.5:8786 --skip-existing
    """
    if overwrite and skip_existing:
        raise click.UsageError("--overwrite and --skip-existing are mutually exclusive.", ctx)
    if demo and inputs:
        raise click.UsageError("--demo takes no INPUT.", ctx)
    if not demo and not inputs:
        raise click.UsageError("give at least one INPUT (file, folder or glob), or --demo.", ctx)
    if "/" in suffix or os.sep in suffix:
        raise click.BadParameter("must not contain a path separator.", ctx, param_hint="--suffix")
    if scheduler is not None and ctx.get_parameter_source("n_jobs") == ParameterSource.COMMANDLINE:
        raise click.UsageError("-j/--jobs and --scheduler are mutually exclusive.", ctx)
    if scheduler is not None and not scheduler.strip():
        raise click.BadParameter(
            "give the scheduler's address, e.g. tcp://HOST:8786.", ctx, param_hint="--scheduler"
        )
    if demo:
        given = [
            name
            for name in (
                "recursive",
                "suffix",
                "skip_existing",
                "n_jobs",
                "reference",
                "scheduler",
                "max_memory",
            )
            if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
        ]
        if given:
            shown = ", ".join("--" + name.replace("_", "-") for name in given)
            raise click.UsageError(f"{shown} cannot be used with --demo.", ctx)

    import nlattn  # imports Numba: only here, never when the CLI module is imported

    params = {
        "method": method,
        "sigma": None if sigma in (None, "auto") else float(sigma),
        "h": h,
        "patch_radius": patch_radius,
        "search_radius": search_radius,
        "k": k,
        "seed": seed,
        "aggregation": aggregation,
    }
    _validate(nlattn, params, n_threads)
    if max_memory is not None:
        from nlattn.tiling import MIN_MEMORY

        if max_memory < MIN_MEMORY:
            raise ParameterError(
                f"--max-memory must be at least {MIN_MEMORY // 1024}K, got {max_memory} bytes"
            )

    if demo:
        demo_sigma = DEMO_SIGMA if sigma is None else params["sigma"]
        _run_demo(
            ctx,
            nlattn,
            dict(params, sigma=demo_sigma),
            output=output or ".",
            n_threads=n_threads,
            as_json=as_json,
            quiet=quiet,
        )
        return

    from nlattn.batch import (
        MissingDependencyError,
        SchedulerError,
        check_scheduler_address,
        collect_inputs,
        run_jobs,
    )
    from nlattn.batch.cluster import distributed_loggers

    if scheduler is not None:
        try:
            check_scheduler_address(scheduler)
        except (MissingDependencyError, ValueError) as exc:
            raise ParameterError(f"--scheduler: {exc}") from None
        # what distributed would log (tracebacks of lost connections, even after the batch,
        # while its client shuts down) reaches the user as error records instead
        for logger in distributed_loggers():
            logger.setLevel(logging.CRITICAL)

    jobs, warnings = collect_inputs(
        list(inputs), recursive=recursive, output_dir=output, suffix=suffix
    )
    if not quiet:
        for line in warnings:
            click.echo(f"warning: {line}", err=True)
    if not jobs:
        from nlattn.batch import printable

        shown = ", ".join(printable(item) for item in inputs)
        click.echo(f"error: no images found in {shown}", err=True)
        ctx.exit(1)

    policy = "overwrite" if overwrite else "skip" if skip_existing else "error"
    reporter = _Reporter(len(jobs), as_json=as_json, verbose=verbose, quiet=quiet)
    start = time.perf_counter()
    try:
        with reporter, _signals_as_one_interrupt():
            records = run_jobs(
                jobs,
                params=params,
                policy=policy,
                n_jobs=n_jobs,
                n_threads=n_threads,
                reference=reference,
                scheduler=scheduler,
                max_memory=max_memory,
                on_record=reporter.record,
            )
    except SchedulerError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    except KeyboardInterrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C changes nothing now
            signal.signal(sig, signal.SIG_IGN)
        done = reporter.done
        click.echo(
            f"interrupted: {done} of {len(jobs)} input{'s' if len(jobs) != 1 else ''} done; "
            "the others are left as they were (rerun with --skip-existing to finish)",
            err=True,
        )
        ctx.exit(130)
    elapsed = time.perf_counter() - start
    failed = sum(record["status"] == "error" for record in records)
    if not quiet and not as_json:
        click.echo(_summary(records, elapsed))
    ctx.exit(1 if failed else 0)


@contextlib.contextmanager
def _signals_as_one_interrupt():
    """Ctrl-C (SIGINT) and SIGTERM (``kill``, a job scheduler's stop) both end the batch once,
    as :class:`KeyboardInterrupt`: workers stopped, temporary files removed, exit 130.  The
    first signal ignores every later one, so a second Ctrl-C can never interrupt the cleanup
    (nor print a traceback)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _validate(nlattn, params: dict, n_threads: int | None) -> None:
    """Check the method and parameters once, before touching any file (errors: exit 2).

    The checks are the library's own: a call of :func:`nlattn.nl_means` on a tiny image with
    ``sigma=0`` and no ``h`` validates every parameter and returns before any kernel runs; ``h``
    and ``sigma`` are checked with the same helpers the library uses.
    """
    import numpy as np

    from nlattn._validate import check_float

    try:
        if params["h"] is not None:
            check_float("h", params["h"], minimum=0.0, strict_minimum=True)
        if params["sigma"] is not None:
            check_float("sigma", params["sigma"], minimum=0.0)
        probe = dict(params, sigma=0.0, h=None)
        nlattn.nl_means(np.zeros((8, 8), np.float32), **probe, n_threads=n_threads)
    except (TypeError, ValueError) as exc:
        raise ParameterError(_option_names(str(exc))) from None


def _option_names(message: str) -> str:
    """Name the command-line options in a library message (``patch_radius`` -> --patch-radius)."""
    for name in ("patch_radius", "search_radius", "n_threads", "aggregation", "sigma", "seed"):
        option = "--threads" if name == "n_threads" else "--" + name.replace("_", "-")
        if message.startswith(name + " "):
            return option + message[len(name) :]
    if message.startswith("h "):
        return "--h" + message[1:]
    if message.startswith("k "):
        return "-k" + message[1:]
    return message


class _Reporter:
    """Shows the batch's progress on stderr and its JSON records on stdout.

    On a terminal, a progress bar (tqdm: done/total, elapsed time, estimate of the rest, kept
    ticking while a long image is denoised), with errors and warnings printed above it; with
    --json the bar still goes to stderr.  Elsewhere, one short line per file unless --json or
    --quiet.  Errors are always printed, one line each, file names with control characters
    escaped.
    """

    def __init__(self, total: int, *, as_json: bool, verbose: bool, quiet: bool) -> None:
        self.total = total
        self.done = 0
        self.as_json = as_json
        self.verbose = verbose
        self.quiet = quiet
        self.use_bar = (not quiet) and (not verbose) and _stderr_is_terminal()
        self.lines = not (quiet or as_json or self.use_bar)
        self.bar = None
        self.ticking = threading.Event()

    def __enter__(self) -> _Reporter:
        if self.use_bar:
            from tqdm import tqdm

            # a terminal that reports no size (some consoles): tqdm would draw nothing
            try:
                size = os.get_terminal_size(sys.stderr.fileno())
            except (OSError, ValueError):
                size = os.terminal_size((0, 0))
            sized = size.columns > 0 and size.lines > 0
            self.bar = tqdm(
                total=self.total, desc="denoising", unit="image", file=sys.stderr, leave=True,
                dynamic_ncols=sized, ncols=None if sized else 80, nrows=None if sized else 24,
            )  # fmt: skip
            threading.Thread(target=self._tick, name="nlattn-progress", daemon=True).start()
        return self

    def _tick(self) -> None:
        while not self.ticking.wait(1.0):
            self.bar.refresh()

    def __exit__(self, *exc_info) -> None:
        self.ticking.set()
        if self.bar is not None:
            self.bar.close()

    def _echo(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)

    def record(self, record: dict) -> None:
        self.done += 1
        if self.as_json:
            click.echo(json.dumps(record))
            sys.stdout.flush()
        from nlattn.batch import printable

        name = printable(record["input"])
        if record["status"] == "error":
            self._echo(f"error: {name}: {printable(record['error'])}")
        elif self.lines or (self.verbose and not self.quiet):
            self._echo(self._line(record))
        if record.get("warning") and not self.quiet:
            self._echo(f"warning: {name}: {printable(record['warning'])}")
        if self.bar is not None:
            self.bar.update(1)

    def _line(self, record: dict) -> str:
        from nlattn.batch import printable

        head = f"[{self.done}/{self.total}]"
        name, output = printable(record["input"]), printable(record["output"])
        if record["status"] == "skipped":
            return f"{head} skipped {name} ({output} exists)"
        line = f"{head} {name} -> {output}"
        if self.verbose:
            line += f"  sigma {record['sigma']:.4g}, {record['seconds']:.2f} s"
            if record["psnr"] is not None or record["ssim"] is not None:
                line += f", {_metrics_text(record['psnr'], record['ssim'])}"
        return line


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _metrics_text(psnr: float | None, ssim: float | None) -> str:
    psnr_text = "inf" if psnr is None else f"{psnr:.2f}"
    return f"PSNR {psnr_text} dB, SSIM {ssim:.4f}"


def _summary(records: list[dict], elapsed: float) -> str:
    ok = [r for r in records if r["status"] == "ok"]
    skipped = sum(r["status"] == "skipped" for r in records)
    failed = sum(r["status"] == "error" for r in records)
    parts = [f"denoised {len(ok)} of {len(records)} input{'s' if len(records) != 1 else ''}"]
    if skipped:
        parts.append(f"{skipped} skipped")
    if failed:
        parts.append(f"{failed} failed")
    text = ", ".join(parts) + f" in {elapsed:.2f} s"
    scored = [r for r in ok if r["ssim"] is not None]
    if scored:
        finite = [r["psnr"] for r in scored if r["psnr"] is not None]
        mean_psnr = sum(finite) / len(finite) if len(finite) == len(scored) else None
        mean_ssim = sum(r["ssim"] for r in scored) / len(scored)
        text += f"; mean {_metrics_text(mean_psnr, mean_ssim)} over {len(scored)} image"
        text += "s" if len(scored) != 1 else ""
    return text


def _run_demo(
    ctx: click.Context,
    nlattn,
    params: dict,
    *,
    output: str,
    n_threads: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Noise scikit-image's camera picture, denoise it, report PSNR/SSIM, write both images."""
    import numpy as np
    from skimage import data

    from nlattn.batch import image_metrics

    # the demo's own two files are replaced on a rerun (the quick start must work twice)
    noisy_path, denoised_path = (os.path.join(output, name) for name in DEMO_FILES)
    for path in (noisy_path, denoised_path):
        if os.path.isdir(path):
            click.echo(f"error: {path}: is a folder", err=True)
            ctx.exit(1)

    clean = data.camera()
    rng = np.random.default_rng(params["seed"])
    noisy = (clean.astype(np.float64) + rng.normal(0.0, DEMO_SIGMA, clean.shape)).astype(np.float32)
    sigma = params["sigma"]
    if sigma is None:  # --sigma auto
        sigma = float(nlattn.estimate_sigma(noisy))
    start = time.perf_counter()
    denoised = nlattn.nl_means(noisy, **dict(params, sigma=sigma), n_threads=n_threads)
    seconds = time.perf_counter() - start

    def as_uint8(image):
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)

    psnr_noisy, ssim_noisy = image_metrics(np.clip(noisy, 0, 255), clean, dtype=np.uint8)
    psnr, ssim = image_metrics(np.clip(denoised, 0, 255), clean, dtype=np.uint8)
    try:
        os.makedirs(output, exist_ok=True)
        nlattn.write_image(noisy_path, as_uint8(noisy))
        nlattn.write_image(denoised_path, as_uint8(denoised))
    except OSError as exc:
        click.echo(f"error: cannot write the demo's images into {output}: {exc}", err=True)
        ctx.exit(1)

    if as_json:
        record = {
            "input": "skimage.data.camera",
            "noisy": noisy_path,
            "output": denoised_path,
            "status": "ok",
            "error": None,
            "method": params["method"],
            "parameters": {key: value for key, value in params.items() if key != "method"},
            "noise_sigma": DEMO_SIGMA,
            "sigma": float(sigma),
            "seconds": seconds,
            "psnr_noisy": psnr_noisy,
            "ssim_noisy": ssim_noisy,
            "psnr": psnr,
            "ssim": ssim,
        }
        click.echo(json.dumps(record))
    elif not quiet:
        height, width = clean.shape
        click.echo(
            f"camera ({height}x{width}, scikit-image) + Gaussian noise sigma "
            f"{DEMO_SIGMA:g} (seed {params['seed']})"
        )
        click.echo(f"before: {_metrics_text(psnr_noisy, ssim_noisy)}  -> {noisy_path}")
        click.echo(f"after:  {_metrics_text(psnr, ssim)}  -> {denoised_path}")
        click.echo(f"({params['method']}, sigma {sigma:.4g}, {seconds:.2f} s)")
