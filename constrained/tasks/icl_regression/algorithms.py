"""Explicit in-context regression algorithms fitted to the same context as the model.

Each returns predictions (n, n_points): entry k predicts y_k from the first k examples.
"""

from __future__ import annotations

import torch


def zero(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(ys)


def averaging(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """w_hat = (1/k) sum_{i<k} y_i x_i, i.e. one gradient step from w = 0 with step size 1."""
    sums = torch.cumsum(ys.unsqueeze(-1) * xs, dim=1)  # (n, P, d): sum over i <= k
    prev = torch.cat([torch.zeros_like(sums[:, :1]), sums[:, :-1]], dim=1)  # (n, P, d): sum over i < k
    k = torch.arange(xs.shape[1], device=xs.device).clamp(min=1).to(xs.dtype)  # (P,)
    w_hat = prev / k[None, :, None]  # (n, P, d)
    return (w_hat * xs).sum(-1)


def least_squares(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares on the first k examples (pinv), predicting x_k."""
    preds = torch.zeros_like(ys)
    for k in range(1, xs.shape[1]):
        w_hat = torch.linalg.pinv(xs[:, :k]) @ ys[:, :k, None]  # (n, d, 1)
        preds[:, k] = (xs[:, k] * w_hat.squeeze(-1)).sum(-1)
    return preds


def tune_gd_step(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Per-k step size eta_k minimizing held-out error of one GD step from w = 0 (closed form)."""
    a = averaging(xs, ys)  # prediction with eta = 1; GD from 0 is linear in eta
    eta = (a * ys).sum(0) / (a * a).sum(0).clamp(min=1e-12)  # (P,)
    eta[0] = 0.0
    return eta


def gd_step(xs: torch.Tensor, ys: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    return averaging(xs, ys) * eta[None, :]


def baseline_predictions(xs: torch.Tensor, ys: torch.Tensor, eta: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "zero": zero(xs, ys),
        "averaging": averaging(xs, ys),
        "least_squares": least_squares(xs, ys),
        "gd_step": gd_step(xs, ys, eta),
    }
