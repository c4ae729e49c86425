"""Benchmark future_info: Triton (CUDA only) against the eager reference and torch.compile of it.

    python bench/future_info.py [--quick]

Times forward, backward (gradient w.r.t. H from a retained graph) and forward+backward for
N ∈ {4096, 32768, 131072}, d ∈ {64, 512}, d_z = 16, fp32 (--quick: the smallest shape only), and
appends the rows to bench/results/future_info.csv. Achieved bandwidth counts the bytes the fused
kernels must move at least: H and Z read once by the forward; read again, plus dH written, by the
backward. At d = 512 the forward's tile pairs in fact read H about 9 times (kernels/future_info.py),
partly from L2, so this is the useful bandwidth, not the traffic.
The core functions are timed, not the checked `future_info` entry, whose finiteness check (a pass
over H and Z plus a host sync) would cost every provider the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from constrained.kernels.future_info import FutureInfo, future_info_reference, triton

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is scripts, not a package
from common import append, device_name, row, time_ms  # noqa: E402

KERNEL = "future_info"
DZ = 16
EPS0 = 1e-3


def _providers(device: torch.device) -> dict:
    providers = {}
    if device.type == "cuda" and triton is not None:
        providers["triton"] = lambda h, z: FutureInfo.apply(h, z, EPS0)
    providers["eager"] = lambda h, z: future_info_reference(h, z, EPS0)
    compiled = torch.compile(future_info_reference)
    providers["compile"] = lambda h, z: compiled(h, z, EPS0)
    return providers


def _bytes(n: int, d: int, mode: str) -> int:
    read = 4 * n * (d + DZ)  # fp32 H and Z
    dh = 4 * n * d
    return {"fwd": read, "bwd": read + dh, "fwd+bwd": 2 * read + dh}[mode]


def _bench_shape(fn, n: int, d: int, device: torch.device) -> dict[str, tuple[float, float, float]]:
    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(n, d, device=device, generator=g).requires_grad_()
    z = torch.randn(n, DZ, device=device, generator=g) + 0.1 * h[:, :DZ].detach()

    def fwd():
        with torch.no_grad():
            return fn(h, z)

    def fwd_bwd():
        return torch.autograd.grad(fn(h, z), [h])

    out = fn(h, z)  # also compiles, outside the timed region

    def bwd():
        return torch.autograd.grad(out, [h], retain_graph=True)

    return {"fwd": time_ms(fwd, device), "bwd": time_ms(bwd, device), "fwd+bwd": time_ms(fwd_bwd, device)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the smallest shape (N = 4096, d = 64)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        print("Triton needs a CUDA GPU: timing the reference paths only")
    shapes = [(4096, 64)] if args.quick else [(n, d) for n in (4096, 32768, 131072) for d in (64, 512)]
    print(f"device: {device_name(device)}")

    rows, failures = [], []
    for name, fn in _providers(device).items():
        for n, d in shapes:
            shape = f"N={n},d={d},dz={DZ}"
            try:
                times = _bench_shape(fn, n, d, device)
            except Exception as e:  # torch.compile on CPU may fail; report it, record nothing
                failures.append(f"{name} {shape}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                print(f"  {name:8s} {shape}: FAILED ({type(e).__name__})", flush=True)
                continue
            for mode, t in times.items():
                gbs = _bytes(n, d, mode) / (t[0] * 1e-3) / 1e9
                rows.append(row(KERNEL, name, mode, shape, t, device, gbs, "GB/s"))
            print(f"  {name:8s} {shape}: done", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    if rows:
        path = append(KERNEL, rows)
        print(f"\nappended {len(rows)} rows to {path}\n")
        eager = {(r["mode"], r["shape"]): float(r["median_ms"]) for r in rows if r["provider"] == "eager"}
        print(f"{'provider':9s} {'mode':8s} {'shape':24s} {'median ms':>10s} {'p20':>9s} {'p80':>9s} {'GB/s':>9s} "
              f"{'x eager':>8s}")
        for r in sorted(rows, key=lambda r: (r["shape"], r["mode"], r["provider"])):
            ms = float(r["median_ms"])
            ref = eager.get((r["mode"], r["shape"]))
            speedup = f"{ref / ms:8.2f}" if ref else f"{'':8s}"
            print(f"{r['provider']:9s} {r['mode']:8s} {r['shape']:24s} {ms:10.3f} {float(r['p20_ms']):9.3f} "
                  f"{float(r['p80_ms']):9.3f} {float(r['achieved']):9.1f} {speedup}")
    for f in failures:
        print(f"FAILED {f}")


if __name__ == "__main__":
    main()
