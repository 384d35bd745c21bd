"""Shared pieces of the benchmark scripts: the Set12 data, the noise protocol, metrics, timing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SET12 = Path(os.environ.get("NLATTN_SET12", ROOT.parent.parent / "shared" / "data" / "set12"))


def set12_images() -> dict[str, np.ndarray]:
    """The Set12 images as float64 arrays in [0, 255], by file stem."""
    if not SET12.is_dir():
        raise SystemExit(f"Set12 not found at {SET12}; set NLATTN_SET12 to its folder")
    return {
        p.stem: np.asarray(Image.open(p).convert("L"), dtype=np.float64)
        for p in sorted(SET12.glob("*.png"))
    }


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The ``size x size`` centre crop of ``image`` (a view)."""
    cy, cx, half = image.shape[0] // 2, image.shape[1] // 2, size // 2
    return image[cy - half: cy + half, cx - half: cx + half]


def add_noise(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Design section 6: Gaussian noise from ``default_rng(seed)``, no clipping."""
    return clean + np.random.default_rng(seed).normal(0.0, sigma, clean.shape)


def psnr(clean: np.ndarray, estimate: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(clean, np.clip(estimate, 0, 255), data_range=255))


def ssim(clean: np.ndarray, estimate: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(clean, np.clip(estimate, 0, 255), data_range=255))


def median_time(fn, repeats: int = 3) -> tuple[float, object]:
    """Median wall time of ``repeats`` runs of ``fn()`` (warm) and its last result."""
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def machine() -> dict:
    import numba

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "python": platform.python_version(),
    }


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=1))
    return path


def write_json_at(path: Path, payload: dict) -> Path:
    """Like :func:`write_json`, to any path (its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    return path
