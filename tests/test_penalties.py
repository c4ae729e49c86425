import csv
import json

import pytest
import torch

from constrained.cli import main
from constrained.measure import penalties as P
from constrained.measure import signatures
from constrained.tasks.icl_regression.task import IclRegression
from constrained.tasks.precache import Precache
from tests.helpers import fast_args, tiny


def _penalty_args(*specs: dict) -> list[str]:
    return ["--model.init_args.penalties", json.dumps(list(specs)), "--trainer.log_every_n_steps", "1"]


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("kind", ["future_info", "reach", "adversarial_probe"])
def test_training_with_each_penalty_runs_and_logs_its_term(tmp_path, kind):
    main(["fit", *fast_args(tmp_path), *_penalty_args({"kind": kind, "weight": 0.5})])
    rows = _rows(tmp_path / "logs" / "version_0" / "metrics.csv")
    logged = [float(r[f"penalty/{kind}"]) for r in rows if r.get(f"penalty/{kind}")]
    assert logged and all(v >= 0 for v in logged)
    assert any(r.get(f"train/{kind}") for r in rows), "the weighted term is not in the loss"
    monitored = [r for r in rows if r.get("monitor/iteration")]
    assert monitored and all(r["monitor/reach"] and r["monitor/future_info_last"] for r in monitored)


def test_weight_zero_is_measured_but_not_added(tmp_path):
    main(["fit", *fast_args(tmp_path), *_penalty_args({"kind": "future_info", "weight": 0.0})])
    rows = _rows(tmp_path / "logs" / "version_0" / "metrics.csv")
    assert any(r.get("penalty/future_info") for r in rows)
    assert not any(r.get("train/future_info") for r in rows)


def test_adversarial_probe_resumes_with_its_optimizer(tmp_path):
    args = [*fast_args(tmp_path), *_penalty_args({"kind": "adversarial_probe", "weight": 1.0})]
    main(["fit", *args])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("adversaries.") for k in ckpt["state_dict"])
    assert ckpt["adversary_optimizer"]["state"]
    assert ckpt["hyper_parameters"]["penalties"][0]["kind"] == "adversarial_probe"
    main(["test", *args, "--ckpt_path", "last", "--verbose", "false"])


@pytest.mark.parametrize("spec, message", [
    ({"kind": "reach", "weight": 1.0, "layers": [5]}, "not blocks of this model"),
    ({"kind": "future_info", "weight": -1.0}, "weight must be >= 0"),
    ({"kind": "reach", "horizon": -2.0}, "horizon must be >= 0"),
    ({"kind": "future_info", "future_k": 1}, "future_k must be >= 2"),
])
def test_bad_penalty_is_named(spec, message):
    with pytest.raises(ValueError, match=message):
        P.parse([spec], n_layers=2)


def test_unknown_kind_and_duplicates_are_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        P.parse([{"kind": "cka"}], n_layers=2)
    with pytest.raises(ValueError, match="once"):
        P.parse([{"kind": "reach"}, {"kind": "reach", "weight": 1.0}], n_layers=2)


def test_unknown_penalty_key_fails_in_the_cli(tmp_path, capsys):
    assert main(["fit", *fast_args(tmp_path), *_penalty_args({"kind": "reach", "wieght": 1.0})]) == 2
    assert "wieght" in capsys.readouterr().err


def _grads(model, value):
    grads = torch.autograd.grad(value, list(model.parameters()), allow_unused=True)
    return {n: (g is not None and g.abs().sum().item() > 0) for (n, _), g in zip(model.named_parameters(), grads)}


def _icl_batch(n=16):
    task = IclRegression(d=5, n_points=6)
    return task, task.make_batch(torch.Generator().manual_seed(0), n, "train")


def test_future_info_gradient_reaches_only_blocks_up_to_its_layer():
    task, batch = _icl_batch()
    model = tiny(d_in=5, n_ctx=12, n_layers=2)
    p = P.parse([{"kind": "future_info", "weight": 1.0, "layers": [0]}], 2)[0]
    _, cache = model.run_with_cache(batch["inputs"], names_filter=P.hook_names(p, 2), detach=False)
    rows, z = task.future_signal(batch)
    reached = _grads(model, P.value(p, cache, 2, rows, z))
    assert reached["blocks.0.attn.W_qkv.weight"] and reached["embed.weight"] and reached["pos_embed"]
    assert not any(v for n, v in reached.items() if n.startswith(("blocks.1.", "unembed", "ln_final")))


def test_reach_gradient_reaches_queries_and_keys_not_values():
    model = tiny(n_layers=1)
    p = P.parse([{"kind": "reach", "weight": 1.0, "horizon": 2.0}], 1)[0]
    _, cache = model.run_with_cache(torch.randn(4, 12, 5), names_filter=P.hook_names(p, 1), detach=False,
                                    reach_h=p.horizon)
    value = P.value(p, cache, 1, None, None)
    assert value > 0
    (g,) = torch.autograd.grad(value, [model.blocks[0].attn.W_qkv.weight], retain_graph=True)
    d = model.blocks[0].attn.W_qkv.weight.shape[1]
    assert g[:d].abs().sum() > 0 and g[d:2 * d].abs().sum() > 0  # queries, keys
    assert torch.all(g[2 * d:] == 0)  # values do not move where attention goes
    reached = _grads(model, value)
    assert not any(v for n, v in reached.items() if n.startswith(("blocks.0.attn.W_o", "blocks.0.mlp", "unembed")))


def test_adversarial_probe_reverses_the_models_gradient():
    task, batch = _icl_batch()
    model = tiny(d_in=5, n_ctx=12, n_layers=1)
    rows, z = task.future_signal(batch)
    adv = P.AdversarialProbes(16, z.shape[1], [0])
    names = ["blocks.0.hook_resid_post"]
    weight = 0.3
    _, cache = model.run_with_cache(batch["inputs"], names_filter=names, detach=False)
    w = model.embed.weight
    g_rev, g_probe_rev = torch.autograd.grad(adv.loss(cache, rows, z, weight), [w, adv.probes["0"].weight])
    _, cache = model.run_with_cache(batch["inputs"], names_filter=names, detach=False)
    g_plain, g_probe = torch.autograd.grad(adv.loss(cache, rows, z, -1.0), [w, adv.probes["0"].weight])
    torch.testing.assert_close(g_rev, -weight * g_plain)  # the model is pushed to make the probe fail
    torch.testing.assert_close(g_probe_rev, g_probe)  # the probe itself learns normally


def test_iteration_signature_on_planted_updates():
    base = torch.randn(2, 3, 4)
    step = torch.randn(2, 3, 4)
    same = {"blocks.0.hook_resid_pre": base, **{f"blocks.{l}.hook_resid_post": base + (l + 1) * step for l in range(3)}}
    assert signatures.iteration(same, 3).item() == pytest.approx(2.0)  # two consecutive pairs, cos = 1
    flip = {"blocks.0.hook_resid_pre": base, "blocks.0.hook_resid_post": base + step,
            "blocks.1.hook_resid_post": base}
    assert signatures.iteration(flip, 2).item() == pytest.approx(0.0)  # cos = -1 is not iteration


def test_default_future_signal_is_residualized_on_the_current_target():
    task = Precache(T=16, K=3)
    batch = task.make_batch(torch.Generator().manual_seed(0), 32, "train")
    rows, z = task.future_signal(batch)
    assert z.shape == (int(rows.sum()), task.K - 1)  # targets at t+2..t+K, K = the task's K
    assert rows[:, : task.K].sum() == 0 and rows[:, 16 - task.K:].sum() == 0
    y_now = batch["targets"][rows][:, 0]
    yc, zc = y_now - y_now.mean(), z - z.mean(0)
    assert (yc @ zc).abs().max() < 1e-3 * yc.norm() * zc.norm(dim=0).max()


def test_reach_hook_fires_only_when_asked_and_is_zero_beyond_the_sequence():
    model = tiny()
    x = torch.randn(2, 12, 5)
    _, cache = model.run_with_cache(x, names_filter=lambda n: "reach" in n)
    assert cache == {}
    _, cache = model.run_with_cache(x, names_filter=lambda n: "reach" in n, reach_h=12.0)
    assert set(cache) == {"blocks.0.attn.hook_reach", "blocks.1.attn.hook_reach"}
    assert all(v.item() == 0 for v in cache.values())
    _, cache = model.run_with_cache(x, names_filter=lambda n: "reach" in n, reach_h=1.0)
    assert all(v.item() > 0 for v in cache.values())
    with pytest.raises(ValueError, match="reach_h must be >= 0"):
        model(x, reach_h=-1.0)
