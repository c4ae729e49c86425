"""Spec: in the myopic model, the loss at position t has no gradient path into positions s < t.

A check of the autograd graph, not a z3 query. For a small `Transformer(myopic_gradient=True)`
and every output position t, autograd gives ∂L_t/∂x_ℓ for the hidden state x_ℓ at every layer ℓ
(ℓ = 0: the embedding, the input of block 0; ℓ = k: the input of block k; ℓ = n_layers: the output
of the last block), with L_t = ⟨g_t, y_t⟩ for a random g_t (a generic loss at t alone). Claims:

- no path into the past: every entry of ∂L_t/∂x_ℓ at s < t is exactly 0 (None, no path at all,
  counts as 0). A nonzero entry is a real path and refutes, reported as (model, layer, s, t).
- not vacuous: ∂L_t/∂x_ℓ at s = t is nonzero at every layer: the loss does reach its own position,
  so the check is not passing because everything was detached.

What it covers: the fixed small models in MODELS (T = 6 positions, 2 layers, d_model 8; one without
and one with a horizon and query tokens), exhaustively over their positions and layers, on the CPU
attention path (`Attention._reference`; the fused CUDA kernel reads the same detached keys and values
but is not run here). Why it holds at every size is structural: keys and values of other positions
are computed from x.detach(), and LayerNorm and the MLP act per position, so y_t is connected to the
graph only through position t's own computation. An exact zero cannot come from a path by accident
at a random input except on a measure-zero set, so a random input is a fair witness.

The timeout does not apply (no solver query); the check takes well under a second.

Still to come (issue 5): the modular model's policy loss has no gradient path into its objective
module. That spec belongs here once the modular model exists.
"""

from __future__ import annotations

import time

import torch
from constrained.proofs.result import DEFAULT_TIMEOUT_MS, PROVED, REFUTED, Claim, Result, combine

from constrained.transformer import Transformer

NAME = "isolation"
T, D_IN, D_OUT = 6, 3, 2
MODELS = {
    "myopic": dict(myopic_gradient=True),
    "myopic, horizon 3, queries": dict(myopic_gradient=True, horizon=3, query_positions=[1, 3, 5]),
}


def build(**options) -> Transformer:
    """The small model the spec checks, with fixed weights (seed 0, global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Transformer(d_in=D_IN, d_out=D_OUT, n_ctx=T, d_model=8, n_layers=2, n_heads=2, **options).eval()


def gradients_by_position(model: Transformer) -> list[list[torch.Tensor]]:
    """grads[t][ℓ] = ∂L_t/∂x_ℓ, shape (batch, T, d_model), zeros where there is no path."""
    n = len(model.blocks)
    names = [f"blocks.{k}.hook_resid_pre" for k in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    states: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, T, D_IN, generator=gen)
    with model.hooks([(name, lambda out, name: states.__setitem__(name, out)) for name in names]):
        y = model(x)
    layers = [states[name] for name in names]
    grads = []
    for t in range(T):
        loss = (y[:, t] * torch.randn(y[:, t].shape, generator=gen)).sum()
        got = torch.autograd.grad(loss, layers, retain_graph=True, allow_unused=True)
        grads.append([torch.zeros_like(s) if g is None else g for s, g in zip(layers, got)])
    return grads


def check_model(label: str, model: Transformer) -> list[Claim]:
    grads = gradients_by_position(model)
    past, own = Claim(f"{label}: no path from L_t into s < t", PROVED), Claim(f"{label}: L_t reaches t", PROVED)
    for t, per_layer in enumerate(grads):
        for layer, g in enumerate(per_layer):
            leaks = [s for s in range(t) if g[:, s].abs().max() != 0]
            if leaks and past.status == PROVED:
                past = Claim(past.name, REFUTED, {"model": label, "layer": layer, "s": leaks[0], "t": t})
            if g[:, t].abs().max() == 0 and own.status == PROVED:
                own = Claim(own.name, REFUTED, {"model": label, "layer": layer, "s": t, "t": t})
    return [past, own]


def spec(timeout_ms: int = DEFAULT_TIMEOUT_MS, models: dict | None = None) -> Result:
    """models: label -> Transformer (default: MODELS built with `build`); a non-myopic one refutes."""
    started = time.perf_counter()
    models = models if models is not None else {label: build(**opts) for label, opts in MODELS.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: worker threads only add contention (100x slower on a busy host)
    try:
        answers = [c for label, model in models.items() for c in check_model(label, model)]
    finally:
        torch.set_num_threads(threads)
    return combine(NAME, answers, started)
