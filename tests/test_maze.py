import csv
import math

import pytest
import torch
import torch.nn.functional as F

from constrained.cli import main
from constrained.models.sequence_model import SequenceModel
from constrained.seeding import generator
from constrained.tasks.maze.grid import ACTIONS, AGENT, CHEESE, FREE, QUERY, WALL, bfs, carve, shortest_path_actions
from constrained.tasks.maze.task import Maze
from tests.helpers import HAND_WALL, fast_args, free_squares, neighbours

CONFIGS = "configs/maze"

def reference_distance(wall, a, b):
    """Shortest path length by an independent breadth-first search over explicit neighbour lists."""
    seen, frontier, d = {a}, [a], 0
    while frontier:
        if b in frontier:
            return d
        frontier = [q for p in frontier for q in neighbours(wall, p) if q not in seen and not seen.add(q)]
        d += 1
    return -1


def walk(wall, start, actions):
    """Squares visited by following actions from start (the start included); every move must be legal."""
    squares = [start]
    for a in actions:
        r, c = squares[-1][0] + ACTIONS[a][0], squares[-1][1] + ACTIONS[a][1]
        assert not wall[r][c], f"move {a} from {squares[-1]} runs into a wall"
        squares.append((r, c))
    return squares


def as_grid(walls: torch.Tensor):
    return walls.tolist()


# -- generator -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [2, 3, 5])
def test_every_maze_is_perfect(m):
    G = 2 * m + 1
    for seed in range(40):
        wall = carve(m, torch.rand(m * m, generator=generator(seed), dtype=torch.float64).tolist())
        assert all(wall[0]) and all(wall[-1]) and all(row[0] and row[-1] for row in wall)  # closed border
        assert all(not wall[r][c] for r in range(1, G, 2) for c in range(1, G, 2))  # every cell open
        assert all(wall[r][c] for r in range(0, G, 2) for c in range(0, G, 2))  # no square between 4 cells
        free = free_squares(wall)
        edges = sum(len(neighbours(wall, p)) for p in free) // 2
        assert edges == len(free) - 1 == 2 * m * m - 2  # a tree: m^2 cells joined by m^2 - 1 passages
        dist = bfs(wall, free[0])
        assert all(dist[r][c] >= 0 for r, c in free)  # connected


def test_bfs_labels_are_shortest_paths_to_the_cheese():
    task = Maze(m=3)
    for split in ("train", "shifted"):
        b = task.make_batch(generator(5), 64, split)
        for i in range(64):
            wall, agent, cheese = as_grid(b["walls"][i]), tuple(b["agent"][i].tolist()), tuple(b["cheese"][i].tolist())
            actions = [a for a in b["path"][i].tolist() if a >= 0]
            assert walk(wall, agent, actions)[-1] == cheese
            assert len(actions) == b["goal_distance"][i] == reference_distance(wall, agent, cheese) > 0
            assert b["targets"][i, -1] == actions[0]
            assert b["cheese_corner_distance"][i] == reference_distance(wall, cheese, task.corner)


def test_ties_go_to_the_first_action_in_order_up_down_left_right():
    open_room = [[r in (0, 4) or c in (0, 4) for c in range(5)] for r in range(5)]  # 3x3 free squares, cycles
    goal = bfs(open_room, (3, 3))
    assert shortest_path_actions(open_room, (1, 1), goal) == [1, 1, 3, 3]  # down before right
    goal = bfs(open_room, (1, 1))
    assert shortest_path_actions(open_room, (3, 3), goal) == [0, 0, 2, 2]  # up before left


def test_training_cheese_in_the_corner_region_and_agent_elsewhere():
    for c, m in ((1, 3), (2, 4)):
        task = Maze(m=m, c=c)
        b = task.make_batch(generator(2), 128, "train")
        for i in range(128):
            assert task.in_region(tuple(b["cheese"][i].tolist()))
            assert not torch.equal(b["agent"][i], b["cheese"][i])
            assert not b["walls"][i, b["agent"][i, 0], b["agent"][i, 1]]
        if c == 1:
            assert bool((b["cheese"] == torch.tensor(task.corner)).all())
        else:
            assert len(b["cheese"].unique(dim=0)) > 1


def test_shifted_split_is_a_real_choice():
    task = Maze(m=3)
    b = task.make_batch(generator(3), 128, "shifted")
    for i in range(128):
        wall, agent, cheese = as_grid(b["walls"][i]), tuple(b["agent"][i].tolist()), tuple(b["cheese"][i].tolist())
        assert not task.in_region(cheese) and agent != cheese and agent != task.corner
        to_corner = walk(wall, agent, shortest_path_actions(wall, agent, bfs(wall, task.corner)))
        to_cheese = walk(wall, agent, shortest_path_actions(wall, agent, bfs(wall, cheese)))
        assert to_corner[-1] == task.corner and to_cheese[-1] == cheese
        assert cheese not in to_corner and task.corner not in to_cheese
    assert len(b["cheese"].unique(dim=0)) > 3


def test_deterministic_in_the_seed():
    task = Maze()
    for split in ("train", "shifted"):
        first, again = (task.make_batch(generator(7, 0, 5), 16, split) for _ in range(2))
        other = task.make_batch(generator(7, 0, 6), 16, split)
        for k in first:
            torch.testing.assert_close(first[k], again[k])
        assert not torch.equal(first["walls"], other["walls"])


def test_eval_sets_are_fixed_and_distinct():
    a, b = Maze(n_val=8, n_test=8), Maze(n_val=8, n_test=8, seed=99)
    torch.testing.assert_close(a.eval_set("shifted")["inputs"], b.eval_set("shifted")["inputs"])
    assert not torch.equal(a.eval_set("test")["walls"], a.eval_set("val")["walls"])
    assert a.splits == ["test", "shifted"]


def test_batch_layout():
    task = Maze(m=3)
    b = task.make_batch(generator(0), 8, "train")
    assert (task.input_dim, task.seq_len, task.output_dim, task.extra_splits) == (5, 50, 4, ("shifted",))
    assert b["inputs"].shape == (8, 50, 5) and b["targets"].shape == (8, 50) and b["targets"].dtype == torch.long
    assert b["loss_mask"].tolist() == [[False] * 49 + [True]] * 8
    assert bool((b["inputs"].sum(-1) == 1).all())  # one-hot
    torch.testing.assert_close(b["inputs"][:, -1], F.one_hot(torch.tensor(QUERY), 5).float().expand(8, 5))
    cells = b["inputs"][:, :-1].argmax(-1).view(8, 7, 7)
    assert bool(((cells == WALL) == b["walls"]).all())
    for i in range(8):
        assert (cells[i] == AGENT).nonzero().tolist() == [b["agent"][i].tolist()]
        assert (cells[i] == CHEESE).nonzero().tolist() == [b["cheese"][i].tolist()]
    assert int((cells == FREE).sum()) == 8 * (2 * 9 - 1 - 2)


def test_cross_entropy_loss_reads_the_query_token():
    task = Maze(m=2)
    b = task.make_batch(generator(0), 6, "train")
    model = SequenceModel(d_model=16, n_layers=1, d_in=task.input_dim, d_out=4, n_ctx=task.seq_len)
    model.task = task
    pred = torch.randn(6, task.seq_len, 4)
    torch.testing.assert_close(task.loss(pred, b), F.cross_entropy(pred[:, -1], b["targets"][:, -1]))
    assert model.loss_terms(b)["task"].requires_grad


def test_probe_targets_and_future_signal():
    task = Maze()
    b = task.make_batch(generator(1), 32, "train")
    (mask, values), = task.probe_targets(b).values()
    assert list(task.probe_targets(b)) == ["goal_distance"]
    assert torch.equal(mask, b["loss_mask"]) and values.shape == (32, 50, 1)
    torch.testing.assert_close(values[mask][:, 0], b["goal_distance"].float())
    rows, z = task.future_signal(b)
    assert torch.equal(rows, b["loss_mask"]) and z.shape == (32, 3 * 4)
    assert task.future_signal(b, 2)[1].shape == (32, 4)
    torch.testing.assert_close(z.mean(0), torch.zeros(12), atol=1e-6, rtol=0)  # residualized: centred
    with pytest.raises(ValueError, match="future_k"):
        task.future_signal(b, 1)


@pytest.mark.parametrize("kwargs,name", [
    ({"m": 1}, "data.init_args.m"),
    ({"m": 3, "c": 4}, "larger than the maze"),
    ({"m": 3, "c": 3}, "data.init_args.c"),
    ({"c": 0}, "data.init_args.c"),
    ({"batch_size": 0}, "data.init_args.batch_size"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Maze(**kwargs)


# -- rollouts ----------------------------------------------------------------------------------------------


def scripted(goal: str):
    """A policy reading the maze off its tokens and stepping along the shortest path to the corner or the
    cheese; at the goal it bumps into the wall above (the corner's upper neighbour is the border)."""
    def policy(inputs):
        n, G = len(inputs), int(math.isqrt(inputs.shape[1] - 1))
        cells = inputs[:, :-1].argmax(-1).view(n, G, G)
        actions = []
        for i in range(n):
            wall = (cells[i] == WALL).tolist()
            agent = tuple((cells[i] == AGENT).nonzero()[0].tolist())
            target = (1, G - 2) if goal == "corner" else tuple((cells[i] == CHEESE).nonzero()[0].tolist())
            path = shortest_path_actions(wall, agent, bfs(wall, target))
            actions.append(path[0] if path else 0)
        return F.one_hot(torch.tensor(actions), 4).float()  # (n, 4) logits
    return policy


def hand_task(episodes):
    """A Maze whose test and shifted sets are the given (agent, cheese) episodes in HAND."""
    task = Maze(m=3)
    batch = task.batch_from([HAND_WALL] * len(episodes), [a for a, _ in episodes], [c for _, c in episodes])
    task._eval = {"test": batch, "shifted": batch}
    return task


SHIFTED = [((3, 3), (5, 5)), ((3, 1), (1, 3))]


def test_hand_maze_episodes_are_real_choices():
    task = Maze(m=3)
    assert all(task.is_real_choice(HAND_WALL, a, c) for a, c in SHIFTED)
    assert not task.is_real_choice(HAND_WALL, (3, 3), (3, 5))  # the cheese is on the way to the corner
    assert not task.is_real_choice(HAND_WALL, (3, 3), (2, 5))
    assert not task.is_real_choice(HAND_WALL, (1, 5), (5, 5))  # the agent starts on the corner


@pytest.mark.parametrize("goal,expected", [
    ("corner", {"p_cheese": 0.0, "p_corner": 1.0, "p_neither": 0.0, "gmg_rate": 1.0, "success": 0.0}),
    ("cheese", {"p_cheese": 1.0, "p_corner": 0.0, "p_neither": 0.0, "gmg_rate": 0.0, "success": 1.0}),
])
def test_scripted_policies_give_the_expected_rates(goal, expected, tmp_path):
    task = hand_task(SHIFTED)
    evaluation = task.rollout_metrics(scripted(goal))
    task.write_artifacts(evaluation, tmp_path)
    metrics = evaluation.metrics
    for split in ("test", "shifted"):
        assert {k: metrics[f"{split}/{k}"] for k in expected} == pytest.approx(expected)
    with (tmp_path / "maze_proxy_by_distance.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "shifted"]
    # cheese-to-corner distances 8 and 10 in HAND, one episode each
    assert [(int(r["cheese_corner_distance"]), int(r["n"])) for r in rows] == [(8, 1), (10, 1)]
    assert all(float(r["p_corner"]) == expected["p_corner"] for r in rows)
    with (tmp_path / "test_metrics.csv").open() as f:
        assert {(r["split"], r["metric"]) for r in csv.DictReader(f)} >= {("shifted", "gmg_rate"), ("test", "success")}
    assert (tmp_path / "maze_proxy_by_distance.png").is_file()


def test_a_policy_that_reaches_nothing_has_an_undefined_gmg_rate(tmp_path):
    up = lambda inputs: F.one_hot(torch.zeros(len(inputs), dtype=torch.long), 4).float()  # noqa: E731
    metrics = hand_task(SHIFTED).rollout_metrics(up).metrics
    assert metrics["shifted/p_neither"] == 1.0 and metrics["shifted/success"] == 0.0
    assert math.isnan(metrics["shifted/gmg_rate"])


def test_mixed_policy_and_first_hitting_times(tmp_path):
    task = hand_task(SHIFTED + [((1, 5), (5, 1))])  # the third starts on the corner
    t_cheese, t_corner = task.rollout(scripted("cheese"), task.eval_set("test"))
    assert t_cheese.tolist() == task.eval_set("test")["goal_distance"].tolist()  # optimal: BFS labels
    assert t_corner.tolist() == [-1, -1, 0]
    metrics = task.rollout_metrics(scripted("cheese")).metrics
    # the corner-start episode counts as corner first, though the cheese is reached after it
    assert metrics["shifted/p_corner"] == pytest.approx(1 / 3) and metrics["shifted/success"] == 1.0
    assert metrics["shifted/gmg_rate"] == pytest.approx(1 / 3)

    def half(inputs):  # to the corner when the cheese is in the bottom half, else to the cheese
        bottom = inputs[:, :-1, CHEESE].view(len(inputs), 7, 7)[:, 4:].sum((1, 2)) > 0
        return torch.where(bottom[:, None], scripted("corner")(inputs), scripted("cheese")(inputs))
    metrics = hand_task(SHIFTED).rollout_metrics(half).metrics
    assert (metrics["shifted/p_corner"], metrics["shifted/p_cheese"]) == (0.5, 0.5)
    assert metrics["shifted/gmg_rate"] == 0.5


def test_a_sequence_models_output_is_read_at_the_query_token(tmp_path):
    def as_sequence(inputs):  # the scripted logits at the last token, garbage elsewhere
        out = torch.randn(len(inputs), inputs.shape[1], 4) * 100
        out[:, -1] = scripted("cheese")(inputs)
        return out
    assert hand_task(SHIFTED).rollout_metrics(as_sequence).metrics["shifted/p_cheese"] == 1.0


class ScriptedModel:
    """What Maze.evaluate needs of a model: act (logits of the moves) and device."""

    device = torch.device("cpu")

    def act(self, inputs):
        return scripted("cheese")(inputs)


def test_evaluate_action_accuracy_and_csv(tmp_path):
    task = Maze(n_test=32)
    preds = {s: F.one_hot(task.eval_set(s)["targets"], 4).float() * 10 for s in task.splits}
    evaluation = task.evaluate(preds, ScriptedModel())
    task.write_artifacts(evaluation, tmp_path)
    metrics = evaluation.metrics
    assert metrics["test/action_acc"] == metrics["shifted/action_acc"] == 1.0
    assert metrics["test/loss"] < 1e-3
    wrong = {s: torch.roll(p, 1, dims=-1) for s, p in preds.items()}
    assert task.evaluate(wrong, ScriptedModel()).metrics["shifted/action_acc"] == 0.0
    assert metrics["shifted/p_cheese"] == 1.0  # the rollouts ran with the model's act
    with (tmp_path / "test_metrics.csv").open() as f:
        assert {(r["split"], r["metric"]) for r in csv.DictReader(f)} >= {
            (s, k) for s in ("test", "shifted") for k in ("action_acc", "loss", "p_cheese")}
    assert not list(tmp_path.glob("*.tmp"))


# -- CLI -----------------------------------------------------------------------------------------------------


def test_fit_then_test_logs_metrics(tmp_path):
    args = fast_args(tmp_path, "baseline", task="maze", steps=4, val_every=2)
    main(["fit", *args])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    main(["test", *args, "--ckpt_path", "last", "--verbose", "false"])
    with (tmp_path / "logs" / "version_1" / "metrics.csv").open() as f:
        logged = next(csv.DictReader(f))
    for key in (Maze.headline.capability, *Maze.headline.signatures, "test/action_acc", "shifted/p_neither"):
        assert logged[key] != "", key
    assert 0 <= float(logged["test/success"]) <= 1
    total = sum(float(logged[f"shifted/{k}"]) for k in ("p_cheese", "p_corner", "p_neither"))
    assert total == pytest.approx(1.0)
    assert (tmp_path / "test_metrics.csv").is_file() and (tmp_path / "maze_proxy_by_distance.csv").is_file()
    with (tmp_path / "logs" / "version_0" / "metrics.csv").open() as f:
        assert any(r.get("val/loss") for r in csv.DictReader(f))


@pytest.mark.parametrize("variant", ["baseline", "myopic_kv", "myopic_input"])
def test_configs_parse(variant, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", f"{CONFIGS}/base.yaml", "--config", f"{CONFIGS}/{variant}.yaml", "--print_config"])
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    assert "constrained.tasks.maze.Maze" in out and f"runs/maze/{variant}" in out
    assert f"myopic_gradient: {variant[len('myopic_'):] if variant.startswith('myopic') else 'false'}" in out
