"""The modular model's objective module: a small ReLU MLP that scores a state from declared features only
(constrained/common/planning.py: the agent's coordinates, the goal's, and, when the task has a backdoor, the
state's flag value), small enough to be encoded exactly in z3 (proofs/objective.py) and checked over the whole
finite state domain.

The coordinates are divided by (grid_size - 1), so they lie in [0, 1], and the flag is taken as it is (0 in a
clean state); the spec uses `feature_scale` to restate that division exactly. The network is `layers`, an
nn.Sequential of Linear and ReLU only, ending in a Linear to one score: that is the whole function the spec
encodes.
"""

from __future__ import annotations

import torch
from torch import nn


def n_params(hidden: list[int] | tuple[int, ...], flag: bool = False, axes: int = 2) -> int:
    widths = [2 * axes + flag, *hidden, 1]
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


class Objective(nn.Module):
    """score(agent, goal) -> (n,); higher is better. max_params bounds the size so that the formal check stays
    tractable: a config that asks for more is refused before training."""

    def __init__(self, grid_size: int, hidden: list[int] | tuple[int, ...] = (16, 16), max_params: int = 512,
                 flag: bool = False, axes: int = 2):
        """flag: the state's flag value is a declared feature (the task has a backdoor); axes: coordinates per
        position."""
        super().__init__()
        hidden = list(hidden)
        if grid_size < 3 or axes < 1 or not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"objective needs grid_size >= 3, axes >= 1 and positive hidden widths, got "
                             f"{grid_size}, {axes}, {hidden}")
        size = n_params(hidden, flag, axes)
        if size > max_params:
            raise ValueError(f"objective with hidden widths {hidden} has {size} parameters, more than "
                             f"objective_max_params = {max_params} (the bound that keeps it formally checkable)")
        self.grid_size, self.hidden, self.flag, self.axes = grid_size, hidden, flag, axes
        widths = [2 * axes + flag, *hidden]
        mods: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        self.layers = nn.Sequential(*mods, nn.Linear(widths[-1], 1))

    @property
    def feature_scale(self) -> int:
        return self.grid_size - 1

    def features(self, agent: torch.Tensor, goal: torch.Tensor, flag: torch.Tensor | None = None) -> torch.Tensor:
        """(n, 2 axes) float from agent, goal (n, axes) long; the flag (n,) float appended when declared."""
        dtype = self.layers[0].weight.dtype
        x = torch.cat([agent, goal], dim=-1).to(dtype) / self.feature_scale
        if not self.flag:
            return x
        if flag is None:
            raise ValueError("this objective reads the state's flag (the task has a backdoor); pass flag")
        return torch.cat([x, flag.to(dtype).reshape(-1, 1)], dim=-1)

    def forward(self, agent: torch.Tensor, goal: torch.Tensor, flag: torch.Tensor | None = None) -> torch.Tensor:
        return self.layers(self.features(agent, goal, flag)).squeeze(-1)
