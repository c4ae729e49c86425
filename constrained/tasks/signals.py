"""The signals that future_info and the adversarial probe decode from the residual stream: what position t
could hold only to help later positions.

The default is the targets at t+2..t+K residualized on the target at t (`default_future_signal`); class
targets (integer indices) enter as one-hot vectors, never as numbers. A task may declare its own signal
(e.g. icl_regression's least-squares estimate) by overriding Task.future_signal.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class FutureTargets(NamedTuple):
    """z (M, (K−1)·d_y): y[b, t+2], …, y[b, t+K] side by side; y_now (M, d_y): y[b, t];
    rows (B, T) bool: True at the M positions, so h[rows] (h: (B, T, d)) gives the matching
    hidden states in the same order (b-major, then t), M = B·(T − K)."""

    z: torch.Tensor
    y_now: torch.Tensor
    rows: torch.Tensor


def future_targets(y: torch.Tensor, K: int) -> FutureTargets:
    """The raw future signal at every position t with t + K < T, i.e. t = 0 … T−K−1.

    Row (b, t) of z is [y[b, t+2], y[b, t+3], …, y[b, t+K]] (k-major, each d_y wide). k starts at 2
    because y[t+1] is what the next position predicts from nearly the same context, so decoding it
    from position t is ordinary, not planning ahead. Residualize z on y_now (`residualize`) before
    use: future targets share most of the present one, and penalizing that fights the task.

    y: (B, T, d_y), or (B, T) for scalar targets (d_y = 1).
    """
    if y.dim() == 2:
        y = y.unsqueeze(-1)  # (B, T) -> (B, T, 1)
    if y.dim() != 3:
        raise ValueError(f"future_targets: y must have shape (B, T, d_y) or (B, T), got {tuple(y.shape)}")
    if K < 2:
        raise ValueError(f"future_targets: K must be >= 2 (targets at t+2..t+K), got {K}")
    B, T, d_y = y.shape
    if T <= K:
        raise ValueError(f"future_targets: K = {K} needs sequences longer than K, got T = {T}")
    n = T - K  # positions per sequence
    z = torch.cat([y[:, k:k + n] for k in range(2, K + 1)], dim=-1)  # (B, n, (K−1)·d_y)
    rows = torch.zeros(B, T, dtype=torch.bool, device=y.device)
    rows[:, :n] = True
    return FutureTargets(z.reshape(B * n, (K - 1) * d_y), y[:, :n].reshape(B * n, d_y), rows)


def residualize(z_future: torch.Tensor, y_now: torch.Tensor) -> torch.Tensor:
    """The part of z_future that a linear fit with intercept on y_now, over the rows, does not explain.

    z_future (..., d_z) and y_now (..., d_y) (or (...) for d_y = 1) share their leading shape,
    flattened to rows; returns z_future's shape and dtype: Z − [1, Y] β with β least squares. The
    result is detached: it is a target signal, not something to train. The fit runs in fp64 through a
    pseudo-inverse, so a constant or collinear y_now is fine (its null directions are left alone).
    The residual has zero column means and zero linear correlation with every column of y_now.
    """
    if y_now.dim() == z_future.dim() - 1:
        y_now = y_now.unsqueeze(-1)  # (...) -> (..., 1)
    if z_future.dim() < 2 or y_now.shape[:-1] != z_future.shape[:-1]:
        raise ValueError(f"residualize: z_future (..., d_z) and y_now (..., d_y) must share their rows, "
                         f"got {tuple(z_future.shape)} and {tuple(y_now.shape)}")
    with torch.no_grad():
        z = z_future.reshape(-1, z_future.shape[-1]).double()  # (N, d_z)
        y = y_now.reshape(-1, y_now.shape[-1]).double()  # (N, d_y)
        zc = z - z.mean(0)  # the intercept
        # Shifting by the first row first makes a constant column exactly zero, not rounding noise
        # that the pseudo-inverse would blow up.
        ys = y - y[:1]
        yc = ys - ys.mean(0)
        beta = torch.linalg.pinv(yc.mT @ yc, hermitian=True) @ (yc.mT @ zc)  # (d_y, d_z)
        return (zc - yc @ beta).to(z_future.dtype).reshape(z_future.shape)


def default_future_signal(targets: torch.Tensor, scored: torch.Tensor, future_k: int, n_classes: int | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (B, T) bool, z (N, d_z)): the targets at t+2..t+future_k, residualized on the target at t, at
    every t whose own target and those future ones are all scored (loss_mask); z's rows in sequence-major
    order, that of h[rows].

    targets: (B, T, d_y) float, or (B, T) integer class indices with n_classes given (one-hot, so class 7
    is not "more" than class 3). Unresidualized, the signal would fight the task itself: future targets
    share most of the present one.
    """
    if not targets.is_floating_point():
        if n_classes is None:
            raise ValueError("class targets (integer indices) need n_classes for their one-hot future signal")
        targets = F.one_hot(targets.long(), n_classes).float()  # (B, T, n_classes)
    ft = future_targets(targets, future_k)
    n = targets.shape[1] - future_k  # positions t with t + future_k < T
    valid = scored[:, :n].clone()  # (B, n)
    for k in range(2, future_k + 1):
        valid &= scored[:, k:k + n]
    rows = torch.zeros_like(scored)
    rows[:, :n] = valid
    keep = valid.reshape(-1)  # ft's rows are (b, t) b-major, like valid's
    return rows, residualize(ft.z[keep], ft.y_now[keep])
