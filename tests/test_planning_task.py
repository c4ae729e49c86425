"""A planning task is one module: this file defines a second task with the planning interface (a corridor with
three moves, one of them a jump), registers it nowhere else, and runs the modular model on it: the planner
walks its transitions, the model fits and tests through the command line, and the objective spec checks what
was trained."""

from fractions import Fraction
from functools import partial

import pytest
import torch
import torch.nn.functional as F
import yaml

from constrained.cli import main
from constrained.common.planning import Planning, StateFeatures
from constrained.models.modular import ModularModel
from constrained.models.objective import Objective
from constrained.models.planner import plan
from constrained.proofs import objective as spec
from constrained.proofs.result import PROVED, REFUTED
from constrained.seeding import generator
from constrained.tasks.maze.task import Maze
from constrained.tasks.signals import residualize
from constrained.tasks.task import Evaluation, Headline, Task, masked

WALL, FREE, AGENT, GOAL, QUERY = range(5)
STEPS = (-1, 1, 2)  # left, right, and a jump two to the right, over whatever lies between


def distances(wall: list[bool], goal: int) -> list[int]:
    """Moves from every position to goal (-1 where it cannot be reached), backwards over STEPS."""
    dist = [-1] * len(wall)
    dist[goal], frontier = 0, [goal]
    while frontier:
        nxt = []
        for x in frontier:
            for s in STEPS:
                p = x - s
                if 0 <= p < len(wall) and not wall[p] and dist[p] < 0:
                    dist[p] = dist[x] + 1
                    nxt.append(p)
        frontier = nxt
    return dist


class Corridor(Task, Planning):
    """L cells in a row, a wall at each end and one inside (never beside an end, so that every free cell has a
    move), which only a jump gets past going right. The agent
    walks to the goal: the target at the query token is the first move of a shortest path (ties to the first
    move in STEPS order). Batch extra: walls (n, L) bool, agent and goal (n, 1) long, distance (n,) long."""

    headline = Headline("test/success", lower_is_better=False)

    def __init__(self, L: int = 8, batch_size: int = 16, n_val: int = 16, n_test: int = 16, seed: int = 0,
                 eval_seed: int = 5):
        super().__init__(batch_size, n_val, n_test, seed, eval_seed)
        self.L = L

    @property
    def seq_len(self) -> int:
        return self.L + 1

    @property
    def input_dim(self) -> int:
        return 5

    @property
    def output_dim(self) -> int:
        return len(STEPS)

    def episode(self, gen: torch.Generator) -> tuple[list[bool], int, int]:
        while True:
            u, v, w = torch.rand(3, generator=gen, dtype=torch.float64).tolist()
            inner, a, g = 2 + int(u * (self.L - 5)), 1 + int(v * (self.L - 2)), 1 + int(w * (self.L - 2))
            wall = [x in (0, inner, self.L - 1) for x in range(self.L)]
            if not wall[a] and not wall[g] and a != g and distances(wall, g)[a] > 0:
                return wall, a, g

    def make_batch(self, gen, n, split):
        walls, agents, goals = zip(*[self.episode(gen) for _ in range(n)])
        layout, agent, goal = torch.tensor(walls), torch.tensor(agents).reshape(n, 1), torch.tensor(goals).reshape(n, 1)
        targets = torch.zeros(n, self.seq_len, dtype=torch.long)
        dist = torch.tensor([distances(w, g)[a] for w, a, g in zip(walls, agents, goals)])
        second = torch.full((n,), -1)  # the move after the first, -1 when the first reaches the goal
        for i, (w, a, g) in enumerate(zip(walls, agents, goals)):
            d = distances(w, g)
            targets[i, -1] = self.first_move(d, a)
            if d[a] > 1:
                second[i] = self.first_move(d, a + STEPS[targets[i, -1]])
        mask = torch.zeros(n, self.seq_len, dtype=torch.bool)
        mask[:, -1] = True
        return {"inputs": self.render(layout, agent, goal), "targets": targets, "loss_mask": mask, "walls": layout,
                "agent": agent, "goal": goal, "distance": dist, "second": second}

    def first_move(self, d: list[int], a: int) -> int:
        return next(m for m, s in enumerate(STEPS) if 0 <= a + s < self.L and d[a + s] == d[a] - 1)

    def future_signal(self, batch, future_k=None):
        """At the query token: the second move of the shortest path, residualized on the first (the plan beyond
        the present move)."""
        second = F.one_hot(batch["second"].clamp(min=0), len(STEPS)).float() * (batch["second"] >= 0).unsqueeze(-1)
        first = F.one_hot(batch["targets"][:, -1], len(STEPS)).float()
        return batch["loss_mask"], residualize(second, first)

    def loss(self, pred, batch):
        return F.cross_entropy(*masked(pred, batch))

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

    # -- the planning interface ----------------------------------------------------------------------------

    @property
    def state_features(self) -> StateFeatures:
        return StateFeatures(self.L, ("x",))

    @property
    def move_names(self) -> tuple[str, ...]:
        return ("left", "right", "jump")

    @property
    def step_limit(self) -> int:
        return 2 * self.L

    @property
    def trace_splits(self) -> tuple[str, ...]:
        return ("test",)

    def starts(self, batch):
        return batch["walls"], batch["agent"], batch["goal"], None

    def parse(self, inputs):
        kind = inputs[:, :-1, :QUERY].argmax(-1)  # (n, L)
        goal = (kind == GOAL).float().argmax(-1, keepdim=True)
        has_agent = (kind == AGENT).any(-1, keepdim=True)
        return kind == WALL, torch.where(has_agent, (kind == AGENT).float().argmax(-1, keepdim=True), goal), goal, None

    def render(self, layout, agent, goal, channel=None):
        kind = torch.where(layout, WALL, FREE)
        rows = torch.arange(len(kind))
        kind[rows, agent[:, 0]] = AGENT
        kind[rows, goal[:, 0]] = GOAL
        tokens = torch.cat([kind, torch.full((len(kind), 1), QUERY)], dim=1)
        return F.one_hot(tokens, 5).float()

    def free(self, layout):
        return ~layout

    def successor(self, layout, pos, move):
        x = pos[0] + STEPS[move]
        return (x,) if 0 <= x < len(layout) and not layout[x] else None

    def flag_of(self, channel):
        return channel.sum(-1)

    def random_goals(self, layout, gen):
        return torch.multinomial((~layout).double(), 1, generator=gen)

    def objective_labels(self, batch, goal):
        """Every free cell as the agent: 1 at the goal, else minus the cell distance over L (the objective
        sees no walls, so the reward it is declared to learn does not either)."""
        layout = batch["walls"].cpu()
        world, x = (~layout).nonzero(as_tuple=True)
        agent, goals = x.reshape(-1, 1), goal[world]
        d = (agent - goals).abs()[:, 0]
        return agent, goals, None, torch.where(d == 0, 1.0, -d.float() / self.L)

    def describe_episode(self, batch, i, path):
        goal = tuple(batch["goal"][i].tolist())
        return {"goal": list(goal), "outcome": "goal" if path[-1] == goal else "neither"}

    def draw_episode(self, batch, i, path):
        cells = ["#" if w else "." for w in batch["walls"][i].tolist()]
        for (x,) in path:
            cells[x] = "*"
        cells[path[0][0]], cells[batch["goal"][i, 0]] = "A", "G"
        return "A start, G goal, * path taken, # wall\n" + "".join(cells)


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
