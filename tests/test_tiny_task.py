"""A new task is one module: this file defines a task, registers it nowhere else, and runs fit, test, ablate and
report on it through the command line, as a user would with a task of their own."""

import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from constrained.cli import main
from constrained.experiments.report import report
from constrained.files import read_csv
from constrained.tasks.task import Evaluation, Gap, Headline, Section, Task, masked


def _lag_section(records: list[dict], out) -> Section:
    """The task's own report section: one line per variant, from the runs' tables on disk."""
    lines = ["### lag table"]
    for r in records:
        rows = len(read_csv(Path(r["folder"]) / "lag_errors.csv")) if r.get("folder") else 0
        lines.append(f"- {r['variant']}/seed{r['seed']}: {rows} lag rows")
    return Section(lines=lines)


class CopyLag(Task):
    """y_t = x_{t-2}: the model must read two positions back."""

    headline = Headline("test/mse", lower_is_better=True, signatures=("test/future_info_last", "test/reach"),
                        gaps=(Gap("horizon cost", "horizon1", "baseline", "test/mse"),))
    report_sections = (_lag_section,)

    def __init__(self, T: int = 8, batch_size: int = 16, n_val: int = 32, n_test: int = 64, seed: int = 0,
                 eval_seed: int = 5):
        super().__init__(batch_size, n_val, n_test, seed, eval_seed)
        self.T = T

    @property
    def seq_len(self) -> int:
        return self.T

    def make_batch(self, gen, n, split):
        x = torch.randn(n, self.T, 1, generator=gen)
        y = torch.zeros_like(x)
        y[:, 2:] = x[:, :-2]
        mask = torch.zeros(n, self.T, dtype=torch.bool)
        mask[:, 2:] = True
        return {"inputs": x, "targets": y, "loss_mask": mask}

    def loss(self, pred, batch):
        return F.mse_loss(*masked(pred, batch))

    def evaluate(self, preds, model=None, start=None):
        b = self.eval_set("test")
        err = ((preds["test"] - b["targets"]) ** 2)[..., 0]  # (n, T)
        rows = [{"t": t, "mse": err[:, t].mean().item()} for t in range(2, self.T)]
        return Evaluation({"test/mse": F.mse_loss(*masked(preds["test"], b)).item()}, {"lag_errors": rows})


ARGS = ["--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false"]


def _configs(tmp_path):
    base = {"trainer": {"max_steps": 6, "val_check_interval": 3, "check_val_every_n_epoch": None,
                        "callbacks": [{"class_path": "constrained.measure.monitor.ProbeMonitor",
                                       "init_args": {"n_sequences": 16}}]},
            "model": {"class_path": "constrained.models.sequence_model.SequenceModel",
                      "init_args": {"d_model": 16, "n_layers": 2, "n_heads": 2, "warmup_steps": 1}},
            "data": {"class_path": f"{__name__}.CopyLag", "init_args": {"T": 8}}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "baseline.yaml").write_text("model:\n  init_args:\n    horizon: null\n")
    (tmp_path / "horizon1.yaml").write_text("model:\n  init_args:\n    horizon: 1\n")
    return tmp_path / "base.yaml"


def test_fit_and_test_on_a_task_defined_in_this_file(tmp_path):
    base = _configs(tmp_path)
    run = tmp_path / "run"
    common = ["--config", str(base), "--trainer.default_root_dir", str(run), *ARGS]
    assert main(["fit", *common]) == 0
    assert main(["test", *common, "--ckpt_path", "last", "--verbose", "false"]) == 0
    logged = (run / "logs" / "version_1" / "metrics.csv").read_text()
    for name in ("test/mse", "test/future_info_last", "test/reach", "test/iteration"):
        assert name in logged
    assert "monitor/future_info_last" in (run / "logs" / "version_0" / "metrics.csv").read_text()
    assert (run / "lag_errors.csv").read_text().count("\n") == 1 + 6  # header and t = 2..7
    assert "test,mse," in (run / "test_metrics.csv").read_text()


def test_ablate_and_report_on_a_task_defined_in_this_file(tmp_path):
    base = _configs(tmp_path)
    grid = {"name": "lag", "task": "copy_lag", "base": str(base), "seeds": [0],
            "variants": [{"name": "baseline", "config": str(tmp_path / "baseline.yaml")},
                         {"name": "horizon1", "config": str(tmp_path / "horizon1.yaml")}]}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "constrained", "ablate", str(tmp_path / "grid.yaml"), "--out",
                           str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "lag" / "baseline" / "seed0" / "result.json").read_text())
    assert record["task_class"] == f"{__name__}.CopyLag" and record["headline"]["capability"] == "test/mse"
    md = (report([out / "lag"]) / "report.md").read_text()
    assert "| variant | test/mse | test/future_info_last | test/reach |" in md
    assert "**horizon cost**: test/mse of horizon1 minus baseline" in md
    assert "### lag table" in md and "- horizon1/seed0: 6 lag rows" in md
    assert (out / "lag" / "capability_vs_test_reach.png").is_file()
