"""A planning task needs no registration: this file makes a second task with the planning interface out of the
line world (constrained/proofs/line_world.py: a corridor with three moves, one of them a jump), registers it
nowhere else, and runs the modular model on it: the planner walks its transitions, the model fits and tests
through the command line, and the objective spec checks what was trained."""

from fractions import Fraction
from functools import partial

import pytest
import torch
import torch.nn.functional as F
import yaml

from constrained.cli import main
from constrained.common.planning import StateFeatures
from constrained.models.modular import ModularModel
from constrained.models.objective import Objective
from constrained.models.planner import plan
from constrained.proofs import objective as spec
from constrained.proofs.line_world import STEPS, LineWorld, distances
from constrained.proofs.result import PROVED, REFUTED
from constrained.seeding import generator
from constrained.tasks.maze.task import Maze
from constrained.tasks.signals import residualize
from constrained.tasks.task import Evaluation, Headline, Task


class Corridor(LineWorld, Task):
    """The line world (constrained/proofs/line_world.py) as a task: the line world first, so that its batches,
    loss and sizes stand in for Task's abstract ones."""

    headline = Headline("test/success", lower_is_better=False)

    def __init__(self, L: int = 8, batch_size: int = 16, n_val: int = 16, n_test: int = 16, seed: int = 0,
                 eval_seed: int = 5):
        Task.__init__(self, batch_size, n_val, n_test, seed, eval_seed)
        LineWorld.__init__(self, L)

    def future_signal(self, batch, future_k=None):
        """At the query token: the second move of the shortest path, residualized on the first (the plan beyond
        the present move)."""
        second = F.one_hot(batch["second"].clamp(min=0), len(STEPS)).float() * (batch["second"] >= 0).unsqueeze(-1)
        first = F.one_hot(batch["targets"][:, -1], len(STEPS)).float()
        return batch["loss_mask"], residualize(second, first)

    def evaluate(self, preds, model=None, start=None):
        b = self.eval_set("test")
        acc = (preds["test"][:, -1].argmax(-1) == b["targets"][:, -1]).float().mean().item()
        pos = b["agent"].clone()
        reached = torch.zeros(len(pos), dtype=torch.bool)
        for _ in range(self.step_limit):
            moves = model.act(self.render(b["walls"], pos, b["goal"])).argmax(-1)
            nxt = [self.successor(w, (p,), m) for w, p, m in zip(b["walls"].tolist(), pos[:, 0].tolist(),
                                                                   moves.tolist())]
            pos = torch.tensor([[p] if q is None else list(q) for p, q in zip(pos[:, 0].tolist(), nxt)])
            reached |= (pos == b["goal"]).all(-1)
        return Evaluation({"test/action_acc": acc, "test/success": reached.float().mean().item()})


def domain(L: int) -> list[tuple[int]]:
    """Every cell that is free in some corridor: all but the two ends."""
    return [(x,) for x in range(1, L - 1)]


def tiny(task: Corridor, **kw) -> ModularModel:
    model = ModularModel(d_in=task.input_dim, d_out=task.output_dim, n_ctx=task.seq_len, d_model=16, n_layers=1,
                         objective_hidden=[4], objective_max_params=64, state_features=task.state_features, **kw)
    model.task = task
    return model


def line_objective(L: int, toward: int | None = None) -> Objective:
    """score = 1 − |agent − target| / 2 in cells, target the goal (a correct objective) or the fixed cell
    `toward` (one that ignores the goal)."""
    objective = Objective(L, [2], axes=1)
    first, out = objective.layers[0], objective.layers[2]
    with torch.no_grad():
        if toward is None:
            first.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
            first.bias.zero_()
        else:
            c = toward / (L - 1)
            first.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
            first.bias.copy_(torch.tensor([-c, c]))
        out.weight.fill_(-(L - 1) / 2)
        out.bias.fill_(1.0)
    return objective.eval()


# ------------------------------------------------------------------------------------------------- tests


def test_the_planner_walks_the_tasks_own_moves_to_the_goal():
    """With the true distances as scores, every search ends on a shortest path, jumps included: the planner
    knows no move but through the task's successor."""
    task = Corridor()
    b = task.make_batch(generator(3), 32, "test")
    jumped = False
    for wall, a, g, d in zip(b["walls"].tolist(), b["agent"][:, 0].tolist(), b["goal"][:, 0].tolist(),
                             b["distance"].tolist()):
        dist = distances(wall, g)
        score = {(x,): -float(dist[x]) if dist[x] >= 0 else -99.0 for x in range(len(wall)) if not wall[x]}
        order = {p: [0, 1, 2] for p in score}
        pos, moves = (a,), 0
        while pos != (g,):
            trace = plan(partial(task.successor, wall), pos, score, order, budget=len(wall))
            jumped |= trace.action == 2
            pos, moves = task.successor(wall, pos, trace.action), moves + 1
        assert moves == d
    assert jumped  # the third move, which the maze does not have, was taken


def test_the_modular_model_acts_with_the_tasks_moves_and_refuses_another_tasks_features():
    task = Corridor()
    model = tiny(task).eval()
    b = task.eval_set("test")
    assert model.objective.layers[0].in_features == 2  # agent x, goal x
    actions = model.act(b["inputs"])
    assert actions.shape == (len(b["inputs"]), 3) and (actions.sum(-1) == 1).all()
    walls, agents = b["walls"].tolist(), b["agent"][:, 0].tolist()
    assert all(task.successor(w, (a,), m) is not None for w, a, m in zip(walls, agents, actions.argmax(-1).tolist()))
    model.task = Maze(m=2)  # built for the corridor: the maze's features are another declaration
    with pytest.raises(ValueError, match="state features .* disagree"):
        model.setup("test")


def test_the_spec_proves_a_correct_line_objective_and_refutes_one_that_ignores_the_goal():
    L, names = 8, StateFeatures(8, ("x",)).names
    result = spec.spec(line_objective(L), positions=domain(L), names=names)
    assert result.status == PROVED and set(result.claims) == {
        f"goal beats every other square by {spec.DEFAULT_MARGIN}", f"bounded by {spec.DEFAULT_BOUND}",
        "encoding is the module"}
    wrong = spec.spec(line_objective(L, toward=1), positions=domain(L), names=names)
    assert wrong.status == REFUTED and wrong.claim.startswith("goal beats")
    assert wrong.counterexample["agent_x"] == 1 and wrong.counterexample["goal_x"] != 1
    assert spec.spec(line_objective(L), Fraction(1, 2), positions=domain(L), names=names).status == PROVED
    assert spec.spec(line_objective(L), Fraction(3, 5), positions=domain(L), names=names).status == REFUTED


def test_fit_test_and_verify_on_a_planning_task_defined_in_this_file(tmp_path):
    config = {"trainer": {"max_steps": 6, "val_check_interval": 3, "check_val_every_n_epoch": None,
                          "callbacks": [], "enable_progress_bar": False, "enable_model_summary": False},
              "model": {"class_path": "constrained.models.modular.ModularModel",
                        "init_args": {"d_model": 16, "n_layers": 1, "warmup_steps": 1, "objective_hidden": [4],
                                      "objective_max_params": 64, "objective_data": "any_state", "save_traces": 2}},
              "data": {"class_path": f"{__name__}.Corridor", "init_args": {"L": 8}}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    common = ["--config", str(tmp_path / "base.yaml"), "--trainer.default_root_dir", str(run)]
    assert main(["fit", *common]) == 0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["state_features"] == {"grid_size": 8, "axes": ["x"], "goal": "goal", "flag": False}
    assert ckpt["state_dict"]["objective.layers.0.weight"].shape == (4, 2)
    assert main(["test", *common, "--ckpt_path", "last", "--verbose", "false"]) == 0
    logged = (run / "test_metrics.csv").read_text()
    assert "test,success," in logged
    assert "test/objective_top" in (run / "logs" / "version_1" / "metrics.csv").read_text()
    picture = (run / "traces" / "episode_test_0.txt").read_text()
    assert "A start, G goal" in picture and "moves:" in picture
    objective, hparams = spec.load(run / "checkpoints" / "last.ckpt")
    features = StateFeatures.of(hparams["state_features"])
    result = spec.spec(objective, positions=domain(8), names=features.names)
    assert result.status in (PROVED, REFUTED) and len(result.claims) == 3
    assert result.claims["encoding is the module"] == PROVED
