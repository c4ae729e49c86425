"""How a task's data reaches Lightning: the endless training stream, the fixed val and test sets, the dataloaders,
and the future signals the training stream attaches to each batch. Nothing here is task-specific: it calls the
contract a task implements (tasks/task.py: make_batch, train_batch, splits, future_signal)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from constrained.seeding import STREAMS, generator, stream

BATCH_KEYS = ("inputs", "targets", "loss_mask")


class TrainStream(IterableDataset):
    """Endless stream of batches; batch s is a pure function of (seed, s, rank), so a resumed or
    distributed run sees exactly the data an uninterrupted one would."""

    def __init__(self, task: Loaders, start_step: int, rank: int):
        self.task, self.start_step, self.rank = task, start_step, rank

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.task.with_signals(self.task.train_batch(step, self.rank))
            step += 1


def signal_keys(future_k: int | None) -> tuple[str, str]:
    """The batch keys of an attached future signal (rows, z) for future_k (None: the task's default)."""
    k = "default" if future_k is None else future_k
    return f"future_signal.{k}.rows", f"future_signal.{k}.z"


class Loaders(L.LightningDataModule):
    """The LightningDataModule side of a Task: batch sizes and seeds, the cached eval sets, the dataloaders."""

    _stream_ks: tuple[int | None, ...] = ()  # future_k values whose signals training batches carry

    def __init__(self, batch_size: int, n_val: int, n_test: int, seed: int, eval_seed: int):
        super().__init__()
        for name, value in (("batch_size", batch_size), ("n_val", n_val), ("n_test", n_test)):
            if value < 1:
                raise ValueError(f"data.init_args.{name} must be >= 1, got {value}")
        self.batch_size, self.n_val, self.n_test = batch_size, n_val, n_test
        self.seed, self.eval_seed = seed, eval_seed
        self._eval: dict[str, dict[str, torch.Tensor]] = {}

    # -- future signals with the training data ---------------------------------------------------------------

    def stream_signals(self, future_ks: list[int | None]) -> None:
        """Have every training batch carry its future signal for each of future_ks (None: the task's default).
        The signal depends on the data alone, so it is built with the batch, not in the training step."""
        self._stream_ks = tuple(dict.fromkeys(future_ks))

    def with_signals(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch, plus the future signals `stream_signals` asked for (keys from `signal_keys`)."""
        for k in self._stream_ks:
            rows_key, z_key = signal_keys(k)
            batch[rows_key], batch[z_key] = self.future_signal(batch, k)
        return batch

    def batch_signal(self, batch: dict[str, torch.Tensor], future_k: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """future_signal(batch, future_k): the one the training stream attached, else computed now."""
        rows_key, z_key = signal_keys(future_k)
        if rows_key in batch:
            return batch[rows_key], batch[z_key]
        return self.future_signal(batch, future_k)

    # -- Lightning -----------------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        unknown = [s for s in self.splits if s not in STREAMS]
        if unknown:
            raise ValueError(f"{type(self).__name__}: split(s) {unknown} have no random stream; add them to "
                             f"STREAMS in constrained/seeding.py")

    def eval_set(self, split: str) -> dict[str, torch.Tensor]:
        """The fixed batch of a val or test split: n_val or n_test sequences drawn from (eval_seed, split)."""
        if split not in self._eval:
            n = self.n_val if split == "val" else self.n_test
            self._eval[split] = self.make_batch(generator(self.eval_seed, stream(split)), n, split)
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

    def test_dataloader(self):
        return [self._loader(s) for s in self.splits]


def _as_dict(items):
    return dict(zip(BATCH_KEYS, (torch.stack(t) for t in zip(*items))))
