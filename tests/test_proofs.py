"""The specs prove the real components, refute deliberately broken copies with a counterexample that
is real, answer unknown when given too little time; the shared formulas are the kernels' math."""

import json
from fractions import Fraction

import pytest
import torch
import z3

from constrained.cli import main
from constrained.common import formulas
from constrained.common.mask import attends
from constrained.kernels.attention import reach_from_pattern, reach_weights
from constrained.kernels.future_info import future_info_reference
from constrained.proofs import isolation, mask, penalty_algebra, runner
from constrained.proofs.result import PROVED, REFUTED, UNKNOWN, check

pytestmark = pytest.mark.proof


def off_by_one_attends(i, j, horizon=None, j_is_query=None):
    """The mask with i − j <= h: one key too many."""
    allowed = j <= i
    if horizon is not None:
        allowed = allowed & (i - j <= horizon)
    if j_is_query is not None:
        allowed = allowed & (~j_is_query | (i == j))
    return allowed


def uncentred_grad_h(h, z, m):
    """The future_info backward with H where Hc belongs (the centring term left out)."""
    zc = formulas.centre(z)
    return 2 * (zc - h @ m) @ m.mT / (zc * zc).sum()


def assert_proved(result):
    assert result.status == PROVED, (result.claim, result.counterexample, result.reason)
    assert result.claims and set(result.claims.values()) == {PROVED}


# ---------------------------------------------------------------------------------------------- mask


def test_mask_predicate_evaluates_on_z3_terms():
    i, j = z3.Ints("i j")
    q = z3.Bool("q")
    assert z3.is_bool(attends(i, j, 3, q))
    assert z3.is_not(~q)  # `~` on a z3 Bool is Not, so the query clause means what it says


def test_mask_spec_proves_the_model_predicate():
    assert_proved(mask.spec())


def test_mask_spec_refutes_off_by_one_horizon():
    result = mask.spec(attends=off_by_one_attends)
    assert result.status == REFUTED
    assert result.claims["within horizon"] == REFUTED and result.claims["causal"] == PROVED
    cex = result.counterexample
    i, j, h = cex["i"], cex["j"], cex["h"]
    assert off_by_one_attends(i, j, h) and not attends(i, j, h)  # a real mistake, on plain ints
    assert i - j == h


# -------------------------------------------------------------------------------------- future_info


def test_future_info_spec_proves_the_formulas():
    assert_proved(penalty_algebra.future_info_spec())


def _torch_solve(eps):
    def solve(chh, chz):
        return torch.linalg.solve(chh + eps * torch.eye(chh.shape[0], dtype=chh.dtype), chz)

    return solve


def _reference_and_grad(h, z, eps):
    """R² and ∂R²/∂H from the kernel's reference by autograd, with eps0 chosen so that its ε is eps."""
    hc = h - h.mean(0)
    eps0 = float(eps / (hc.T @ hc).diagonal().mean())
    h = h.clone().requires_grad_(True)
    r2 = future_info_reference(h, z, eps0)
    (grad,) = torch.autograd.grad(r2, h)
    return r2.detach(), grad


def test_shared_future_info_formulas_are_the_kernel_reference():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    z = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    eps = 0.05
    r2, m = formulas.future_info_r2(h, z, _torch_solve(eps))
    ref, grad = _reference_and_grad(h, z, eps)
    torch.testing.assert_close(r2, ref)
    torch.testing.assert_close(formulas.future_info_grad_h(h, z, m), grad)
    hs, zs = h - h[:1], z - z[:1]
    torch.testing.assert_close(formulas.folded_cross_moment(hs, zs), formulas.centre(h).T @ formulas.centre(z))


def test_future_info_spec_refutes_uncentred_backward_with_a_real_counterexample():
    result = penalty_algebra.future_info_spec(grad_h=uncentred_grad_h)
    assert result.status == REFUTED and result.claim == "backward = derivative of forward"
    cex = {k: float(v) for k, v in result.counterexample.items()}
    n, d, dz = penalty_algebra.N, penalty_algebra.D, penalty_algebra.DZ

    def mat(name, rows, cols):
        return torch.tensor([[cex[f"{name}[{i},{j}]"] for j in range(cols)] for i in range(rows)], dtype=torch.float64)

    h, z, direction = mat("H", n, d), mat("Z", n, dz), mat("dH", n, d)
    if float((formulas.centre(h) ** 2).sum()) == 0:
        pytest.skip("constant H: the kernel's ε would not be the counterexample's")
    _, grad = _reference_and_grad(h, z, cex["eps"])
    _, m = formulas.future_info_r2(h, z, _torch_solve(cex["eps"]))
    true_slope = float((grad * direction).sum())
    assert float((formulas.future_info_grad_h(h, z, m) * direction).sum()) == pytest.approx(true_slope)
    assert float((uncentred_grad_h(h, z, m) * direction).sum()) != pytest.approx(true_slope)


def test_too_little_time_is_unknown_not_proved():
    result = penalty_algebra.future_info_spec(timeout_ms=1)
    assert result.status == UNKNOWN and result.reason
    assert main(["prove", "--spec", "future_info", "--timeout-ms", "1"]) != 0


# -------------------------------------------------------------------------------------------- reach


def test_reach_spec_proves_the_formulas():
    assert_proved(penalty_algebra.reach_spec())


@pytest.mark.parametrize("broken", [
    lambda p, w, r: p * (r - w),  # wrong sign
    lambda p, w, r: p * w,  # the −r_i term left out
], ids=["wrong sign", "missing -r"])
def test_reach_spec_refutes_broken_backward(broken):
    result = penalty_algebra.reach_spec(grad_scores=broken)
    assert result.status == REFUTED and result.claim == "backward = derivative of forward"
    cex = result.counterexample
    e = torch.tensor([float(cex[f"exp(s)[0,{j}]"]) for j in range(penalty_algebra.ROW)], dtype=torch.float64)
    w = torch.tensor([float(cex[f"w[0,{j}]"]) for j in range(penalty_algebra.ROW)], dtype=torch.float64)
    ds = torch.tensor([float(cex[f"ds[0,{j}]"]) for j in range(penalty_algebra.ROW)], dtype=torch.float64)
    p = e / e.sum()
    r = (p * w).sum()
    assert float((broken(p, w, r) * ds).sum()) != pytest.approx(float((p * (w - r) * ds).sum()))


def test_shared_reach_formulas_are_the_kernel_reference():
    T, h = 6, 1.5
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(T, T, generator=gen, dtype=torch.float64)
    scores = scores.masked_fill(~attends(torch.arange(T)[:, None], torch.arange(T)[None, :]), float("-inf"))
    scores.requires_grad_(True)
    pattern = torch.softmax(scores, -1)
    pos = torch.arange(T, dtype=torch.float64)
    w = formulas.reach_weight(pos[:, None], pos[None, :], T, h, lambda x: x.clamp(min=0))
    torch.testing.assert_close(w, reach_weights(T, h, dtype=torch.float64))
    torch.testing.assert_close(formulas.softmax_from_exp(scores.exp()), pattern)
    reach = reach_from_pattern(pattern, h)
    r = formulas.reach_rows(pattern, w)
    torch.testing.assert_close(r.mean(), reach)
    (grad,) = torch.autograd.grad(reach, scores)
    torch.testing.assert_close(grad, formulas.reach_grad_scores(pattern, w, r).detach() / T)


# ---------------------------------------------------------------------------------------- isolation


def test_isolation_proved_for_the_myopic_model():
    assert_proved(isolation.spec())


def test_isolation_refuted_without_myopic_gradient():
    result = isolation.spec(models={"plain": isolation.build(myopic_gradient=False)})
    assert result.status == REFUTED
    cex = result.counterexample
    assert cex["model"] == "plain" and 0 <= cex["s"] < cex["t"] and cex["layer"] >= 0
    assert result.claims["plain: L_t reaches t"] == PROVED


# --------------------------------------------------------------------------------- runner and CLI


def test_contradictory_assumptions_are_not_a_proof():
    x = z3.Real("x")
    answer = check("anything", x > 5, [x > 1, x < 0], {"x": x})
    assert answer.status == UNKNOWN and "vacuous" in answer.reason


def test_runner_rejects_unknown_spec():
    with pytest.raises(ValueError, match="unknown spec"):
        runner.run(["nope"])


def test_prove_command_all_proved(capsys):
    assert main(["prove"]) == 0
    out = capsys.readouterr().out
    for name in runner.SPECS:
        assert any(line.split()[:2] == [name, PROVED] for line in out.splitlines()), out


def test_prove_json_parses(capsys):
    assert main(["prove", "--json", "--spec", "mask", "--spec", "reach"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["spec"] for r in data] == ["mask", "reach"] and all(r["status"] == PROVED for r in data)


def test_refuted_result_serializes_exact_values():
    result = penalty_algebra.reach_spec(grad_scores=lambda p, w, r: p * w)
    assert any(isinstance(v, Fraction) for v in result.counterexample.values())
    data = json.loads(json.dumps(result.to_dict()))
    assert data["status"] == REFUTED and all(Fraction(v) == result.counterexample[k]
                                              for k, v in data["counterexample"].items())


def test_isolation_covers_the_modular_model():
    result = isolation.spec(models={})
    assert_proved(result)
    assert any(name.startswith("modular:") for name in result.claims)


def test_isolation_refuted_when_the_policy_reads_the_objective():
    from constrained.models.modular import ModularModel

    class Leaky(ModularModel):  # the policy's loss sees the objective's score: a path the spec must find
        def loss_terms(self, batch):
            terms = super().loss_terms(batch)
            terms["task"] = terms["task"] + self.objective(batch["agent"], batch["goal"]).mean()
            return terms

    result = isolation.spec(models={}, modular=isolation.build_modular(Leaky))
    assert result.status == "refuted"
    assert result.claims["modular: policy loss has no path into the objective"] == "refuted"
    assert result.counterexample == {"term": "task"}


def test_a_policy_loss_cut_off_from_every_parameter_is_refuted_not_a_crash():
    from constrained.models.modular import ModularModel

    class Detached(ModularModel):  # the policy learns nothing: "each loss reaches its own part" must fail
        def loss_terms(self, batch):
            terms = super().loss_terms(batch)
            terms["task"] = terms["task"].detach()
            return terms

    result = isolation.spec(models={}, modular=isolation.build_modular(Detached))
    assert result.status == "refuted"
    assert result.claims["modular: each loss reaches its own part"] == "refuted"


def test_r2_bounds_are_refuted_for_a_forward_with_the_wrong_denominator(monkeypatch):
    def uncentred_total(h, z, solve):  # tr(ZᵀZ) instead of tr(ZcᵀZc): R² can exceed 1
        hc, zc = formulas.centre(h), formulas.centre(z)
        return formulas.ridge_r2(hc.mT @ hc, hc.mT @ zc, (z * z).sum(), solve)

    monkeypatch.setattr(formulas, "future_info_r2", uncentred_total)
    claims = {c.name: c for c in penalty_algebra.future_info_range(5000)}
    identities = [c for name, c in claims.items() if name.startswith("(1)")]
    assert len(identities) == 2 and all(c.status == "refuted" and c.counterexample for c in identities)
