"""Fine-tuning from another run's weights: `model.init_args.init_from PATH` (SequenceModel.load_weights) starts a
run from a checkpoint's weights with a fresh optimizer and learning-rate schedule, and the path stays in the
run's config. Here: the model a fine-tuned run started from, rebuilt from the run's own config, so that a task
can measure before and after side by side (e.g. a backdoor's persistence through safety training)."""

from __future__ import annotations

import inspect


def constructor_arguments(cls: type) -> set[str]:
    """The keyword arguments the model class and its model base classes take."""
    from constrained.models.sequence_model import SequenceModel

    names: set[str] = set()
    for c in cls.__mro__:
        if isinstance(c, type) and issubclass(c, SequenceModel) and "__init__" in vars(c):
            names |= {p.name for p in inspect.signature(c.__init__).parameters.values()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    return names


def initial_model(model):
    """A model of the same class and config holding the weights `model` was initialised from (its init_from),
    in eval mode, on its device, with its task attached; None when `model` was not fine-tuned."""
    hparams = getattr(model, "hparams", None) or {}
    if not hparams.get("init_from"):
        return None
    accepted = constructor_arguments(type(model))
    start = type(model)(**{k: v for k, v in hparams.items() if k in accepted})
    start.load_initial_weights()
    start.task = model.task
    return start.to(model.device).eval()
