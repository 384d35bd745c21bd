"""Hostile users and faults: does the batch tool ever lose, hide or garble anything?

    python benchmarks/hostile.py [--tree PATH] [--only NAME,...] [--out results/hostile.json]

Each case sets up files, runs the real command line in a subprocess (its own session, so that
signals reach the whole process group as a terminal's do), and checks what a user would check:
the exit status, the time, that stderr has no traceback and every message is one line, that no
temporary file or process is left, that every output is complete, and the case's own promise.

``--tree PATH`` runs the cases against another source tree (a checkout of an older commit:
``git worktree add /tmp/old <commit>``), to count what it mishandled.  Cases needing Dask are
skipped when it is not installed.  Results: one row per case (passed, seconds, what was seen).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SLOW = ["--sigma", "12", "--patch-radius", "2", "--search-radius", "10", "--threads", "1"]
TEMP = re.compile(r"^\..*\.[0-9a-f]{12}\.tmp")
CASES = {}


def case(func):
    CASES[func.__name__] = func
    return func


class Runner:
    """Runs ``nlattn`` from a source tree in subprocesses."""

    def __init__(self, tree: Path | None) -> None:
        self.env = dict(os.environ)
        if tree is not None:
            shim = Path(tempfile.mkdtemp(prefix="nlattn-shim-"))
            (shim / "nlattn").symlink_to(tree / "nlattn")
            (shim / "nlattn_cli").symlink_to(tree / "cli")
            self.env["PYTHONPATH"] = str(shim)

    def command(self, *args) -> list[str]:
        code = "import sys; from nlattn_cli.main import cli; sys.exit(cli())"
        return [sys.executable, "-c", code, *map(str, args)]

    def start(self, cwd: Path, *args, env=None) -> tuple[subprocess.Popen, Path]:
        log = cwd / f"log-{time.monotonic_ns()}.txt"
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                self.command(*args), cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True, env=dict(self.env, **(env or {})),
            )  # fmt: skip
        return proc, log

    def run(self, cwd: Path, *args, timeout: float = 120, env=None) -> dict:
        start = time.monotonic()
        try:
            done = subprocess.run(
                self.command(*args), cwd=cwd, capture_output=True, timeout=timeout,
                env=dict(self.env, **(env or {})),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"rc": "hung", "seconds": timeout, "out": "", "err": ""}
        return {
            "rc": done.returncode,
            "seconds": time.monotonic() - start,
            "out": done.stdout.decode(errors="replace"),
            "err": done.stderr.decode(errors="replace"),
        }


def images(folder: Path, n: int, shape=(160, 160)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        ramp = np.linspace(30, 220, shape[1])[None, :] * np.ones(shape)
        image = np.clip(np.rint(ramp + rng.normal(0, 12, shape)), 0, 255).astype(np.uint8)
        path = folder / f"im{i:02d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def visible(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMP.match(p.name)) if folder.is_dir() else []


def clean_text(text: str) -> list[str]:
    """Problems of a command's terminal output: tracebacks, stray library lines."""
    problems = ["traceback"] if "Traceback" in text else []
    stray = ("RuntimeWarning", "resource_tracker", "KeyboardInterrupt", " - ERROR - ",
             " - WARNING - ", "Exception ignored")  # fmt: skip
    for line in text.splitlines():
        if not line.startswith(("warning:", "error:")) and any(word in line for word in stray):
            problems.append(f"stray line: {line.strip()[:80]}")
    return list(dict.fromkeys(problems))


def complete(folder: Path) -> list[str]:
    """Outputs that cannot be read back whole."""
    bad = []
    for name in visible(folder):
        try:
            with Image.open(folder / name) as im:
                im.load()
        except Exception:  # noqa: BLE001
            bad.append(name)
    return bad


def group_alive(pgid: int) -> list[int]:
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                alive.append(int(entry))
    return alive


def wait_outputs(folder: Path, count: int, proc, timeout=120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(visible(folder)) >= count:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def verdict(seen: dict, problems: list[str]) -> dict:
    return {"passed": not problems, "problems": problems, **seen}


# ----------------------------------------------------------------------------------------------
# Signals
# ----------------------------------------------------------------------------------------------


def _interrupt(r: Runner, w: Path, extra: list[str], signum: int) -> dict:
    images(w / "in", 20)
    proc, log = r.start(w, "denoise", "in", "-o", "out", *SLOW, *extra)
    if not wait_outputs(w / "out", 2, proc):
        return verdict({}, [f"did not start: {log.read_text()[-300:]}"])
    sent = time.monotonic()
    os.killpg(proc.pid, signum)
    time.sleep(0.05)
    os.killpg(proc.pid, signum)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    seconds = time.monotonic() - sent
    time.sleep(1)
    left = group_alive(proc.pid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    done = len(visible(w / "out"))
    problems = clean_text(text)
    if seconds > 10:
        problems.append(f"took {seconds:.1f} s to exit")
    if proc.returncode == 0:
        problems.append("exit 0")
    if temporaries(w / "out"):
        problems.append(f"temporaries left: {temporaries(w / 'out')}")
    if left:
        problems.append(f"{len(left)} processes left running")
    if done >= 20:
        problems.append("not interrupted: the whole queue was denoised")
    problems += [f"incomplete {name}" for name in complete(w / "out")]
    return verdict({"rc": proc.returncode, "seconds": seconds, "done": done}, problems)


@case
def sigint_pool(r, w):
    """Ctrl-C twice to a -j 2 batch."""
    return _interrupt(r, w, ["-j", "2"], signal.SIGINT)


@case
def sigint_serial(r, w):
    """Ctrl-C twice to a serial batch."""
    return _interrupt(r, w, [], signal.SIGINT)


@case
def sigterm_pool(r, w):
    """SIGTERM (kill, a job scheduler's stop) twice to a -j 2 batch."""
    return _interrupt(r, w, ["-j", "2"], signal.SIGTERM)


@case
def kill_worker(r, w):
    """kill -9 of one -j 2 worker mid-batch: every image still done."""
    images(w / "in", 20)
    proc, log = r.start(w, "denoise", "in", "-o", "out", *SLOW, "-j", "2")
    if not wait_outputs(w / "out", 2, proc):
        return verdict({}, ["did not start"])
    workers = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
                command = open(f"/proc/{entry}/cmdline", "rb").read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if int(fields[1]) == proc.pid and b"resource_tracker" not in command:
                workers.append(int(entry))
    os.kill(workers[0], signal.SIGKILL)
    proc.wait(timeout=300)
    text = log.read_text()
    done = len(visible(w / "out"))
    problems = clean_text(text)
    if done != 20:
        problems.append(f"{20 - done} images lost")
    if proc.returncode != 0:
        problems.append(f"exit {proc.returncode}")
    if temporaries(w / "out"):
        problems.append("temporaries left")
    return verdict({"rc": proc.returncode, "done": done}, problems)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


@case
def special_files_in_folder(r, w):
    """A FIFO, a socket and a broken link among images: the batch finishes and names them."""
    images(w / "in", 2, (40, 40))
    os.mkfifo(w / "in" / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(w / "in" / "sock.png"))
    os.symlink(w / "in" / "gone.png", w / "in" / "broken.png")
    seen = r.run(w, "denoise", "in", "-o", "out", "--sigma", "10", timeout=60)
    sock.close()
    problems = clean_text(seen["err"])
    if seen["rc"] == "hung":
        problems.append("hung")
    for name in ("pipe.png", "sock.png", "broken.png"):
        if name not in seen["err"]:
            problems.append(f"{name} not named")
    if len(visible(w / "out")) != 2:
        problems.append("images not done")
    return verdict({"rc": seen["rc"], "seconds": seen["seconds"]}, problems)


@case
def link_loop_recursive(r, w):
    """-r over a folder holding a link to itself and an unreadable sub-folder link."""
    images(w / "in" / "sub", 1, (40, 40))
    os.symlink(w / "in", w / "in" / "sub" / "loop")
    seen = r.run(w, "denoise", "in", "-r", "-o", "out", "--sigma", "10", timeout=60)
    problems = clean_text(seen["err"])
    if seen["rc"] != 0:
        problems.append(f"exit {seen['rc']}")
    if "loop" not in seen["err"]:
        problems.append("the link back up is not named")
    return verdict({"rc": seen["rc"]}, problems)


@case
def odd_names(r, w):
    """A newline and a terminal escape in file names: one line each, no raw escape."""
    (w / "in").mkdir()
    (w / "in" / "two\nlines.png").write_bytes(b"not an image")
    images(w / "in", 1, (40, 40))
    os.rename(w / "in" / "im00.png", w / "in" / "esc\x1b[31mred.png")
    seen = r.run(w, "denoise", "in", "-o", "out", "--sigma", "10")
    lines = seen["err"].splitlines()
    problems = clean_text(seen["err"])
    if "\x1b" in seen["err"]:
        problems.append("raw escape sequence printed")
    if any(not line.startswith(("error:", "warning:", "[", "denoised")) for line in lines):
        problems.append("a message split over lines")
    return verdict({"rc": seen["rc"]}, problems)


@case
def huge_float_tiff(r, w):
    """A float TIFF with values up to 1e30 (and one down to 1e-30): never NaN written as ok."""
    rng = np.random.default_rng(0)
    base = np.clip(np.linspace(0, 1, 48)[None, :] + rng.normal(0, 0.1, (40, 48)), 0, 1)
    (w / "in").mkdir()
    tifffile.imwrite(w / "in" / "huge.tif", (base * 1e30).astype(np.float32))
    tifffile.imwrite(w / "in" / "tiny.tif", (base * 1e-30).astype(np.float32))
    seen = r.run(w, "denoise", "in", "-o", "out", "--json")
    problems = clean_text(seen["err"])
    for line in seen["out"].splitlines():
        record = json.loads(line)
        if record["status"] == "ok":
            out = tifffile.imread(record["output"] if os.path.isabs(record["output"])
                                  else w / record["output"])  # fmt: skip
            if not np.isfinite(out).all():
                problems.append(f"{os.path.basename(record['input'])}: non-finite output as ok")
            elif np.ptp(out) == 0:
                problems.append(f"{os.path.basename(record['input'])}: constant output as ok")
        else:
            problems.append(f"{os.path.basename(record['input'])} not denoised: {record['error']}")
    return verdict({"rc": seen["rc"]}, problems)


@case
def absurd_h(r, w):
    """--h 1e-30 (no smoothing at all): the image back, never garbage."""
    images(w / "in", 1, (40, 40))
    seen = r.run(w, "denoise", "in", "-o", "out", "--sigma", "10", "--h", "1e-30", "--json")
    problems = clean_text(seen["err"])
    records = [json.loads(line) for line in seen["out"].splitlines()]
    if not records or records[0]["status"] != "ok":
        problems.append(f"refused: {records[0]['error'] if records else seen['err'][-200:]}")
    elif records[0].get("warning"):
        problems.append(f"warned: {records[0]['warning']}")
    else:
        out = np.asarray(Image.open(w / records[0]["output"]), np.float64)
        noisy = np.asarray(Image.open(w / "in" / "im00.png"), np.float64)
        if np.abs(out - noisy).mean() > 12:  # sigma 10: no more change than the noise itself
            problems.append(f"garbage: mean change {np.abs(out - noisy).mean():.1f}")
    return verdict({"rc": seen["rc"]}, problems)


@case
def reference_problems(r, w):
    """--reference folder missing one image, with another of the wrong size: outputs written."""
    images(w / "in", 2, (40, 40))
    images(w / "clean", 1, (30, 30))  # im00 of the wrong size, im01 missing
    seen = r.run(w, "denoise", "in", "-o", "out", "--sigma", "10", "--reference", "clean")
    problems = clean_text(seen["err"])
    if len(visible(w / "out")) != 2:
        problems.append(f"outputs dropped: {2 - len(visible(w / 'out'))}")
    if seen["rc"] != 0:
        problems.append(f"exit {seen['rc']}")
    return verdict({"rc": seen["rc"]}, problems)


@case
def demo_twice(r, w):
    """The quick start, run twice."""
    first = r.run(w, "denoise", "--demo", "--patch-radius", "1", "--search-radius", "3")
    second = r.run(w, "denoise", "--demo", "--patch-radius", "1", "--search-radius", "3")
    problems = clean_text(first["err"] + second["err"])
    if (first["rc"], second["rc"]) != (0, 0):
        problems.append(f"exits {first['rc']}, {second['rc']}")
    return verdict({}, problems)


@case
def two_runs_one_folder(r, w):
    """The same command started twice at once: nothing clobbered, nothing failed."""
    images(w / "in", 12)
    runs = [r.start(w, "denoise", "in", "-o", "out", "--skip-existing", *SLOW) for _ in range(2)]
    for proc, _ in runs:
        proc.wait(timeout=300)
    text = "".join(log.read_text() for _, log in runs)
    problems = clean_text(text)
    if [proc.returncode for proc, _ in runs] != [0, 0]:
        problems.append(f"exits {[proc.returncode for proc, _ in runs]}: {text[-300:]}")
    if len(visible(w / "out")) != 12 or complete(w / "out") or temporaries(w / "out"):
        problems.append("outputs missing, broken or temporaries left")
    return verdict({}, problems)


@case
def write_into_missing_folder(r, w):
    """write_image into a folder that does not exist: the error names the folder."""
    code = ("import numpy as np, nlattn\n"
            "try:\n    nlattn.write_image('no/such/folder/a.png', np.zeros((4, 4), np.uint8))\n"
            "except OSError as exc:\n    print(exc)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=w, capture_output=True,
                          env=r.env, text=True)  # fmt: skip
    problems = [] if "no/such/folder" in done.stdout and ".tmp" not in done.stdout else [
        f"says: {done.stdout.strip() or done.stderr[-200:]}"
    ]
    return verdict({}, problems)


@case
def gated_operators(r, w):
    """denoise --method fast (an attention operator that makes images worse): refused."""
    images(w / "in", 1, (40, 40))
    seen = r.run(w, "denoise", "in", "-o", "out", "--method", "fast", "--sigma", "10")
    problems = clean_text(seen["err"])
    if seen["rc"] != 2:
        problems.append(f"offered as a denoiser (exit {seen['rc']})")
    return verdict({"rc": seen["rc"]}, problems)


@case
def attnmap_k_and_nan(r, w):
    """attnmap -k beyond the keys (usage error) and on a NaN image (file error, exit 1)."""
    images(w, 1, (48, 64))
    big = r.run(w, "attnmap", "im00.png", "--query", "4,4", "-k", "100000", "-o", "map.png")
    nan = np.full((8, 8), np.nan, np.float32)
    tifffile.imwrite(w / "nan.tif", nan)
    bad = r.run(w, "attnmap", "nan.tif", "--query", "4,4", "-o", "map2.png")
    problems = clean_text(big["err"] + bad["err"])
    if big["rc"] != 2:
        problems.append(f"-k 100000 gave exit {big['rc']}")
    if bad["rc"] != 1:
        problems.append(f"NaN image gave exit {bad['rc']}")
    return verdict({}, problems)


# ----------------------------------------------------------------------------------------------
# Dask
# ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster(r: Runner, w: Path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", str(port),
         "--no-dashboard"], cwd=w, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env=r.env,
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
         "--no-nanny", "--no-dashboard"], cwd=w, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True, env=r.env,
    )  # fmt: skip
    return address, scheduler, worker


def _dask_loss(r: Runner, w: Path, victim: str) -> dict:
    images(w / "in", 16)
    address, scheduler, worker = _cluster(r, w)
    env = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"}
    try:
        proc, log = r.start(w, "denoise", str(w / "in"), "-o", str(w / "out"), *SLOW,
                            "--scheduler", address, env=env)  # fmt: skip
        if not wait_outputs(w / "out", 1, proc, timeout=60):
            return verdict({}, [f"did not start: {log.read_text()[-300:]}"])
        sent = time.monotonic()
        os.killpg((worker if victim == "worker" else scheduler).pid, signal.SIGKILL)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return verdict({}, ["hung (killed after 90 s)"])
        seconds = time.monotonic() - sent
    finally:
        for p in (scheduler, worker):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    text = log.read_text()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    problems = clean_text(text)
    if seconds > 30:
        problems.append(f"took {seconds:.0f} s")
    if not errors:
        problems.append("no image named")
    return verdict({"rc": proc.returncode, "seconds": seconds, "named": len(errors)}, problems)


@case
def dask_last_worker_dies(r, w):
    """kill -9 of the cluster's only worker mid-batch."""
    return _dask_loss(r, w, "worker")


@case
def dask_scheduler_dies(r, w):
    """kill -9 of the scheduler mid-batch."""
    return _dask_loss(r, w, "scheduler")


@case
def dask_bad_addresses(r, w):
    """--scheduler notanaddress (usage error) and a port nobody listens on (one line, fast)."""
    images(w / "in", 1, (40, 40))
    bad = r.run(w, "denoise", "in", "--scheduler", "notanaddress", timeout=120)
    gone = r.run(w, "denoise", "in", "--scheduler", f"tcp://127.0.0.1:{_free_port()}",
                 timeout=120)  # fmt: skip
    problems = clean_text(bad["err"] + gone["err"])
    if bad["rc"] != 2 or bad["seconds"] > 10:
        problems.append(f"notanaddress: exit {bad['rc']} after {bad['seconds']:.0f} s")
    if gone["rc"] == 0 or gone["seconds"] > 15 or len(gone["err"].strip().splitlines()) != 1:
        problems.append(f"no scheduler: exit {gone['rc']} after {gone['seconds']:.0f} s, "
                        f"{len(gone['err'].strip().splitlines())} lines")  # fmt: skip
    return verdict({}, problems)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=None)
    parser.add_argument("--only", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "hostile.json")
    args = parser.parse_args(argv)
    runner = Runner(args.tree.resolve() if args.tree else None)
    names = args.only.split(",") if args.only else list(CASES)
    rows = []
    for name in names:
        work = Path(tempfile.mkdtemp(prefix=f"nlattn-{name}-"))
        start = time.monotonic()
        try:
            if name.startswith("dask"):
                import distributed  # noqa: F401
            row = CASES[name](runner, work)
        except ImportError:
            row = {"passed": None, "problems": ["skipped: Dask not installed"]}
        except Exception as exc:  # noqa: BLE001 - a case that breaks is a failed case
            row = {"passed": False, "problems": [f"case broke: {type(exc).__name__}: {exc}"]}
        row = {"case": name, "what": CASES[name].__doc__, **row,
               "case_seconds": time.monotonic() - start}  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
        rows.append(row)
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[row["passed"]]
        print(f"{mark} {name:<26} {'; '.join(row['problems'])[:150]}", flush=True)
    passed = sum(row["passed"] is True for row in rows)
    print(f"{passed} of {len(rows)} cases handled")
    result = {
        "tree": str(args.tree) if args.tree else "this checkout",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "passed": passed,
        "cases": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
