"""Multi-head causal self-attention with the constrained variants' switches: a horizon, query tokens
(the concatenated ICL format) and myopic descent. The computation itself is the one dispatch in
constrained.kernels.attention: scaled_dot_product_attention for plain causal attention, the fused Triton
kernel on CUDA with an option set, torch's fused attention with the options' mask on the CPU (myopic through
its own backward), and the PyTorch reference when the pattern is read or reach is asked for.

Myopic descent (Wu, Morris & Levine 2024) trains with the diagonal terms of the gradient only: with the
parameters used at each position treated as their own copy θ_s, the loss at t updates θ only through the
computation at t itself, never through what was computed at s < t. The keys and values position t reads
from s < t were computed at s, so here they are constants (detached): the loss at t sends no gradient
into them, nor through them into the residual stream at s, ln1's gain and bias, or the key and value
projection weights. A position's own key and value keep their gradient, so every parameter still learns
from every position's own loss.
"""

from __future__ import annotations

import torch
from torch import nn

from constrained.kernels.attention import attention
from constrained.models.hooks import HookPoint


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, myopic_gradient: bool, horizon: int | None = None,
                 is_query: torch.Tensor | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.myopic_gradient = myopic_gradient
        self.horizon = horizon
        self.register_buffer("is_query", is_query, persistent=False)  # (n_ctx,) bool or None
        self.W_qkv = nn.Linear(d_model, 3 * d_model)
        self.W_o = nn.Linear(d_model, d_model)
        self.hook_pattern = HookPoint()
        self.hook_reach = HookPoint()  # fires only when reach is asked for (forward with reach_h)

    def forward(self, x: torch.Tensor, reach_h: float | None = None) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.W_qkv(x).view(B, T, 3, self.n_heads, self.d_head)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh)
        is_query = None if self.is_query is None else self.is_query[:T]
        hook = self.hook_pattern if self.hook_pattern.active else None
        out, reach = attention(q, k, v, horizon=self.horizon, myopic=self.myopic_gradient, reach_h=reach_h,
                               is_query=is_query, pattern_hook=hook)
        if reach is not None:
            self.hook_reach(reach)
        return self.W_o(out.transpose(1, 2).reshape(B, T, D))  # (B, T, D)
