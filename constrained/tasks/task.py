"""What every task shares: seeded data streams, fixed evaluation sets, and the hooks a task fills in.

A task is a LightningDataModule that also declares its base objective (`loss`), the shapes the
model takes from it, its test splits and metrics (`evaluate`), and its probe targets.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from constrained.kernels.future_info import future_targets, residualize
from constrained.seeding import generator

STREAMS = {"train": 0, "val": 1, "test": 2, "shifted": 3}  # independent random streams
BATCH_KEYS = ("inputs", "targets", "loss_mask")


class TrainStream(IterableDataset):
    """Endless stream of batches; batch s is a pure function of (seed, s, rank), so a resumed or
    distributed run sees exactly the data an uninterrupted one would."""

    def __init__(self, task: Task, start_step: int, rank: int):
        self.task, self.start_step, self.rank = task, start_step, rank

    def __iter__(self):
        step = self.start_step
        while True:
            gen = generator(self.task.seed, STREAMS["train"], step, self.rank)
            yield self.task.make_batch(gen, self.task.batch_size, "train")
            step += 1


class Task(L.LightningDataModule):
    """Subclasses set input_dim and seq_len and implement make_batch and evaluate."""

    loss = "mse"
    output_dim = 1
    query_positions: list[int] | None = None
    has_shifted_split = False

    def __init__(self, batch_size: int, n_val: int, n_test: int, seed: int, eval_seed: int):
        super().__init__()
        for name, value in (("batch_size", batch_size), ("n_val", n_val), ("n_test", n_test)):
            if value < 1:
                raise ValueError(f"data.init_args.{name} must be >= 1, got {value}")
        self.batch_size, self.n_val, self.n_test = batch_size, n_val, n_test
        self.seed, self.eval_seed = seed, eval_seed
        self._eval: dict[str, dict[str, torch.Tensor]] = {}

    def make_batch(self, gen: torch.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        """n sequences drawn with `gen`: inputs (n, T, input_dim), targets (n, T, output_dim),
        loss_mask (n, T) bool, plus any task-specific tensors."""
        raise NotImplementedError

    def evaluate(self, preds: dict[str, torch.Tensor], out_dir: Path) -> dict[str, float]:
        """Test metrics from the model's predictions (n, T, output_dim) on each test split."""
        raise NotImplementedError

    default_future_k = 4
    reach_horizon = 8.0  # the soft horizon the reach signature is measured at, for every variant

    def future_signal(self, batch: dict[str, torch.Tensor], future_k: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows (B, T) bool, z (N, d_z)): the signal that future_info and the adversarial probe decode
        from the hidden state at each True position; z rows in sequence-major order (that of h[rows]).

        Default: the targets at t+2..t+future_k, residualized on the current target over the batch, i.e.
        what position t could hold only to help later positions, beyond what its own prediction needs
        (unresidualized, the penalty also fights the task: future targets share most of the present one).
        """
        future_k = self.default_future_k if future_k is None else future_k
        y, scored = batch["targets"], batch["loss_mask"]  # (B, T, d_y), (B, T)
        ft = future_targets(y, future_k)
        n = y.shape[1] - future_k  # positions t with t + future_k < T
        valid = scored[:, :n].clone()  # (B, n): the present and every future target involved are scored
        for k in range(2, future_k + 1):
            valid &= scored[:, k:k + n]
        rows = torch.zeros_like(scored)
        rows[:, :n] = valid
        keep = valid.reshape(-1)  # ft's rows are (b, t) b-major, like valid's
        return rows, residualize(ft.z[keep], ft.y_now[keep])

    def eval_set(self, split: str) -> dict[str, torch.Tensor]:
        if split not in self._eval:
            n = self.n_val if split == "val" else self.n_test
            self._eval[split] = self.make_batch(generator(self.eval_seed, STREAMS[split]), n, split)
        return self._eval[split]

    def _loader(self, split: str) -> DataLoader:
        b = self.eval_set(split)
        return DataLoader(TensorDataset(*(b[k] for k in BATCH_KEYS)), batch_size=256, collate_fn=_as_dict)

    def train_dataloader(self):
        start = self.trainer.global_step if self.trainer is not None else 0
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return DataLoader(TrainStream(self, start, rank), batch_size=None)

    def val_dataloader(self):
        return self._loader("val")

    @property
    def test_splits(self) -> list[str]:
        return ["test"] + (["shifted"] if self.has_shifted_split else [])

    def test_dataloader(self):
        return [self._loader(s) for s in self.test_splits]


def _as_dict(items):
    return dict(zip(BATCH_KEYS, (torch.stack(t) for t in zip(*items))))
