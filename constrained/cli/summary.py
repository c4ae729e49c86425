"""What a training subcommand prints when it ends: after a test the task's headline metrics, in full names, and
where every metric is written, instead of Lightning's table of all of them (one column per test split, the same
values in each, names cut to fit); after a fit its steps, last validation loss and where the checkpoints and
metrics are."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import CSVLogger


def metric_lines(metrics: dict[str, float], indent: str = "  ") -> list[str]:
    """One aligned `name  value` line per metric, in the given order."""
    if not metrics:
        return []
    width = max(map(len, metrics))
    return [f"{indent}{name:<{width}}  {value:.6g}" for name, value in metrics.items()]


def metrics_file(trainer) -> Path | None:
    """The CSV logger's metrics.csv of this invocation: every metric logged, the signatures included."""
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            return Path(logger.log_dir) / "metrics.csv"
    return None


def test_summary(task, trainer) -> str:
    """The headline metrics of `task` (its capability first, then the mesa-signatures the report shows beside it)
    from the metrics this test logged, and the files that hold all of them."""
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    headline = getattr(task, "headline", None)
    names = [headline.capability, *headline.signatures] if headline is not None else []
    shown = {k: logged[k] for k in names if k in logged}
    lines = [f"test of {type(task).__name__}: " + (f"{len(shown)} headline metrics of {len(logged)}"
                                                    if shown else f"{len(logged)} metrics")]
    if shown and headline is not None:
        better = "lower" if headline.lower_is_better else "higher"
        shown = {(f"{k} ({better} is better)" if k == headline.capability else k): v for k, v in shown.items()}
    lines += metric_lines(shown)
    where = metrics_file(trainer)
    root = Path(trainer.default_root_dir)
    if where is not None:
        lines.append(f"all metrics: {where}")
    if (root / "test_metrics.csv").is_file():
        lines.append(f"the task's metrics and tables: {root / 'test_metrics.csv'} and the CSV files beside it")
    return "\n".join(lines)


def fit_summary(task, trainer) -> str:
    """The steps trained, the last validation loss, and where the checkpoints and the logged metrics are."""
    loss = trainer.callback_metrics.get("val/loss")
    lines = [f"fit of {type(task).__name__}: {trainer.global_step} steps"
             + (f", val/loss {float(loss):.6g}" if loss is not None else "")]
    folders = sorted({cb.dirpath for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)})
    lines += [f"checkpoints: {folder}" for folder in folders]
    where = metrics_file(trainer)
    if where is not None:
        lines.append(f"all metrics: {where}")
    return "\n".join(lines)
