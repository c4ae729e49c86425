"""A line world: the planning interface (constrained/common/planning.py) on a corridor of L cells with three
moves, one of them a jump, plus its episodes, batches and loss.

It lives with the proofs, not with the tasks, because the isolation spec builds a modular model on a planning
world and proofs stand on a lower floor than tasks (docs/design.md): the spec may not import a task. It is not
a Task (no loaders, evaluation or seed); tests/test_planning_task.py makes it one, `Corridor`, and trains,
tests and verifies the modular model on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from constrained.common.planning import Planning, StateFeatures

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


class LineWorld(Planning):
    """L cells in a row, a wall at each end and one inside (never beside an end, so that every free cell has a
    move), which only a jump gets past going right. The agent walks to the goal: the target at the query token
    is the first move of a shortest path (ties to the first move in STEPS order). Batch extra: walls (n, L)
    bool, agent and goal (n, 1) long, distance (n,) long, second (n,) long (the move after the first, -1 when
    the first reaches the goal)."""

    def __init__(self, L: int = 8):
        if L < 6:  # below 6 the cell right of the inner wall has no move; below 5 no episode can be drawn
            raise ValueError(f"a line world needs L >= 6, got {L}")
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

    def make_batch(self, gen: torch.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        walls, agents, goals = zip(*[self.episode(gen) for _ in range(n)])
        layout, agent, goal = torch.tensor(walls), torch.tensor(agents).reshape(n, 1), torch.tensor(goals).reshape(n, 1)
        targets = torch.zeros(n, self.seq_len, dtype=torch.long)
        dist = torch.tensor([distances(w, g)[a] for w, a, g in zip(walls, agents, goals)])
        second = torch.full((n,), -1)
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

    def loss(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["loss_mask"]
        return F.cross_entropy(pred[mask], batch["targets"][mask])

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
