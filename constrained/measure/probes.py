"""Linear probes on hidden states, always scored against a random-init control of the same config.

Decodable-from-random-features is not a mesa-signature, so every score comes with the
same probe fitted on a freshly initialized model and their difference, the selectivity.

Any model with `run_with_cache` and TransformerLens hook names is probed (constrained.measure.hooked): our
Transformer or a TransformerLens HookedTransformer alike.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc

from constrained.common.eval_mode import eval_mode
from constrained.measure.hooked import HookedModel, check_hooks, device_of, n_layers

# name -> (mask (n, T) bool, values (n, T, k)); float values get a ridge probe (R²), bool values (k = 1) a
# logistic classifier probe (AUROC)
Targets = dict[str, tuple[torch.Tensor, torch.Tensor]]


def ridge_r2(h_train: torch.Tensor, z_train: torch.Tensor, h_test: torch.Tensor, z_test: torch.Tensor,
             alpha: float = 1e-3) -> float:
    """Held-out R² of a closed-form ridge probe z ≈ h W + b, summed over all target columns.

    h: (N, d), z: (N, k) or (N,). Ridge λ = alpha · mean diag(HcᵀHc), so the score does not depend on
    the scale of h. Not clipped: on noise it is slightly negative, which is the honest answer.
    """
    h_train, z_train, h_test, z_test = (t.double() for t in (h_train, z_train, h_test, z_test))
    if z_train.dim() == 1:
        z_train, z_test = z_train[:, None], z_test[:, None]
    mu_h, mu_z = h_train.mean(0), z_train.mean(0)
    hc = h_train - mu_h
    gram = hc.T @ hc  # (d, d)
    # tiny floor: constant features give a zero Gram, where W = 0 is the right answer, not a crash
    lam = (alpha * gram.diagonal().mean()).clamp(min=torch.finfo(torch.float64).tiny)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    w = torch.linalg.solve(gram + lam * eye, hc.T @ (z_train - mu_z))  # (d, k)
    pred = (h_test - mu_h) @ w + mu_z
    total = ((z_test - mu_z) ** 2).sum()
    if total == 0:
        raise ValueError("probe target is constant on the test rows: R² is undefined")
    return (1 - ((z_test - pred) ** 2).sum() / total).item()


def linear_auroc(h_train: torch.Tensor, labels_train: torch.Tensor, h_test: torch.Tensor,
                 labels_test: torch.Tensor, steps: int = 200, l2: float = 1e-3) -> float:
    """Held-out AUROC of a logistic-regression probe on standardized features.

    The small L2 keeps the weights finite when the classes are separable.
    """
    # callers may be inside Lightning's inference mode; fitting needs autograd and ordinary tensors
    with torch.inference_mode(False), torch.enable_grad():
        h_train, h_test = h_train.detach().clone().double(), h_test.detach().clone().double()
        y = labels_train.detach().clone().to(h_train)
        mu, sd = h_train.mean(0), h_train.std(0).clamp(min=1e-12)
        x, x_test = (h_train - mu) / sd, (h_test - mu) / sd
        w = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
        b = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        scores = (x_test @ w + b).detach()
    return binary_auroc(scores, labels_test.long().to(scores.device)).item()


def random_control(model: HookedModel, seed: int) -> HookedModel:
    """A freshly initialized model of the same config, deterministic in `seed`, built without touching the global
    random state (so a training run that asks for one is unchanged). A model that knows its own initialization
    (our Transformer, an export's vector read-in) has `reinitialized(seed)`; a TransformerLens model (one with a
    cfg) is rebuilt from its config by TransformerLens's scheme.
    """
    if hasattr(model, "reinitialized"):
        return model.reinitialized(seed)
    if hasattr(model, "cfg"):
        return rebuilt_from_cfg(model, seed)
    raise TypeError(f"random_control: {type(model).__name__} is neither our Transformer nor a TransformerLens "
                    f"model (no cfg), so there is no config to initialize afresh")


def rebuilt_from_cfg(model, seed: int):
    """A TransformerLens model's config freshly initialized by TransformerLens's own scheme, deterministic in
    `seed`: built on the CPU inside a forked RNG (the global random state is untouched), then moved where `model`
    is."""
    param = next(model.parameters())
    cfg = copy.deepcopy(model.cfg)
    cfg.seed, cfg.init_weights, cfg.device, cfg.n_devices = None, True, "cpu", 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        control = type(model)(cfg, tokenizer=getattr(model, "tokenizer", None), move_to_device=False)
    if param.device.type != "cpu":
        control = control.to(param.device, print_details=False)  # HookedTransformer.to also updates cfg.device
    return control.requires_grad_(False).eval()


@torch.no_grad()
def _hidden_at(net: HookedModel, inputs: torch.Tensor, masks: dict[str, torch.Tensor], layers: list[int],
               chunk: int = 256) -> dict[tuple[str, int], torch.Tensor]:
    """Residual stream after each layer at each mask's positions: {(name, layer): (N, d_model)},
    rows in sequence-major order (the order of values[mask])."""
    names = [f"blocks.{l}.hook_resid_post" for l in layers]
    check_hooks(net, names)
    device = device_of(net)
    rows: dict[tuple[str, int], list[torch.Tensor]] = {(n, l): [] for n in masks for l in layers}
    with eval_mode(net):
        for start in range(0, len(inputs), chunk):
            _, cache = net.run_with_cache(inputs[start:start + chunk].to(device), names_filter=names)
            for name, mask in masks.items():
                m = mask[start:start + chunk].to(device)
                for l, hook in zip(layers, names):
                    rows[name, l].append(cache[hook][m])  # (rows of this chunk, d_model)
    return {key: torch.cat(parts) for key, parts in rows.items()}


def probe_scores(model: HookedModel, control: HookedModel, batch: dict[str, torch.Tensor], targets: Targets,
                 layers: list[int] | None = None, alpha: float = 1e-3) -> dict[str, float]:
    """Probe score of each target from the residual stream after each layer, for the trained model and
    the control, and their difference: probe_{name}_L{l}[_control|_selectivity], and the same with `last`
    for the last layer. Float targets: held-out R² of a ridge probe; bool targets (one column): held-out
    AUROC of a logistic-regression probe.

    Train/test split by sequence (first half / second half), never inside a sequence: positions of
    one sequence share its context, so splitting them would score memorization of that context.
    """
    inputs = batch["inputs"]
    n, last = len(inputs), n_layers(model) - 1
    if n < 2:
        raise ValueError(f"probe_scores needs at least 2 sequences (train and test halves), got {n}")
    layers = sorted(set(range(last + 1) if layers is None else layers) | {last})
    masks = {name: mask for name, (mask, _) in targets.items()}
    trained, controlled = _hidden_at(model, inputs, masks, layers), _hidden_at(control, inputs, masks, layers)
    half, out = n // 2, {}
    for name, (mask, values) in targets.items():
        z = values[mask]  # (N, k), same row order as the hidden states
        n_train = int(mask[: half].sum())
        classify = values.dtype == torch.bool
        if classify and (z.shape[-1] != 1 or z[:n_train].unique().numel() < 2 or z[n_train:].unique().numel() < 2):
            raise ValueError(f"classifier probe target {name!r} needs one bool column with both classes in the "
                             f"train and the test half, got shape {tuple(z.shape)}")
        for l in layers:
            scores = {}
            for tag, hidden in (("", trained), ("_control", controlled)):
                h = hidden[name, l]
                zz = z.to(h.device)
                if classify:
                    scores[tag] = linear_auroc(h[:n_train], zz[:n_train, 0], h[n_train:], zz[n_train:, 0])
                else:
                    scores[tag] = ridge_r2(h[:n_train], zz[:n_train], h[n_train:], zz[n_train:], alpha)
            scores["_selectivity"] = scores[""] - scores["_control"]
            for where in [f"L{l}"] + (["last"] if l == last else []):
                out.update({f"probe_{name}_{where}{tag}": v for tag, v in scores.items()})
    return out
