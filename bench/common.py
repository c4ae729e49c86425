"""Shared timing and CSV output for the benchmark scripts (bench/*.py).

Rows are appended to bench/results/<name>.csv in long format so runs on different devices
and dates accumulate side by side.
"""

from __future__ import annotations

import csv
import datetime
import statistics
import time
from pathlib import Path

import torch

FIELDS = ["kernel", "provider", "mode", "shape", "median_ms", "p20_ms", "p80_ms",
          "achieved", "unit", "fraction_of_peak", "device", "date"]
RESULTS = Path(__file__).parent / "results"

# Dense peaks used for "fraction of peak"; a device not listed gets an empty cell, never a guess.
PEAKS = {  # name substring -> (HBM GB/s, dense fp32 TFLOP/s, dense tf32/bf16 TFLOP/s)
    "H100": (3350.0, 67.0, 989.0),
    "H200": (4800.0, 67.0, 989.0),
    "A100": (2039.0, 19.5, 312.0),
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    return f"cpu {os.cpu_count()} cores"


def peak(device: torch.device, unit: str) -> float | None:
    name = device_name(device)
    for key, (gbs, _fp32, tc) in PEAKS.items():
        if key in name:
            return {"GB/s": gbs, "TFLOP/s": tc}.get(unit)
    return None


def time_ms(fn, device: torch.device, warmup: int = 3, reps: int = 20) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of fn(); CUDA timing by triton's do_bench, CPU by wall clock."""
    if device.type == "cuda":
        from triton.testing import do_bench

        p50, p20, p80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8], warmup=25, rep=100)
        return p50, p20, p80
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(samples, n=10)
    return statistics.median(samples), q[1], q[7]


def append(name: str, rows: list[dict]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.csv"
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for row in rows:
            w.writerow({k: row.get(k, "") for k in FIELDS})
    return path


def row(kernel, provider, mode, shape, times, device, achieved=None, unit="") -> dict:
    med, p20, p80 = times
    pk = peak(device, unit) if achieved is not None else None
    return {"kernel": kernel, "provider": provider, "mode": mode, "shape": shape,
            "median_ms": f"{med:.4f}", "p20_ms": f"{p20:.4f}", "p80_ms": f"{p80:.4f}",
            "achieved": "" if achieved is None else f"{achieved:.2f}", "unit": unit,
            "fraction_of_peak": "" if pk is None else f"{achieved / pk:.3f}",
            "device": device_name(device), "date": datetime.date.today().isoformat()}
