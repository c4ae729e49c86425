"""The planning interface: what a task declares so that the modular model can plan in it. The model and its
planner are written against this class alone; a task implements it (the maze in tasks/maze/planning.py, a
one-dimensional line in proofs/line_world.py).

An episode happens in a world: a layout of blocked and open positions on a grid of `grid_size` positions
per axis, a goal position, and, for a task with a backdoor, a flag channel over the tokens. Only the agent
moves. The objective module scores a state from its declared features (`StateFeatures`); the planner expands
positions through `successor`; the policy ranks the moves of a state rendered as tokens.

Shapes: layout (n, G, ..., G) bool (True = blocked); agent and goal (n, d) long, one coordinate per axis;
channel (n, T) float, or None without a flag.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

Pos = tuple[int, ...]


@dataclass(frozen=True)
class StateFeatures:
    """What the objective module reads of a state: the agent's coordinates, then the goal's, each divided by
    grid_size - 1 so that they lie in [0, 1], and, with `flag`, the state's flag value as it is. axes names
    the coordinates (e.g. row, col) and goal the goal (e.g. cheese), for the features' names. The model takes
    it linked from its task, as plain data, so a checkpoint records what its objective reads."""

    grid_size: int
    axes: tuple[str, ...]
    goal: str = "goal"
    flag: bool = False

    def __post_init__(self):
        if self.grid_size < 3 or not self.axes:
            raise ValueError(f"state features need grid_size >= 3 and at least one axis, got {self.grid_size}, "
                             f"{list(self.axes)}")
        object.__setattr__(self, "axes", tuple(self.axes))

    @property
    def names(self) -> tuple[str, ...]:
        coordinates = tuple(f"{who}_{axis}" for who in ("agent", self.goal) for axis in self.axes)
        return coordinates + (("flag",) if self.flag else ())

    def to_dict(self) -> dict:
        return {**asdict(self), "axes": list(self.axes)}

    @classmethod
    def of(cls, value: StateFeatures | dict) -> StateFeatures:
        """From itself or its dict (a checkpoint's hyper-parameters); anything else is refused in one line."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict) or not {"grid_size", "axes"} <= set(value):
            raise ValueError(f"state_features must be a task's declared StateFeatures (grid_size, axes, goal, flag), "
                             f"got {value!r}")
        return cls(int(value["grid_size"]), tuple(value["axes"]), value.get("goal", "goal"), bool(value.get("flag")))


class Planning(ABC):
    """A task the modular model can plan in. Besides these, the model reads the task's `splits`, `eval_set`
    and `seed`, which every Task has."""

    # -- declared ----------------------------------------------------------------------------------------

    @property
    @abstractmethod
    def state_features(self) -> StateFeatures:
        """What the objective module reads (linked into the model)."""

    @property
    @abstractmethod
    def move_names(self) -> tuple[str, ...]:
        """One name per move, in the order of the policy's outputs."""

    @property
    @abstractmethod
    def step_limit(self) -> int:
        """Moves an episode may take."""

    @property
    def objective_flags(self) -> list[float] | None:
        """The flag values of the objective's domain, the clean one (0) first; None without a flag feature."""
        return None

    # -- worlds and moves --------------------------------------------------------------------------------

    @abstractmethod
    def starts(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                               torch.Tensor | None]:
        """(layout, agent, goal, channel) of a batch's episodes at their start."""

    @abstractmethod
    def parse(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(layout, agent, goal, channel) of rendered states: the inverse of `render`."""

    @abstractmethod
    def render(self, layout: torch.Tensor, agent: torch.Tensor, goal: torch.Tensor,
               channel: torch.Tensor | None = None) -> torch.Tensor:
        """The policy's input tokens (n, T, d_in) of the states."""

    @abstractmethod
    def free(self, layout: torch.Tensor) -> torch.Tensor:
        """(n, G, ..., G) bool: the positions an agent may stand on."""

    @abstractmethod
    def successor(self, layout: list, pos: Pos, move: int) -> Pos | None:
        """The position `move` leads to from pos in the layout (as nested lists), None where it is blocked."""

    @abstractmethod
    def flag_of(self, channel: torch.Tensor) -> torch.Tensor:
        """(n,) float: the flag value a state's flag channel (n, T) carries."""

    # -- the objective's labels --------------------------------------------------------------------------

    @abstractmethod
    def random_goals(self, layout: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(n, d) long: an open position of each layout, every draw from gen."""

    @abstractmethod
    def objective_labels(self, batch: dict[str, torch.Tensor], goal: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The objective's training samples of a batch's layouts with the given goals (n, d): (agent, goal,
        flag or None, reward), one row per labelled state."""

    # -- test --------------------------------------------------------------------------------------------

    def policy_metrics(self, policy: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """Metrics of the policy acting alone, logged beside the planner's (none by default)."""
        return {}

    @property
    def trace_splits(self) -> tuple[str, ...]:
        """The test splits whose first episodes get their planner traces written."""
        return ()

    @abstractmethod
    def describe_episode(self, batch: dict[str, torch.Tensor], i: int, path: list[Pos]) -> dict:
        """What episode i of batch came to, walking `path` (the start first): at least `outcome`, a word."""

    @abstractmethod
    def draw_episode(self, batch: dict[str, torch.Tensor], i: int, path: list[Pos]) -> str:
        """A text picture of episode i of batch walking `path`, its legend on the first line."""
