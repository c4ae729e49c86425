"""The embedding control of a probe: the same ridge probe (same rows, same train/test halves of the sequences as
measure.probes) fitted on the model's read-in of the token at t alone (hook_embed: no position, no context).
What a target shares with the present token decodes from here too, so only the excess of the residual stream's
probe over this control is the model's own computation."""

from __future__ import annotations

import torch

from constrained.common.eval_mode import eval_mode
from constrained.measure.hooked import HookedModel, check_hooks, device_of
from constrained.measure.probes import Targets, ridge_r2


def embedding_control(net: HookedModel, batch: dict[str, torch.Tensor], targets: Targets, chunk: int = 128
                      ) -> dict[str, float]:
    """{name: held-out ridge R²} of each float target decoded from hook_embed at the target's rows."""
    x = batch["inputs"]
    check_hooks(net, ["hook_embed"])
    device = device_of(net)
    with eval_mode(net), torch.no_grad():
        emb = torch.cat([net.run_with_cache(x[i:i + chunk].to(device), names_filter=["hook_embed"])[1]["hook_embed"]
                         .cpu() for i in range(0, len(x), chunk)])  # (n, T, d_model)
    half, out = len(x) // 2, {}
    for name, (mask, values) in targets.items():
        h, z, n_train = emb[mask], values[mask], int(mask[:half].sum())
        out[name] = ridge_r2(h[:n_train], z[:n_train], h[n_train:], z[n_train:])
    return out
