"""Myopic descent's input form needs the keys and values other positions read as the projections of a constant
input with live weights: `ProjectionWithPast` gives them as a second output of the one projection, for any
attention path (`attention(..., past=...)`); on the CPU's fused path `FlashCPUProjected` (kernels/flash_cpu.py)
does the same in one Function with the attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def split_heads(y: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
    """A projection's output (B, T, parts · n_heads · d_head) as (parts, B, H, T, Dh) views (q, k, v unpack it)."""
    B, T = y.shape[:2]
    return y.view(B, T, -1, n_heads, d_head).permute(2, 0, 3, 1, 4)


class ProjectionWithPast(torch.autograd.Function):
    """apply(x, weight, bias, start) -> (y, y_past): y = x Wᵀ + b, and y_past = y[..., start:] as a second output
    whose gradient reaches weight and bias but not x: the projection of a detached input, computed once. The input
    form's past keys and values, without a second matmul in the forward."""

    @staticmethod
    def forward(ctx, x, weight, bias, start):
        y = F.linear(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.start = start
        return y, y[..., start:].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dy_past):
        x, weight = ctx.saved_tensors
        dx = dy @ weight if ctx.needs_input_grad[0] else None
        total = dy.clone()
        total[..., ctx.start:] += dy_past
        flat, x_flat = total.reshape(-1, total.shape[-1]), x.reshape(-1, x.shape[-1])
        return dx, flat.T @ x_flat, flat.sum(0), None
