"""Lightning module: the transformer core trained on a task's base objective.

Baseline and myopic variants are this one class with different switches (horizon, myopic_gradient).
Dimensions the data fixes (d_in or vocab_size, d_out, n_ctx, query_positions) are linked from the task by
the CLI, never typed into configs; the loss, the test metrics and the probe targets come from the task
itself (`self.task`, the trainer's data module unless one is attached).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from constrained import checkpoint
from constrained.measure import penalties as penalty_lib
from constrained.measure import signatures
from constrained.measure.penalties import AdversarialProbes, Penalty
from constrained.models.config import TransformerConfig
from constrained.models.finetune import initial_model
from constrained.models.transformer import Transformer


class SequenceModel(L.LightningModule):
    def __init__(
        self,
        d_model: int = TransformerConfig.d_model,
        n_layers: int = TransformerConfig.n_layers,
        n_heads: int = TransformerConfig.n_heads,
        d_mlp: int | None = TransformerConfig.d_mlp,
        horizon: int | None = TransformerConfig.horizon,
        myopic_gradient: bool | Literal["kv", "input"] = TransformerConfig.myopic_gradient,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 250,
        min_lr_ratio: float = 0.1,
        d_in: int = 1,
        d_out: int = 1,
        n_ctx: int = 1,
        query_positions: list[int] | None = TransformerConfig.query_positions,
        vocab_size: int | None = TransformerConfig.vocab_size,
        penalties: list[Penalty] | None = None,
        init_from: str | None = None,
    ):
        """The transformer's hyper-parameters are TransformerConfig's (models/config.py), named here one by one
        because LightningCLI reads a config file's keys from this signature; d_in, d_out, n_ctx, query_positions
        and vocab_size are linked from the task.
        penalties: terms added to the loss, e.g. [{kind: future_info, weight: 1.0}] (measure/penalties.py).
        init_from: a checkpoint whose weights this run starts from (fine-tuning), with a fresh optimizer and
        learning-rate schedule, loaded when the run sets up (`load_initial_weights`); resuming this run
        (--ckpt_path last) restores its own checkpoint instead."""
        super().__init__()
        if lr <= 0 or warmup_steps < 0 or not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1; got {lr}, "
                             f"{warmup_steps}, {min_lr_ratio}")
        self.penalties = penalty_lib.parse(penalties, n_layers)
        self.save_hyperparameters(ignore=["penalties"])
        self.hparams["penalties"] = penalty_lib.as_dicts(self.penalties)  # plain data: weights_only checkpoints
        self.net = Transformer(TransformerConfig(
            d_in=d_in, d_out=d_out, n_ctx=n_ctx, d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_mlp=d_mlp,
            horizon=horizon, myopic_gradient=myopic_gradient, query_positions=query_positions, vocab_size=vocab_size))
        self.adversaries: AdversarialProbes | None = None
        self._adversary_opt: torch.optim.Optimizer | None = None
        self._test_preds: dict[int, list[torch.Tensor]] = {}
        self._task = None
        self._initialised = init_from is None

    def load_initial_weights(self) -> None:
        """The weights of init_from, once: at the first setup, when every subclass has built its parts (the
        modular model's objective is built after this class's __init__), and before Lightning restores a
        checkpoint named by --ckpt_path (resuming or testing this run), which then wins."""
        if not self._initialised:
            self.load_weights(self.hparams.init_from)
            self._initialised = True

    def load_weights(self, path: str) -> None:
        """This model's weights from a checkpoint (safely, weights_only); a checkpoint whose weights do not fit
        this config is refused naming the mismatched tensors."""
        try:
            state = checkpoint.read(path)["state_dict"]
        except checkpoint.CheckpointError as e:  # name the option as well as the file
            raise checkpoint.CheckpointError(f"model.init_args.init_from: {e}") from None
        mine = self.state_dict()
        missing = sorted(set(mine) - set(state))
        unexpected = sorted(set(state) - set(mine))
        shapes = sorted(k for k in set(mine) & set(state) if mine[k].shape != state[k].shape)
        if missing or unexpected or shapes:
            parts = [f"{what} {names[:3]}" + (f" (and {len(names) - 3} more)" if len(names) > 3 else "")
                     for what, names in (("missing", missing), ("unexpected", unexpected), ("shape differs", shapes))
                     if names]
            raise checkpoint.CheckpointError(f"model.init_args.init_from: {path} does not fit this model's config: "
                                             + "; ".join(parts))
        self.load_state_dict(state)

    @property
    def task(self):
        """The task this model is trained and measured on: the one attached, else the trainer's data module."""
        if self._task is not None:
            return self._task
        trainer = self.attached_trainer
        if trainer is None or trainer.datamodule is None:
            raise RuntimeError(f"{type(self).__name__} needs a task: fit it through the CLI (data: ...) or set "
                               f"model.task = <Task>")
        return trainer.datamodule

    @task.setter
    def task(self, value) -> None:
        self._task = value

    @property
    def attached_trainer(self) -> L.Trainer | None:
        """The trainer running this model, None outside a run (where Lightning's `trainer` raises)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def setup(self, stage: str) -> None:
        self.load_initial_weights()
        signal_ks = [p.future_k for p in self.penalties if p.kind != "reach"]
        if signal_ks and stage == "fit":  # the penalties' targets come with the data, not from the training step
            self.task.stream_signals(signal_ks)
        # the adversarial probe's output width is the task's signal width, known once the data is
        adv = next((p for p in self.penalties if p.kind == "adversarial_probe"), None)
        if adv is None or self.adversaries is not None:
            return
        _, z = self.task.future_signal(self.task.eval_set("val"), adv.future_k)
        layers = penalty_lib.layers_of(adv, self.hparams.n_layers)
        self.adversaries = AdversarialProbes(self.hparams.d_model, z.shape[1], layers)
        self._adversary_opt = torch.optim.Adam(self.adversaries.parameters(), lr=adv.probe_lr)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    def act(self, inputs: torch.Tensor) -> torch.Tensor:
        """The action logits of a decision task's rollouts: the network's own output here; a model with a
        planner overrides it."""
        return self(inputs)

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named terms whose sum is the training loss: the task, then each penalty at its weight
        (a penalty at weight 0 is measured and logged as penalty/<kind>, and adds nothing)."""
        if not self.penalties:
            return {"task": self.task.loss(self(batch["inputs"]), batch)}
        L_ = self.hparams.n_layers
        names = sorted({n for p in self.penalties for n in penalty_lib.hook_names(p, L_)})
        reach = next((p for p in self.penalties if p.kind == "reach"), None)
        pred, cache = self.net.run_with_cache(batch["inputs"], names_filter=names, detach=False,
                                              reach_h=reach.horizon if reach else None)
        terms = {"task": self.task.loss(pred, batch)}
        signals: dict[int | None, tuple[torch.Tensor, torch.Tensor]] = {}  # one future signal per future_k
        for p in self.penalties:
            rows = z = None
            if p.kind != "reach":
                if p.future_k not in signals:
                    signals[p.future_k] = self.task.batch_signal(batch, p.future_k)
                rows, z = signals[p.future_k]
            trains = p.weight > 0 or p.kind == "adversarial_probe"  # the probe learns even at weight 0
            with torch.set_grad_enabled(trains and torch.is_grad_enabled()):
                v = penalty_lib.value(p, cache, L_, rows, z, self.adversaries)
            if self.logs_this_step():
                self.log(f"penalty/{p.name}", v.detach(), on_step=True, on_epoch=False)
            if p.kind == "adversarial_probe":
                terms[p.name] = v  # the model's share is scaled by -weight inside (gradient reversal)
            elif p.weight > 0:
                terms[p.name] = p.weight * v
        return terms

    def training_step(self, batch, batch_idx):
        terms = self.loss_terms(batch)
        for name, value in terms.items():
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"non-finite loss at step {self.global_step}: term '{name}' = {value.item()}; "
                    f"training stopped, checkpoints written before this step are kept")
        loss = sum(terms.values())
        if self.logs_this_step():
            self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False)
        self.log("train/loss", loss, prog_bar=True)  # every step: the progress bar shows it
        return loss

    def logs_this_step(self) -> bool:
        """Whether Lightning writes this training step's on_step values to the loggers: every
        trainer.log_every_n_steps steps and when stopping (its own rule, asked of the trainer). A value logged on
        another step is overwritten unread (callback_metrics aside), and a self.log call costs about 0.3 ms, a few
        per cent of a small model's step, so the per-term metrics are logged only then."""
        trainer = self.attached_trainer
        if trainer is None or not trainer.training:
            return True
        # Lightning's own rule, asked of a private part of the trainer: tests/test_lightning_private.py fails if
        # it moves; were it gone, every step would log (correct, only slower)
        return bool(getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", True))

    def on_after_backward(self) -> None:
        # the adversarial probe takes its own step; the main optimizer never sees its parameters
        if self._adversary_opt is not None:
            self._adversary_opt.step()
            self._adversary_opt.zero_grad(set_to_none=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._adversary_opt is not None:
            checkpoint["adversary_optimizer"] = self._adversary_opt.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self._adversary_opt is not None and "adversary_optimizer" in checkpoint:
            self._adversary_opt.load_state_dict(checkpoint["adversary_optimizer"])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.task.loss(self(batch["inputs"]), batch), prog_bar=True)

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:  # the task's curves (e.g. a backdoor's defection) at every validation
            metrics = self.task.validation_metrics(self)
            if metrics:
                self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)

    def on_test_epoch_start(self):
        self._test_preds = {}

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        pred = self(batch["inputs"])
        self._test_preds.setdefault(dataloader_idx, []).append(pred.detach().cpu())

    def on_test_epoch_end(self):
        task = self.task
        preds = {split: torch.cat(self._test_preds[i]) for i, split in enumerate(task.splits)}
        evaluation = task.evaluate(preds, self, initial_model(self))
        task.write_artifacts(evaluation, Path(self.trainer.default_root_dir))
        metrics = dict(evaluation.metrics)
        metrics.update(signatures.test_time(self.net, task))  # the same code as `constrained measure`
        self.log_dict(metrics, sync_dist=False)

    def signatures(self, batch: dict[str, torch.Tensor], n_sequences: int = 512) -> dict[str, float]:
        """future_info, reach and iteration on the first n_sequences of batch, at the task's settings
        (never a penalty's), so every variant is measured by the same ruler."""
        return signatures.on_task(self.net, self.task, batch, n_sequences)

    def optimized_parameters(self) -> list[torch.nn.Parameter]:
        """What the main optimizer trains (the adversarial probes have their own)."""
        return list(self.net.parameters())

    def param_groups(self) -> list[dict]:
        """The main optimizer's parameter groups; a group without "lr" takes model.init_args.lr."""
        return [{"params": self.optimized_parameters()}]

    def configure_optimizers(self):
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps < 1:
            raise ValueError("trainer.max_steps must be set (>= 1): the LR schedule is defined over steps")
        hp = self.hparams
        opt = torch.optim.AdamW(self.param_groups(), lr=hp.lr, weight_decay=hp.weight_decay)

        def factor(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            progress = min(1.0, (step - hp.warmup_steps) / max(1, max_steps - hp.warmup_steps))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
