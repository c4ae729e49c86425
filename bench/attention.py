"""Benchmark the fused constrained attention (kernels/attention.py) against its alternatives.

    python bench/attention.py [--quick]

Providers, per option:
  triton   attention(..., backend="triton"): the fused kernel
  sdpa     F.scaled_dot_product_attention(is_causal=True): plain causal only (it has no other option)
  eager    attention_reference: masked softmax with the (T, T) pattern in memory
  compile  torch.compile(attention_reference)
Options: causal (plain), horizon h = T/8, myopic (no past keys: the backward skips the dK/dV sweep),
myopic+past (k_past, v_past as the model passes them on CUDA, see Attention.forward: the sweep runs
for their gradient; what a myopic model's training step costs), reach (reach_h = 64).
Shapes: B = 4, H = 8, Dh = 64, T in {256, 1024, 4096} (--quick: T = 1024 on GPU, 256 on CPU);
bf16 on GPU, fp32 on CPU. Modes: fwd (inputs require grad, as in training), bwd (the backward alone,
from a saved forward graph), fwd+bwd.

Achieved TFLOP/s counts the attended (i, j) pairs P: 4·B·H·P·Dh for the forward (two matmuls of
2·P·Dh), 2.5× that for the backward, 3.5× for fwd+bwd. Causal: P = T(T+1)/2 ≈ T²/2 (the usual
4·B·H·T²·Dh/2); horizon h: P = Σ_i min(i+1, h) ≈ T·h, the work the kernel cannot skip. Myopic (with
or without past keys) and reach are counted as plain causal, so a myopic backward that skips the
dK/dV sweep shows as higher throughput. Rows go to bench/results/attention.csv via bench/common.py.
"""

from __future__ import annotations

import argparse
import functools
import sys

import torch
import torch.nn.functional as F
from common import append, device_name, row, time_ms

from constrained.kernels.attention import attention, attention_reference

B, H, DH = 4, 8, 64
REACH_H = 64.0


def options_for(T: int) -> dict[str, dict]:
    """name -> attention keyword arguments; "past": True stands for k_past, v_past made per input."""
    return {"causal": {}, f"horizon={T // 8}": {"horizon": T // 8}, "myopic": {"myopic": True},
            "myopic+past": {"myopic": True, "past": True}, f"reach_h={REACH_H:g}": {"reach_h": REACH_H}}


def attended_pairs(T: int, horizon: int | None) -> int:
    h = T if horizon is None else horizon
    return sum(min(i + 1, h) for i in range(T))


def providers(device: torch.device, option: dict) -> dict:
    """name -> fn(q, k, v, **past) -> (out, reach or None), for the providers that can run here."""
    kwargs = {key: value for key, value in option.items() if key != "past"}
    out = {}
    if device.type == "cuda":
        out["triton"] = functools.partial(attention, backend="triton", **kwargs)
        if not option:
            out["sdpa"] = lambda q, k, v: (F.scaled_dot_product_attention(q, k, v, is_causal=True), None)
    out["eager"] = functools.partial(attention_reference, **kwargs)
    out["compile"] = torch.compile(functools.partial(attention_reference, **kwargs), dynamic=False)
    return out


def bench_one(fn, q, k, v, device, past: dict):
    """{mode: (median, p20, p80) ms} for fwd, bwd and fwd+bwd of fn(q, k, v, **past), every input
    (k_past, v_past included) differentiated."""
    do = torch.randn_like(q)
    inputs = (q, k, v, *past.values())

    def forward():
        return fn(q, k, v, **past)

    def grad_args(res):
        """(outputs, inputs, grad_outputs) for torch.autograd.grad: dO into out, 1 into reach."""
        out, reach = res
        if reach is None:
            return [out], inputs, [do]
        return [out, reach], inputs, [do, torch.ones_like(reach)]

    def fwd_bwd():
        torch.autograd.grad(*grad_args(forward()))

    times = {"fwd": time_ms(forward, device)}
    saved = grad_args(forward())  # one forward graph, differentiated again on every repetition
    times["bwd"] = time_ms(lambda: torch.autograd.grad(*saved, retain_graph=True), device)
    times["fwd+bwd"] = time_ms(fwd_bwd, device)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one sequence length only")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        dtype = torch.bfloat16
        lengths = [1024] if args.quick else [256, 1024, 4096]
    else:
        print("Triton needs a CUDA GPU: timing the reference paths only")
        dtype = torch.float32
        lengths = [256] if args.quick else [256, 1024, 4096]
    # one compiled graph per (option, T, mode) exceeds dynamo's default of 8 recompiles
    torch._dynamo.config.cache_size_limit = 64
    print(f"device: {device_name(device)}; B={B} H={H} Dh={DH} {str(dtype).removeprefix('torch.')}")

    rows = []
    for T in lengths:
        shape = f"B={B} H={H} T={T} Dh={DH} {str(dtype).removeprefix('torch.')}"
        for opt_name, option in options_for(T).items():
            pairs = attended_pairs(T, option.get("horizon"))
            fwd_flop = 4 * B * H * pairs * DH
            flops = {"fwd": fwd_flop, "bwd": 2.5 * fwd_flop, "fwd+bwd": 3.5 * fwd_flop}
            for provider, fn in providers(device, option).items():
                torch.manual_seed(0)
                q, k, v = (torch.randn(B, H, T, DH, device=device, dtype=dtype, requires_grad=True)
                           for _ in range(3))
                past = {}
                if option.get("past"):  # as the model's: the values of k, v, with a gradient of their own
                    past = {"k_past": k.detach().clone().requires_grad_(),
                            "v_past": v.detach().clone().requires_grad_()}
                try:
                    times = bench_one(fn, q, k, v, device, past)
                except Exception as e:  # e.g. eager out of memory at T = 4096, a compile failure
                    print(f"  {provider:8s} {opt_name:14s} T={T:5d}: skipped ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120] if str(e) else ''})")
                    continue
                finally:
                    del q, k, v, past
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                for mode, t in times.items():
                    tflops = flops[mode] / (t[0] * 1e-3) / 1e12
                    rows.append(row("attention", provider, f"{opt_name} {mode}", shape, t, device, tflops, "TFLOP/s"))
                    print(f"  {provider:8s} {opt_name:14s} {mode:8s} T={T:5d}: {t[0]:9.3f} ms  {tflops:7.2f} TFLOP/s",
                          flush=True)
    if rows:
        print(f"wrote {len(rows)} rows to {append('attention', rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
