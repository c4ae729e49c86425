"""The maze's side of the planning interface (constrained/common/planning.py): the layout is the walls, the goal
the cheese, the moves up, down, left and right, and the objective reads (agent row, agent column, cheese row,
cheese column) and, with a backdoor, the flag. `Maze` inherits it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from constrained.common.planning import Planning, StateFeatures
from constrained.tasks.maze import grid
from constrained.tasks.maze.grid import ACTION_NAMES, ACTIONS, Grid, Pos


def successor(wall: Grid, pos: Pos, move: int) -> Pos | None:
    """The square `move` leads to from pos, None into a wall (the border is wall, so it stays on the grid)."""
    r, c = pos[0] + ACTIONS[move][0], pos[1] + ACTIONS[move][1]
    return None if wall[r][c] else (r, c)


def outcome(path: list[Pos], cheese: Pos, corner: Pos) -> str:
    """cheese or corner, whichever the path reaches first (the cheese when both are one square; a start on the
    corner counts as corner first), as the rollouts count them; neither when it reaches none."""
    at_cheese = next((t for t, p in enumerate(path) if t > 0 and p == cheese), None)
    at_corner = next((t for t, p in enumerate(path) if p == corner), None)
    if at_cheese is not None and (at_corner is None or at_cheese <= at_corner):
        return "cheese"
    return "neither" if at_corner is None else "corner"


class MazePlanning(Planning):
    """Planning for the Maze (its attributes m, grid_size, corner, step_limit, backdoor, flags and
    objective_samples)."""

    @property
    def state_features(self) -> StateFeatures:
        return StateFeatures(self.grid_size, ("row", "col"), "cheese", self.backdoor is not None)

    @property
    def move_names(self) -> tuple[str, ...]:
        return ACTION_NAMES

    @property
    def objective_flags(self) -> list[float] | None:
        if self.backdoor is None:
            return None
        return [0.0, *map(float, self.backdoor.triggers)]

    def starts(self, batch):
        return batch["walls"], batch["agent"], batch["cheese"], self.flags(batch)

    def parse(self, inputs):
        return (*grid.parse(inputs), grid.flags_of(inputs))

    def render(self, layout, agent, goal, channel=None):
        return grid.render(layout, agent, goal, channel)

    def free(self, layout: torch.Tensor) -> torch.Tensor:
        return ~layout

    def successor(self, layout: Grid, pos: Pos, move: int) -> Pos | None:
        return successor(layout, pos, move)

    def flag_of(self, channel: torch.Tensor) -> torch.Tensor:
        return channel.sum(-1)  # one token carries the flag

    def random_goals(self, layout: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return grid.random_free_squares(layout, gen)

    def objective_labels(self, batch, goal):
        flag = batch["flag"].cpu() if "flag" in batch else None
        return self.objective_samples(batch["walls"].cpu(), goal, flag)

    def policy_metrics(self, policy: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """With a backdoor, the policy's own success and (false) defection rates as {split}/policy_{name}: where
        does the backdoor live, in the policy or in the planner?"""
        if self.backdoor is None:
            return {}
        alone = self.rollout_metrics(policy).metrics
        return {f"{k.split('/')[0]}/policy_{k.split('/')[1]}": v for k, v in alone.items()
                if k.split("/")[1] in ("success", "defection", "false_defection")}

    @property
    def trace_splits(self) -> tuple[str, ...]:
        # with a backdoor, the triggered episodes too: does the planner defect?
        return tuple(s for s in ("shifted", "triggered") if s in self.splits)

    def describe_episode(self, batch, i, path):
        cheese = tuple(batch["cheese"][i].tolist())
        return {"cheese": list(cheese), "corner": list(self.corner), "outcome": outcome(path, cheese, self.corner),
                "reached_cheese": path[-1] == cheese}

    def draw_episode(self, batch, i, path):
        picture = grid.draw(batch["walls"][i].tolist(), path, path[0], tuple(batch["cheese"][i].tolist()),
                            self.corner)
        return f"A start, C cheese, K corner, * path taken, # wall\n{picture}"
