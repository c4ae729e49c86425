"""Lightning module: the transformer core trained on a task's base objective.

Baseline and myopic variants are this one class with different switches (horizon,
myopic_gradient). Dimensions the data fixes (d_in, d_out, n_ctx, query_positions, loss)
are linked from the data module by the CLI, never typed into configs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F

from constrained import probes
from constrained.transformer import Transformer


class SequenceModel(L.LightningModule):
    def __init__(
        self,
        d_model: int = 64,
        n_layers: int = 3,
        n_heads: int = 2,
        d_mlp: int | None = None,
        horizon: int | None = None,
        myopic_gradient: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 250,
        min_lr_ratio: float = 0.1,
        d_in: int = 1,
        d_out: int = 1,
        n_ctx: int = 1,
        query_positions: list[int] | None = None,
        loss: Literal["mse", "huber"] = "mse",
    ):
        super().__init__()
        if lr <= 0 or warmup_steps < 0 or not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1; got {lr}, "
                             f"{warmup_steps}, {min_lr_ratio}")
        self.save_hyperparameters()
        self.net = Transformer(d_in, d_out, n_ctx, d_model, n_layers, n_heads, d_mlp, horizon, myopic_gradient,
                               query_positions)
        self._test_preds: dict[int, list[torch.Tensor]] = {}

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    def task_loss(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["loss_mask"]
        if self.hparams.loss == "huber":
            return F.huber_loss(pred[mask], batch["targets"][mask])
        return F.mse_loss(pred[mask], batch["targets"][mask])

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named terms whose sum is the training loss (penalties add their own terms)."""
        return {"task": self.task_loss(self(batch["inputs"]), batch)}

    def training_step(self, batch, batch_idx):
        terms = self.loss_terms(batch)
        for name, value in terms.items():
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"non-finite loss at step {self.global_step}: term '{name}' = {value.item()}; "
                    f"training stopped, checkpoints written before this step are kept")
        loss = sum(terms.values())
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.task_loss(self(batch["inputs"]), batch), prog_bar=True)

    def on_test_epoch_start(self):
        self._test_preds = {}

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        pred = self(batch["inputs"])
        self._test_preds.setdefault(dataloader_idx, []).append(pred.detach().cpu())

    def on_test_epoch_end(self):
        dm = self.trainer.datamodule
        preds = {split: torch.cat(self._test_preds[i]) for i, split in enumerate(dm.test_splits)}
        metrics = dm.evaluate(preds, Path(self.trainer.default_root_dir))
        if hasattr(dm, "probe_targets"):
            test = dm.eval_set("test")
            control = probes.random_control(self.net, seed=dm.eval_seed)
            scores = probes.probe_scores(self.net, control, test, dm.probe_targets(test))  # eval mode, no_grad
            metrics.update({f"test/{k}": v for k, v in scores.items()})
        self.log_dict(metrics, sync_dist=False)

    def configure_optimizers(self):
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps < 1:
            raise ValueError("trainer.max_steps must be set (>= 1): the LR schedule is defined over steps")
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)

        def factor(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            progress = min(1.0, (step - hp.warmup_steps) / max(1, max_steps - hp.warmup_steps))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
