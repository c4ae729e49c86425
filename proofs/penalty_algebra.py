"""Specs: each penalty kernel's analytic backward is the derivative of its forward, and each penalty
stays in its range — over symbolic reals, for small fixed sizes.

The forwards and backwards are the shared formulas in formulas.py, evaluated on matrices of z3
terms. z3 does not differentiate: the forward is evaluated on dual numbers (value, derivative
along a free symbolic direction), which gives its directional derivative as an exact expression,
and z3 proves it equal to the inner product of the analytic gradient with that direction. Since
the direction is arbitrary, that is equality of the full gradients. Divisions become
multiplications by reciprocals (algebra.without_division), so each claim holds wherever the
formula's denominators are nonzero.

future_info (R² of the ridge fit of Z from H, columns centred; ε a free symbol > 0, held constant):
- backward: ∂R²/∂H = 2 (Zc − Hc M) Mᵀ / tr(ZcᵀZc) for N = 3 rows, d = 2, d_z = 2. The inverse
  A = (HcᵀHc + εI)⁻¹ is a free matrix constrained by A (HcᵀHc + εI) = I, differentiated as
  dA = −A dS A (S = HcᵀHc + εI).
- range: 0 ≤ R² ≤ 1 for N = 4, d = 3, d_z = 2, with M any solution of the normal equations
  (HcᵀHc + εI) M = HcᵀZc, which is what the kernel's solve returns. Asked directly, z3 answers unknown
  (already at d = 2, after 30 s): the bound needs a sum-of-squares argument. So the spec proves the
  steps and joins them by substitution:
  (1) tzz (1 − R²) + κ = ‖Zc − Hc M‖² + ε‖M‖² and tzz R² + κ = ‖Hc M‖² + ε‖M‖², with
      κ = tr(Mᵀ((HcᵀHc + εI) M − HcᵀZc)): polynomial identities, no assumption but tzz > 0;
  (2) κ = 0 where M solves the normal equations;
  (3) Σ rᵢ² + e Σ qⱼ² ≥ 0 for any reals and e > 0, so both right-hand sides of (1) are ≥ 0;
  (4) for reals T > 0, K = 0, P ≥ 0: T (1 − R) + K = P gives R ≤ 1, and T R + K = P gives R ≥ 0.
  R² = 0 exactly when HcᵀZc = 0 is asked directly, for N = 3, d = d_z = 1 (unknown with d = 2).
- folded centring, as the stats kernel computes it: (H − h₀)ᵀ(Z − z₀) − N μ μᵀ = HcᵀZc, N = 3,
  d = d_z = 2 (h₀, z₀ the first rows; μ the column means of the shifted rows).

reach (per query row: r = Σ_j A_j w_j, A = softmax(s); one row of T = 4 keys):
- backward: ∂r/∂s_j = A_j (w_j − r). Softmax is written with e_j = exp(s_j) ≥ 0 (0 for a masked
  key) and de_j = e_j ds_j, the derivative of exp; weights w_j are free reals.
- the pattern is a distribution; r ≥ 0 for any distribution and weights ≥ 0; r = 0 when every
  weight is 0.
- the weights w_ij = max(0, i − j − h) / T, for all integers i, j, T ≥ 1 and reals h ≥ 0: w ≥ 0;
  w = 0 exactly when i − j ≤ h; and when h ≥ T − 1 (so when h ≥ T) every weight of a causal row
  is 0, hence the reach of every pattern is 0.
"""

from __future__ import annotations

import time

import z3

from constrained.common import formulas
from constrained.proofs.algebra import Mat, derivatives, duals, equal, values, without_division
from constrained.proofs.result import DEFAULT_TIMEOUT_MS, Result, check, combine

N, D, DZ = 3, 2, 2  # sizes of the future_info backward claim
RANGE_N, RANGE_D, RANGE_DZ = 4, 3, 2  # sizes of the R² bounds
ZERO_N, ZERO_D = 3, 1  # sizes of "R² = 0 exactly when uncorrelated" (d = 2 times out)
ROW = 4  # keys in the reach row


def _polynomial(claim, given):
    """(claim, given) with divisions turned into reciprocals: the facts about them join `given`."""
    claim, facts = without_division(claim)
    given, more = zip(*(without_division(g) for g in given)) if given else ((), ())
    return claim, [*given, *facts, *(f for fs in more for f in fs)]


def _check(name, claim, given, named, timeout_ms):
    claim, given = _polynomial(claim, given)
    return check(name, claim, given, named, timeout_ms)


def _ridge(n: int, d: int, dz: int):
    """Symbolic H, Z, ε, A with the facts ε > 0 and A (HcᵀHc + εI) = I."""
    h, z, a = Mat.symbols("H", n, d), Mat.symbols("Z", n, dz), Mat.symbols("A", d, d)
    eps = z3.Real("eps")
    hc = formulas.centre(h)
    s = hc.mT @ hc + Mat.identity(d) * eps
    return h, z, eps, a, [eps > 0, equal(a @ s, Mat.identity(d))]


def future_info_backward(timeout_ms: int, grad_h=formulas.future_info_grad_h):
    h, z, eps, a, given = _ridge(N, D, DZ)
    direction = Mat.symbols("dH", N, D)

    def solve(chh, chz):
        # (S⁻¹ B)' = S⁻¹ B' − S⁻¹ S' S⁻¹ B: the dual of the solve, ε constant so S' = chh'
        b = values(chz)
        return duals(a @ b, a @ derivatives(chz) - a @ derivatives(chh) @ a @ b)

    r2, m = formulas.future_info_r2(duals(h, direction), duals(z), solve)
    analytic = (grad_h(h, z, values(m)) * direction).sum()
    named = {**h.named("H"), **z.named("Z"), **direction.named("dH"), "eps": eps}
    return _check("backward = derivative of forward", r2.der == analytic, given, named, timeout_ms)


def future_info_range(timeout_ms: int):
    h, z = Mat.symbols("H", RANGE_N, RANGE_D), Mat.symbols("Z", RANGE_N, RANGE_DZ)
    m = Mat.symbols("M", RANGE_D, RANGE_DZ)
    eps = z3.Real("eps")
    r2, _ = formulas.future_info_r2(h, z, lambda chh, chz: m)  # M: any solution of the normal equations
    hc, zc = formulas.centre(h), formulas.centre(z)
    chz, tzz = hc.mT @ zc, (zc * zc).sum()
    normal = (hc.mT @ hc + Mat.identity(RANGE_D) * eps) @ m - chz  # (d, d_z), zero at the ridge solution
    kappa = (m * normal).sum()
    residual, fitted = zc - hc @ m, hc @ m
    upper = (residual * residual).sum() + eps * (m * m).sum()
    lower = (fitted * fitted).sum() + eps * (m * m).sum()
    named = {**h.named("H"), **z.named("Z"), **m.named("M"), "eps": eps}
    rs = z3.Reals(" ".join(f"r{i}" for i in range(RANGE_N * RANGE_DZ)))
    qs = z3.Reals(" ".join(f"q{i}" for i in range(RANGE_D * RANGE_DZ)))
    T, R, K, P, e = z3.Reals("T R K P e")
    steps = {"T": T, "R": R, "K": K, "P": P}
    return [
        _check("(1) tzz (1 − R²) + κ = ‖Zc − Hc M‖² + ε‖M‖²", tzz * (1 - r2) + kappa == upper, [tzz > 0], named,
               timeout_ms),
        _check("(1) tzz R² + κ = ‖Hc M‖² + ε‖M‖²", tzz * r2 + kappa == lower, [tzz > 0], named, timeout_ms),
        _check("(2) κ = 0 at the ridge solution", kappa == 0, [eps > 0, equal(normal, normal * 0)], named,
               timeout_ms),
        _check("(3) Σ r² + e Σ q² >= 0", sum(r * r for r in rs) + e * sum(q * q for q in qs) >= 0, [e > 0],
               {"e": e}, timeout_ms),
        _check("(4) R² <= 1", R <= 1, [T > 0, K == 0, P >= 0, T * (1 - R) + K == P], steps, timeout_ms),
        _check("(4) R² >= 0", R >= 0, [T > 0, K == 0, P >= 0, T * R + K == P], steps, timeout_ms),
        future_info_zero(timeout_ms),
    ]


def future_info_zero(timeout_ms: int):
    h, z, eps, a, given = _ridge(ZERO_N, ZERO_D, 1)
    r2, _ = formulas.future_info_r2(h, z, lambda chh, chz: a @ chz)
    chz = formulas.centre(h).mT @ formulas.centre(z)
    named = {**h.named("H"), **z.named("Z"), "eps": eps}
    uncorrelated = z3.And([x == 0 for x in chz.entries()])
    return _check("R² = 0 exactly when HcᵀZc = 0", (r2 == 0) == uncorrelated, given, named, timeout_ms)


def folded_centring(timeout_ms: int):
    h, z = Mat.symbols("H", 3, 2), Mat.symbols("Z", 3, 2)
    folded = formulas.folded_cross_moment(h - h[:1], z - z[:1])
    centred = formulas.centre(h).mT @ formulas.centre(z)
    named = {**h.named("H"), **z.named("Z")}
    return check("folded centring = HcᵀZc", equal(folded, centred), [], named, timeout_ms)


def future_info_spec(timeout_ms: int = DEFAULT_TIMEOUT_MS, grad_h=formulas.future_info_grad_h) -> Result:
    """future_info: backward, range, folded centring. grad_h: the backward under test."""
    started = time.perf_counter()
    answers = [future_info_backward(timeout_ms, grad_h), *future_info_range(timeout_ms), folded_centring(timeout_ms)]
    return combine("future_info", answers, started)


def _relu(x):
    return z3.If(x > 0, x, 0)


def reach_backward(timeout_ms: int, grad_scores=formulas.reach_grad_scores):
    e, ds, w = Mat.symbols("e", 1, ROW), Mat.symbols("ds", 1, ROW), Mat.symbols("w", 1, ROW)
    pattern = formulas.softmax_from_exp(duals(e, e * ds))  # d exp(s) = exp(s) ds
    r = formulas.reach_rows(pattern, w)
    analytic = (grad_scores(values(pattern), w, values(r)) * ds).sum()
    given = [x >= 0 for x in e.entries()]  # the sum is nonzero by without_division's facts
    named = {**e.named("exp(s)"), **ds.named("ds"), **w.named("w")}
    return _check("backward = derivative of forward", r.rows[0][0].der == analytic, given, named, timeout_ms)


def reach_range(timeout_ms: int):
    e, p, w = Mat.symbols("e", 1, ROW), Mat.symbols("A", 1, ROW), Mat.symbols("w", 1, ROW)
    pattern = formulas.softmax_from_exp(e)
    distribution = [*(x >= 0 for x in p.entries()), p.sum() == 1]
    r = formulas.reach_rows(p, w).rows[0][0]
    named = {**p.named("A"), **w.named("w")}
    return [
        _check("softmax pattern is a distribution",
               z3.And(*(x >= 0 for x in pattern.entries()), pattern.sum() == 1),
               [x >= 0 for x in e.entries()], e.named("exp(s)"), timeout_ms),
        _check("reach >= 0 for weights >= 0", r >= 0,
               [*distribution, *(x >= 0 for x in w.entries())], named, timeout_ms),
        _check("reach = 0 for zero weights", formulas.reach_rows(p, Mat([[0] * ROW])).rows[0][0] == 0,
               distribution, named, timeout_ms),
    ]


def reach_weights(timeout_ms: int):
    i, T = z3.Ints("i T")
    h = z3.Real("h")
    js = z3.Ints(" ".join(f"j{k}" for k in range(ROW)))
    p = Mat.symbols("A", 1, ROW)
    w = formulas.reach_weight(i, js[0], T, h, _relu)
    given = [T >= 1, h >= 0]
    named = {"i": i, "j": js[0], "T": T, "h": h}
    row = Mat([[formulas.reach_weight(i, j, T, h, _relu) for j in js]])
    causal_row = [0 <= i, i < T, *(z3.And(0 <= j, j <= i) for j in js)]
    distribution = [*(x >= 0 for x in p.entries()), p.sum() == 1]
    return [
        _check("weights >= 0", w >= 0, given, named, timeout_ms),
        _check("weight = 0 exactly within the soft horizon", (w == 0) == (i - js[0] <= h), given, named, timeout_ms),
        _check("h >= T - 1: reach of every causal row = 0", formulas.reach_rows(p, row).rows[0][0] == 0,
               [*given, h >= T - 1, *causal_row, *distribution],
               {"i": i, **{f"j{k}": j for k, j in enumerate(js)}, "T": T, "h": h, **p.named("A")}, timeout_ms),
    ]


def reach_spec(timeout_ms: int = DEFAULT_TIMEOUT_MS, grad_scores=formulas.reach_grad_scores) -> Result:
    """reach: backward, range, weights. grad_scores: the backward under test."""
    started = time.perf_counter()
    answers = [reach_backward(timeout_ms, grad_scores), *reach_range(timeout_ms), *reach_weights(timeout_ms)]
    return combine("reach", answers, started)
