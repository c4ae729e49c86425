"""The penalty formulas, stated once for torch tensors and for the specs' symbolic matrices.

Each function uses only + − × /, @, .mT, .sum and .mean, so it runs on torch tensors and on
`algebra.Mat` of z3 terms or dual numbers. The specs in penalty_algebra.py evaluate these very
functions, and the kernels' PyTorch references (kernels/future_info.py: centring and R²;
kernels/attention.py: reach weights and rows) compute through them; tests/test_proofs.py checks the
analytic backwards against autograd of those references. The Triton kernels restate the same
arithmetic in their own language; tests compare them with the references.
"""

from __future__ import annotations


def centre(x):
    """Columns minus their mean over the rows (N, k) -> (N, k)."""
    return x - x.mean(0, keepdim=True)


def folded_cross_moment(hs, zs):
    """Hsᵀ Zs − N μ_Hs μ_Zsᵀ: the centred cross moment from plain sums, as the stats kernel folds it
    (one pass, no centred copy; the rows are first shifted by row 0, which centring cancels)."""
    n = hs.shape[0]
    return hs.mT @ zs - n * (hs.mean(0, keepdim=True).mT @ zs.mean(0, keepdim=True))


def ridge_r2(chh, chz, tzz, solve):
    """(R², M) from the centred moments: M = (Chh + εI)⁻¹ Chz, R² = tr(Chzᵀ M) / tzz.

    solve(chh, chz) returns (chh + εI)⁻¹ chz: the caller owns ε and how the system is solved
    (torch.linalg.solve, or a symbolic inverse in the spec).
    """
    m = solve(chh, chz)
    return (chz * m).sum() / tzz, m


def future_info_r2(h, z, solve):
    """(R², M) of the ridge fit of Z (N, d_z) from H (N, d), columns centred: the forward."""
    hc, zc = centre(h), centre(z)
    return ridge_r2(hc.mT @ hc, hc.mT @ zc, (zc * zc).sum(), solve)


def future_info_grad_h(h, z, m):
    """The analytic backward ∂R²/∂H = 2 (Zc − Hc M) Mᵀ / tr(ZcᵀZc), ε held constant."""
    hc, zc = centre(h), centre(z)
    return 2 * (zc - hc @ m) @ m.mT / (zc * zc).sum()


def softmax_from_exp(e):
    """Rows of e = exp(scores) (T, T) normalised to attention patterns."""
    return e / e.sum(-1, keepdim=True)


def reach_rows(pattern, w):
    """Per-row reach r_i = Σ_j A_ij w_ij (T, T) -> (T, 1)."""
    return (pattern * w).sum(-1, keepdim=True)


def reach_grad_scores(pattern, w, r):
    """The analytic backward ∂r_i/∂s_ij = A_ij (w_ij − r_i), r (T, 1) as from reach_rows."""
    return pattern * (w - r)


def reach_weight(i, j, T, h, relu):
    """w_ij = max(0, i − j − h) / T: attention beyond the soft horizon h, weighted by excess distance.
    relu is max(·, 0) for the caller's type (tensor.clamp(min=0), or z3 If)."""
    return relu(i - j - h) / T
