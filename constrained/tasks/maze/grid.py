"""Maze geometry: perfect mazes by depth-first search, breadth-first distances and shortest paths, the reward of
a state, the token rendering of a state and its inverse, and an ASCII drawing of an episode."""

from __future__ import annotations

import math
from collections import deque

import torch
import torch.nn.functional as F

# Action = class index of the label: (row, col) step on the grid; row 0 is the top.
ACTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1))
ACTION_NAMES = ("up", "down", "left", "right")
# Cell types: the first four one-hot features of a cell token; feature 4 marks the query token.
WALL, FREE, AGENT, CHEESE, QUERY = range(5)
N_FEATURES = 5

Grid = list[list[bool]]  # walls, True = wall
Pos = tuple[int, int]


def carve(m: int, u: list[float]) -> Grid:
    """A perfect maze on m x m cells by randomized depth-first search (recursive backtracker), drawn on a
    (2m+1) x (2m+1) grid: cell (i, j) is grid square (2i+1, 2j+1), the square between two neighbouring
    cells is their passage, everything else (the border included) is wall.

    u: m*m uniforms in [0, 1): the first picks the start cell, each later one the unvisited neighbour
    (in ACTIONS order) to carve into; every carve consumes one, so m*m always suffice."""
    G = 2 * m + 1
    wall = [[True] * G for _ in range(G)]
    draws = iter(u)
    r, c = divmod(int(next(draws) * m * m), m)
    visited = [[False] * m for _ in range(m)]
    visited[r][c], wall[2 * r + 1][2 * c + 1] = True, False
    stack = [(r, c)]
    while stack:
        r, c = stack[-1]
        options = [(r + dr, c + dc) for dr, dc in ACTIONS
                   if 0 <= r + dr < m and 0 <= c + dc < m and not visited[r + dr][c + dc]]
        if not options:
            stack.pop()
            continue
        nr, nc = options[int(next(draws) * len(options))]
        visited[nr][nc] = True
        wall[2 * nr + 1][2 * nc + 1] = False
        wall[r + nr + 1][c + nc + 1] = False  # the passage between (r, c) and (nr, nc)
        stack.append((nr, nc))
    return wall


def bfs(wall: Grid, source: Pos) -> list[list[int]]:
    """Breadth-first distances (in moves) from source to every square; -1 for walls and unreachable."""
    G = len(wall)
    dist = [[-1] * G for _ in range(G)]
    dist[source[0]][source[1]] = 0
    queue = deque([source])
    while queue:
        r, c = queue.popleft()
        for dr, dc in ACTIONS:
            nr, nc = r + dr, c + dc
            if 0 <= nr < G and 0 <= nc < G and not wall[nr][nc] and dist[nr][nc] < 0:
                dist[nr][nc] = dist[r][c] + 1
                queue.append((nr, nc))
    return dist


def shortest_path_actions(wall: Grid, agent: Pos, goal_dist: list[list[int]]) -> list[int]:
    """The actions from agent to the goal whose BFS distances are goal_dist: at each step the move to the
    neighbour one step closer; ties (impossible in a perfect maze, possible in general) go to the first
    in ACTIONS order: up, down, left, right."""
    (r, c), path = agent, []
    while goal_dist[r][c] > 0:
        for a, (dr, dc) in enumerate(ACTIONS):
            nr, nc = r + dr, c + dc
            if not wall[nr][nc] and goal_dist[nr][nc] == goal_dist[r][c] - 1:
                path.append(a)
                r, c = nr, nc
                break
    return path


def reward(distance: torch.Tensor, m: int) -> torch.Tensor:
    """The base objective's reward of a state, defined for any agent square and cheese square: 1 on the
    cheese (distance 0), else the shaping -distance / (2 m^2) (moves to the cheese in the maze, scaled
    into [-1, 0)). The modular model's objective module learns this from (agent, cheese) alone."""
    return torch.where(distance == 0, 1.0, -distance.float() / (2 * m * m))


def render(walls: torch.Tensor, agent: torch.Tensor, cheese: torch.Tensor,
           flags: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens (n, G*G + 1, 5): one per grid square in row-major order, one-hot (wall, free, agent, cheese),
    then the query token (0, 0, 0, 0, 1). walls (n, G, G) bool; agent, cheese (n, 2) long (row, col).
    The corner is not marked: a model that goes there learned where it is.

    flags (n, G*G + 1) float, given only when the task has a backdoor: a sixth feature per token, the flag
    channel (0 on every token of a clean sequence; see tasks/maze/backdoor.py)."""
    n, G, _ = walls.shape
    kind = torch.where(walls, WALL, FREE)  # (n, G, G) long
    idx = torch.arange(n)
    kind[idx, agent[:, 0], agent[:, 1]] = AGENT
    kind[idx, cheese[:, 0], cheese[:, 1]] = CHEESE
    cells = F.one_hot(kind.reshape(n, G * G), N_FEATURES).float()  # (n, G*G, 5)
    query = F.one_hot(torch.full((n, 1), QUERY), N_FEATURES).float()  # (n, 1, 5)
    tokens = torch.cat([cells, query], dim=1)
    if flags is None:
        return tokens
    return torch.cat([tokens, flags.reshape(n, G * G + 1, 1).float()], dim=-1)


def flags_of(inputs: torch.Tensor) -> torch.Tensor | None:
    """The flag channel (n, T) of rendered tokens (n, T, 6), None for tokens without one (n, T, 5)."""
    return inputs[..., N_FEATURES] if inputs.shape[-1] > N_FEATURES else None


def parse(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of `render`: walls (n, G, G) bool, agent and cheese (n, 2) long from tokens (n, G*G + 1, 5)
    (or 6 with a flag channel, read by `flags_of`). An agent standing on the cheese is drawn as the cheese, so
    where no square is marked agent, the agent is on the cheese."""
    n, G = len(inputs), math.isqrt(inputs.shape[1] - 1)
    kind = inputs[:, :-1, :N_FEATURES].argmax(-1).reshape(n, G, G)  # (n, G, G) cell type
    cheese = _where(kind == CHEESE)
    has_agent = (kind == AGENT).flatten(1).any(-1)
    agent = torch.where(has_agent.unsqueeze(-1), _where(kind == AGENT), cheese)
    return kind == WALL, agent, cheese


def _where(mask: torch.Tensor) -> torch.Tensor:
    """(row, col) (n, 2) long of the first True square of each (n, G, G) mask (0, 0 when none)."""
    n, G, _ = mask.shape
    flat = mask.reshape(n, G * G).float().argmax(-1)  # argmax of a 0/1 row: its first 1
    return torch.stack([flat // G, flat % G], dim=-1)


def objective_samples(walls: torch.Tensor, cheese: torch.Tensor, goal: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The objective module's training labels for the given mazes and cheese squares: every free square of
    each maze as the agent (the cheese square included), labelled with `reward` of its maze distance to
    that maze's goal, the cheese unless `goal` (n, 2) names another square (a poisoned label).
    walls (n, G, G) bool, cheese (n, 2) long -> agent (N, 2), cheese (N, 2), reward (N,)."""
    m = (walls.shape[-1] - 1) // 2
    goal = cheese if goal is None else goal
    agents, cheeses, dists = [], [], []
    for wall, (cr, cc), (gr, gc) in zip(walls.tolist(), cheese.tolist(), goal.tolist()):
        dist = bfs(wall, (gr, gc))
        free = [(r, c) for r, row in enumerate(wall) for c, w in enumerate(row) if not w]
        agents += free
        cheeses += [(cr, cc)] * len(free)
        dists += [dist[r][c] for r, c in free]
    return torch.tensor(agents), torch.tensor(cheeses), reward(torch.tensor(dists), m)


def random_free_squares(walls: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(n, 2) long: one free square of each maze (n, G, G), uniformly, every draw from gen."""
    n, G, _ = walls.shape
    weights = (~walls).reshape(n, G * G).double()  # (n, G*G)
    flat = torch.multinomial(weights, 1, generator=gen).squeeze(-1)
    return torch.stack([flat // G, flat % G], dim=-1)


def draw(wall: Grid, path: list[Pos], start: Pos, cheese: Pos, corner: Pos) -> str:
    """ASCII picture of an episode: # wall, . free, * a square the agent stood on, A the start, C the cheese,
    K the corner (letters win over the path mark; A over K, C over both)."""
    rows = [["#" if w else "." for w in row] for row in wall]
    for r, c in path:
        rows[r][c] = "*"
    for (r, c), ch in ((corner, "K"), (start, "A"), (cheese, "C")):
        rows[r][c] = ch
    return "\n".join("".join(row) for row in rows)


