"""TransformerLens models as this project measures them: loading an export (constrained.models.export), a named
pretrained model, the vector read-in, and a model's freshly initialized twin (the probes' random control).

Loaders are plain functions returning a model with `run_with_cache` and TransformerLens hook names;
`constrained measure --model-loader MODULE:FUNCTION --loader-arg KEY=VALUE` calls any such function, these or a
user's own. transformer_lens is imported inside them: the package works without the `lens` extra.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from constrained.measure.probes import rebuilt_from_cfg
from constrained.models.config import TransformerConfig
from constrained.models.export import CONFIG, META, WEIGHTS, core_from_checkpoint, read_in, to_hooked_transformer
from constrained.models.transformer import Transformer

__all__ = ["LoadError", "VectorInput", "read_in", "load", "from_pretrained", "checkpoint_core"]


class LoadError(ValueError):
    """A model that cannot be loaded; the message names the file or the problem."""


class VectorInput(nn.Module):
    """A HookedTransformer that reads vectors (B, T, d_in) through `read_in`, then runs from block 0
    (start_at_layer=0). Its hooks are the HookedTransformer's from blocks.0.hook_resid_pre on; hook_embed and
    hook_pos_embed do not fire (the read-in happens outside TransformerLens's embedding)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def cfg(self):
        return self.model.cfg

    @property
    def hook_dict(self):
        return {k: v for k, v in self.model.hook_dict.items() if k not in ("hook_embed", "hook_pos_embed")}

    @property
    def blocks(self):
        return self.model.blocks

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.model(read_in(self.model, x), start_at_layer=0, **kwargs)

    def run_with_cache(self, x: torch.Tensor, **kwargs):
        return self.model.run_with_cache(read_in(self.model, x), start_at_layer=0, **kwargs)

    def run_with_hooks(self, x: torch.Tensor, **kwargs):
        return self.model.run_with_hooks(read_in(self.model, x), start_at_layer=0, **kwargs)

    def reinitialized(self, seed: int) -> VectorInput:
        inner = getattr(self.model, "reinitialized", None)  # an export's: our core's init scheme
        return VectorInput(inner(seed) if inner is not None else rebuilt_from_cfg(self.model, seed))


def load(path: str, device: str = "cpu"):
    """An export written by `constrained export`: a HookedTransformer (token models) or VectorInput around one
    (vector-input models). Its `reinitialized(seed)`, the probes' random control, is our core's random init of
    the same config (the scheme it was trained from), mapped the same way: `constrained measure` on an export
    gives the numbers `constrained test` gives on its checkpoint, the control's included."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    folder = Path(path)
    for name in (CONFIG, WEIGHTS, META):
        if not (folder / name).is_file():
            raise LoadError(f"{folder / name} not found: write the export with `constrained export CHECKPOINT {path}`")
    meta = json.loads((folder / META).read_text())
    cfg = HookedTransformerConfig(**json.loads((folder / CONFIG).read_text()), device=device)
    model = HookedTransformer(cfg, move_to_device=True)
    model.load_state_dict(torch.load(folder / WEIGHTS, map_location=device, weights_only=True))
    model.eval()
    core = meta.get("core")
    if core is not None:  # an instance attribute: the model stays a plain HookedTransformer
        model.reinitialized = lambda seed: _core_control(core, seed, device)
    return VectorInput(model) if meta.get("input") == "vectors" else model


def _core_control(core: dict, seed: int, device: str):
    with torch.random.fork_rng(devices=[]):  # building the template draws weights; the global RNG stays as it was
        template = Transformer(TransformerConfig(**core))
    control = template.reinitialized(seed)  # every weight of the template drawn afresh from `seed`
    model = to_hooked_transformer(control)
    if torch.device(device).type != "cpu":
        model = model.to(device, print_details=False)
    return model.requires_grad_(False).eval()


def from_pretrained(name: str, device: str = "cpu", **kwargs):
    """A model TransformerLens knows by name (e.g. gpt2), weights from the Hugging Face hub; kwargs go to
    HookedTransformer.from_pretrained (e.g. fold_ln: false)."""
    from transformer_lens import HookedTransformer

    return HookedTransformer.from_pretrained(name, device=device, **kwargs).eval()


def checkpoint_core(path: str, device: str = "cpu"):
    """Our core from a checkpoint of `constrained fit`: measured by the same command as its export."""
    return core_from_checkpoint(path, exportable=False)[0].to(device)
