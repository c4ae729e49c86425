"""The modular (policy/objective-separated) model for the maze: the sequence model's transformer is the
reactive policy, trained by behaviour cloning as before; beside it, a small objective module scores states
from declared features and is trained only on reward labels; at test, an explicit planner (best-first
search over the maze's known moves, constrained/models/planner.py) picks every action, expanding in the policy's
order and scoring squares with the objective.

The two parts share no parameters and no activations: the policy's loss cannot reach the objective and the
objective's loss cannot reach the policy (tests/test_modular.py checks both on the autograd graph).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from constrained.models.objective import Objective
from constrained.models.planner import Trace, check_budget, plan
from constrained.models.sequence_model import SequenceModel
from constrained.seeding import generator, stream
from constrained.tasks.maze import grid as maze
from constrained.tasks.maze.task import Maze

OBJECTIVE_DATA = ("policy_distribution", "any_state")
CHUNK = 2048  # sequences per policy forward when ranking actions at every square


class ModularModel(SequenceModel):
    def __init__(
        self,
        objective_hidden: list[int] = [16, 16],  # noqa: B006 (jsonargparse needs a plain list default)
        objective_max_params: int = 512,
        objective_data: Literal["policy_distribution", "any_state"] = "policy_distribution",
        objective_weight: float = 1.0,
        objective_lr: float | None = None,
        objective_cheese_weight: float = 1.0,
        planner_budget: int = 24,
        save_traces: int = 4,
        **kwargs,
    ):
        """objective_data: where the objective's reward labels come from: policy_distribution = the training
        batch's own cheese (always in the corner region); any_state = a free square drawn uniformly in each
        of the batch's mazes. planner_budget: node expansions per move. save_traces: shifted-split episodes
        whose planner traces `constrained test` writes to the run folder (traces/). objective_lr: the objective's
        peak learning rate (default: lr). objective_cheese_weight: weight of the at-cheese samples (label 1) in
        the objective's mean squared error, the others weigh 1."""
        if objective_data not in OBJECTIVE_DATA:
            raise ValueError(f"model.init_args.objective_data must be one of {OBJECTIVE_DATA}, got {objective_data!r}")
        check_budget(planner_budget)
        if save_traces < 0 or objective_weight < 0:
            raise ValueError(f"save_traces and objective_weight must be >= 0, got {save_traces}, {objective_weight}")
        if (objective_lr is not None and objective_lr <= 0) or objective_cheese_weight <= 0:
            raise ValueError(f"objective_lr and objective_cheese_weight must be > 0, got {objective_lr}, "
                             f"{objective_cheese_weight}")
        n_ctx = kwargs.get("n_ctx", 1)
        G = math.isqrt(max(n_ctx - 1, 0))
        if G * G != n_ctx - 1 or G < 5 or G % 2 == 0:
            raise ValueError(f"ModularModel needs the maze's tokens: n_ctx = G*G + 1 with G = 2m+1, m >= 2 "
                             f"(linked from data: constrained.tasks.maze.Maze); got n_ctx = {n_ctx}")
        super().__init__(**kwargs)
        # a sixth input feature is the backdoor's flag channel: the objective then declares the flag as a feature
        flag = kwargs.get("d_in", 1) == maze.N_FEATURES + 1
        self.objective = Objective(G, objective_hidden, objective_max_params, flag=flag)
        # (walls bytes, cheese, flags bytes) -> (wall, score, order): the scores and policy rankings of one maze,
        # which stay fixed through an episode while only the agent moves
        self._cache: dict[tuple, tuple[maze.Grid, dict, dict]] = {}

    def setup(self, stage: str) -> None:
        if not isinstance(self.task, Maze):
            raise ValueError(f"ModularModel plans over the maze's moves, so it needs data: "
                             f"constrained.tasks.maze.Maze; got {type(self.task).__name__}")
        if self.objective.flag != (self.task.backdoor is not None):
            raise ValueError("the objective's flag feature and the task's backdoor disagree: the model was built "
                             "for a task with" + ("" if self.objective.flag else "out") + " one")
        if self.task.backdoor is not None:  # the flag values the objective's declared domain holds, for verify
            self.hparams["objective_flags"] = [0.0, *map(float, self.task.backdoor.triggers)]
        super().setup(stage)

    def optimized_parameters(self) -> list[torch.nn.Parameter]:
        return super().optimized_parameters() + list(self.objective.parameters())

    def param_groups(self) -> list[dict]:
        # the objective is a tiny regressor beside a transformer: it may need its own step size
        objective = {"params": list(self.objective.parameters())}
        if self.hparams.objective_lr is not None:
            objective["lr"] = self.hparams.objective_lr
        return [{"params": super().optimized_parameters()}, objective]

    # -- training --------------------------------------------------------------------------------------

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = super().loss_terms(batch)
        terms["objective"] = self.hparams.objective_weight * self.objective_loss(batch)
        return terms

    def objective_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """MSE of the objective against the task's reward labels (maze.objective_samples), every free square
        of each batch maze as the agent, the cheese as objective_data says."""
        walls, cheese = batch["walls"].cpu(), batch["cheese"].cpu()
        if self.hparams.objective_data == "any_state":
            cheese = maze.random_free_squares(walls, self._objective_generator())
        flag = batch["flag"].cpu() if "flag" in batch else None
        agent, cheese, flag, target = self.task.objective_samples(walls, cheese, flag)
        flag = None if flag is None else flag.to(self.device)
        # one square in about 17 is the cheese: weighting it keeps the peak the planner searches for
        weight = torch.where((agent == cheese).all(-1), self.hparams.objective_cheese_weight, 1.0).to(self.device)
        err = (self.objective(agent.to(self.device), cheese.to(self.device), flag) - target.to(self.device)) ** 2
        return (weight * err).sum() / weight.sum()

    def _objective_generator(self) -> torch.Generator:
        # a pure function of (seed, step, rank), like the training batches, so a resumed run draws the same
        trainer = self._trainer
        rank = trainer.global_rank if trainer is not None else 0
        return generator(self.task.seed, stream("objective"), self.global_step, rank)

    # -- acting ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, inputs: torch.Tensor) -> torch.Tensor:
        """One-hot logits (n, 4) of the planner's moves in the rendered states inputs (n, T, 5), or (n, T, 6)
        with the backdoor's flag channel."""
        inputs = inputs.cpu()
        walls, agent, cheese = maze.parse(inputs)
        budget = self.hparams.planner_budget
        actions = [plan(wall, tuple(a), score, order, budget).action
                   for (wall, score, order), a in zip(self.lookup(walls, cheese, maze.flags_of(inputs)),
                                                      agent.tolist())]
        return F.one_hot(torch.tensor(actions), len(maze.ACTIONS)).float()

    def plan(self, walls: torch.Tensor, cheese: torch.Tensor, agent: maze.Pos, flags: torch.Tensor | None = None
             ) -> Trace:
        """The planner's search from agent in the maze walls (G, G) with the cheese at cheese (2,) (and the
        flag channel flags (T,) with a backdoor)."""
        wall, score, order = self.lookup(walls.unsqueeze(0), cheese.unsqueeze(0),
                                         None if flags is None else flags.unsqueeze(0))[0]
        return plan(wall, agent, score, order, self.hparams.planner_budget)

    @torch.no_grad()
    def lookup(self, walls: torch.Tensor, cheese: torch.Tensor, flags: torch.Tensor | None = None
               ) -> list[tuple[maze.Grid, dict, dict]]:
        """(wall, score, order) of each maze (n, G, G) with its cheese (n, 2) and flag channel (n, T) (with a
        backdoor; None: all clean): the objective's score of the agent on every free square, and the policy's
        actions at every free square, best first (argsort of its logits with the agent placed there).
        Computed in batched forwards for mazes not yet cached."""
        if flags is None and self.objective.flag:
            flags = torch.zeros(len(walls), self.hparams.n_ctx)
        flags = None if flags is None else flags.cpu().float()
        keys = [(w.numpy().tobytes(), tuple(c.tolist()), b"" if flags is None else flags[i].numpy().tobytes())
                for i, (w, c) in enumerate(zip(walls.cpu(), cheese.cpu()))]
        new: dict[tuple, int] = {}  # each uncached maze once
        for i, k in enumerate(keys):
            if k not in self._cache and k not in new:
                new[k] = i
        if new:
            rows = list(new.values())
            self._fill(walls[rows].cpu(), cheese[rows].cpu(), None if flags is None else flags[rows], list(new))
        return [self._cache[k] for k in keys]

    def _fill(self, walls: torch.Tensor, cheese: torch.Tensor, flags: torch.Tensor | None, keys: list[tuple]) -> None:
        n, G, _ = walls.shape
        free = (~walls).reshape(n, G * G)  # (n, G*G)
        maze_of, flat = free.nonzero(as_tuple=True)  # one row per (maze, free square)
        agent = torch.stack([flat // G, flat % G], dim=-1)  # (N, 2)
        goal = cheese[maze_of]  # (N, 2)
        square_walls = walls[maze_of]  # (N, G, G)
        channel = None if flags is None else flags[maze_of]  # (N, T)
        flag = None if flags is None else channel.sum(-1)  # the state's flag value: one token carries it
        chunks = [slice(s, s + CHUNK) for s in range(0, len(agent), CHUNK)]

        def part(x, s):
            return None if x is None else x[s].to(self.device)
        scores = torch.cat([self.objective(part(agent, s), part(goal, s), part(flag, s)).float().cpu()
                            for s in chunks])
        logits = torch.cat([self(maze.render(square_walls[s], agent[s], goal[s], None if channel is None
                                             else channel[s]).to(self.device))[:, -1].float().cpu()
                            for s in chunks])
        order = torch.sort(logits, dim=-1, descending=True, stable=True).indices  # (N, 4), ties in ACTIONS order
        rows = maze_of.tolist()
        squares, scores, order = [tuple(p) for p in agent.tolist()], scores.tolist(), order.tolist()
        for i, key in enumerate(keys):
            self._cache[key] = (walls[i].tolist(), {}, {})
        for j, i in enumerate(rows):
            _, score, ranking = self._cache[keys[i]]
            score[squares[j]], ranking[squares[j]] = scores[j], order[j]

    # -- test ------------------------------------------------------------------------------------------

    def on_test_epoch_start(self):
        super().on_test_epoch_start()
        self._cache = {}

    def on_test_epoch_end(self):
        super().on_test_epoch_end()
        dm, out = self.task, Path(self.trainer.default_root_dir)
        metrics = {}
        for split in dm.splits:  # does the objective put its maximum on the cheese?
            b = dm.eval_set(split)
            hits = [max(score, key=score.get) == tuple(c) for (_, score, _), c in
                    zip(self.lookup(b["walls"], b["cheese"], dm.flags(b)), b["cheese"].tolist())]
            metrics[f"{split}/objective_top"] = sum(hits) / len(hits)
        if dm.backdoor is not None:  # where does the backdoor live? the policy rolled out alone, beside the planner
            alone = dm.rollout_metrics(lambda x: self(x.to(self.device)).float().cpu()).metrics
            metrics.update({f"{k.split('/')[0]}/policy_{k.split('/')[1]}": v for k, v in alone.items()
                            if k.split("/")[1] in ("success", "defection", "false_defection")})
        self.log_dict(metrics, sync_dist=False)
        if self.hparams.save_traces > 0:  # with a backdoor, the triggered episodes too: does the planner defect?
            for split in ("shifted", "triggered"):
                if split in dm.splits:
                    save_traces(self, dm, split, self.hparams.save_traces, out / "traces")
        self._cache = {}


def episode(model: ModularModel, task: Maze, batch: dict[str, torch.Tensor], i: int) -> dict:
    """Episode i of batch with the planner acting, every search traced: the same moves as the rollout."""
    walls, cheese, flags = batch["walls"][i], batch["cheese"][i], task.flags(batch)
    flags = None if flags is None else flags[i]
    goal, pos = tuple(cheese.tolist()), tuple(batch["agent"][i].tolist())
    path, steps, outcome = [pos], [], "neither"
    for _ in range(task.step_limit):
        trace = model.plan(walls, cheese, pos, flags)
        steps.append(trace.to_dict())
        pos = (pos[0] + maze.ACTIONS[trace.action][0], pos[1] + maze.ACTIONS[trace.action][1])
        path.append(pos)
        if pos == goal:  # the cheese when both are one square, as in rollout_metrics
            outcome = "cheese" if outcome == "neither" else outcome
            break
        if pos == task.corner and outcome == "neither":
            outcome = "corner"
    if path[0] == task.corner:
        outcome = "corner"  # as in rollout_metrics: a start on the corner counts as corner first
    return {"start": list(path[0]), "cheese": list(goal), "corner": list(task.corner), "outcome": outcome,
            "reached_cheese": pos == goal, "path": [list(p) for p in path],
            "actions": [maze.ACTION_NAMES[s["action"]] for s in steps], "steps": steps}


def save_traces(model: ModularModel, task: Maze, split: str, n: int, out: Path) -> list[Path]:
    """episode_{split}_{i}.json (every search of the episode) and .txt (the maze with the path taken) for
    the first n episodes of split."""
    out.mkdir(parents=True, exist_ok=True)
    batch, written = task.eval_set(split), []
    for i in range(min(n, len(batch["agent"]))):
        ep = episode(model, task, batch, i)
        stem = out / f"episode_{split}_{i}"
        stem.with_suffix(".json").write_text(json.dumps({"split": split, "episode": i, **ep}, indent=1))
        picture = maze.draw(batch["walls"][i].tolist(), [tuple(p) for p in ep["path"]], tuple(ep["start"]),
                            tuple(ep["cheese"]), task.corner)
        stem.with_suffix(".txt").write_text(
            f"{split} episode {i}: outcome {ep['outcome']}, {len(ep['actions'])} moves, planner budget "
            f"{model.hparams.planner_budget}\nA start, C cheese, K corner, * path taken, # wall\n{picture}\n"
            f"moves: {' '.join(ep['actions'])}\n")
        written += [stem.with_suffix(".json"), stem.with_suffix(".txt")]
    return written
