"""What the measurements ask of a model: `run_with_cache(inputs, names_filter=[...])` returning (output, cache) with
TransformerLens hook names (blocks.{l}.hook_resid_pre, blocks.{l}.hook_resid_post, blocks.{l}.attn.hook_pattern),
and parameters. Our Transformer is one such model, a TransformerLens HookedTransformer another, so probes and
signatures measure either without knowing which."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class HookedModel(Protocol):
    def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]: ...

    def parameters(self, recurse: bool = True): ...


def n_layers(model) -> int:
    """Number of blocks: TransformerLens models say it in cfg, ours have one module per block."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "n_layers"):
        return int(cfg.n_layers)
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"{type(model).__name__} has neither cfg.n_layers nor blocks: cannot count its layers")
    return len(blocks)


def hook_names(model) -> set[str]:
    """Every hook name the model exposes (TransformerLens: hook_dict; ours: hook_points(), a dict by name, where
    TransformerLens's hook_points() is a list of modules)."""
    if hasattr(model, "hook_dict"):
        return set(model.hook_dict)
    if hasattr(model, "hook_points"):
        return set(model.hook_points())
    raise TypeError(f"{type(model).__name__} exposes no hook names (neither hook_points() nor hook_dict)")


def check_hooks(model, names: list[str]) -> None:
    """A one-line error naming the hooks a model lacks, before any work."""
    missing = sorted(set(names) - hook_names(model))
    if missing:
        raise ValueError(f"{type(model).__name__} has no hook(s) {missing[:4]}"
                         + (f" (and {len(missing) - 4} more)" if len(missing) > 4 else "")
                         + ": the measurements read TransformerLens hook names")


def device_of(model) -> torch.device:
    return next(model.parameters()).device
