"""Spec: in the myopic model, the loss at position t has no gradient path into positions s < t.

Both forms of myopic descent (constrained.models.myopic) guarantee it for the residual stream: "kv" makes the keys
and values of s < t constants, "input" the attention input of s < t (after ln1). What "input" does not isolate,
and says so as its own claim: the key and value projections (weights and biases) get gradient from L_t through
every position s < t, since the past keys and values are recomputed from the constant input with the live
projections. Under "kv" they get gradient only through t's own key and value.

A check of the autograd graph, not a z3 query. For a small `Transformer(myopic_gradient=...)`
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

The modular model (constrained/models/modular.py): for a small ModularModel on a batch of 4 episodes of the
line world (constrained/proofs/line_world.py: 6 cells, three moves; a planning world below the tasks' floor, so
the spec names no task), the training loss's terms as `loss_terms` returns them. Claims:

- the policy's loss has no path into the objective: autograd finds no path (None) from any term but
  `objective` to any parameter of the objective module;
- the objective's loss has no path into the policy: none from `objective` to any other parameter;
- not vacuous: each reaches its own parameters (some policy weight, every objective weight).

Here "no path" is structural (autograd's allow_unused gives None), not a zero that happens to come out.
"""

from __future__ import annotations

import time

import torch

from constrained.models.config import TransformerConfig
from constrained.models.transformer import Transformer
from constrained.proofs.result import DEFAULT_TIMEOUT_MS, PROVED, REFUTED, Claim, Result, combine

NAME = "isolation"
T, D_IN, D_OUT = 6, 3, 2
MODELS = {
    f"myopic {form}{suffix}": dict(myopic_gradient=form, **options)
    for form in ("kv", "input")
    for suffix, options in (("", {}), (", horizon 3, queries", dict(horizon=3, query_positions=[1, 3, 5])))
}


def build(**options) -> Transformer:
    """The small model the spec checks, with fixed weights (seed 0, global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = TransformerConfig(d_in=D_IN, d_out=D_OUT, n_ctx=T, d_model=8, n_layers=2, n_heads=2, **options)
        return Transformer(config).eval()


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


def kv_projection_claim(strict: Transformer, loose: Transformer) -> Claim:
    """The input form's stated gap: with the same weights, L_t's gradient into the key and value projections
    differs from the strict form's for some t (the terms through s < t); the query projection's never does."""
    name = "myopic input: W_K, W_V learn from L_t through s < t (not isolated), W_Q only through t"
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, T, D_IN, generator=gen)
    weights = [(m.blocks[0].attn.W_qkv.weight, m) for m in (strict, loose)]
    ys = [m(x) for _, m in weights]
    differs, d_model = False, strict.blocks[0].attn.W_qkv.weight.shape[1]
    for t in range(T):
        g = torch.randn(ys[0][:, t].shape, generator=gen)
        a, b = (torch.autograd.grad((y[:, t] * g).sum(), w, retain_graph=True)[0] for (w, _), y in zip(weights, ys))
        if not torch.allclose(a[:d_model], b[:d_model], atol=1e-6, rtol=1e-5):
            return Claim(name, REFUTED, {"t": t, "what": "W_Q differs"})
        differs |= not torch.allclose(a[d_model:], b[d_model:], atol=1e-6, rtol=1e-5)
    return Claim(name, PROVED) if differs else Claim(name, REFUTED, {"what": "W_K, W_V equal in both forms"})


def build_modular(cls=None):
    """A small ModularModel on a 6-cell line world and a batch of 4 training episodes."""
    from constrained.models.modular import ModularModel
    from constrained.proofs.line_world import LineWorld

    task = LineWorld(L=6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = (cls or ModularModel)(d_in=task.input_dim, d_out=task.output_dim, n_ctx=task.seq_len, d_model=8,
                                      n_layers=2, n_heads=2, myopic_gradient=True,
                                      objective_hidden=[4], objective_max_params=64,
                                      state_features=task.state_features)
    model.task = task
    return model, task.make_batch(torch.Generator().manual_seed(1), 4, "train")


def check_modular(model, batch) -> list[Claim]:
    terms = model.loss_terms(batch)
    objective = list(model.objective.parameters())
    objective_ids = set(map(id, objective))
    policy = [p for p in model.parameters() if id(p) not in objective_ids]

    def reached(loss, params):
        if not loss.requires_grad:  # a term cut off from every parameter reaches none (autograd would raise)
            return [False] * len(params)
        return [g is not None for g in torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)]

    names = {"policy_into_objective": "modular: policy loss has no path into the objective",
             "objective_into_policy": "modular: objective loss has no path into the policy",
             "own": "modular: each loss reaches its own part"}
    claims = {k: Claim(v, PROVED) for k, v in names.items()}
    for term, loss in terms.items():
        if term == "objective":
            if any(reached(loss, policy)):
                claims["objective_into_policy"] = Claim(names["objective_into_policy"], REFUTED, {"term": term})
            if not all(reached(loss, objective)):
                claims["own"] = Claim(names["own"], REFUTED, {"term": term})
        elif any(reached(loss, objective)):
            claims["policy_into_objective"] = Claim(names["policy_into_objective"], REFUTED, {"term": term})
    if "task" not in terms or not any(reached(terms["task"], policy)):
        claims["own"] = Claim(names["own"], REFUTED, {"term": "task"})
    return list(claims.values())


def spec(timeout_ms: int = DEFAULT_TIMEOUT_MS, models: dict | None = None, modular=None) -> Result:
    """models: label -> Transformer (default: MODELS built with `build`); a non-myopic one refutes.
    modular: (model, batch) for the modular claims (default: `build_modular()`)."""
    started = time.perf_counter()
    default_models = models is None
    models = models if models is not None else {label: build(**opts) for label, opts in MODELS.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: worker threads only add contention (100x slower on a busy host)
    try:
        answers = [c for label, model in models.items() for c in check_model(label, model)]
        if default_models:
            answers.append(kv_projection_claim(build(myopic_gradient="kv"), build(myopic_gradient="input")))
        answers += check_modular(*(modular or build_modular()))
    finally:
        torch.set_num_threads(threads)
    return combine(NAME, answers, started)
