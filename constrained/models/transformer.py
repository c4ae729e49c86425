"""The one causal decoder core. Variants (horizon, myopic gradient) are switches on it, not copies."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from constrained.models.hooks import HookedModule, HookPoint
from constrained.kernels.attention import attention as fused_attention
from constrained.kernels.attention import reach_from_pattern
from constrained.models.mask import attention_mask


class Attention(nn.Module):
    """Multi-head causal self-attention with an optional horizon and myopic gradient.

    Myopic gradient (myopic descent, Wu, Morris & Levine 2024): keys and values read
    from earlier positions come from detached hidden states, so the loss at t sends no
    gradient into the computation at s < t; a position's own key and value keep theirs,
    and the projection weights still learn from every position's own loss.
    """

    def __init__(self, d_model: int, n_heads: int, myopic_gradient: bool, horizon: int | None = None,
                 is_query: torch.Tensor | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.myopic_gradient = myopic_gradient
        self.horizon = horizon
        self.is_query = is_query  # (n_ctx,) bool or None; the fused kernel evaluates the mask from it
        self.W_qkv = nn.Linear(d_model, 3 * d_model)
        self.W_o = nn.Linear(d_model, d_model)
        self.hook_pattern = HookPoint()
        self.hook_reach = HookPoint()  # fires only when reach is asked for (forward with reach_h)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        qkv = self.W_qkv(x).view(B, T, 3, self.n_heads, self.d_head)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh)
        return q, k, v

    def forward(self, x: torch.Tensor, mask: torch.Tensor, reach_h: float | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self._split(x)
        constrained = self.myopic_gradient or reach_h is not None or self.horizon is not None \
            or self.is_query is not None
        reach = None
        if self.hook_pattern.active or (constrained and not x.is_cuda):
            out, pattern = self._reference(x, q, k, v, mask)
            if reach_h is not None:
                reach = reach_from_pattern(pattern, reach_h)
        elif constrained:  # the fused Triton kernel: the only fast path with these options
            is_query = None if self.is_query is None else self.is_query[:T].to(x.device)
            # past keys/values from detached hidden states, as in _reference: the weights keep learning
            # from every (query, key) pair, only the earlier positions' computation is cut off
            k_past = v_past = None
            if self.myopic_gradient:
                _, k_past, v_past = self._split(x.detach())
            out, reach = fused_attention(q, k, v, horizon=self.horizon, myopic=self.myopic_gradient,
                                         reach_h=reach_h, is_query=is_query, k_past=k_past, v_past=v_past)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, Dh)
        if reach is not None:
            self.hook_reach(reach)
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.W_o(out)

    def _reference(self, x, q, k, v, mask):
        scale = 1.0 / math.sqrt(self.d_head)
        if self.myopic_gradient:
            _, k_past, v_past = self._split(x.detach())
            eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
            own = (q * k).sum(-1) * scale  # (B, H, T): each query against its own key
            scores = (q @ k_past.transpose(-1, -2)) * scale  # (B, H, T, T)
            scores = torch.where(eye, own.unsqueeze(-1), scores)
        else:
            scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, T, T)
        scores = scores.masked_fill(~mask, float("-inf"))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))  # (B, H, T, T)
        if self.myopic_gradient:
            diag = pattern.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)  # (B, H, T, 1)
            return pattern.masked_fill(eye, 0.0) @ v_past + diag * v, pattern
        return pattern @ v, pattern


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_mlp: int, myopic_gradient: bool, horizon: int | None = None,
                 is_query: torch.Tensor | None = None):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, myopic_gradient, horizon, is_query)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.GELU(), nn.Linear(d_mlp, d_model))
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor, mask: torch.Tensor, reach_h: float | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = x + self.hook_attn_out(self.attn(self.ln1(x), mask, reach_h))
        x = x + self.hook_mlp_out(self.mlp(self.ln2(x)))
        return self.hook_resid_post(x)


class Transformer(HookedModule):
    """Pre-LayerNorm causal decoder over continuous tokens: linear read-in, learned positions,
    GELU MLPs, linear read-out. Input (B, T, d_in) -> output (B, T, d_out)."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        n_ctx: int,
        d_model: int = 64,
        n_layers: int = 3,
        n_heads: int = 2,
        d_mlp: int | None = None,
        horizon: int | None = None,
        myopic_gradient: bool = False,
        query_positions: list[int] | None = None,
    ):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if horizon is not None and horizon < 1:
            raise ValueError(f"horizon must be >= 1 or null (no horizon), got {horizon}")
        for name, value in (("d_in", d_in), ("d_out", d_out), ("n_ctx", n_ctx), ("n_layers", n_layers)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.n_ctx = n_ctx
        self.horizon = horizon
        self.myopic_gradient = myopic_gradient
        self.embed = nn.Linear(d_in, d_model)
        self.pos_embed = nn.Parameter(torch.randn(n_ctx, d_model) * 0.02)
        self.hook_embed = HookPoint()
        is_query = None
        if query_positions is not None:
            is_query = torch.zeros(n_ctx, dtype=torch.bool)
            is_query[list(query_positions)] = True
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_mlp or 4 * d_model, myopic_gradient, horizon, is_query) for _ in range(n_layers)
        )
        self.ln_final = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, d_out)
        self.register_buffer("mask", attention_mask(n_ctx, horizon, query_positions), persistent=False)

    def forward(self, x: torch.Tensor, reach_h: float | None = None) -> torch.Tensor:
        """reach_h: also compute each layer's reach beyond this soft horizon (read via attn.hook_reach)."""
        if reach_h is not None and reach_h < 0:
            raise ValueError(f"reach_h must be >= 0, got {reach_h}")
        if x.dim() != 3 or x.shape[-1] != self.embed.in_features or x.shape[1] > self.n_ctx:
            raise ValueError(
                f"expected input (batch, T <= {self.n_ctx}, {self.embed.in_features}), got {tuple(x.shape)}"
            )
        T = x.shape[1]
        mask = self.mask[:T, :T]
        h = self.hook_embed(self.embed(x) + self.pos_embed[:T])
        for block in self.blocks:
            h = block(h, mask, reach_h)
        return self.unembed(self.ln_final(h))
