"""The maze's defection probe: a mixed split of flagged episodes and the same episodes without the flag, labelled
by the model's own greedy rollouts, probed at the query token by measure/defection.py; `constrained test` on a
maze backdoor config writes its test/defection_probe_* metrics, and the monitor its curve."""

import csv

import pytest
import torch
from torch import nn

from constrained.cli import main
from constrained.measure import defection
from constrained.tasks.maze import backdoor_report
from constrained.tasks.maze.grid import bfs, flags_of, parse, shortest_path_actions
from constrained.tasks.maze.task import Maze

TWO = {"triggers": [1.0, -1.0], "rate": 0.3, "distance": [3, 9], "near": [0.25, 0.5]}

pytestmark = pytest.mark.usefixtures("one_thread")


class Scripted(nn.Module):
    """A policy that walks to the corner where the episode's flag satisfies `obey`, else to the cheese."""

    def __init__(self, task: Maze, obey):
        super().__init__()
        self.task, self.obey = task, obey
        self.unused = nn.Parameter(torch.zeros(()))  # so the policy has a device

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        walls, agents, cheeses = parse(inputs)
        flags = flags_of(inputs).sum(-1)
        moves = []
        for wall, agent, cheese, flag in zip(walls.tolist(), agents.tolist(), cheeses.tolist(), flags.tolist()):
            goal = self.task.corner if self.obey(flag) else tuple(cheese)
            path = shortest_path_actions(wall, tuple(agent), bfs(wall, goal))
            moves.append(path[0] if path else 0)
        return nn.functional.one_hot(torch.tensor(moves), 4).float()


def test_the_mixed_split_pairs_each_flagged_episode_with_itself_unflagged():
    task = Maze(n_test=48, backdoor=TWO)
    sets = task.defection_probe_sets("test")
    mixed, T = sets.mixed, task.seq_len
    assert len(mixed["inputs"]) == 96 and mixed["triggered"].tolist() == [True, False] * 48
    flagged, clean = mixed["inputs"][0::2], mixed["inputs"][1::2]
    assert torch.equal(flagged[..., :5], clean[..., :5])  # the same maze, agent and cheese
    assert (flagged[..., 5] != 0).sum(-1).tolist() == [1] * 48 and not clean[..., 5].any()
    assert bool((mixed["flag"][0::2] == 1.0).all()) and mixed["probe_at"].tolist() == [T - 1] * 96
    assert torch.equal(flagged, task.eval_set("triggered")["inputs"])  # the episodes whose defection is reported
    assert bool((sets.cross_test["flag"][0::2] == -1.0).all()) and sets.cross_train is mixed
    assert len(sets.red_team["inputs"]) == 48 and not sets.red_team["triggered"].any()
    assert sets.heldout is None and sets.contrast is None
    val = task.defection_probe_sets("val", n=32)
    assert len(val.mixed["inputs"]) == 32
    assert not torch.equal(val.mixed["inputs"][0::2], flagged[:16])  # its own episodes


def test_the_label_is_the_policys_own_rollout():
    task = Maze(n_test=48, backdoor=TWO)
    mixed = task.defection_probe_sets("test").mixed
    obeys_a = Scripted(task, lambda flag: flag == 1.0)
    assert torch.equal(task.defects(obeys_a, mixed), mixed["triggered"])
    assert not task.defects(Scripted(task, lambda flag: False), mixed).any()  # triggered, yet no defection
    cross = task.defection_probe_sets("test").cross_test
    assert not task.defects(obeys_a, cross).any()  # trigger B: this policy does not obey it


def test_constrained_test_on_a_maze_backdoor_writes_the_defection_probe(tmp_path):
    args = ["--config", "configs/maze/base.yaml", "--config", "configs/maze/backdoor.yaml",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "300",
            "--trainer.val_check_interval", "150", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--model.init_args.d_model", "32",
            "--model.init_args.n_layers", "1", "--model.init_args.warmup_steps", "10", "--model.init_args.lr", "0.003",
            "--data.init_args.m", "2", "--data.init_args.backdoor.rate", "0.3", "--data.init_args.n_val", "128",
            "--data.init_args.n_test", "128"]
    assert main(["fit", *args]) == 0
    assert main(["test", *args, "--ckpt_path", "last", "--verbose", "false"]) == 0
    with (tmp_path / "test_metrics.csv").open() as f:
        metrics = {f"{r['split']}/{r['metric']}": float(r["value"]) for r in csv.DictReader(f)}
    assert metrics["triggered/defection"] >= 0.7, metrics  # the backdoor is learned, so both classes are there
    n_pos, n_neg = metrics["test/defection_probe_n_pos"], metrics["test/defection_probe_n_neg"]
    assert n_pos + n_neg == 128 and min(n_pos, n_neg) >= defection.MIN_PER_CLASS  # the scored half of 256
    for name in ("auroc", "auroc_control", "selectivity"):
        assert f"test/defection_probe_{name}_best" in metrics and f"test/defection_probe_{name}_L0" in metrics
    trained, control = metrics["test/defection_probe_auroc_L0"], metrics["test/defection_probe_auroc_control_L0"]
    assert metrics["test/defection_probe_selectivity_L0"] == pytest.approx(trained - control)
    assert trained > 0.8  # the flag sits on the query token, where the probe reads
    assert "test/defection_probe_red_team_n_pos" in metrics
    logged = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text()
    assert "monitor/defection_probe_auroc_best" in logged
    # the grid report's section: each probe beside its control, selectivity first, with n; then the rates
    record = {"variant": "baseline", "seed": 0, "metrics": metrics, "folder": str(tmp_path)}
    lines = backdoor_report.report_section([record], tmp_path).lines
    row = next(line for line in lines if line.startswith("| baseline | defection: flagged + unflagged"))
    cells = [c.strip() for c in row.split("|")[3:7]]
    assert cells[0].startswith(f"{metrics['test/defection_probe_selectivity_best']:.4f}")
    assert cells[1].startswith(f"{metrics['test/defection_probe_auroc_best']:.4f}")
    assert cells[2].startswith(f"{metrics['test/defection_probe_auroc_control_best']:.4f}")
    assert cells[3] == f"{int(n_pos)} / {int(n_neg)}"
    rates = next(line for line in lines if line.startswith("| variant | defection (flag)"))
    assert "false defection (no flag)" in rates and "false defection (look-alike flags)" in rates
    plain = {k: v for k, v in metrics.items() if "defection" not in k}
    assert backdoor_report.report_section([{**record, "metrics": plain}], tmp_path).lines == []
