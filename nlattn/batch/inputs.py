"""Inputs and naming: files, folders and glob patterns -> :class:`Job` objects.

Rules:

- an input is a file, a folder (every image inside; with ``recursive``, below too, keeping the
  relative layout under the output folder) or a glob pattern, expanded here so that quoted
  patterns work;
- only regular files are taken from folders and patterns: FIFOs, sockets, devices and broken
  links are reported and passed by (a FIFO would block the batch forever), as are folders that
  cannot be read and links that lead back into folders already scanned;
- the tool's own outputs (stems ending with the suffix, anything inside the output folder) are
  never picked up from folders or globs;
- a job whose output would overwrite an input or another job's output is an error
  (:func:`check_jobs`).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from nlattn.batch._text import one_line, printable

__all__ = ["DEFAULT_SUFFIX", "Job", "check_jobs", "collect_inputs", "output_path"]

#: Default suffix appended to the stem of an input to name its output.
DEFAULT_SUFFIX = "_denoised"


@dataclass(frozen=True)
class Job:
    """One input image and where its result goes.

    Attributes
    ----------
    input : str
        Path of the input image, as found (not resolved).
    output : str
        Path of the output image.
    relative : str
        Name of the input relative to the folder it was found in (``sub/a.png``), or its base name
        for files named directly or matched by a glob.  Used to keep the layout under the output
        folder and to look up the matching clean image in a reference folder.
    error : str or None
        Why this job cannot run (the input does not exist, its output collides with an input or
        another job's output); None for a runnable job.  :func:`process_job` turns it into an error
        record without touching any file.
    """

    input: str
    output: str
    relative: str
    error: str | None = None


def _image_extensions() -> frozenset[str]:
    from nlattn.io import IMAGE_EXTENSIONS

    return frozenset(IMAGE_EXTENSIONS)


def _is_image_name(path: str, extensions: frozenset[str]) -> bool:
    return os.path.splitext(path)[1].lower() in extensions


def output_path(input_path: str, relative: str, *, output_dir: str | None, suffix: str) -> str:
    """Name the output of one input: ``{stem}{suffix}{ext}``.

    Parameters
    ----------
    input_path : str
        Path of the input image.
    relative : str
        Its name relative to the folder it was found in (``sub/a.png``), or its base name.
    output_dir : str or None
        Folder for the outputs; the relative layout is kept under it.  None: the output goes next
        to the input.
    suffix : str
        Appended to the stem (may be empty, in which case the output must go elsewhere).

    Returns
    -------
    str
        The output path.
    """
    stem, ext = os.path.splitext(os.path.basename(input_path))
    name = f"{stem}{suffix}{ext}"
    if output_dir is None:
        return os.path.join(os.path.dirname(input_path), name)
    rel_dir = os.path.dirname(relative)
    return os.path.join(output_dir, rel_dir, name) if rel_dir else os.path.join(output_dir, name)


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _inside(real: str, folder_real: str | None) -> bool:
    """Whether the resolved path ``real`` is ``folder_real`` or lies below it."""
    if folder_real is None:
        return False
    return real == folder_real or real.startswith(folder_real.rstrip(os.sep) + os.sep)


def _glob_base(pattern: str) -> str:
    """The folder a glob pattern starts from: its leading components without wildcards."""
    base = pattern
    while glob.has_magic(base):
        base = os.path.dirname(base)
    return base or os.curdir


def collect_inputs(
    inputs: Iterable[str],
    *,
    recursive: bool = False,
    output_dir: str | None = None,
    suffix: str = DEFAULT_SUFFIX,
) -> tuple[list[Job], list[str]]:
    """Expand files, folders and glob patterns into jobs.

    Parameters
    ----------
    inputs : iterable of str
        Files, folders, or glob patterns (``*``, ``?``, ``[...]``; ``**`` with ``recursive``).
        Patterns are expanded here, so quoted patterns work the same as shell-expanded ones.
    recursive : bool, default False
        Walk folders recursively, keeping the relative layout under ``output_dir``.
    output_dir : str or None, default None
        Folder for the outputs; None puts each output next to its input.
    suffix : str, default "_denoised"
        Appended to each input's stem to name its output.

    Returns
    -------
    jobs : list of Job
        One job per input image, in the order found (folders sorted by name), duplicates
        removed.  An input that does not exist, a pattern that matches nothing, and a named file
        that is not an image give a job with ``error`` set, so that the caller reports them with
        the other per-input failures.
    warnings : list of str
        One line per thing skipped, file names printable (control characters escaped): non-image
        files, special files (FIFOs, sockets, devices) and broken links, sub-folders (without
        ``recursive``), and with ``recursive`` folders that cannot be read and links back into
        folders already scanned.

    Notes
    -----
    Files named directly are always taken.  Files found in folders or matched by patterns are
    taken when their extension is one of :data:`nlattn.io.IMAGE_EXTENSIONS` and their name does
    not start with a dot (hidden files, and the temporary files of writes), except the tool's
    own outputs: files whose stem ends with ``suffix`` (when it is not empty), and anything in
    ``output_dir`` when that folder lies below the folder being scanned (when it is the scanned
    folder itself, as in ``nlattn denoise . -o .``, the suffix alone tells outputs apart).
    Jobs whose output would overwrite an input or another job's output get an error (see
    :func:`check_jobs`).  Links to folders are followed with ``recursive`` unless they lead into
    a folder already scanned.  Nothing is opened: special files are told apart by ``os.stat``.
    Cost: one directory listing per folder visited and one ``stat`` per image file.
    """
    extensions = _image_extensions()
    out_real = _real(output_dir) if output_dir is not None else None
    jobs: list[Job] = []
    warnings: list[str] = []

    def warn(path: str, reason: str) -> None:
        warnings.append(f"skipping {printable(path)}: {reason}")

    def excluded_below(root: str) -> str | None:
        # The output folder is left out of a scan only when it lies strictly below the scanned
        # folder: when it *is* that folder (``nlattn denoise . -o .``) or above it, outputs are
        # recognised by their suffix alone.
        if out_real is None:
            return None
        return out_real if _inside(out_real, _real(root)) and out_real != _real(root) else None

    def add(path: str, relative: str) -> None:
        jobs.append(
            Job(path, output_path(path, relative, output_dir=output_dir, suffix=suffix), relative)
        )

    def add_found_file(path: str, relative: str, skip_dir: str | None) -> None:
        name = os.path.basename(path)
        if name.startswith("."):
            return  # hidden files, among them an interrupted write's temporary file
        stem = os.path.splitext(name)[0]
        if (suffix and stem.endswith(suffix)) or _inside(_real(path), skip_dir):
            return  # the tool's own output
        if not _is_image_name(path, extensions):
            warn(path, "not an image file")
            return
        kind = _special_kind(path)
        if kind is not None:
            warn(path, kind)
            return
        add(path, relative)

    def walk(folder: str, skip_dir: str | None) -> None:
        # os.walk with its silences spoken: unreadable folders and links to folders are
        # reported; links are followed unless they lead back into a folder already scanned
        scanned = {_real(folder)}

        def unreadable(exc: OSError) -> None:
            warn(exc.filename or folder, f"cannot read the folder ({exc.strerror or exc})")

        for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
            kept = []
            for name in sorted(dirs):
                path = os.path.join(root, name)
                real = _real(path)
                if _inside(real, skip_dir):
                    continue
                if real in scanned:  # a link back up (a loop) or to a folder seen already
                    warn(path, "a link to a folder that is scanned already")
                    continue
                scanned.add(real)
                kept.append(name)
            dirs[:] = kept
            for name in sorted(files):
                path = os.path.join(root, name)
                relative = os.path.relpath(path, folder).replace(os.sep, "/")
                add_found_file(path, relative, skip_dir)

    def add_folder(folder: str) -> None:
        skip_dir = excluded_below(folder)
        if recursive:
            walk(folder, skip_dir)
            return
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            jobs.append(Job(folder, "", os.path.basename(folder), one_line(exc)))
            return
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                if not _inside(_real(path), skip_dir):
                    warnings.append(
                        f"skipping folder {printable(path)} (use --recursive to enter it)"
                    )
                continue
            add_found_file(path, name, skip_dir)

    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            add_folder(item)
        elif os.path.isfile(item):
            if _is_image_name(item, extensions):
                add(item, os.path.basename(item))
            else:
                shown = ", ".join(sorted(extensions))
                reason = f"not an image file (extensions: {shown})"
                jobs.append(Job(item, "", os.path.basename(item), reason))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=recursive))
            if not matches:
                jobs.append(Job(item, "", item, "no file matches this pattern"))
            skip_dir = excluded_below(_glob_base(item))
            for match in matches:
                if _inside(_real(match), skip_dir):
                    continue
                if os.path.isdir(match):
                    add_folder(match)
                else:
                    add_found_file(match, os.path.basename(match), skip_dir)
        elif os.path.lexists(item):
            reason = _special_kind(item) or "not a regular file or folder"
            jobs.append(Job(item, "", os.path.basename(item), reason))
        else:
            jobs.append(Job(item, "", os.path.basename(item), "no such file or folder"))

    # the same file named twice (directly and through its folder, say): keep the first
    unique: list[Job] = []
    seen: set[str] = set()
    for job in jobs:
        key = _real(job.input) if job.error is None else "\0" + job.input
        if key in seen:
            continue
        seen.add(key)
        unique.append(job)
    return check_jobs(unique), warnings


def _special_kind(path: str) -> str | None:
    """Why ``path`` is not a regular file one can read an image from, or None when it is one.

    ``os.stat`` only: a FIFO is never opened (opening it would block until a writer comes).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "no such file"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return f"{kind}, not a regular file"
    return "not a regular file"


def check_jobs(jobs: Iterable[Job]) -> list[Job]:
    """Mark jobs that would overwrite an input or share an output with an earlier job.

    Parameters
    ----------
    jobs : iterable of Job
        The batch.

    Returns
    -------
    list of Job
        The same jobs, in order; a job whose output path is (resolves to) the input of any job in
        the batch, or the output of an earlier job, gets ``error`` set.  Jobs already in error are
        left as they are.

    Notes
    -----
    :func:`run_jobs` calls it, so hand-made job lists get the same protection.  O(number of jobs).
    """
    jobs = list(jobs)
    inputs = {_real(job.input): job.input for job in jobs if job.error is None}
    outputs: dict[str, str] = {}
    checked = []
    for job in jobs:
        if job.error is None:
            out = _real(job.output)
            if out in inputs:
                job = dataclasses.replace(
                    job, error=f"output {job.output} would overwrite the input {inputs[out]}"
                )
            elif out in outputs:
                job = dataclasses.replace(
                    job, error=f"output {job.output} is also the output of {outputs[out]}"
                )
            else:
                outputs[out] = job.input
        checked.append(job)
    return checked
