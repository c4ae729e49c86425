import csv
import math

import pytest
import torch

from constrained.cli import main
from constrained.seeding import generator
from constrained.tasks.precache import Precache, precache_targets
from tests.helpers import fast_args

CONFIGS = "configs/precache"


def test_generator_matches_hand_computed_example():
    xs = torch.tensor([[0.5, -1.0, 2.0, 0.3]])
    zs = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    ys = precache_targets(xs, zs, a=1.0, K=2)
    expected = [
        0.0,  # z = 1 at n = 0: no earlier terms
        -1.0,  # z = 0: copy x_1
        math.sin(-1.0) + math.sin(0.5),
        math.sin(2.0) + math.sin(-1.0),  # x_0 is K + 1 back, outside the window
    ]
    torch.testing.assert_close(ys, torch.tensor([expected]))


def test_frequency_a_scales_the_argument():
    xs = torch.tensor([[0.7, 0.2, 0.0]])
    ys = precache_targets(xs, torch.ones(1, 3), a=3.0, K=1)
    torch.testing.assert_close(ys, torch.tensor([[0.0, math.sin(2.1), math.sin(0.6)]]))


def test_z0_positions_copy_x_and_z1_positions_do_not():
    task = Precache(p=0.5, T=24, K=4)
    b = task.make_batch(generator(3), 64, "train")
    zs = b["zs"]
    assert set(zs.unique().tolist()) == {0.0, 1.0}
    copy = zs == 0
    torch.testing.assert_close(b["ys"][copy], b["xs"][copy])
    assert not torch.allclose(b["ys"][~copy], b["xs"][~copy])


def test_batch_layout():
    task = Precache(T=20, K=5)
    b = task.make_batch(generator(0), 8, "train")
    assert b["inputs"].shape == (8, 20, 2) and b["targets"].shape == (8, 20, 1)
    assert b["loss_mask"].dtype == torch.bool
    torch.testing.assert_close(b["inputs"][..., 0], b["xs"])
    torch.testing.assert_close(b["inputs"][..., 1], b["zs"])
    torch.testing.assert_close(b["targets"][..., 0], b["ys"])
    torch.testing.assert_close(b["ys"], precache_targets(b["xs"], b["zs"], task.a, task.K))
    assert (task.input_dim, task.seq_len, task.output_dim) == (2, 20, 1)
    pred = torch.randn_like(b["targets"])
    mask = b["loss_mask"]
    torch.testing.assert_close(task.loss(pred, b), torch.nn.functional.huber_loss(pred[mask], b["targets"][mask]))


def test_default_p_is_one_so_every_token_asks_for_the_sum():
    b = Precache().make_batch(generator(0), 16, "train")
    assert bool((b["zs"] == 1).all())


def test_deterministic_in_the_seed():
    task = Precache()
    first, again = (task.make_batch(generator(7, 0, 5), 4, "train") for _ in range(2))
    other = task.make_batch(generator(7, 0, 6), 4, "train")
    for k in first:
        torch.testing.assert_close(first[k], again[k])
    assert not torch.equal(first["xs"], other["xs"])


def test_eval_sets_are_fixed_and_distinct():
    a, b = Precache(n_val=8, n_test=8), Precache(n_val=8, n_test=8, seed=99)
    torch.testing.assert_close(a.eval_set("test")["xs"], b.eval_set("test")["xs"])
    assert not torch.equal(a.eval_set("test")["xs"], a.eval_set("val")["xs"])


def test_loss_mask_marks_exactly_positions_from_K():
    mask = Precache(T=12, K=3).make_batch(generator(0), 5, "train")["loss_mask"]
    assert mask.shape == (5, 12)
    assert mask[:, :3].sum() == 0 and bool(mask[:, 3:].all())


def test_probe_target_is_the_next_target():
    task = Precache(T=12, K=3, p=0.5)
    b = task.make_batch(generator(1), 6, "train")
    (mask, values), = task.probe_targets(b).values()
    assert list(task.probe_targets(b)) == ["next_target"]
    assert mask.shape == (6, 12) and values.shape == (6, 12, 1)
    expected_mask = torch.zeros(12, dtype=torch.bool)
    expected_mask[3:11] = True  # K <= n <= T - 2
    assert bool((mask == expected_mask).all())
    torch.testing.assert_close(values[:, 3:11, 0], b["ys"][:, 4:12])


@pytest.mark.parametrize("kwargs,name", [
    ({"K": 0}, "data.init_args.K"),
    ({"T": 10, "K": 10}, "data.init_args.T"),
    ({"T": 5, "K": 10}, "data.init_args.T"),
    ({"p": 1.5}, "data.init_args.p"),
    ({"p": -0.1}, "data.init_args.p"),
    ({"a": 0.0}, "data.init_args.a"),
    ({"a": -3.0}, "data.init_args.a"),
    ({"batch_size": 0}, "data.init_args.batch_size"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Precache(**kwargs)


def test_evaluate_metrics_and_csv(tmp_path):
    task = Precache(T=16, K=4, n_test=32)
    b = task.eval_set("test")
    perfect = task.evaluate({"test": b["targets"].clone()}).metrics
    assert perfect == {"test/huber": 0.0, "test/mse_over_var": 0.0, "test/loss": 0.0}
    # predicting the mean of y on scored positions gives MSE = Var, so MSE/Var = 1
    mean = b["targets"][b["loss_mask"]].mean()
    flat = task.evaluate({"test": torch.full_like(b["targets"], mean.item())}).metrics
    assert flat["test/mse_over_var"] == pytest.approx(1.0, abs=1e-5)
    assert flat["test/loss"] == flat["test/huber"] > 0
    # unscored positions (n < K) do not count
    off = b["targets"].clone()
    off[:, :4] += 100.0
    evaluation = task.evaluate({"test": off})
    assert evaluation.metrics["test/huber"] == 0.0
    task.write_artifacts(evaluation, tmp_path)
    with (tmp_path / "test_metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["split"], r["metric"]) for r in rows} == {("test", "huber"), ("test", "mse_over_var"), ("test", "loss")}
    assert not list(tmp_path.glob("*.tmp"))


def test_fit_then_test_logs_metrics(tmp_path):
    main(["fit", *fast_args(tmp_path, "baseline", task="precache")])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    main(["test", *fast_args(tmp_path, "baseline", task="precache"), "--ckpt_path", "last", "--verbose", "false"])
    with (tmp_path / "logs" / "version_1" / "metrics.csv").open() as f:
        logged = next(csv.DictReader(f))
    assert float(logged["test/mse_over_var"]) > 0 and float(logged["test/huber"]) > 0
    for key in (Precache.headline.capability, *Precache.headline.signatures):
        assert logged[key] != "", key
    assert (tmp_path / "test_metrics.csv").is_file()


@pytest.mark.parametrize("variant", ["baseline", "myopic_kv", "myopic_input"])
def test_configs_parse(variant, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", f"{CONFIGS}/base.yaml", "--config", f"{CONFIGS}/{variant}.yaml", "--print_config"])
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    assert "constrained.tasks.precache.Precache" in out and f"runs/precache/{variant}" in out
    assert f"myopic_gradient: {variant[len('myopic_'):] if variant.startswith('myopic') else 'false'}" in out
