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

# Vendor peaks used for "fraction of peak", by exact device name (torch.cuda.get_device_name): one
# family spans parts far apart (H100 PCIe has 60% of the SXM bandwidth), so a device not listed gets
# an empty cell, never a guess. name -> (memory GB/s, dense bf16 tensor-core TFLOP/s)
PEAKS = {
    "NVIDIA H100 80GB HBM3": (3350.0, 989.0),  # SXM5
    "NVIDIA H100 PCIe": (2000.0, 756.0),
    "NVIDIA H100 NVL": (3900.0, 835.0),
    "NVIDIA H200": (4800.0, 989.0),  # SXM
    "NVIDIA H200 NVL": (4800.0, 835.0),
    "NVIDIA A100-SXM4-80GB": (2039.0, 312.0),
    "NVIDIA A100-SXM4-40GB": (1555.0, 312.0),
    "NVIDIA A100 80GB PCIe": (1935.0, 312.0),
    "NVIDIA A100-PCIE-40GB": (1555.0, 312.0),
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    return f"cpu {os.cpu_count()} cores"


def peak(device: torch.device, unit: str) -> float | None:
    """The device's peak in `unit` ("GB/s" or bf16 "TFLOP/s"), None when the device is not in PEAKS."""
    if device.type != "cuda" or device_name(device) not in PEAKS:
        return None
    gbs, tflops = PEAKS[device_name(device)]
    return {"GB/s": gbs, "TFLOP/s": tflops}.get(unit)


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


def append(name: str, rows: list[dict], fields: list[str] = FIELDS) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.csv"
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        for row in rows:
            w.writerow({k: row.get(k, "") for k in fields})
    return path


def stamp(device: torch.device) -> dict:
    """The device and date columns every results row carries."""
    return {"device": device_name(device), "date": datetime.date.today().isoformat()}


def row(kernel, provider, mode, shape, times, device, achieved=None, unit="") -> dict:
    med, p20, p80 = times
    pk = peak(device, unit) if achieved is not None else None
    return {"kernel": kernel, "provider": provider, "mode": mode, "shape": shape,
            "median_ms": f"{med:.4f}", "p20_ms": f"{p20:.4f}", "p80_ms": f"{p80:.4f}",
            "achieved": "" if achieved is None else f"{achieved:.2f}", "unit": unit,
            "fraction_of_peak": "" if pk is None else f"{achieved / pk:.3f}", **stamp(device)}
