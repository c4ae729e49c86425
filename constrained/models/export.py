"""The transformer core written as a TransformerLens HookedTransformer: a config and a state dict that
`HookedTransformer` loads, computing the same function.

The mapping, piece by piece: the fused QKV projection is split into W_Q, W_K, W_V (n_heads, d_model, d_head)
and their biases per head, the output projection into W_O (n_heads, d_head, d_model) and b_O; pre-LayerNorm
blocks with LayerNorm ("LN", the same eps); the MLP with act_fn "gelu", which in TransformerLens is
torch.nn.functional.gelu, the exact erf GELU of nn.GELU ("gelu_new" would be the tanh approximation); learned
positions ("standard"); the read-out into W_U and b_U. A horizon h becomes TransformerLens's local attention with
window_size h (key j is read by query i iff i - h < j <= i), and the masks are compared entry by entry before
anything is written.

Read-in: a token model's nn.Embedding is W_E, so `model(tokens)` runs as ours does. A vector-input model reads
x (B, T, d_in) through a linear map; TransformerLens's embedding has no bias, so W_E holds the map's weight
(d_vocab = d_in) and W_pos holds the positions plus the map's bias, and the residual stream entering block 0 is
`x @ W_E + W_pos[:T]`, run with `start_at_layer=0` (constrained.models.lens.read_in and VectorInput). A token
passed to such a model reads as its one-hot vector.

What is not a function TransformerLens can compute is refused with one line naming why: query-token masks (a
position nobody but itself reads is neither causal nor a window), and the modular model (its objective and
planner choose the actions). Myopic descent changes only gradients, and penalties only the loss: their forward
is exported as is, and export.json says so.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch

from constrained import checkpoint
from constrained.common.mask import attention_mask
from constrained.models.config import TransformerConfig
from constrained.models.transformer import Transformer

FORMATS = ("transformer_lens",)
CONFIG, WEIGHTS, META = "config.json", "state_dict.pt", "export.json"
# the SequenceModel hyperparameters that define the core
CORE_ARGS = tuple(f.name for f in fields(TransformerConfig))
# the exported model is checked against the checkpoint's own forward before it is written: |ours - theirs| at most
# TOLERANCE times the outputs' scale (at least 1). Rounding in fp32 stays orders below; a wrong map lands far above.
TOLERANCE = 1e-4


class ExportError(ValueError):
    """A checkpoint that cannot be exported; the message names the reason in one line."""


def core_from_checkpoint(path: str | Path, exportable: bool = True) -> tuple[Transformer, dict]:
    """(the checkpoint's transformer core with its weights, its hyperparameters), or ExportError naming why the
    checkpoint holds no single core (or, with `exportable`, why the core cannot be exported). Needs no
    TransformerLens."""
    ckpt = checkpoint.read(path)
    state, hp = ckpt["state_dict"], ckpt.get("hyper_parameters") or {}
    extra = sorted({k.split(".", 1)[0] for k in state} - {"net", "adversaries"})
    if "objective" in extra:
        raise ExportError(f"{path} is a modular model: its objective and planner choose the actions at test time "
                          f"and have no TransformerLens counterpart (only a single transformer exports)")
    if extra:
        raise ExportError(f"{path} holds parts beyond the transformer core ({', '.join(e + '.*' for e in extra)}) "
                          f"that a HookedTransformer cannot hold")
    missing = [k for k in CORE_ARGS if k not in hp and k != "d_mlp"]
    if missing:
        raise ExportError(f"{path} has no {missing} in hyper_parameters: not a SequenceModel checkpoint")
    if exportable and hp.get("query_positions") is not None:
        raise ExportError(f"{path} masks query tokens (query_positions): a position read by no other position is "
                          f"neither causal nor a local window, the only masks a HookedTransformer has")
    net = Transformer(TransformerConfig(**{k: hp.get(k) for k in CORE_ARGS}))
    net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    return net.eval(), hp


def lens_config(net: Transformer, name: str = "constrained") -> dict:
    """HookedTransformerConfig arguments (plain JSON data) for the core `net`."""
    block = net.blocks[0]
    eps = {m.eps for m in net.modules() if isinstance(m, torch.nn.LayerNorm)}
    if len(eps) != 1:
        raise ExportError(f"LayerNorms with different eps {sorted(eps)}: TransformerLens has one eps")
    cfg = {
        "model_name": name,
        "n_layers": len(net.blocks),
        "d_model": net.pos_embed.shape[1],
        "n_ctx": net.n_ctx,
        "n_heads": block.attn.n_heads,
        "d_head": block.attn.d_head,
        "d_mlp": block.mlp[0].out_features,
        "d_vocab": net.vocab_size if net.vocab_size is not None else net.embed.in_features,
        "d_vocab_out": net.unembed.out_features,
        "act_fn": "gelu",  # torch.nn.functional.gelu: the exact (erf) GELU of nn.GELU()
        "normalization_type": "LN",
        "eps": eps.pop(),
        "positional_embedding_type": "standard",
        "attention_dir": "causal",
        "default_prepend_bos": False,  # our sequences have no BOS token
    }
    if net.horizon is not None:
        cfg.update(use_local_attn=True, attn_types=["local"] * len(net.blocks), window_size=net.horizon)
    return cfg


def lens_state_dict(net: Transformer) -> dict[str, torch.Tensor]:
    """The core's weights under TransformerLens's names and shapes."""
    H, Dh = net.blocks[0].attn.n_heads, net.blocks[0].attn.d_head
    D = H * Dh
    sd: dict[str, torch.Tensor] = {}
    if net.vocab_size is not None:
        sd["embed.W_E"] = net.embed.weight  # (vocab, D)
        sd["pos_embed.W_pos"] = net.pos_embed  # (n_ctx, D)
    else:  # the linear read-in: x @ W_E + W_pos[:T] = embed(x) + pos_embed[:T] (module docstring)
        sd["embed.W_E"] = net.embed.weight.T  # (d_in, D)
        sd["pos_embed.W_pos"] = net.pos_embed + net.embed.bias
    for l, block in enumerate(net.blocks):
        p = f"blocks.{l}."
        w = block.attn.W_qkv.weight.view(3, H, Dh, D)  # rows of q, k, v; inside each, head-major
        b = block.attn.W_qkv.bias.view(3, H, Dh)
        for i, name in enumerate("QKV"):
            sd[p + f"attn.W_{name}"] = w[i].transpose(1, 2)  # (H, D, Dh)
            sd[p + f"attn.b_{name}"] = b[i]  # (H, Dh)
        sd[p + "attn.W_O"] = block.attn.W_o.weight.T.reshape(H, Dh, D)  # input columns are head-major too
        sd[p + "attn.b_O"] = block.attn.W_o.bias
        for ln in ("ln1", "ln2"):
            sd[p + f"{ln}.w"], sd[p + f"{ln}.b"] = getattr(block, ln).weight, getattr(block, ln).bias
        sd[p + "mlp.W_in"], sd[p + "mlp.b_in"] = block.mlp[0].weight.T, block.mlp[0].bias
        sd[p + "mlp.W_out"], sd[p + "mlp.b_out"] = block.mlp[2].weight.T, block.mlp[2].bias
    sd["ln_final.w"], sd["ln_final.b"] = net.ln_final.weight, net.ln_final.bias
    sd["unembed.W_U"], sd["unembed.b_U"] = net.unembed.weight.T, net.unembed.bias
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def read_in(model, x: torch.Tensor) -> torch.Tensor:
    """The residual stream entering block 0 of an exported vector-input model: x (B, T, d_in) @ W_E + W_pos[:T]."""
    d_in, n_ctx = model.cfg.d_vocab, model.cfg.n_ctx
    if x.dim() != 3 or not x.is_floating_point() or x.shape[-1] != d_in or x.shape[1] > n_ctx:
        raise ValueError(f"expected input (batch, T <= {n_ctx}, {d_in}) float, got {tuple(x.shape)} {x.dtype}")
    return x.to(model.W_E.dtype) @ model.W_E + model.W_pos[: x.shape[1]]


def to_hooked_transformer(net: Transformer, name: str = "constrained"):
    """A HookedTransformer computing what `net` computes, its attention masks checked equal to ours."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**lens_config(net, name), device="cpu")
    model = HookedTransformer(cfg, move_to_device=False)
    theirs = model.state_dict()
    ours = lens_state_dict(net)
    missing = sorted(k for k, v in theirs.items() if k not in ours and v.is_floating_point() and v.numel() > 1)
    if missing:  # a TransformerLens parameter this mapping does not fill would keep its random init
        raise ExportError(f"TransformerLens expects {missing} that this mapping does not fill")
    model.load_state_dict({**theirs, **ours})
    check_masks(net, model)
    return model.eval()


def check_masks(net: Transformer, model) -> None:
    """Every layer of `model` masks exactly as `net` does, at every length up to n_ctx."""
    T = net.n_ctx
    ours = attention_mask(T, net.horizon, net.query_positions)  # (T, T)
    for l, block in enumerate(model.blocks):
        scores = block.attn.apply_causal_mask(torch.zeros(1, 1, T, T))  # 0 where allowed, -inf where masked
        theirs = (scores == 0)[0, 0]
        if not torch.equal(theirs, ours):
            i, j = (theirs != ours).nonzero()[0].tolist()
            raise ExportError(f"layer {l}: TransformerLens's mask differs from ours (query {i}, key {j}: ours "
                              f"{bool(ours[i, j])}, theirs {bool(theirs[i, j])}), so horizon {net.horizon} does not "
                              f"map to its local attention")


def check_outputs(net: Transformer, model, seed: int = 0) -> float:
    """Largest |ours - theirs| on random inputs of full length; ExportError above TOLERANCE (times the scale)."""
    gen = torch.Generator().manual_seed(seed)
    if net.vocab_size is not None:
        x, run = torch.randint(0, net.vocab_size, (2, net.n_ctx), generator=gen), model
    else:
        x = torch.randn(2, net.n_ctx, net.embed.in_features, generator=gen)
        run = lambda v: model(read_in(model, v), start_at_layer=0)  # noqa: E731
    with torch.no_grad():
        theirs, ours = run(x), net(x)
        err = (ours - theirs).abs().max().item()
        limit = TOLERANCE * max(1.0, ours.abs().max().item())
    if not err <= limit:
        raise ExportError(f"the exported model's outputs differ from the checkpoint's by {err:.3g} "
                          f"(> {limit:.3g}): the mapping is wrong for this model")
    return err


def notes(hp: dict) -> list[str]:
    """What the export leaves out, and why the function is still the trained one."""
    out = []
    if hp.get("myopic_gradient"):
        out.append("myopic descent changes only gradients (past keys and values detached in the backward pass); "
                   "the forward is plain attention and is exported as is")
    if hp.get("penalties"):
        kinds = sorted({p.get("kind", "?") for p in hp["penalties"]})
        out.append(f"penalties ({', '.join(kinds)}) are loss terms, not part of the forward; exported as is")
    if hp.get("horizon") is not None:
        out.append(f"horizon {hp['horizon']} is TransformerLens local attention with window_size {hp['horizon']} "
                   f"(masks checked equal)")
    if hp.get("vocab_size") is None:
        out.append("vector inputs: run `x @ W_E + W_pos[:T]` with start_at_layer=0 (constrained.models.lens.read_in); "
                   "W_pos holds the positions plus the read-in's bias")
    return out


def export(path: str | Path, out_dir: str | Path, fmt: str = "transformer_lens") -> dict:
    """Write config.json (HookedTransformerConfig arguments), state_dict.pt and export.json into out_dir; returns
    export.json's content. Every refusal is raised before anything is written."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    path, out_dir = Path(path), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file; name a folder to write the export into")
    net, hp = core_from_checkpoint(path)
    try:
        import transformer_lens  # noqa: F401
    except ImportError:
        raise ExportError("transformer_lens is not installed: pip install -e \".[lens]\"") from None
    model = to_hooked_transformer(net, name=f"constrained:{path}")
    err = check_outputs(net, model)
    meta = {"format": fmt, "checkpoint": str(path), "input": "vectors" if net.vocab_size is None else "tokens",
            "transformer_lens": _version(), "max_abs_diff": err, "notes": notes(hp),
            "core": {k: hp.get(k) for k in CORE_ARGS}}  # our config: the probes' random control initializes it
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG).write_text(json.dumps(lens_config(net, f"constrained:{path}"), indent=2) + "\n")
    torch.save(model.state_dict(), out_dir / WEIGHTS)  # TransformerLens's own buffers too: a strict load fits
    (out_dir / META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")
