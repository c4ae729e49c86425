"""The one causal decoder core. Variants (horizon, myopic gradient, query tokens) are switches on it, and so
is the read-in: a linear map of vector tokens, or an embedding of integer tokens (vocab_size), never copies."""

from __future__ import annotations

import copy

import torch
from torch import nn

from constrained.common.mask import query_mask
from constrained.models.attention import Attention
from constrained.models.config import TransformerConfig
from constrained.models.hooks import HookedModule, HookPoint


class Block(nn.Module):
    def __init__(self, config: TransformerConfig, is_query: torch.Tensor | None = None):
        super().__init__()
        d_model = config.d_model
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model=d_model, n_heads=config.n_heads, myopic_gradient=config.myopic_gradient,
                              horizon=config.horizon, is_query=is_query)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, config.mlp_width), nn.GELU(), nn.Linear(config.mlp_width, d_model))
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor, reach_h: float | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = x + self.hook_attn_out(self.attn(self.ln1(x), reach_h))
        x = x + self.hook_mlp_out(self.mlp(self.ln2(x)))
        return self.hook_resid_post(x)


class Transformer(HookedModule):
    """Pre-LayerNorm causal decoder: read-in, learned positions, GELU MLPs, linear read-out.

    Input (B, T, d_in) float vectors through a linear read-in, or, with vocab_size set, (B, T) integer tokens
    in [0, vocab_size) through an embedding (d_in is then unused); output (B, T, d_out).
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"Transformer takes a TransformerConfig, got {type(config).__name__}")
        self.config = config
        self.n_ctx = config.n_ctx
        self.horizon = config.horizon
        self.myopic_gradient = config.myopic_gradient
        self.vocab_size = config.vocab_size
        d_model = config.d_model
        self.embed = nn.Linear(config.d_in, d_model) if config.vocab_size is None else nn.Embedding(config.vocab_size,
                                                                                                   d_model)
        self.pos_embed = nn.Parameter(torch.randn(config.n_ctx, d_model) * 0.02)
        # as in TransformerLens: hook_embed is the read-in alone, hook_pos_embed the positions, their sum enters
        # block 0 (blocks.0.hook_resid_pre), so a cache means the same here and in an exported HookedTransformer
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        is_query = query_mask(config.n_ctx, config.query_positions)
        self.query_positions = config.query_positions
        self.blocks = nn.ModuleList(Block(config, is_query) for _ in range(config.n_layers))
        self.ln_final = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, config.d_out)

    def forward(self, x: torch.Tensor, reach_h: float | None = None) -> torch.Tensor:
        """reach_h: also compute each layer's reach beyond this soft horizon (read via attn.hook_reach)."""
        if reach_h is not None and reach_h < 0:
            raise ValueError(f"reach_h must be >= 0, got {reach_h}")
        self.check_input(x)
        T = x.shape[1]
        e = self.hook_embed(self.embed(x))  # (B, T, d_model)
        h = e + self.hook_pos_embed(self.pos_embed[:T].expand_as(e))
        for block in self.blocks:
            h = block(h, reach_h)
        return self.unembed(self.ln_final(h))

    def check_input(self, x: torch.Tensor) -> None:
        if self.vocab_size is not None:
            if x.dim() != 2 or x.shape[1] > self.n_ctx or x.is_floating_point():
                raise ValueError(f"expected integer tokens (batch, T <= {self.n_ctx}), got {tuple(x.shape)} "
                                 f"{x.dtype}")
        elif x.dim() != 3 or x.shape[-1] != self.embed.in_features or x.shape[1] > self.n_ctx:
            raise ValueError(f"expected input (batch, T <= {self.n_ctx}, {self.embed.in_features}), "
                             f"got {tuple(x.shape)}")

    def reinitialized(self, seed: int) -> Transformer:
        """A copy with every weight drawn afresh by this class's own scheme, deterministic in `seed`: initialized on
        the CPU (the same control on every device) inside a forked RNG (the global random state is untouched),
        then moved where this model is, frozen and in eval mode. The probes' random-init control."""
        param = next(self.parameters())
        control = copy.deepcopy(self).cpu()
        fresh: set[int] = set()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in control.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                    fresh.update(id(p) for p in module.parameters(recurse=False))
            with torch.no_grad():
                control.pos_embed.normal_(0.0, 0.02)  # the scheme of Transformer.__init__
            fresh.add(id(control.pos_embed))
        # a parameter added to Transformer without a re-init here would leave trained weights in the control
        stale = [name for name, p in control.named_parameters() if id(p) not in fresh]
        if stale:
            raise RuntimeError(f"reinitialized does not know how to re-initialize {stale}")
        return control.to(device=param.device, dtype=param.dtype).requires_grad_(False).eval()
