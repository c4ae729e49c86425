"""The Task interface: everything task-specific, declared in one class, so the model, the runner, the report
and the CLI name no task.

A task is a LightningDataModule that declares
- shapes the model takes from it (linked by the CLI): `input_dim` (or `vocab_size` for integer tokens),
  `output_dim`, `seq_len`, `query_positions`;
- data: `make_batch(gen, n, split)`, the test `splits`, and its base objective `loss(pred, batch)`;
- test metrics: `evaluate(preds, model)` returns an Evaluation (metrics and tables), and
  `write_artifacts(evaluation, out_dir)` writes them (plots included) into the run folder;
- mesa-signature inputs: `probe_targets(batch)`, `future_signal(batch, future_k)` (the training stream
  attaches it to each batch when a penalty needs it: `stream_signals`), `reach_horizon`;
- for grids: a typed `headline` and `report_sections` (extra tables and plots in a grid's report);
- optional `commands`: extra `constrained` subcommands (e.g. e(k) tables, a formal check of a checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from constrained.files import write_csv
from constrained.seeding import STREAMS, generator, stream
from constrained.tasks.signals import default_future_signal

if TYPE_CHECKING:
    from constrained.models.sequence_model import SequenceModel

BATCH_KEYS = ("inputs", "targets", "loss_mask")
# name -> (mask (n, T) bool, values (n, T, k)); float values get a ridge probe (R²), bool values (k = 1) a
# logistic classifier probe (AUROC)
Targets = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Gap:
    """A paired difference the report states in words: metric of `variant` minus `reference`, per seed."""

    name: str
    variant: str
    reference: str
    metric: str


@dataclass(frozen=True)
class Headline:
    """What a grid's report table shows: the capability metric and the mesa-signatures beside it."""

    capability: str
    lower_is_better: bool
    signatures: tuple[str, ...] = ()
    gaps: tuple[Gap, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Headline:
        return cls(d["capability"], bool(d["lower_is_better"]), tuple(d.get("signatures", ())),
                   tuple(Gap(**g) for g in d.get("gaps", ())))


@dataclass
class Evaluation:
    """Test results of one run: metrics ({split}/{name}) and tables (name -> rows), each table written to the
    run folder as <name>.csv."""

    metrics: dict[str, float]
    tables: dict[str, list[dict]] = field(default_factory=dict)


@dataclass
class Section:
    """What a task adds to a grid's report: Markdown lines and the plots it wrote."""

    lines: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


# (records of finished runs, the report folder) -> Section. A record is a dict with variant, seed, metrics and,
# when the run folder is at hand, folder (None for records read back from a results.csv).
ReportSection = Callable[[list[dict], Path], Section]
# argv after the command name -> exit status
Command = Callable[[list[str]], int]


class TrainStream(IterableDataset):
    """Endless stream of batches; batch s is a pure function of (seed, s, rank), so a resumed or
    distributed run sees exactly the data an uninterrupted one would."""

    def __init__(self, task: Task, start_step: int, rank: int):
        self.task, self.start_step, self.rank = task, start_step, rank

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.task.with_signals(self.task.train_batch(step, self.rank))
            step += 1


def check_finite(**values: float | None) -> None:
    """Every named data option is a finite number (None allowed): a NaN or inf option is named before any
    work, whether it came from YAML (`.nan`) or the command line."""
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"data.init_args.{name} must be a finite number, got {value}")


class Task(L.LightningDataModule):
    """Subclasses set the shapes, `headline`, and implement make_batch, loss and evaluate."""

    input_dim: int = 1
    vocab_size: int | None = None  # integer tokens: the model reads them through an embedding, not a linear map
    output_dim: int = 1
    query_positions: list[int] | None = None
    extra_splits: tuple[str, ...] = ()  # test splits beside "test"; each draws from STREAMS[name]
    headline: ClassVar[Headline]
    report_sections: ClassVar[tuple[ReportSection, ...]] = ()
    commands: ClassVar[dict[str, Command]] = {}
    default_future_k = 4
    reach_horizon = 8.0  # the soft horizon the reach signature is measured at, for every variant
    _stream_ks: tuple[int | None, ...] = ()  # future_k values whose signals training batches carry

    def __init__(self, batch_size: int, n_val: int, n_test: int, seed: int, eval_seed: int):
        super().__init__()
        for name, value in (("batch_size", batch_size), ("n_val", n_val), ("n_test", n_test)):
            if value < 1:
                raise ValueError(f"data.init_args.{name} must be >= 1, got {value}")
        self.batch_size, self.n_val, self.n_test = batch_size, n_val, n_test
        self.seed, self.eval_seed = seed, eval_seed
        self._eval: dict[str, dict[str, torch.Tensor]] = {}

    # -- data ----------------------------------------------------------------------------------------------

    @property
    def seq_len(self) -> int:
        raise NotImplementedError

    def make_batch(self, gen: torch.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        """n sequences drawn with `gen`: inputs (n, T, input_dim) float, or (n, T) long tokens when vocab_size
        is set; targets (n, T, output_dim) float or (n, T) long class indices; loss_mask (n, T) bool; plus any
        task-specific tensors (probe targets and report data read them)."""
        raise NotImplementedError

    def train_batch(self, step: int, rank: int) -> dict[str, torch.Tensor]:
        """Training batch `step` of DDP rank `rank`: a pure function of (seed, step, rank)."""
        return self.make_batch(generator(self.seed, stream("train"), step, rank), self.batch_size, "train")

    @property
    def splits(self) -> list[str]:
        """The test splits, in dataloader order."""
        return ["test", *self.extra_splits]

    def loss(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The base objective on the scored positions (batch["loss_mask"])."""
        raise NotImplementedError

    # -- test ----------------------------------------------------------------------------------------------

    def evaluate(self, preds: dict[str, torch.Tensor], model: SequenceModel) -> Evaluation:
        """Test metrics from the model's predictions on each split (preds[split]: (n, T, output_dim)); `model`
        is there for what needs it in the loop (rollouts, generation)."""
        raise NotImplementedError

    def validation_metrics(self, model: SequenceModel) -> dict[str, float]:
        """Extra metrics (full names, e.g. val/...) logged after each validation run, so metrics.csv holds their
        curve over training steps; none by default."""
        return {}

    def write_artifacts(self, evaluation: Evaluation, out_dir: Path) -> None:
        """test_metrics.csv and each table as <name>.csv in the run folder; tasks add their plots."""
        rows = [{"split": k.split("/", 1)[0], "metric": k.split("/", 1)[1], "value": v}
                for k, v in evaluation.metrics.items()]
        write_csv(rows, out_dir / "test_metrics.csv", ["split", "metric", "value"])
        for name, table in evaluation.tables.items():
            write_csv(table, out_dir / f"{name}.csv")

    def probe_targets(self, batch: dict[str, torch.Tensor]) -> Targets:
        """What the probes decode from the residual stream; none by default."""
        return {}

    def future_signal(self, batch: dict[str, torch.Tensor], future_k: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows (B, T) bool, z (N, d_z)) for future_info and the adversarial probe: by default the targets at
        t+2..t+future_k residualized on the target at t (class targets one-hot), see tasks/signals.py."""
        k = self.default_future_k if future_k is None else future_k
        n_classes = None if batch["targets"].is_floating_point() else self.output_dim
        return default_future_signal(batch["targets"], batch["loss_mask"], k, n_classes)

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


def signal_keys(future_k: int | None) -> tuple[str, str]:
    """The batch keys of an attached future signal (rows, z) for future_k (None: the task's default)."""
    k = "default" if future_k is None else future_k
    return f"future_signal.{k}.rows", f"future_signal.{k}.z"


def masked(pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions, targets) at the scored positions."""
    mask = batch["loss_mask"]
    return pred[mask], batch["targets"][mask]


def _as_dict(items):
    return dict(zip(BATCH_KEYS, (torch.stack(t) for t in zip(*items))))
