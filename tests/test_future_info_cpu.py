"""future_info's CPU path (kernels/future_info.py `FutureInfoTorch`: the reference's forward, the closed-form
backward) against autograd through the reference."""

import pytest
import torch

from constrained.kernels import future_info as fi
from tests.helpers import F64, future_info_and_grads, future_info_data


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("shape", [(13, 3, 2), (70, 40, 5), (200, 5, 17), (30, 64, 1)],
                         ids=lambda s: "N{}-d{}-dz{}".format(*s))
def test_torch_path_equals_the_reference(shape, dtype):
    """The same value bit for bit (the same ops), and both gradients to the dtype's precision."""
    h, z = future_info_data(*shape, dtype=dtype)
    r2, dh, dz = future_info_and_grads(h, z, "torch")
    ref_r2, ref_dh, ref_dz = future_info_and_grads(h, z, "reference")
    assert r2.item() == ref_r2.item()
    tol = 1e-12 if dtype == F64 else 2e-5
    torch.testing.assert_close(dh, ref_dh, atol=tol, rtol=tol)
    torch.testing.assert_close(dz, ref_dz, atol=tol, rtol=tol)


def test_torch_path_gradcheck_fp64():
    # eps0 = 0: the gradient holds ε constant, so only then is it the exact derivative gradcheck measures.
    h, z = future_info_data(13, 3, 2, dtype=F64)
    h.requires_grad_()
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fi.FutureInfoTorch.apply(a, b, 0.0), (h, z))


def test_torch_path_on_rows_of_a_batch_and_constant_inputs():
    """As the penalty calls it: h[rows] of a (B, T, d) state; a constant z or h gives 0 and a zero gradient."""
    states = torch.randn(4, 9, 6, requires_grad=True)
    rows = torch.zeros(4, 9, dtype=torch.bool)
    rows[:, :5] = True
    z = torch.randn(20, 3)
    (got,) = torch.autograd.grad(fi.future_info(states[rows], z, backend="torch"), [states])
    (ref,) = torch.autograd.grad(fi.future_info(states[rows], z, backend="reference"), [states])
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=2e-5)
    assert torch.all(got[:, 5:] == 0)
    h = torch.randn(20, 4, requires_grad=True)
    r2 = fi.future_info(h, torch.full((20, 2), 3.7), backend="torch")
    (dh,) = torch.autograd.grad(r2, [h])
    assert r2.item() == 0.0 and torch.all(dh == 0)
    assert fi.future_info(torch.full((20, 4), 2.3), torch.randn(20, 2), backend="torch").item() == 0.0


def test_auto_takes_the_torch_path_on_cpu(monkeypatch):
    calls = []
    apply = fi.FutureInfoTorch.apply
    monkeypatch.setattr(fi.FutureInfoTorch, "apply", lambda *a: calls.append(a) or apply(*a))
    h, z = future_info_data(30, 4, 2)
    fi.future_info(h, z)
    assert len(calls) == 1


def test_torch_path_wide_signal_gradient():
    """d_z > d takes the cheaper product order for dH; it is the same gradient, also when the fit is good."""
    h, z = future_info_data(300, 6, 40, dtype=F64, signal=3.0)
    for dtype, tol in ((F64, 1e-12), (torch.float32, 1e-4)):
        _, dh, dz = future_info_and_grads(h.to(dtype), z.to(dtype), "torch")
        _, ref_dh, ref_dz = future_info_and_grads(h.to(dtype), z.to(dtype), "reference")
        torch.testing.assert_close(dh, ref_dh, atol=tol * ref_dh.abs().max().item(), rtol=tol)
        torch.testing.assert_close(dz, ref_dz, atol=tol * ref_dz.abs().max().item(), rtol=tol)
