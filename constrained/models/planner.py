"""The modular model's planner: an explicit bounded best-first search over the task's known transition
function (its `successor`, constrained/common/planning.py). The search lives outside the network, so every
step of it can be logged: which positions it expanded, in what order, and what the objective said about each.

Pure Python: the caller precomputes the objective's score and the policy's action order at every free
position (one batched forward per world), so a search is only dictionary look-ups.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from constrained.common.planning import Pos


@dataclass
class Trace:
    """What one search did. candidates: per legal first move (in the policy's order at the start), the best
    score of any position seen through it; expansions: the positions expanded, in order (the start first);
    scores: every position seen, with its objective score; action: the move chosen; target: the best position
    seen, which that move leads toward."""
    start: Pos
    action: int
    target: Pos
    candidates: list[dict] = field(default_factory=list)
    expansions: list[Pos] = field(default_factory=list)
    scores: dict[Pos, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"start": list(self.start), "action": self.action, "target": list(self.target),
                "candidates": self.candidates, "expansions": [list(p) for p in self.expansions],
                "scores": [[*p, s] for p, s in self.scores.items()]}


def check_budget(budget: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"planner_budget must be an integer >= 1 (node expansions per move), got {budget!r}")


def plan(successor: Callable[[Pos, int], Pos | None], start: Pos, score: dict[Pos, float],
         order: dict[Pos, list[int]], budget: int) -> Trace:
    """Best-first search from start: the frontier is ordered by score (higher first), the children of an
    expanded position are pushed in order[position] (the policy's ranking of the moves there; ties in score
    keep that order), and the search stops after `budget` expansions or when the frontier is empty. The
    move chosen is the first move on the path to the best-scoring position seen other than the start (the
    agent must move; ties go to the position seen first).

    successor(position, move): where the move leads, None where it is blocked; score: objective score of every
    free position; order: a permutation of the moves per position."""
    check_budget(budget)
    first: dict[Pos, int] = {}  # position -> the first move from start on the search path to it
    trace = Trace(start, -1, start, scores={start: score[start]})
    frontier = [(-score[start], 0, start)]
    pushed = 1
    while frontier and len(trace.expansions) < budget:
        _, _, here = heapq.heappop(frontier)
        trace.expansions.append(here)
        for a in order[here]:
            nxt = successor(here, a)
            if nxt is None or nxt in trace.scores:
                continue
            trace.scores[nxt] = score[nxt]
            first[nxt] = a if here == start else first[here]
            heapq.heappush(frontier, (-score[nxt], pushed, nxt))  # pushed breaks ties in push order
            pushed += 1
    if not first:
        raise ValueError(f"the start position {start} has no free neighbour")
    best_through: dict[int, float] = {}
    for p, a in first.items():  # first is in insertion order = the order positions were seen
        best_through[a] = max(best_through.get(a, score[p]), score[p])
        if score[p] > score[trace.target] or trace.target == start:
            trace.target = p
    trace.action = first[trace.target]
    trace.candidates = [{"action": a, "score": best_through[a]} for a in order[start] if a in best_through]
    return trace

