"""The horizon reach spec: with L layers of horizon h no output depends on a token more than L·(h−1) back, and
the bound is met. Proved for the model's mask and network; refuted for a mask with one layer more reach than
claimed, a mask that reads one position further per layer, a claim one layer too long, and a network whose
horizon is wider than the claim's."""

import pytest

from constrained.cli import main
from constrained.common.mask import attends
from constrained.proofs import horizon_reach as spec
from constrained.proofs.result import PROVED, REFUTED

pytestmark = pytest.mark.proof

UPPER = f"unrolled L=1..{spec.L_MAX}: no chain spans more than reach(L, h)"
TIGHT = f"unrolled L=1..{spec.L_MAX}: a chain spans exactly reach(L, h)"


def test_the_models_mask_and_network_are_proved():
    result = spec.spec()
    assert result.status == PROVED, (result.claim, result.counterexample, result.reason)
    assert len(result.claims) == 8 and set(result.claims.values()) == {PROVED}


def one_layer_short(layers, h):
    return (layers - 1) * (h - 1)


def test_a_mask_with_one_layer_more_reach_than_claimed_is_refuted_by_a_real_chain():
    result = spec.spec(reach=one_layer_short, models={})
    assert result.status == REFUTED
    assert result.claims[UPPER] == REFUTED and result.claims["base: reach(0, h) = 0"] == REFUTED
    # the unrolled counterexample is a chain the model's mask allows that spans further than claimed
    cex = spec.unrolled_claims(attends, one_layer_short, 10_000)[0].counterexample
    L, h = cex["L"], cex["h"]
    ks = [cex[f"k{x}"] for x in range(L + 1)]
    assert all(attends(ks[x + 1], ks[x], h) or ks[x + 1] == ks[x] for x in range(L))
    assert ks[-1] - ks[0] > one_layer_short(L, h)


def test_a_mask_that_reads_one_more_position_per_layer_is_refuted():
    def wide(i, j, horizon=None, j_is_query=None):
        return (j <= i) & (i - j <= horizon)  # off by one: h + 1 positions

    result = spec.spec(attends=wide, models={})
    assert result.status == REFUTED and result.claim == "induction step: one layer adds at most h-1"
    assert result.claims[UPPER] == REFUTED
    cex = result.counterexample
    assert cex["i"] - cex["j"] > cex["B"] + cex["h"] - 1


def test_a_claim_one_layer_too_long_is_refuted_on_tightness():
    result = spec.spec(reach=lambda layers, h: (layers + 1) * (h - 1), models={})
    assert result.status == REFUTED and result.claims[TIGHT] == REFUTED
    assert result.claims[UPPER] == PROVED  # a looser upper bound is still an upper bound
    assert result.counterexample["h"] >= 2


def test_a_network_with_a_wider_horizon_than_claimed_is_refuted():
    models = {(2, 2): spec.build(2, 3)}  # labelled horizon 2, built with 3
    claims = {c.name: c for c in spec.autograd_claims(models=models)}
    upper = claims["autograd: y_i never depends on x_j beyond L(h-1) back, nor ahead"]
    assert upper.status == REFUTED and upper.counterexample["i"] - upper.counterexample["j"] > 2
    assert spec.autograd_claims(models={(2, 3): spec.build(2, 3)})[0].status == PROVED


def test_dependence_of_the_real_network_is_the_window():
    model = spec.build(2, 3)
    dep = spec.dependence(model)
    T, r = len(dep), spec.model_reach(2, 3)
    assert [[bool(dep[i, j]) for j in range(T)] for i in range(T)] == [[0 <= i - j <= r for j in range(T)]
                                                                       for i in range(T)]


def test_prove_runs_the_spec(capsys):
    assert main(["prove", "--spec", "horizon_reach"]) == 0
    assert "horizon_reach" in capsys.readouterr().out
