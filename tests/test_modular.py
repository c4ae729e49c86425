import csv
import json

import pytest
import torch

from constrained.cli import main
from constrained.models.modular import ModularModel, episode, save_traces
from constrained.models.objective import n_params
from constrained.seeding import generator
from constrained.tasks.icl_regression.task import IclRegression
from constrained.tasks.maze.grid import bfs, objective_samples, parse, random_free_squares, render
from constrained.tasks.maze.task import Maze
from tests.helpers import HAND_WALL, fast_args, free_squares

CONFIGS = "configs/maze"
VARIANTS = ["modular_policy_distribution", "modular_any_state"]


def tiny(**kw) -> ModularModel:
    args = dict(d_in=5, d_out=4, n_ctx=26, d_model=16, n_layers=1, myopic_gradient=True,
                objective_hidden=[8, 8], objective_max_params=128, state_features=Maze(m=2).state_features)
    model = ModularModel(**{**args, **kw})
    model.task = Maze(m=2)
    return model


def batch(n=8, m=2, seed=0):
    return Maze(m=m).make_batch(generator(seed), n, "train")


# -- the task's side: labels, parsing ---------------------------------------------------------------------


def test_objective_labels_are_the_declared_reward_of_every_free_square():
    walls = torch.tensor([HAND_WALL])
    agent, cheese, target = objective_samples(walls, torch.tensor([[5, 5]]))
    free = free_squares(HAND_WALL)
    assert [tuple(p) for p in agent.tolist()] == free and (cheese == torch.tensor([5, 5])).all()
    dist = bfs(HAND_WALL, (5, 5))
    for (r, c), y in zip(free, target.tolist()):
        assert y == pytest.approx(1.0 if (r, c) == (5, 5) else -dist[r][c] / 18)


def test_any_state_cheese_is_a_free_square_drawn_reproducibly():
    b = batch(n=64, m=3)
    draws = random_free_squares(b["walls"], generator(0, 4, 17))
    assert torch.equal(draws, random_free_squares(b["walls"], generator(0, 4, 17)))
    assert not b["walls"][torch.arange(64), draws[:, 0], draws[:, 1]].any()
    assert len(draws.unique(dim=0)) > 5  # anywhere, not only the corner


def test_parse_inverts_render_and_an_agent_on_the_cheese_is_the_cheese():
    b = batch(n=16, m=3)
    walls, agent, cheese = parse(b["inputs"])
    assert torch.equal(walls, b["walls"]) and torch.equal(agent, b["agent"]) and torch.equal(cheese, b["cheese"])
    _, agent, _ = parse(render(b["walls"], b["cheese"], b["cheese"]))
    assert torch.equal(agent, b["cheese"])


# -- the model ---------------------------------------------------------------------------------------------


def test_gradients_are_isolated_both_ways():
    model = tiny()
    b = batch()
    policy_loss = SequenceModelTerms.policy(model, b)
    objective_loss = model.objective_loss(b)
    obj, pol = list(model.objective.parameters()), list(model.net.parameters())
    assert all(g is None for g in torch.autograd.grad(policy_loss, obj, allow_unused=True, retain_graph=True))
    assert all(g is None for g in torch.autograd.grad(objective_loss, pol, allow_unused=True, retain_graph=True))
    # and each loss does reach its own part
    assert all(g is not None for g in torch.autograd.grad(objective_loss, obj, allow_unused=True))
    assert any(g is not None for g in torch.autograd.grad(policy_loss, pol, allow_unused=True))
    terms = model.loss_terms(b)
    assert set(terms) == {"task", "objective"}
    assert set(map(id, model.optimized_parameters())) == set(map(id, pol + obj))


class SequenceModelTerms:
    @staticmethod
    def policy(model, b):
        """The policy's own loss (behaviour cloning), without the objective term."""
        return model.task.loss(model(b["inputs"]), b)


def test_policy_distribution_labels_use_the_batch_cheese_and_any_state_elsewhere():
    b = batch(n=32, m=3)
    assert (b["cheese"] == torch.tensor(Maze(m=3).corner)).all()
    pd, anywhere = tiny(n_ctx=50), tiny(n_ctx=50, objective_data="any_state")
    anywhere.load_state_dict(pd.state_dict())
    target_pd = pd.objective_loss(b)
    _, _, y = objective_samples(b["walls"], b["cheese"])
    assert target_pd.item() == pytest.approx(torch.nn.functional.mse_loss(
        pd.objective(*objective_samples(b["walls"], b["cheese"])[:2]), y).item())
    assert anywhere.objective_loss(b).item() != pytest.approx(target_pd.item())


def test_checkpoint_keys_and_hparams_for_verify():
    model = tiny(objective_data="any_state")
    assert {k for k in model.state_dict() if k.startswith("objective.")} == {
        f"objective.layers.{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")}
    hp = model.hparams
    assert (hp.objective_hidden, hp.objective_max_params, hp.objective_data, hp.n_ctx) == ([8, 8], 128, "any_state", 26)


def test_objective_size_bound_is_enforced():
    assert n_params([8, 8]) == 121
    with pytest.raises(ValueError, match="objective_max_params"):
        tiny(objective_hidden=[64, 64], objective_max_params=512)


@pytest.mark.parametrize("kw,match", [
    ({"objective_data": "everywhere"}, "objective_data"),
    ({"planner_budget": 0}, "planner_budget"),
    ({"state_features": None}, "constrained.common.planning.Planning"),
    ({"save_traces": -1}, "save_traces"),
])
def test_bad_arguments_are_refused_by_name(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_a_non_maze_data_module_is_refused():
    model = tiny()
    model.task = IclRegression()
    with pytest.raises(ValueError, match="constrained.common.planning.Planning"):
        model.setup("fit")


def test_act_plans_with_the_policys_ranking_and_the_objectives_scores():
    model = tiny().eval()
    b = batch(n=4)
    wall, score, order = model.lookup(b["walls"][:1], b["cheese"][:1])[0]
    free = free_squares(wall)
    assert set(score) == set(order) == set(free)
    agents = torch.tensor(free)
    logits = model(render(b["walls"][:1].expand(len(free), -1, -1), agents, b["cheese"][:1].expand(len(free), -1)))
    assert [order[p] for p in free] == logits[:, -1].argsort(-1, descending=True).tolist()
    scores = model.objective(agents, b["cheese"][:1].expand(len(free), -1))
    assert [score[p] for p in free] == pytest.approx(scores.tolist())
    actions = model.act(b["inputs"]).argmax(-1).tolist()
    assert actions == [model.plan(b["walls"][i], b["cheese"][i], tuple(b["agent"][i].tolist())).action
                       for i in range(4)]


# -- CLI ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_configs_parse(variant, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", f"{CONFIGS}/base.yaml", "--config", f"{CONFIGS}/{variant}.yaml", "--print_config"])
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    assert "constrained.models.modular.ModularModel" in out and "myopic_gradient: kv" in out
    assert f"objective_data: {variant.removeprefix('modular_')}" in out


def modular_args(root) -> list[str]:
    """A tiny 4-step run of the modular model, its objective trained on any state, logging every step."""
    return fast_args(root, "modular_any_state", task="maze", steps=4, val_every=2, options={
        "trainer.callbacks": "[]", "trainer.log_every_n_steps": 1, "model.init_args.save_traces": 2,
        "data.init_args.n_test": 16})


def test_fit_then_test_writes_rollout_metrics_and_traces(tmp_path):
    main(["fit", *modular_args(tmp_path)])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "objective.layers.0.weight" in ckpt["state_dict"]
    assert ckpt["hyper_parameters"]["objective_data"] == "any_state"
    with (tmp_path / "logs" / "version_0" / "metrics.csv").open() as f:
        assert any(r.get("train/objective") for r in csv.DictReader(f))
    main(["test", *modular_args(tmp_path), "--ckpt_path", "last", "--verbose", "false"])
    with (tmp_path / "logs" / "version_1" / "metrics.csv").open() as f:
        logged = next(csv.DictReader(f))
    for key in (Maze.headline.capability, "shifted/p_cheese", "shifted/p_corner", "shifted/gmg_rate",
                "test/action_acc", "shifted/objective_top"):
        assert logged[key] != "", key
    total = sum(float(logged[f"shifted/{k}"]) for k in ("p_cheese", "p_corner", "p_neither"))
    assert total == pytest.approx(1.0)
    assert (tmp_path / "maze_proxy_by_distance.csv").is_file()
    for i in range(2):
        trace = json.loads((tmp_path / "traces" / f"episode_shifted_{i}.json").read_text())
        assert trace["steps"] and all(s["candidates"] and s["expansions"] for s in trace["steps"])
        assert len(trace["path"]) == len(trace["steps"]) + 1
        picture = (tmp_path / "traces" / f"episode_shifted_{i}.txt").read_text()
        assert all(ch in picture for ch in "ACK#")
    assert not (tmp_path / "traces" / "episode_shifted_2.json").exists()


def test_options_given_at_test_time_win_over_the_checkpoints(tmp_path, capsys):
    main(["fit", *modular_args(tmp_path)])
    ckpt = str(tmp_path / "checkpoints" / "last.ckpt")  # a file path: Lightning's CLI would reload its hparams
    args = [*modular_args(tmp_path), "--ckpt_path", ckpt, "--verbose", "false"]
    main(["test", *args, "--model.init_args.planner_budget", "1", "--model.init_args.save_traces", "1"])
    trace = json.loads((tmp_path / "traces" / "episode_shifted_0.json").read_text())
    assert all(len(s["expansions"]) == 1 for s in trace["steps"])
    assert not (tmp_path / "traces" / "episode_shifted_1.json").exists()
    bigger = ["--model.init_args.d_model", "32"]  # weights that do not fit the config: a clear error
    assert main(["test", *args, *bigger]) == 2
    assert "the checkpoint's weights do not fit this config: size mismatch for net." in capsys.readouterr().err


def test_traced_episodes_are_the_rollouts_episodes(tmp_path):
    model, task = tiny().eval(), Maze(m=2, n_test=8)
    b = task.eval_set("shifted")
    t_cheese, t_corner = task.rollout(model.act, b)
    for i in range(8):
        ep = episode(model, task, b, i)
        assert ep["reached_cheese"] == (t_cheese[i] >= 0)
        if ep["reached_cheese"]:
            assert len(ep["actions"]) == t_cheese[i]
        visits = [tuple(p) for p in ep["path"]]
        assert (task.corner in visits) == (t_corner[i] >= 0)
    written = save_traces(model, task, "shifted", 3, tmp_path)
    expected = [f"episode_shifted_{i}.{s}" for i in range(3) for s in ("json", "txt")]
    assert sorted(p.name for p in written) == sorted(expected)


def test_objective_has_its_own_step_size_and_weights_the_cheese_square():
    model = tiny(objective_lr=0.01, objective_cheese_weight=4.0, lr=0.001)
    groups = model.param_groups()
    assert set(map(id, groups[1]["params"])) == set(map(id, model.objective.parameters()))
    assert groups[1]["lr"] == 0.01 and "lr" not in groups[0]
    assert "lr" not in tiny().param_groups()[1]  # default: the model's lr
    b = batch()
    agent, cheese, target = objective_samples(b["walls"], b["cheese"])
    err = (model.objective(agent, cheese) - target) ** 2
    at = (agent == cheese).all(-1)
    expected = (4 * err[at].sum() + err[~at].sum()) / (4 * at.sum() + (~at).sum())
    torch.testing.assert_close(model.objective_loss(b), expected)
    with pytest.raises(ValueError, match="objective_cheese_weight"):
        tiny(objective_cheese_weight=0.0)
