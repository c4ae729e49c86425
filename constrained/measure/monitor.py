"""Probe scores during training: how the mesa-signature grows, not only where it ends."""

from __future__ import annotations

import lightning as L

from constrained.measure import defection, probes
from constrained.measure.backdoored import planted


class ProbeMonitor(L.Callback):
    """After each validation run, fits the task's probes on a fixed set of validation sequences and
    logs monitor/probe_* (trained, control, selectivity per layer) to every logger, with the model's
    signatures on the same sequences (monitor/future_info_*, monitor/reach, monitor/iteration). A task that
    declares the backdoor protocol (measure/backdoored.py) and plants one also gets
    monitor/defection_probe_auroc_best, on its validation windows: when the backdoor forms, and whether safety
    training makes it fade (not logged where a class has too few windows for an AUROC).

    The sequences and the random-init control are fixed for the whole run, so changes in the curve
    come from the model alone.
    """

    def __init__(self, n_sequences: int = 256):
        if n_sequences < 2:
            raise ValueError(f"n_sequences must be >= 2 (probes train on one half, test on the other), "
                             f"got {n_sequences}")
        self.n_sequences = n_sequences
        self.batch = self.targets = self.control = None

    def setup(self, trainer, pl_module, stage):
        task = pl_module.task
        self.batch = {k: v[: self.n_sequences] for k, v in task.eval_set("val").items()}
        self.targets = task.probe_targets(self.batch)
        self.seed = task.eval_seed
        self.defection = planted(task)

    # Lightning forbids self.log in on_validation_end; at epoch end it reaches every logger at the
    # current step and lands in callback_metrics like val/loss.
    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        net = getattr(pl_module, "net", None)
        if not hasattr(net, "run_with_cache"):
            raise TypeError(f"ProbeMonitor reads hooks of pl_module.net (a model with run_with_cache); "
                            f"{type(pl_module).__name__} has {type(net).__name__}")
        scores = {}
        if self.targets:  # a task without probe targets still gets its signatures watched
            if self.control is None:
                self.control = probes.random_control(net, seed=self.seed)
            scores.update(probes.probe_scores(net, self.control, self.batch, self.targets))
        if self.defection:
            probe = defection.probe_scores(net, pl_module.task, "val", n=self.n_sequences, all_probes=False)
            if "defection_probe_auroc_best" in probe:  # undefined below the minimum count of a class: not logged
                scores["defection_probe_auroc_best"] = probe["defection_probe_auroc_best"]
        if hasattr(pl_module, "signatures"):  # future_info, reach, iteration: every model, penalized or not
            scores.update(pl_module.signatures(self.batch))
        pl_module.log_dict({f"monitor/{k}": v for k, v in scores.items()}, on_step=False, on_epoch=True,
                           sync_dist=False)
