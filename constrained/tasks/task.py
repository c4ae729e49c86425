"""The Task contract: everything task-specific, declared in one class, so the model, the runner, the report
and the CLI name no task. How the data reaches Lightning (the dataloaders, the fixed eval sets, the training
stream) is tasks/loaders.py, which Task extends.

A task declares
- shapes the model takes from it (linked by the CLI), each a read-only property: `seq_len` (required),
  `input_dim` (or `vocab_size` for integer tokens), `output_dim`, `query_positions`, `extra_splits`;
- data: `make_batch(gen, n, split)`, and its base objective `loss(pred, batch)`;
- test metrics: `evaluate(preds, model, start)` returns an Evaluation (metrics and tables), and
  `write_artifacts(evaluation, out_dir)` writes them (plots included) into the run folder; `start` is the
  model a fine-tuned run started from (None otherwise), handed over by the LightningModule;
- mesa-signature inputs: `probe_targets(batch)`, `future_signal(batch, future_k)`, `reach_horizon`;
- for grids: a typed `headline` and `report_sections` (extra tables and plots in a grid's report);
- optional `commands`: extra `constrained` subcommands (e.g. e(k) tables, a formal check of a checkpoint).
A task that can carry a planted backdoor also declares measure.backdoored.Backdoored.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from constrained.files import write_csv
from constrained.seeding import generator, stream
from constrained.tasks.loaders import Loaders
from constrained.tasks.signals import default_future_signal

if TYPE_CHECKING:
    from constrained.models.sequence_model import SequenceModel

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


def check_finite(**values: float | None) -> None:
    """Every named data option is a finite number (None allowed): a NaN or inf option is named before any
    work, whether it came from YAML (`.nan`) or the command line."""
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"data.init_args.{name} must be a finite number, got {value}")


class Task(Loaders, ABC):
    """Subclasses declare `seq_len` and `headline`, implement make_batch, loss and evaluate, and override the
    other shapes and hooks where the defaults do not fit."""

    headline: ClassVar[Headline]
    report_sections: ClassVar[tuple[ReportSection, ...]] = ()
    commands: ClassVar[dict[str, Command]] = {}
    default_future_k = 4
    reach_horizon = 8.0  # the soft horizon the reach signature is measured at, for every variant

    # -- shapes --------------------------------------------------------------------------------------------

    @property
    @abstractmethod
    def seq_len(self) -> int:
        """Positions per sequence (the model's context)."""

    @property
    def input_dim(self) -> int:
        """Features per input token (unused with vocab_size)."""
        return 1

    @property
    def vocab_size(self) -> int | None:
        """Integer tokens in [0, vocab_size): the model reads them through an embedding, not a linear map."""
        return None

    @property
    def output_dim(self) -> int:
        """Outputs per position (class logits for class targets)."""
        return 1

    @property
    def query_positions(self) -> list[int] | None:
        """Positions no other position reads (None: none)."""
        return None

    @property
    def extra_splits(self) -> tuple[str, ...]:
        """Test splits beside "test"; each draws from STREAMS[name]."""
        return ()

    @property
    def splits(self) -> list[str]:
        """The test splits, in dataloader order."""
        return ["test", *self.extra_splits]

    # -- data ----------------------------------------------------------------------------------------------

    @abstractmethod
    def make_batch(self, gen: torch.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        """n sequences drawn with `gen`: inputs (n, T, input_dim) float, or (n, T) long tokens when vocab_size
        is set; targets (n, T, output_dim) float or (n, T) long class indices; loss_mask (n, T) bool; plus any
        task-specific tensors (probe targets and report data read them)."""

    def train_batch(self, step: int, rank: int) -> dict[str, torch.Tensor]:
        """Training batch `step` of DDP rank `rank`: a pure function of (seed, step, rank)."""
        return self.make_batch(generator(self.seed, stream("train"), step, rank), self.batch_size, "train")

    @abstractmethod
    def loss(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The base objective on the scored positions (batch["loss_mask"])."""

    # -- test ----------------------------------------------------------------------------------------------

    @abstractmethod
    def evaluate(self, preds: dict[str, torch.Tensor], model: SequenceModel | None = None,
                 start: SequenceModel | None = None) -> Evaluation:
        """Test metrics from the model's predictions on each split (preds[split]: (n, T, output_dim)). `model` is
        there for what needs it in the loop (rollouts, generation, probes); `start` is the model a fine-tuned run
        started from (its init_from weights, in eval mode), None when the run was not fine-tuned, for metrics
        before and after."""

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

    # -- mesa-signatures -----------------------------------------------------------------------------------

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


def masked(pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions, targets) at the scored positions."""
    mask = batch["loss_mask"]
    return pred[mask], batch["targets"][mask]
