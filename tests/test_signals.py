"""The signals future_info and the adversarial probe decode: future targets, residualized on the present one;
class targets one-hot."""

import pytest
import torch
import torch.nn.functional as F

from constrained.kernels.future_info import future_info
from constrained.tasks.signals import default_future_signal, future_targets, residualize


def test_residualized_signal_is_uncorrelated_with_current_target():
    g = torch.Generator().manual_seed(0)
    y_now = torch.randn(500, 2, generator=g) + 3.0
    z = y_now @ torch.randn(2, 4, generator=g) + 0.3 * torch.randn(500, 4, generator=g)
    z.requires_grad_()
    r = residualize(z, y_now)
    assert r.shape == z.shape and r.dtype == z.dtype and not r.requires_grad
    yc = y_now - y_now.mean(0)
    assert (yc.T @ r).abs().max() < 1e-4 * yc.norm() * r.norm()
    assert r.mean(0).abs().max() < 1e-5
    assert future_info(y_now, r, eps0=0.0).item() < 1e-8  # nothing left for y_now to decode
    assert future_info(y_now, z.detach(), eps0=0.0).item() > 0.5


def test_residualize_tolerates_constant_target_and_1d_target():
    z = torch.randn(30, 2)
    r = residualize(z, torch.full((30,), 4.0))
    torch.testing.assert_close(r, z - z.mean(0))


def test_future_targets_alignment():
    B, T, K = 2, 7, 3
    b, t = torch.meshgrid(torch.arange(B), torch.arange(T), indexing="ij")
    y = torch.stack([100.0 * b + t, -(100.0 * b + t)], dim=-1)  # (B, T, 2): y[b, t] = ±(100 b + t)
    out = future_targets(y, K)
    n = T - K
    assert out.z.shape == (B * n, (K - 1) * 2) and out.y_now.shape == (B * n, 2)
    assert out.rows.shape == (B, T) and out.rows.sum() == B * n and not out.rows[:, n:].any()
    h = 100.0 * b + t  # a "hidden state" that records its own (b, t)
    for i, (bb, tt) in enumerate(zip(b[out.rows], t[out.rows])):
        assert h[out.rows][i] == 100 * bb + tt
        assert out.y_now[i].tolist() == [100 * bb + tt, -(100 * bb + tt)]
        assert out.z[i].tolist() == [100 * bb + tt + 2, -(100 * bb + tt + 2), 100 * bb + tt + 3, -(100 * bb + tt + 3)]
    assert future_targets(y[..., 0], K).z.shape == (B * n, K - 1)  # (B, T) targets: d_y = 1
    with pytest.raises(ValueError, match="K must be >= 2"):
        future_targets(y, 1)
    with pytest.raises(ValueError, match="longer than K"):
        future_targets(y, T)


def test_class_targets_enter_the_default_signal_one_hot():
    """Class 3 is not "three times" class 1: the signal of integer targets is their one-hot vector, so relabelling
    the classes permutes its columns and leaves future_info unchanged."""
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 5, (16, 12), generator=g)
    scored = torch.ones(16, 12, dtype=torch.bool)
    rows, z = default_future_signal(targets, scored, future_k=3, n_classes=5)
    assert z.shape == (int(rows.sum()), 2 * 5)
    onehot = F.one_hot(targets, 5).float()
    rows2, z2 = default_future_signal(onehot, scored, future_k=3)
    assert torch.equal(rows, rows2)
    torch.testing.assert_close(z, z2)
    perm = torch.tensor([4, 2, 0, 1, 3])
    _, z_perm = default_future_signal(perm[targets], scored, future_k=3, n_classes=5)
    h = torch.randn(int(rows.sum()), 8, generator=g)
    torch.testing.assert_close(future_info(h, z), future_info(h, z_perm), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="n_classes"):
        default_future_signal(targets, scored, future_k=3)


def test_default_signal_keeps_only_fully_scored_positions():
    y = torch.randn(2, 8, 1)
    scored = torch.ones(2, 8, dtype=torch.bool)
    scored[0, 5] = False  # position 5 of sequence 0 is not scored: t = 5 - 2 and 5 - 3 drop out
    rows, z = default_future_signal(y, scored, future_k=3)
    assert rows[1, :5].all() and not rows[:, 5:].any()
    assert rows[0].tolist() == [True, True, False, False, True, False, False, False]
    assert z.shape == (int(rows.sum()), 2)
