"""Multi-head causal self-attention with the constrained variants' switches: a horizon, query tokens
(the concatenated ICL format) and myopic descent. The computation itself is the one dispatch in
constrained.kernels.attention: scaled_dot_product_attention for plain causal attention, the fused Triton
kernel on CUDA with an option set, torch's fused attention with the options' mask on the CPU (myopic through
its own backward), and the PyTorch reference when the pattern is read or reach is asked for.

Myopic descent has two forms (constrained.models.myopic): "kv" reads the keys and values of s < t as constants;
"input" reads them recomputed from the attention input of s < t as a constant, with live projections, so the key
and value projections still learn from every position. A position's own key and value keep their gradient in
both, so every parameter learns from every position's own loss.
"""

from __future__ import annotations

import torch
from torch import nn

from constrained.kernels.attention import attention, attention_input_form
from constrained.kernels.projection import split_heads
from constrained.models.hooks import HookPoint
from constrained.models.myopic import myopic_form


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, myopic_gradient: bool | str, horizon: int | None = None,
                 is_query: torch.Tensor | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.myopic = myopic_form(myopic_gradient)  # None, "kv" or "input"
        self.horizon = horizon
        self.register_buffer("is_query", is_query, persistent=False)  # (n_ctx,) bool or None
        self.W_qkv = nn.Linear(d_model, 3 * d_model)
        self.W_o = nn.Linear(d_model, d_model)
        self.hook_pattern = HookPoint()
        self.hook_reach = HookPoint()  # fires only when reach is asked for (forward with reach_h)

    def forward(self, x: torch.Tensor, reach_h: float | None = None) -> torch.Tensor:
        B, T, D = x.shape
        is_query = None if self.is_query is None else self.is_query[:T]
        hook = self.hook_pattern if self.hook_pattern.active else None
        if self.myopic == "input":  # past keys and values: the projections of the input as a constant
            out, reach = attention_input_form(x, self.W_qkv.weight, self.W_qkv.bias, self.n_heads, self.horizon,
                                              reach_h, is_query, pattern_hook=hook)
        else:
            q, k, v = split_heads(self.W_qkv(x), self.n_heads, self.d_head)  # each (B, H, T, Dh)
            out, reach = attention(q, k, v, horizon=self.horizon, myopic=self.myopic is not None, reach_h=reach_h,
                                   is_query=is_query, pattern_hook=hook)
        if reach is not None:
            self.hook_reach(reach)
        return self.W_o(out.transpose(1, 2).reshape(B, T, D))  # (B, T, D)
