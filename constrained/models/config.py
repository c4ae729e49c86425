"""The transformer core's hyper-parameters, in one place: the core is built from a TransformerConfig, and the
Lightning module builds one from its own named arguments (which LightningCLI parses from YAML and a checkpoint
stores), so a config file and a checkpoint name the same keys whichever object holds them."""

from __future__ import annotations

from dataclasses import dataclass

from constrained.models.myopic import myopic_form


@dataclass(frozen=True)
class TransformerConfig:
    """d_in: the width of a vector token (unused with vocab_size); vocab_size: integer tokens in [0, vocab_size)
    read through an embedding instead; d_mlp: the MLP's hidden width, 4 * d_model when None; horizon: the
    attention window, None for plain causal attention; query_positions: the positions no other position reads."""

    d_in: int
    d_out: int
    n_ctx: int
    d_model: int = 64
    n_layers: int = 3
    n_heads: int = 2
    d_mlp: int | None = None
    horizon: int | None = None
    myopic_gradient: bool | str = False
    query_positions: list[int] | None = None
    vocab_size: int | None = None

    def __post_init__(self):
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be >= 1 or null (no horizon), got {self.horizon}")
        for name in ("d_in", "d_out", "n_ctx", "n_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        myopic_form(self.myopic_gradient)  # a bad value is refused here, before any block is built
        if self.query_positions is not None:  # a copy: the caller's list may change after the model is built
            object.__setattr__(self, "query_positions", list(self.query_positions))

    @property
    def mlp_width(self) -> int:
        return self.d_mlp or 4 * self.d_model
