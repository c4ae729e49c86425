"""Mesa-signatures measured on any model, trained or not, penalized or not.

The same numbers the penalties use as loss terms, plus the iteration signature, which is only ever
watched: a pilot penalizing it drove it to ~0 with e(k) unchanged, so it is not a lever.

Any model with `run_with_cache` and TransformerLens hook names is measured (constrained.measure.hooked). Reach
is read from attn.hook_reach where the model has it (ours: computed inside the attention kernel, no T×T pattern
kept) and otherwise computed from attn.hook_pattern by the same formula (kernels' reach_from_pattern).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from constrained.common.eval_mode import eval_mode
from constrained.kernels.attention import reach_from_pattern
from constrained.kernels.future_info import future_info
from constrained.measure import probes
from constrained.measure.hooked import HookedModel, check_hooks, device_of, hook_names, n_layers


def residual_streams(cache: dict[str, torch.Tensor], n_layers: int) -> list[torch.Tensor]:
    """r_0 (the input to block 0), r_1, ..., r_L (the output of each block), each (B, T, d)."""
    return [cache["blocks.0.hook_resid_pre"]] + [cache[f"blocks.{l}.hook_resid_post"] for l in range(n_layers)]


def iteration(cache: dict[str, torch.Tensor], n_layers: int) -> torch.Tensor:
    """Mean over tokens of Σ_l relu(cos(Δ_l, Δ_{l+1}))², Δ_l = r_{l+1} − r_l: consecutive blocks
    pushing the residual stream the same way, as repeated steps of one update rule would."""
    r = residual_streams(cache, n_layers)
    deltas = [b - a for a, b in zip(r[:-1], r[1:])]  # L tensors (B, T, d)
    if len(deltas) < 2:
        return torch.zeros((), device=r[0].device)
    terms = [F.relu(F.cosine_similarity(a, b, dim=-1)) ** 2 for a, b in zip(deltas[:-1], deltas[1:])]  # (B, T)
    return torch.stack(terms).sum(0).mean()


@torch.no_grad()
def measure(net: HookedModel, batch: dict[str, torch.Tensor], rows: torch.Tensor, z: torch.Tensor,
            reach_horizon: float, eps0: float = 1e-3) -> dict[str, float]:
    """future_info_L{l} (and _last), reach (mean over layers) and iteration on one batch, in eval mode."""
    L = n_layers(net)
    own_reach = "blocks.0.attn.hook_reach" in hook_names(net)
    reach_hook = "attn.hook_reach" if own_reach else "attn.hook_pattern"
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.{h}" for l in range(L) for h in ("hook_resid_post", reach_hook)]
    check_hooks(net, names)
    kwargs = {"reach_h": reach_horizon} if own_reach else {}
    with eval_mode(net):
        device = device_of(net)
        _, cache = net.run_with_cache(batch["inputs"].to(device), names_filter=names, **kwargs)
    rows, z = rows.to(device), z.to(device)
    out = {}
    for l in range(L):
        r2 = future_info(cache[f"blocks.{l}.hook_resid_post"][rows], z, eps0=eps0).item()
        out[f"future_info_L{l}"] = r2
    out["future_info_last"] = out[f"future_info_L{L - 1}"]
    if own_reach:
        reach = [cache[f"blocks.{l}.attn.hook_reach"] for l in range(L)]
    else:
        reach = [reach_from_pattern(cache[f"blocks.{l}.attn.hook_pattern"], reach_horizon) for l in range(L)]
    out["reach"] = torch.stack(reach).mean().item()
    out["iteration"] = iteration(cache, L).item()
    return out


def on_task(net: HookedModel, task, batch: dict[str, torch.Tensor], n_sequences: int = 512) -> dict[str, float]:
    """future_info, reach and iteration on the first n_sequences of batch, at the task's settings (never a
    penalty's), so every variant, and every model, is measured by the same ruler."""
    batch = {k: v[:n_sequences] for k, v in batch.items()}
    rows, z = task.future_signal(batch)
    return measure(net, batch, rows, z, task.reach_horizon)


def test_time(net: HookedModel, task) -> dict[str, float]:
    """The task's test-time mesa-signatures, keyed test/...: probe scores on the test set beside a random-init
    control of the same config (when the task declares probe targets), then on_task's signatures. What
    `constrained test` adds to a run's metrics and what `constrained measure` reports for any hooked model."""
    test = task.eval_set("test")
    out = {}
    targets = task.probe_targets(test)
    if targets:
        control = probes.random_control(net, seed=task.eval_seed)
        out.update(probes.probe_scores(net, control, test, targets))  # eval mode, no_grad
    out.update(on_task(net, task, test))
    return {f"test/{k}": v for k, v in out.items()}
