"""Check the compiled Triton kernels against their PyTorch references on a CUDA GPU.

    python bench/check_compiled.py [--no-record]

The test suite runs the kernels only in Triton's CPU interpreter, which cannot see what compiling for
a GPU changes: the GPU tile sizes (the interpreter uses 16-tiles), tensor-core precision, bf16 (wrong
in the interpreter), how float arguments reach a kernel. This runs future_info forward and backward,
and attention forward and backward with each option (plain causal, horizon, myopic without and with
past keys, reach, query-token mask, all at once), over shapes that cross the GPU tiles and are not
multiples of them, in fp32 and bf16 (and fp64 for a few).

Every output and every gradient is compared with the reference evaluated in fp64 on the same input
values. A tensor passes when its max abs error is at most tol · max|fp64 value| plus twice the error
of the reference itself run in the input dtype (PyTorch's own rounding in that dtype): tol is 2e-4
(attention) and 1e-3 (future_info, whose d×d solve amplifies rounding) in fp32, 2e-2 in bf16, 1e-10
in fp64. One line per case; one row per tensor appended to bench/results/check_compiled.csv (unless
--no-record); exit status 1 on any failure. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys

# the point is the compiled kernels: triton reads this when it is first imported
os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402

FIELDS = ["kernel", "option", "dtype", "shape", "tensor", "max_abs_err", "bound", "passed", "device", "date"]
TOL = {
    "attention": {torch.float32: 2e-4, torch.bfloat16: 2e-2, torch.float64: 1e-10},
    "future_info": {torch.float32: 1e-3, torch.bfloat16: 2e-2, torch.float64: 1e-10},
}
REACH_H = 5.3  # not an fp32 number: an fp64 run shows whether the kernels read it at full precision

# (B, H, T, Dh): T below, across and not a multiple of the GPU tiles (64/128 rows), Dh 16/64/128 and
# 80 (padded to 128 lanes); the options each shape runs (None: all) and the dtypes
ATTENTION_CASES = [
    ((3, 2, 5, 16), None, (torch.float32, torch.bfloat16)),
    ((2, 3, 77, 16), None, (torch.float32, torch.bfloat16)),
    ((1, 2, 600, 64), None, (torch.float32, torch.bfloat16)),
    ((2, 2, 333, 128), None, (torch.float32, torch.bfloat16)),
    ((1, 2, 200, 80), ("plain", "all"), (torch.float32, torch.bfloat16)),
    ((1, 2, 150, 24), ("reach", "all"), (torch.float64,)),
]
# (N, d, d_z): one column tile (d <= 64) and several (100, 130, 512), N across the row chunks, d_z up
# to MAX_DZ
FUTURE_INFO_CASES = [
    ((3, 2, 1), (torch.float32, torch.bfloat16)),
    ((777, 5, 3), (torch.float32, torch.bfloat16)),
    ((4097, 64, 16), (torch.float32, torch.bfloat16, torch.float64)),
    ((10000, 100, 33), (torch.float32, torch.bfloat16, torch.float64)),
    ((5000, 130, 128), (torch.float32, torch.bfloat16)),
    ((32768, 512, 16), (torch.float32, torch.bfloat16)),
]


def attention_options(T: int, is_query: torch.Tensor) -> dict[str, dict]:
    """name -> attention keyword arguments; "past": True stands for k_past, v_past (the model's)."""
    horizon = T // 5 + 2  # several key tiles at T = 600: some skipped, some wholly inside the window
    return {
        "plain": {},
        "horizon": {"horizon": horizon},
        "myopic": {"myopic": True},
        "myopic+past": {"myopic": True, "past": True},
        "reach": {"reach_h": REACH_H},
        "query_mask": {"is_query": is_query},
        "all": {"horizon": horizon, "myopic": True, "past": True, "reach_h": REACH_H, "is_query": is_query},
    }


def attention_run(backend: str, inputs: list[torch.Tensor], dtype: torch.dtype, option: dict, weights):
    """{tensor name: value} of out, reach and the gradients of Σ out·weights + 3·reach."""
    from constrained.kernels.attention import attention

    xs = [x.to(dtype, copy=True).requires_grad_() for x in inputs]
    kwargs = {key: value for key, value in option.items() if key != "past"}
    names = ["q", "k", "v"]
    if option.get("past"):
        kwargs.update(k_past=xs[3], v_past=xs[4])
        names += ["k_past", "v_past"]
    else:
        xs = xs[:3]
    out, reach = attention(*xs[:3], backend=backend, **kwargs)
    outputs, grad_outputs = [out], [weights.to(out.dtype)]
    if reach is not None:
        outputs.append(reach)
        grad_outputs.append(torch.full_like(reach, 3.0))
    grads = torch.autograd.grad(outputs, xs, grad_outputs)
    result = {"out": out, **({"reach": reach} if reach is not None else {})}
    return {**result, **{f"d{name}": g for name, g in zip(names, grads)}}


def future_info_run(backend: str, inputs: list[torch.Tensor], dtype: torch.dtype, option: dict, weights):
    """{tensor name: value} of R²(z | h) and its gradients; option and weights are unused (one signature
    with attention_run)."""
    from constrained.kernels.future_info import future_info

    h, z = (x.to(dtype, copy=True).requires_grad_() for x in inputs)
    r2 = future_info(h, z, backend=backend, check_finite=False)
    dh, dz = torch.autograd.grad(r2, [h, z])
    return {"r2": r2, "dh": dh, "dz": dz}


def compare(run, inputs, dtype, option, weights, tol) -> list[tuple[str, float, float]]:
    """(tensor, max abs error of the Triton run, bound) for each output and gradient."""
    got = run("triton", inputs, dtype, option, weights)
    own = run("reference", inputs, dtype, option, weights)
    truth = run("reference", inputs, torch.float64, option, weights)
    rows = []
    for name, exact in truth.items():
        err = (got[name].double() - exact).abs().max().item()
        own_err = (own[name].double() - exact).abs().max().item()
        scale = max(exact.abs().max().item(), 1e-3)  # floor: a gradient that is exactly zero
        rows.append((name, err, tol * scale + 2 * own_err))
    return rows


def cases(device: torch.device):
    """(kernel, option name, dtype, shape text, run, inputs, option, weights) for every case."""
    gen = torch.Generator(device=device).manual_seed(0)
    for shape, only, dtypes in ATTENTION_CASES:
        B, H, T, Dh = shape
        inputs = [torch.randn(shape, device=device, generator=gen) for _ in range(3)]
        inputs += [x.clone() for x in inputs[1:]]  # k_past, v_past hold the values of k, v
        weights = torch.randn(shape, device=device, generator=gen)
        is_query = torch.rand(T, device=device, generator=gen) < 0.3
        for name, option in attention_options(T, is_query).items():
            if only is not None and name not in only:
                continue
            for dtype in dtypes:
                yield ("attention", name, dtype, f"B={B} H={H} T={T} Dh={Dh}", attention_run, inputs, option,
                       weights)
    for (n, d, dz), dtypes in FUTURE_INFO_CASES:
        # large, uneven column means (the algebraic centring) and a z partly linear in h
        h = torch.randn(n, d, device=device, generator=gen, dtype=torch.float64)
        h = h * torch.linspace(0.5, 3.0, d, device=device, dtype=torch.float64) + 10.0
        w = torch.randn(d, dz, device=device, generator=gen, dtype=torch.float64)
        noise = torch.randn(n, dz, device=device, generator=gen, dtype=torch.float64)
        z = 0.5 * (h - 10.0) @ w / d**0.5 + noise - 4.0
        for dtype in dtypes:
            yield "future_info", "-", dtype, f"N={n} d={d} dz={dz}", future_info_run, [h, z], {}, None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-record", action="store_true", help="print only; append nothing to bench/results")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("check_compiled: the compiled Triton kernels need a CUDA GPU; none here, nothing checked")
        return 0

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/ is scripts, not a package
    from common import append, device_name, stamp

    from constrained.kernels import attention as attention_module
    from constrained.kernels import future_info as future_info_module

    if attention_module.INTERPRETED or future_info_module._interpreted():
        print("check_compiled: triton was imported under TRITON_INTERPRET=1; run it in a fresh process")
        return 1
    # fp32 products in fp32 on both sides: the kernel follows this switch, the reference's matmuls too
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device("cuda")
    print(f"device: {device_name(device)}; torch {torch.__version__}; attention horizon T // 5 + 2, "
          f"reach_h {REACH_H}")

    records, failed = [], 0
    for kernel, name, dtype, shape, run, inputs, option, weights in cases(device):
        dtype_name = str(dtype).removeprefix("torch.")
        head = f"{kernel:11s} {dtype_name:8s} {shape:22s} {name:14s}"
        try:
            results = compare(run, inputs, dtype, option, weights, TOL[kernel][dtype])
        except Exception as e:  # a compile or launch failure is a failed case, not the end of the check
            failed += 1
            message = str(e).splitlines()[0][:200] if str(e) else ""
            print(f"{head} FAIL {type(e).__name__}: {message}", flush=True)
            records.append({"kernel": kernel, "option": name, "dtype": dtype_name, "shape": shape,
                            "tensor": f"error: {type(e).__name__}", "passed": False, **stamp(device)})
            continue
        ok = all(err <= bound for _, err, bound in results)
        failed += not ok
        errors = "  ".join(f"{t} {err:.1e}" + ("" if err <= bound else f" > {bound:.1e}") for t, err, bound in results)
        print(f"{head} {'PASS' if ok else 'FAIL'}  {errors}", flush=True)
        records += [{"kernel": kernel, "option": name, "dtype": dtype_name, "shape": shape, "tensor": t,
                     "max_abs_err": f"{err:.3e}", "bound": f"{bound:.3e}", "passed": err <= bound, **stamp(device)}
                    for t, err, bound in results]
        torch.cuda.empty_cache()

    if not args.no_record:
        print(f"appended {len(records)} rows to {append('check_compiled', records, FIELDS)}")
    total = len({(r["kernel"], r["option"], r["dtype"], r["shape"]) for r in records})
    print(f"{total - failed} of {total} cases passed" + ("" if failed == 0 else f"; {failed} FAILED"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
