"""Mesa-signatures measured on any model, trained or not, penalized or not.

The same numbers the penalties use as loss terms, plus the iteration signature, which is only ever
watched: a pilot penalizing it drove it to ~0 with e(k) unchanged, so it is not a lever (DESIGN §5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from constrained.kernels.future_info import future_info
from constrained.models.transformer import Transformer


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
def measure(net: Transformer, batch: dict[str, torch.Tensor], rows: torch.Tensor, z: torch.Tensor,
            reach_horizon: float, eps0: float = 1e-3) -> dict[str, float]:
    """future_info_L{l} (and _last), reach (mean over layers) and iteration on one batch, in eval mode."""
    n_layers = len(net.blocks)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.{h}" for l in range(n_layers)
                                           for h in ("hook_resid_post", "attn.hook_reach")]
    was_training = net.training
    net.eval()
    try:
        device = next(net.parameters()).device
        _, cache = net.run_with_cache(batch["inputs"].to(device), names_filter=names, reach_h=reach_horizon)
    finally:
        net.train(was_training)
    rows, z = rows.to(device), z.to(device)
    out = {}
    for l in range(n_layers):
        r2 = future_info(cache[f"blocks.{l}.hook_resid_post"][rows], z, eps0=eps0).item()
        out[f"future_info_L{l}"] = r2
    out["future_info_last"] = out[f"future_info_L{n_layers - 1}"]
    out["reach"] = torch.stack([cache[f"blocks.{l}.attn.hook_reach"] for l in range(n_layers)]).mean().item()
    out["iteration"] = iteration(cache, n_layers).item()
    return out
