import random
from functools import partial

import pytest
import torch

from constrained.models.planner import plan
from constrained.seeding import generator
from constrained.tasks.maze.grid import ACTIONS, bfs, reward
from constrained.tasks.maze.planning import successor
from constrained.tasks.maze.task import Maze
from tests.helpers import HAND_WALL, free_squares, neighbours


def true_scores(wall, cheese, m):
    """The declared reward of the agent on every free square, as the objective."""
    dist = bfs(wall, cheese)
    free = free_squares(wall)
    values = reward(torch.tensor([dist[r][c] for r, c in free]), m).tolist()
    return dict(zip(free, values))


def random_orders(wall, rng):
    return {p: rng.sample(range(len(ACTIONS)), len(ACTIONS)) for p in free_squares(wall)}


def transition(wall):
    """The maze's transition in wall, as the planner takes it."""
    return partial(successor, wall)


def step(p, a):
    return p[0] + ACTIONS[a][0], p[1] + ACTIONS[a][1]


@pytest.mark.parametrize("m,budget", [(3, 1), (3, 24), (4, 5)])
def test_planner_with_the_true_reward_reaches_the_cheese_along_a_shortest_path(m, budget):
    task, rng = Maze(m=m), random.Random(0)
    b = task.make_batch(generator(7), 24, "shifted")
    for i in range(24):
        wall, cheese = b["walls"][i].tolist(), tuple(b["cheese"][i].tolist())
        score, order = true_scores(wall, cheese, m), random_orders(wall, rng)
        pos, moves = tuple(b["agent"][i].tolist()), 0
        while pos != cheese and moves < task.step_limit:
            trace = plan(transition(wall), pos, score, order, budget)
            assert len(trace.expansions) <= budget
            pos, moves = step(pos, trace.action), moves + 1
        assert pos == cheese and moves == b["goal_distance"][i]


def test_budget_is_never_exceeded_and_an_exhausted_frontier_stops_early():
    rng = random.Random(1)
    n_free = len(free_squares(HAND_WALL))
    for budget in (1, 2, 3, 7, n_free, n_free + 10):
        for _ in range(20):
            score = {p: rng.random() for p in free_squares(HAND_WALL)}
            start = rng.choice(free_squares(HAND_WALL))
            trace = plan(transition(HAND_WALL), start, score, random_orders(HAND_WALL, rng), budget)
            assert len(trace.expansions) == min(budget, n_free)  # the frontier empties once the maze is seen


def test_trace_is_complete_and_expansions_are_best_first_in_order():
    rng = random.Random(2)
    for _ in range(30):
        score = {p: rng.choice([0.0, 0.5, 1.0]) for p in free_squares(HAND_WALL)}  # many ties
        order = random_orders(HAND_WALL, rng)
        start = rng.choice(free_squares(HAND_WALL))
        trace = plan(transition(HAND_WALL), start, score, order, budget=6)
        legal = [a for a in order[start] if step(start, a) in score]
        assert [c["action"] for c in trace.candidates] == legal  # every root move, in the policy's order
        assert all(isinstance(c["score"], float) for c in trace.candidates)
        assert trace.expansions[0] == start and len(set(trace.expansions)) == len(trace.expansions)
        assert all(trace.scores[p] == score[p] for p in trace.scores)
        # replay: each expansion is a best-scoring frontier square, ties going to the one pushed first
        frontier, seen = [], {start}
        for k, p in enumerate(trace.expansions):
            if k > 0:
                best = max(score[q] for q in frontier)
                assert p == next(q for q in frontier if score[q] == best)
                frontier.remove(p)
            for a in order[p]:
                q = step(p, a)
                if q in score and q not in seen:
                    seen.add(q)
                    frontier.append(q)
        assert seen == set(trace.scores)
        # the chosen move leads to the best square seen, and candidates hold the best score through each move
        assert trace.target != start and score[trace.target] == max(s for q, s in trace.scores.items() if q != start)
        best_candidate = max(c["score"] for c in trace.candidates)
        assert best_candidate == score[trace.target]
        assert trace.action in legal
        assert trace.to_dict()["candidates"] == trace.candidates


def test_equal_scores_follow_the_policys_order():
    score = {p: 0.0 for p in free_squares(HAND_WALL)}
    start = (3, 3)  # on the spine: left, right and down are open
    for first in (1, 2, 3):
        order = {p: [first] + [a for a in (0, 1, 2, 3) if a != first] for p in score}
        assert plan(transition(HAND_WALL), start, score, order, budget=4).action == first
    assert sorted(neighbours(HAND_WALL, start)) == [(3, 2), (3, 4), (4, 3)]


@pytest.mark.parametrize("budget", [0, -3, 2.5, True])
def test_bad_budget_is_refused_by_name(budget):
    score = {p: 0.0 for p in free_squares(HAND_WALL)}
    order = {p: [0, 1, 2, 3] for p in score}
    with pytest.raises(ValueError, match="planner_budget"):
        plan(transition(HAND_WALL), (3, 3), score, order, budget)
