"""Spec: with L layers of attention horizon h, no output depends on a token more than L·(h−1) positions back,
and some output depends on one exactly that far back.

Dependence, from the mask predicate the model calls (`constrained.common.mask.attends`): position i at the
input of layer l+1 depends on position k at the input of layer l iff step(i, k) = attends(i, k, h) ∨ i = k
(attention, or the residual stream; LayerNorm and the MLP act per position). Position i after L layers
depends on j iff a chain j = k_0, k_1, …, k_L = i of steps joins them. The claimed reach is reach(L, h),
L·(h−1) for the model (one layer reads h−1 positions back beyond its own). Two proofs of it:

For every L, by induction (z3 over symbolic integers; every query linear but the last, a polynomial
identity that z3 decides):
- base: reach(0, h) = 0 (before any layer a position depends on itself only);
- step, upper: 0 ≤ k − j ≤ B ∧ step(i, k) ⇒ 0 ≤ i − j ≤ B + (h − 1), for all i, j, k ≥ 0, B ≥ 0, h ≥ 1;
- step, tight: step(k + h − 1, k) for all k ≥ 0, h ≥ 1 (a layer does extend a chain by h − 1);
- accumulation: reach(l + 1, h) = reach(l, h) + (h − 1) for all l ≥ 0, h ≥ 1.
Then, by induction on L: a chain of L steps spans 0 ≤ i − j ≤ reach(L, h), and j + reach(L, h) depends on j.

For each L = 1 … L_MAX, unrolled (symbolic positions and horizon, linear since L is a number):
- upper: every chain of L steps spans 0 ≤ i − j ≤ reach(L, h);
- tight: the chain k_l = j + l·(h−1) (l < L), k_L = j + reach(L, h) is one: each of its L steps holds.

The third check is on the real network (like `isolation`): for small Transformers with a horizon (MODELS),
autograd's ∂y_i/∂x_j is exactly 0 for every i − j > L·(h−1) and every j > i (masked attention weights are
exact zeros, and so are their gradients), and nonzero at i − j = L·(h−1) (the bound is met).

A mask or claim off by one is refuted: a mask reading h positions back per layer breaks the upper step,
a claim one layer short (reach(L, h) = (L−1)·(h−1)) breaks the base and the unrolled upper bound (the
counterexample is a chain that reaches further than claimed), a claim one layer long breaks tightness.
"""

from __future__ import annotations

import time

import torch
import z3

from constrained.common.mask import attends as model_attends
from constrained.proofs.result import DEFAULT_TIMEOUT_MS, PROVED, REFUTED, Claim, Result, check, combine

NAME = "horizon_reach"
L_MAX = 6  # unrolled layer counts; the induction covers every L
# (n_layers, horizon) of the autograd check; T = L·(h−1) + 3 positions each, so the bound lies inside
MODELS = ((1, 3), (2, 2), (2, 3), (3, 2))


def model_reach(layers, horizon):
    """The claimed reach of `layers` layers of horizon `horizon`: L·(h−1) (ints or z3 terms)."""
    return layers * (horizon - 1)


def step(i, k, h, attends=model_attends):
    """Position i at layer l+1 reads position k at layer l: by attention, or along the residual stream."""
    return z3.Or(attends(i, k, h), i == k)


def induction_claims(attends, reach, timeout_ms: int) -> list[Claim]:
    i, j, k, h, b, lay = z3.Ints("i j k h B l")
    named = {"i": i, "j": j, "k": k, "h": h, "B": b}
    return [
        check("base: reach(0, h) = 0", reach(0, h) == 0, [h >= 1], {"h": h}, timeout_ms),
        check("induction step: one layer adds at most h-1",
              z3.Implies(z3.And(0 <= k - j, k - j <= b, step(i, k, h, attends)),
                         z3.And(0 <= i - j, i - j <= b + h - 1)),
              [i >= 0, j >= 0, k >= 0, b >= 0, h >= 1], named, timeout_ms),
        check("induction step: one layer can add h-1", step(k + h - 1, k, h, attends), [k >= 0, h >= 1],
              {"k": k, "h": h}, timeout_ms),
        check("accumulation: reach(l+1, h) = reach(l, h) + h-1", reach(lay + 1, h) == reach(lay, h) + h - 1,
              [lay >= 0, h >= 1], {"l": lay, "h": h}, timeout_ms),
    ]


def unrolled_claims(attends, reach, timeout_ms: int, max_layers: int = L_MAX) -> list[Claim]:
    """For L = 1..max_layers: the upper bound over every chain, and the tight chain."""
    h = z3.Int("h")
    upper, tight = (Claim(f"unrolled L=1..{max_layers}: {what}", PROVED)
                    for what in ("no chain spans more than reach(L, h)", "a chain spans exactly reach(L, h)"))
    for n in range(1, max_layers + 1):
        ks = z3.Ints(" ".join(f"k{x}" for x in range(n + 1)))  # k0 = j, ..., kL = i
        chain = [step(ks[x + 1], ks[x], h, attends) for x in range(n)]
        named = {"L": z3.IntVal(n), "h": h, **{f"k{x}": v for x, v in enumerate(ks)}}
        span = ks[-1] - ks[0]
        answer = check(upper.name, z3.Implies(z3.And(*chain), z3.And(0 <= span, span <= reach(n, h))),
                       [h >= 1, *(v >= 0 for v in ks)], named, timeout_ms)
        if answer.status != PROVED and upper.status == PROVED:
            upper = answer
        j = ks[0]
        witness = [j + x * (h - 1) for x in range(n)] + [j + reach(n, h)]
        answer = check(tight.name, z3.And(*[step(witness[x + 1], witness[x], h, attends) for x in range(n)]),
                       [h >= 1, j >= 0], {"L": z3.IntVal(n), "h": h, "j": j}, timeout_ms)
        if answer.status != PROVED and tight.status == PROVED:
            tight = answer
    return [upper, tight]


def build(n_layers: int, horizon: int):
    """The small Transformer the autograd check reads, with fixed weights (seed 0, global RNG left untouched)."""
    from constrained.models.config import TransformerConfig
    from constrained.models.transformer import Transformer

    T = model_reach(n_layers, horizon) + 3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = TransformerConfig(d_in=3, d_out=2, n_ctx=T, d_model=8, n_layers=n_layers, n_heads=2, horizon=horizon)
        return Transformer(config).eval()


def dependence(model) -> torch.Tensor:
    """(T, T) bool: [i, j] where some entry of ∂y_i/∂x_j is nonzero (x the input tokens, y the outputs)."""
    T = model.n_ctx
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, T, model.embed.in_features, generator=gen, requires_grad=True)
    y = model(x)
    rows = []
    for i in range(T):
        (g,) = torch.autograd.grad((y[0, i] * torch.randn(y.shape[-1], generator=gen)).sum(), x, retain_graph=True)
        rows.append(g[0].abs().amax(-1) != 0)
    return torch.stack(rows)


def autograd_claims(reach=model_reach, models: dict | None = None) -> list[Claim]:
    """reach: the claimed reach(L, h); models: (n_layers, horizon) -> Transformer (default: MODELS built with
    `build`)."""
    models = models if models is not None else {lh: build(*lh) for lh in MODELS}
    upper = Claim("autograd: y_i never depends on x_j beyond L(h-1) back, nor ahead", PROVED)
    tight = Claim("autograd: y_i depends on x_j exactly L(h-1) back", PROVED)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: worker threads only add contention
    try:
        for (n_layers, horizon), model in models.items():
            dep, r = dependence(model), reach(n_layers, horizon)
            T = len(dep)
            for i in range(T):
                beyond = [j for j in range(T) if dep[i, j] and not 0 <= i - j <= r]
                if beyond and upper.status == PROVED:
                    upper = Claim(upper.name, REFUTED, {"L": n_layers, "h": horizon, "i": i, "j": beyond[0]})
                if T > i >= r >= 0 and not dep[i, i - r] and tight.status == PROVED:
                    tight = Claim(tight.name, REFUTED, {"L": n_layers, "h": horizon, "i": i, "j": i - r})
    finally:
        torch.set_num_threads(threads)
    return [upper, tight]


def spec(timeout_ms: int = DEFAULT_TIMEOUT_MS, attends=model_attends, reach=model_reach, models: dict | None = None
         ) -> Result:
    """attends: the mask predicate under test; reach: the claimed reach(L, h); models: the networks of the
    autograd check. Defaults: the model's mask, L·(h−1), MODELS."""
    started = time.perf_counter()
    claims = [*induction_claims(attends, reach, timeout_ms), *unrolled_claims(attends, reach, timeout_ms),
              *autograd_claims(reach, models)]
    return combine(NAME, claims, started)
