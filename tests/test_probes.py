import pytest
import torch

from constrained.measure.probes import linear_auroc, probe_scores, random_control, ridge_r2
from constrained.seeding import generator
from constrained.tasks.icl_regression.task import IclRegression
from tests.helpers import tiny


def test_ridge_recovers_planted_linear_signal():
    h = torch.randn(2000, 8)
    z = h @ torch.randn(8, 3) + 0.01 * torch.randn(2000, 3)
    assert ridge_r2(h[:1000], z[:1000], h[1000:], z[1000:]) > 0.99


def test_ridge_scores_about_zero_on_independent_noise():
    h, z = torch.randn(8000, 8), torch.randn(8000, 2)
    assert abs(ridge_r2(h[:4000], z[:4000], h[4000:], z[4000:])) < 0.05


def test_ridge_is_scale_free_and_one_dimensional_targets_work():
    h = torch.randn(400, 6)
    z = h[:, 0] + 0.5 * torch.randn(400)
    a = ridge_r2(h[:200], z[:200], h[200:], z[200:])
    b = ridge_r2(1e4 * h[:200], z[:200], 1e4 * h[200:], z[200:])
    assert 0.3 < a < 0.95 and a == pytest.approx(b, abs=1e-6)  # float32 inputs, float64 solve


def test_auroc_of_separable_direction_and_of_noise():
    h = torch.randn(3000, 6)
    labels = (h @ torch.randn(6) > 0).long()
    assert linear_auroc(h[:1000], labels[:1000], h[1000:], labels[1000:]) > 0.99
    noise = torch.randint(0, 2, (3000,))
    assert abs(linear_auroc(h[:1000], noise[:1000], h[1000:], noise[1000:]) - 0.5) < 0.05


def test_auroc_fits_inside_inference_mode():
    # Lightning runs validation and test hooks in inference mode
    h = torch.randn(400, 4)
    labels = (h[:, 0] > 0).long()
    with torch.inference_mode():
        assert linear_auroc(h[:200], labels[:200], h[200:], labels[200:]) > 0.99


def _icl(n=40):
    dm = IclRegression(d=4, n_points=6)
    batch = dm.make_batch(generator(0), n, "test")
    return dm, batch


def test_probe_scores_keys_and_selectivity():
    dm, batch = _icl()
    model = tiny(d_in=4)
    scores = probe_scores(model, random_control(model, 1), batch, dm.probe_targets(batch))
    tags = ("", "_control", "_selectivity")
    expected = {f"probe_w_hat_{where}{tag}" for where in ("L0", "L1", "last") for tag in tags}
    assert set(scores) == expected
    for where in ("L0", "L1", "last"):
        s = lambda tag, where=where: scores[f"probe_w_hat_{where}{tag}"]  # noqa: E731
        assert s("_selectivity") == s("") - s("_control")
    assert scores["probe_w_hat_last"] == scores["probe_w_hat_L1"]
    assert scores["probe_w_hat_L0"] != scores["probe_w_hat_L0_control"]


def test_probe_scores_split_by_sequence():
    dm, batch = _icl(n=41)
    model = tiny(d_in=4)
    targets = dm.probe_targets(batch)
    mask, values = targets["w_hat"]
    _, cache = model.run_with_cache(batch["inputs"], names_filter="blocks.0.hook_resid_post")
    h = cache["blocks.0.hook_resid_post"]
    # first 20 sequences train, last 21 test, all positions of a sequence on one side (an odd count, so
    # half of the rows would be a different split)
    expected = ridge_r2(h[:20][mask[:20]], values[:20][mask[:20]], h[20:][mask[20:]], values[20:][mask[20:]])
    got = probe_scores(model, random_control(model, 1), batch, targets, layers=[0])
    assert got["probe_w_hat_L0"] == pytest.approx(expected, abs=1e-12)
    assert {k for k in got if k.endswith("_selectivity")} == {"probe_w_hat_L0_selectivity",
                                                             "probe_w_hat_L1_selectivity",
                                                             "probe_w_hat_last_selectivity"}


def test_bool_targets_get_a_classifier_probe_scored_by_auroc():
    # the label is the sign of an input feature at the last token: decodable from any residual stream,
    # trained or random, so both AUROCs are near 1 and the selectivity near 0
    gen = generator(3)
    inputs = torch.randn(64, 12, 5, generator=gen)
    label = inputs[:, -1, 0] > 0
    mask = torch.zeros(64, 12, dtype=torch.bool)
    mask[:, -1] = True
    values = torch.zeros(64, 12, 1, dtype=torch.bool)
    values[:, -1, 0] = label
    model = tiny()
    scores = probe_scores(model, random_control(model, 1), {"inputs": inputs}, {"sign": (mask, values)})
    assert set(scores) == {f"probe_sign_{w}{t}" for w in ("L0", "L1", "last") for t in ("", "_control", "_selectivity")}
    assert scores["probe_sign_last"] > 0.95 and scores["probe_sign_last_control"] > 0.95
    assert abs(scores["probe_sign_last_selectivity"]) < 0.05
    values[:32] = False  # the train half has one class only: no classifier to fit
    with pytest.raises(ValueError, match="both classes"):
        probe_scores(model, random_control(model, 1), {"inputs": inputs}, {"sign": (mask, values)})


def test_probe_scores_restores_training_mode():
    dm, batch = _icl()
    model = tiny(d_in=4).train()
    probe_scores(model, random_control(model, 1), batch, dm.probe_targets(batch))
    assert model.training


def test_random_control_fresh_deterministic_and_leaves_global_rng():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    a, b, c = random_control(model, 7), random_control(model, 7), random_control(model, 8)
    assert torch.equal(torch.get_rng_state(), state)
    params = dict(model.named_parameters())
    for name, p in a.named_parameters():
        torch.testing.assert_close(p, dict(b.named_parameters())[name], rtol=0, atol=0)
        assert not p.requires_grad
        parts = name.split(".")
        if not (len(parts) > 1 and parts[-2].startswith("ln")):
            # LayerNorm re-initializes to ones and zeros, as in a fresh model; everything random must differ
            assert not torch.equal(p, params[name]), name
            assert not torch.equal(p, dict(c.named_parameters())[name]), name
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    x = torch.randn(2, 12, 5)
    assert a(x).shape == model(x).shape and not torch.allclose(a(x), model(x))


def test_random_control_resets_trained_layernorm():
    model = tiny()
    with torch.no_grad():
        model.ln_final.weight.fill_(3.0)
    assert torch.equal(random_control(model, 0).ln_final.weight, torch.ones(16))


@pytest.mark.parametrize("token_format", ["interleaved", "concatenated"])
def test_icl_probe_targets_are_least_squares_so_far(token_format):
    dm = IclRegression(d=3, n_points=6, token_format=token_format)
    batch = dm.make_batch(generator(0), 5, "test")
    mask, values = dm.probe_targets(batch)["w_hat"]
    xs, ys, inputs = batch["xs"], batch["ys"], batch["inputs"]
    assert mask.shape == (5, 12) and values.shape == (5, 12, 3)
    assert mask[:, 1::2].all() and not mask[:, 0::2].any()
    # position 2i + 1 is the token carrying y_i in both formats
    y_slot = 0 if token_format == "interleaved" else 3
    torch.testing.assert_close(inputs[:, 1::2, y_slot], ys)
    # i = 4: five examples in d = 3, full rank, so the unique least-squares solution
    w_hat = torch.linalg.lstsq(xs[:, :5], ys[:, :5, None]).solution.squeeze(-1)  # (n, d)
    torch.testing.assert_close(values[:, 9], w_hat, rtol=1e-4, atol=1e-4)
    # i = 0: one example, the min-norm solution is y_0 x_0 / |x_0|^2
    by_hand = ys[:, :1] * xs[:, 0] / (xs[:, 0] ** 2).sum(-1, keepdim=True)
    torch.testing.assert_close(values[:, 1], by_hand, rtol=1e-4, atol=1e-5)
