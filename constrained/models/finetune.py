"""Fine-tuning from another run's weights: `model.init_args.init_from PATH` (SequenceModel.load_weights) starts a
run from a checkpoint's weights with a fresh optimizer and learning-rate schedule, and the path stays in the
run's config. Here: the model a fine-tuned run started from, rebuilt from the run's own config; the
LightningModule hands it to the task's evaluate, so that a task can measure before and after side by side (e.g. a
backdoor's persistence through safety training) without building models itself."""

from __future__ import annotations

import inspect

import lightning as L
import torch


def constructor_arguments(cls: type) -> set[str]:
    """The keyword arguments the model class and its model base classes (every LightningModule subclass above
    Lightning's own) take."""
    names: set[str] = set()
    for c in cls.__mro__:
        if isinstance(c, type) and issubclass(c, L.LightningModule) and c is not L.LightningModule \
                and "__init__" in vars(c):
            names |= {p.name for p in inspect.signature(c.__init__).parameters.values()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    return names


def initial_model(model):
    """A model of the same class and config holding the weights `model` was initialised from (its init_from),
    in eval mode, on its device, with its task attached; None when `model` was not fine-tuned. Built without
    touching the global random state, so the metrics measured after it are those of a run without it."""
    hparams = getattr(model, "hparams", None) or {}
    if not hparams.get("init_from"):
        return None
    accepted = constructor_arguments(type(model))
    with torch.random.fork_rng(devices=[]):
        start = type(model)(**{k: v for k, v in hparams.items() if k in accepted})
    start.load_initial_weights()
    start.task = model.task
    return start.to(model.device).eval()
