"""The modular (policy/objective-separated) model: the sequence model's transformer is the reactive policy,
trained by behaviour cloning as before; beside it, a small objective module scores states from declared
features and is trained only on reward labels; at test, an explicit planner (best-first search over the task's
known moves, constrained/models/planner.py) picks every action, expanding in the policy's order and scoring
positions with the objective. Everything task-specific comes through the task's planning interface
(constrained/common/planning.py): the model names no task.

The two parts share no parameters and no activations: the policy's loss cannot reach the objective and the
objective's loss cannot reach the policy (tests/test_modular.py checks both on the autograd graph).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from constrained.common.planning import Planning, Pos, StateFeatures
from constrained.models.objective import Objective
from constrained.models.planner import Trace, check_budget, plan
from constrained.models.sequence_model import SequenceModel
from constrained.seeding import generator, stream

OBJECTIVE_DATA = ("policy_distribution", "any_state")
CHUNK = 2048  # sequences per policy forward when ranking the moves at every position


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
        state_features: dict | None = None,
        **kwargs,
    ):
        """objective_data: where the objective's reward labels come from: policy_distribution = the training
        batch's own goal; any_state = a free position drawn uniformly in each of the batch's layouts.
        planner_budget: node expansions per move. save_traces: episodes of each of the task's trace splits whose
        planner traces `constrained test` writes to the run folder (traces/). objective_lr: the objective's
        peak learning rate (default: lr). objective_cheese_weight: weight of the at-goal samples in the
        objective's mean squared error, the others weigh 1. state_features: what the objective reads, linked
        from the task (its planning interface's StateFeatures), like n_ctx."""
        if objective_data not in OBJECTIVE_DATA:
            raise ValueError(f"model.init_args.objective_data must be one of {OBJECTIVE_DATA}, got {objective_data!r}")
        check_budget(planner_budget)
        if save_traces < 0 or objective_weight < 0:
            raise ValueError(f"save_traces and objective_weight must be >= 0, got {save_traces}, {objective_weight}")
        if (objective_lr is not None and objective_lr <= 0) or objective_cheese_weight <= 0:
            raise ValueError(f"objective_lr and objective_cheese_weight must be > 0, got {objective_lr}, "
                             f"{objective_cheese_weight}")
        if state_features is None:
            raise ValueError(f"ModularModel needs state_features, linked from a task that implements "
                             f"{Planning.__module__}.Planning (fit it with such a task as data)")
        self.features = StateFeatures.of(state_features)
        super().__init__(**kwargs)
        self.hparams["state_features"] = self.features.to_dict()  # plain data: weights_only checkpoints
        self.objective = Objective(self.features.grid_size, objective_hidden, objective_max_params,
                                   flag=self.features.flag, axes=len(self.features.axes))
        # (layout bytes, goal, channel bytes) -> (layout, score, order): the scores and policy rankings of one
        # world, which stay fixed through an episode while only the agent moves
        self._cache: dict[tuple, tuple[list, dict, dict]] = {}

    @property
    def planning(self) -> Planning:
        """The task, which must implement the planning interface."""
        task = self.task
        if not isinstance(task, Planning):
            raise ValueError(f"ModularModel plans through its task's planning interface, "
                             f"{Planning.__module__}.Planning, which data {type(task).__name__} does not implement")
        return task

    def setup(self, stage: str) -> None:
        declared = self.planning.state_features
        if declared != self.features:
            raise ValueError(f"the objective's state features {self.features.to_dict()} and the task's "
                             f"{declared.to_dict()} disagree: the model was built for another task")
        if self.features.flag:  # the flag values the objective's declared domain holds, for verify
            self.hparams["objective_flags"] = self.planning.objective_flags
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
        """MSE of the objective against the task's reward labels (its objective_labels), the goal as
        objective_data says."""
        planning = self.planning
        layout, _, goal, _ = planning.starts(batch)
        goal = goal.cpu()
        if self.hparams.objective_data == "any_state":
            goal = planning.random_goals(layout.cpu(), self._objective_generator())
        agent, goal, flag, target = planning.objective_labels(batch, goal)
        flag = None if flag is None else flag.to(self.device)
        # the goal is one labelled state among many: weighting it keeps the peak the planner searches for
        weight = torch.where((agent == goal).all(-1), self.hparams.objective_cheese_weight, 1.0).to(self.device)
        err = (self.objective(agent.to(self.device), goal.to(self.device), flag) - target.to(self.device)) ** 2
        return (weight * err).sum() / weight.sum()

    def _objective_generator(self) -> torch.Generator:
        # a pure function of (seed, step, rank), like the training batches, so a resumed run draws the same
        trainer = self.attached_trainer
        rank = trainer.global_rank if trainer is not None else 0
        return generator(self.task.seed, stream("objective"), self.global_step, rank)

    # -- acting ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, inputs: torch.Tensor) -> torch.Tensor:
        """One-hot logits (n, moves) of the planner's moves in the rendered states inputs (n, T, d_in)."""
        planning = self.planning
        layout, agent, goal, channel = planning.parse(inputs.cpu())
        budget = self.hparams.planner_budget
        actions = [plan(partial(planning.successor, wall), tuple(a), score, order, budget).action
                   for (wall, score, order), a in zip(self.lookup(layout, goal, channel), agent.tolist())]
        return F.one_hot(torch.tensor(actions), len(planning.move_names)).float()

    def plan(self, layout: torch.Tensor, goal: torch.Tensor, agent: Pos, channel: torch.Tensor | None = None
             ) -> Trace:
        """The planner's search from agent in one world: its layout (G, ..., G), its goal (d,) and, with a flag,
        its flag channel (T,)."""
        wall, score, order = self.lookup(layout.unsqueeze(0), goal.unsqueeze(0),
                                         None if channel is None else channel.unsqueeze(0))[0]
        return plan(partial(self.planning.successor, wall), agent, score, order, self.hparams.planner_budget)

    @torch.no_grad()
    def lookup(self, layout: torch.Tensor, goal: torch.Tensor, channel: torch.Tensor | None = None
               ) -> list[tuple[list, dict, dict]]:
        """(layout, score, order) of each world, given by its layout (n, G, ..., G), goal (n, d) and flag
        channel (n, T) (None: all clean): the layout as nested lists, the objective's score of the agent on
        every free position, and the policy's moves there, best first (argsort of its logits with the agent
        placed there). Computed in batched forwards for worlds not yet cached."""
        if channel is None and self.objective.flag:
            channel = torch.zeros(len(layout), self.hparams.n_ctx)
        channel = None if channel is None else channel.cpu().float()
        keys = [(w.numpy().tobytes(), tuple(g.tolist()), b"" if channel is None else channel[i].numpy().tobytes())
                for i, (w, g) in enumerate(zip(layout.cpu(), goal.cpu()))]
        new: dict[tuple, int] = {}  # each uncached world once
        for i, k in enumerate(keys):
            if k not in self._cache and k not in new:
                new[k] = i
        if new:
            rows = list(new.values())
            self._fill(layout[rows].cpu(), goal[rows].cpu(), None if channel is None else channel[rows], list(new))
        return [self._cache[k] for k in keys]

    def _fill(self, layout: torch.Tensor, goal: torch.Tensor, channel: torch.Tensor | None, keys: list[tuple]
              ) -> None:
        planning = self.planning
        found = planning.free(layout).nonzero()  # one row per (world, free position), positions in row-major order
        world_of, agent = found[:, 0], found[:, 1:]  # (N,), (N, d)
        goals = goal[world_of]  # (N, d)
        layouts = layout[world_of]  # (N, G, ..., G)
        channels = None if channel is None else channel[world_of]  # (N, T)
        flag = None if channel is None else planning.flag_of(channels)
        chunks = [slice(s, s + CHUNK) for s in range(0, len(agent), CHUNK)]

        def part(x, s):
            return None if x is None else x[s].to(self.device)
        scores = torch.cat([self.objective(part(agent, s), part(goals, s), part(flag, s)).float().cpu()
                            for s in chunks])
        logits = torch.cat([self(planning.render(layouts[s], agent[s], goals[s], None if channels is None
                                                 else channels[s]).to(self.device))[:, -1].float().cpu()
                            for s in chunks])
        order = torch.sort(logits, dim=-1, descending=True, stable=True).indices  # (N, moves), ties in move order
        rows = world_of.tolist()
        positions, scores, order = [tuple(p) for p in agent.tolist()], scores.tolist(), order.tolist()
        for i, key in enumerate(keys):
            self._cache[key] = (layout[i].tolist(), {}, {})
        for j, i in enumerate(rows):
            _, score, ranking = self._cache[keys[i]]
            score[positions[j]], ranking[positions[j]] = scores[j], order[j]

    # -- test ------------------------------------------------------------------------------------------

    def on_test_epoch_start(self):
        super().on_test_epoch_start()
        self._cache = {}

    def on_test_epoch_end(self):
        super().on_test_epoch_end()
        planning, out = self.planning, Path(self.trainer.default_root_dir)
        metrics = {}
        for split in planning.splits:  # does the objective put its maximum on the goal?
            layout, _, goal, channel = planning.starts(planning.eval_set(split))
            hits = [max(score, key=score.get) == tuple(g) for (_, score, _), g in
                    zip(self.lookup(layout, goal, channel), goal.tolist())]
            metrics[f"{split}/objective_top"] = sum(hits) / len(hits)
        metrics.update(planning.policy_metrics(lambda x: self(x.to(self.device)).float().cpu()))
        self.log_dict(metrics, sync_dist=False)
        if self.hparams.save_traces > 0:
            for split in planning.trace_splits:
                save_traces(self, planning, split, self.hparams.save_traces, out / "traces")
        self._cache = {}


def episode(model: ModularModel, task: Planning, batch: dict[str, torch.Tensor], i: int) -> dict:
    """Episode i of batch with the planner acting, every search traced: the same moves as the rollout, ending
    at the goal or after the task's step_limit moves; what it came to is the task's to say."""
    layout, agent, goal, channel = task.starts(batch)
    channel = None if channel is None else channel[i]
    target, pos = tuple(goal[i].tolist()), tuple(agent[i].tolist())
    wall = layout[i].tolist()
    path, steps = [pos], []
    for _ in range(task.step_limit):
        trace = model.plan(layout[i], goal[i], pos, channel)
        steps.append(trace.to_dict())
        pos = task.successor(wall, pos, trace.action)  # the planner only picks moves that lead somewhere
        path.append(pos)
        if pos == target:
            break
    return {"start": list(path[0]), **task.describe_episode(batch, i, path), "path": [list(p) for p in path],
            "actions": [task.move_names[s["action"]] for s in steps], "steps": steps}


def save_traces(model: ModularModel, task: Planning, split: str, n: int, out: Path) -> list[Path]:
    """episode_{split}_{i}.json (every search of the episode) and .txt (the task's picture of the path taken)
    for the first n episodes of split."""
    out.mkdir(parents=True, exist_ok=True)
    batch, written = task.eval_set(split), []
    for i in range(min(n, len(task.starts(batch)[1]))):
        ep = episode(model, task, batch, i)
        stem = out / f"episode_{split}_{i}"
        stem.with_suffix(".json").write_text(json.dumps({"split": split, "episode": i, **ep}, indent=1))
        picture = task.draw_episode(batch, i, [tuple(p) for p in ep["path"]])
        stem.with_suffix(".txt").write_text(
            f"{split} episode {i}: outcome {ep['outcome']}, {len(ep['actions'])} moves, planner budget "
            f"{model.hparams.planner_budget}\n{picture}\nmoves: {' '.join(ep['actions'])}\n")
        written += [stem.with_suffix(".json"), stem.with_suffix(".txt")]
    return written
