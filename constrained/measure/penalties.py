"""Penalties on search-like activations, added to the training loss with a weight from the config.

Every penalty reads activations by hook name, is logged on its own, and at weight 0 is only
measured (no gradient reaches the model), so the same numbers exist for every model.

- future_info: in-sample ridge R² of the task's future signal from the residual stream
  (kernels/future_info.py);
- reach: attention mass beyond a soft horizon, weighted by the excess distance (kernels/attention.py);
- adversarial_probe: a linear probe learns to decode the future signal; the model gets its gradient
  reversed. Judge it by a fresh probe after training, never by this one (it is the one being fooled).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from constrained.kernels.future_info import future_info

KINDS = ("future_info", "reach", "adversarial_probe")


@dataclass
class Penalty:
    """One penalty term. layers: which blocks' outputs it reads (default: the last block for
    future_info and adversarial_probe, every block for reach)."""

    kind: Literal["future_info", "reach", "adversarial_probe"]
    weight: float = 0.0
    layers: list[int] | None = None
    horizon: float = 8.0  # reach: positions within the soft horizon cost nothing
    eps0: float = 1e-3  # future_info: ridge ε relative to the mean variance of the hidden state
    future_k: int | None = None  # default future signal: targets at t+2..t+future_k (null: the task's choice)
    probe_lr: float = 1e-3  # adversarial_probe: the probe's own Adam step size

    @property
    def name(self) -> str:
        return self.kind


def parse(penalties: list[Penalty | dict] | None, n_layers: int) -> list[Penalty]:
    """Penalties from config (dataclasses or plain dicts), checked against the model's depth."""
    out = []
    for p in penalties or []:
        p = Penalty(**p) if isinstance(p, dict) else p
        if p.kind not in KINDS:
            raise ValueError(f"penalty kind must be one of {KINDS}, got {p.kind!r}")
        if p.weight < 0:
            raise ValueError(f"penalty {p.kind}: weight must be >= 0, got {p.weight}")
        if p.horizon < 0:
            raise ValueError(f"penalty {p.kind}: horizon must be >= 0, got {p.horizon}")
        if p.future_k is not None and p.future_k < 2:
            raise ValueError(f"penalty {p.kind}: future_k must be >= 2 (targets at t+2..t+K), got {p.future_k}")
        if p.probe_lr <= 0 or p.eps0 < 0:
            raise ValueError(f"penalty {p.kind}: need probe_lr > 0 and eps0 >= 0")
        bad = [l for l in p.layers or [] if not 0 <= l < n_layers]
        if bad or p.layers == []:
            raise ValueError(f"penalty {p.kind}: layers {p.layers} are not blocks of this model "
                             f"(hook names blocks.0 .. blocks.{n_layers - 1})")
        out.append(p)
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ValueError(f"each penalty kind may appear once, got {names}")
    return out


def as_dicts(penalties: list[Penalty]) -> list[dict]:
    """Plain data for hparams and checkpoints (which load with weights_only=True)."""
    return [asdict(p) for p in penalties]


def layers_of(p: Penalty, n_layers: int) -> list[int]:
    if p.layers is not None:
        return p.layers
    return list(range(n_layers)) if p.kind == "reach" else [n_layers - 1]


def hook_names(p: Penalty, n_layers: int) -> list[str]:
    hook = "attn.hook_reach" if p.kind == "reach" else "hook_resid_post"
    return [f"blocks.{l}.{hook}" for l in layers_of(p, n_layers)]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; backward multiplies the gradient by -scale (gradient reversal)."""
    return _GradReverse.apply(x, scale)


class AdversarialProbes(nn.Module):
    """One linear probe per layer, trained by its own optimizer to decode the future signal."""

    def __init__(self, d_model: int, d_signal: int, layers: list[int]):
        super().__init__()
        self.probes = nn.ModuleDict({str(l): nn.Linear(d_model, d_signal) for l in layers})

    def loss(self, cache: dict[str, torch.Tensor], rows: torch.Tensor, z: torch.Tensor, weight: float) -> torch.Tensor:
        """Mean over layers of the probe's MSE divided by Var(z) (1 = no better than the mean)."""
        var = z.var(0, correction=0).sum().clamp(min=1e-12)
        losses = []
        for l, probe in self.probes.items():
            h = cache[f"blocks.{l}.hook_resid_post"][rows]  # (N, d_model)
            pred = probe(grad_reverse(h, weight))
            losses.append(F.mse_loss(pred, z, reduction="none").mean(0).sum() / var)
        return torch.stack(losses).mean()


def value(p: Penalty, cache: dict[str, torch.Tensor], n_layers: int, rows: torch.Tensor | None,
          z: torch.Tensor | None, adversaries: AdversarialProbes | None = None) -> torch.Tensor:
    """The penalty's value on one forward pass (cache from run_with_cache(..., detach=False))."""
    if p.kind == "reach":
        return torch.stack([cache[n] for n in hook_names(p, n_layers)]).mean()
    if p.kind == "future_info":
        # no finiteness pass and host sync per layer: training_step checks the loss, which a non-finite
        # hidden state makes non-finite too
        return torch.stack([future_info(cache[n][rows], z, eps0=p.eps0, check_finite=False)
                            for n in hook_names(p, n_layers)]).mean()
    return adversaries.loss(cache, rows, z, p.weight)
