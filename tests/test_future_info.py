"""future_info: Triton kernels (interpreted on CPU) against the PyTorch reference, invariants of the
ridge R², the closed-form gradients, the default future signal, input checks and dispatch."""

import os

# Triton decides interpreted vs compiled when triton and a kernel are imported; assignment
# rather than setdefault, so an exported TRITON_INTERPRET=0 cannot win. conftest.py sets it too.
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from constrained.kernels import future_info as fi  # noqa: E402
from tests.helpers import F64, future_info_and_grads, future_info_data  # noqa: E402


def _require_interpreter():
    if fi.triton is None:
        pytest.skip("triton is not installed")
    if not fi._interpreted():
        pytest.fail("the Triton kernels were compiled for a GPU: triton or constrained.kernels.future_info was "
                    "imported before TRITON_INTERPRET=1 was set (set it in conftest.py)")


@pytest.fixture
def _interpreted_kernels():
    _require_interpreter()


interpreted = pytest.mark.usefixtures("_interpreted_kernels")

# --------------------------------------------------------------------------------------------------
# Triton (interpreter) against the reference
# --------------------------------------------------------------------------------------------------

# (N, d, d_z): powers of two and not; N and d below, at and across the interpreter's blocks
# (BLOCK_N 32, BLOCK_D 16, up to 3 row chunks, so N = 200 gives chunks of 96, 96 and 8 rows);
# d <= 16 takes the one-tile path (each row loaded once), d = 33 and 40 the tile pairs.
SHAPES = [(13, 3, 2), (32, 16, 16), (70, 40, 5), (200, 5, 17), (100, 33, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}-d{}-dz{}".format(*s))
@pytest.mark.interpreter
@interpreted
def test_triton_matches_reference(shape, dtype):
    h, z = future_info_data(*shape, dtype=dtype)
    got = future_info_and_grads(h, z, "triton")
    want = future_info_and_grads(h, z, "reference")
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-10)
    for name, a, b in zip(("R²", "dH", "dZ"), got, want):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.interpreter
@interpreted
def test_triton_strided_and_batched_inputs():
    """Leading dims are flattened to rows, and the kernels follow strides instead of copying."""
    h, z = future_info_data(2 * 23, 20, 3)
    h_t = h.T.contiguous().T  # same values, column-major strides
    got = future_info_and_grads(h_t.view(2, 23, 20), z.view(2, 23, 3), "triton")
    want = future_info_and_grads(h, z, "reference")
    assert got[1].shape == (2, 23, 20) and got[2].shape == (2, 23, 3)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.reshape(b.shape), b, atol=1e-5, rtol=1e-5)


@pytest.mark.interpreter
@interpreted
def test_triton_fp16_is_close_to_reference():
    h, z = future_info_data(70, 40, 3, dtype=torch.float16)
    got = future_info_and_grads(h, z, "triton")
    want = future_info_and_grads(h, z, "reference")
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float16
    torch.testing.assert_close(got[0], want[0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(got[1].float(), want[1].float(), atol=1e-4, rtol=1e-2)


@pytest.mark.interpreter
@interpreted
def test_triton_gradcheck_fp64():
    # eps0 = 0: the gradient holds ε constant, so only then is it the exact derivative gradcheck measures.
    h, z = future_info_data(13, 3, 2, dtype=F64)
    h.requires_grad_()
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fi.FutureInfo.apply(a, b, 0.0), (h, z), fast_mode=True)


@pytest.mark.interpreter
@interpreted
def test_triton_computes_only_the_gradients_asked_for():
    h, z = future_info_data(20, 6, 2)
    h.requires_grad_()
    (dh,) = torch.autograd.grad(fi.future_info(h, z, backend="triton"), [h])
    assert dh.shape == h.shape and z.grad is None
    h2 = h.detach()
    z2 = z.clone().requires_grad_()
    (dz,) = torch.autograd.grad(fi.future_info(h2, z2, backend="triton"), [z2])
    torch.testing.assert_close(dz, future_info_and_grads(h2, z2, "reference")[2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=pytest.mark.interpreter),
                                     "reference"])
def test_constant_signal_or_states_give_zero_not_nan(backend):
    if backend == "triton":
        _require_interpreter()
    h, _ = future_info_data(20, 4, 1)
    h.requires_grad_()
    z_const = torch.full((20, 2), 3.7)
    r2 = fi.future_info(h, z_const, backend=backend)
    (dh,) = torch.autograd.grad(r2, [h])
    assert r2.item() == 0.0 and torch.all(dh == 0)
    assert fi.future_info(torch.full((20, 4), 2.3), torch.randn(20, 2), backend=backend).item() == 0.0


@pytest.mark.interpreter
@interpreted
def test_triton_invariants_fp64():
    h, z = future_info_data(50, 6, 3, dtype=F64)
    r2 = fi.future_info(h, z, backend="triton").item()
    assert 0.0 < r2 < 1.0
    shifted = fi.future_info(h + torch.randn(6, dtype=F64) * 100, 3.0 * z - 7.0, backend="triton").item()
    assert shifted == pytest.approx(r2, rel=1e-9)


# --------------------------------------------------------------------------------------------------
# Invariants of the ridge R² (reference path)
# --------------------------------------------------------------------------------------------------


def test_reference_gradcheck_fp64():
    h, z = future_info_data(13, 3, 2, dtype=F64)
    h.requires_grad_()
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fi.future_info_reference(a, b, 0.0), (h, z))


@pytest.mark.parametrize("seed", range(4))
def test_r2_lies_in_unit_interval(seed):
    for n, d, dz, signal in [(10, 8, 3, 0.0), (40, 5, 2, 2.0), (300, 30, 4, 0.3), (6, 20, 2, 1.0)]:
        h, z = future_info_data(n, d, dz, seed=seed, signal=signal)
        r2 = fi.future_info(h, z).item()
        assert 0.0 <= r2 <= 1.0 + 1e-6


def test_invariant_under_invertible_map_of_h():
    h, z = future_info_data(60, 5, 3, dtype=F64)
    a = torch.randn(5, 5, dtype=F64, generator=torch.Generator().manual_seed(1)) + 3 * torch.eye(5, dtype=F64)
    r2 = fi.future_info(h, z, eps0=1e-10).item()
    assert fi.future_info(h @ a, z, eps0=1e-10).item() == pytest.approx(r2, rel=1e-7)


def test_invariant_under_scaling_z_and_shifting_rows():
    h, z = future_info_data(60, 5, 3, dtype=F64)
    r2 = fi.future_info(h, z).item()
    assert fi.future_info(h, -2.5 * z).item() == pytest.approx(r2, rel=1e-10)
    assert fi.future_info(h + torch.arange(5.0, dtype=F64), z).item() == pytest.approx(r2, rel=1e-10)
    assert fi.future_info(h, z - torch.tensor([1e3, 2.0, -5.0], dtype=F64)).item() == pytest.approx(r2, rel=1e-10)


def test_linear_function_of_h_is_fully_decodable():
    h, _ = future_info_data(80, 6, 1, dtype=F64)
    z = h @ torch.randn(6, 4, dtype=F64) + 1.5
    assert fi.future_info(h, z, eps0=1e-10).item() == pytest.approx(1.0, abs=1e-6)
    assert fi.future_info(h.float(), z.float(), eps0=1e-3).item() > 0.99  # the ridge costs a little


def test_independent_signal_decays_like_d_over_n():
    d, means = 5, {}
    for n in (50, 2000):
        draws = [fi.future_info(*future_info_data(n, d, 1, seed=s, signal=0.0), eps0=1e-6).item() for s in range(8)]
        means[n] = sum(draws) / len(draws)
        assert 0.3 * d / n < means[n] < 3 * d / n  # E[R²] = d / (N − 1) for independent Gaussian z
    assert means[2000] < means[50]


def test_closed_form_gradient_matches_autograd():
    h, z = future_info_data(40, 6, 3, dtype=F64)
    eps0 = 1e-2
    r2, dh, dz = future_info_and_grads(h, z, "reference", eps0=eps0)
    hc, zc = h - h.mean(0), z - z.mean(0)
    eps = eps0 * (hc.T @ hc).diagonal().mean()
    m = torch.linalg.solve(hc.T @ hc + eps * torch.eye(6, dtype=F64), hc.T @ zc)
    t = (zc * zc).sum()
    torch.testing.assert_close(dh, 2 * (zc - hc @ m) @ m.T / t)
    torch.testing.assert_close(dz, 2 * (hc @ m - r2 * zc) / t)


# --------------------------------------------------------------------------------------------------
# Bad input and dispatch
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h, z, kw, match", [
    (torch.randn(10, 3), torch.randn(9, 2), {}, r"same rows.*N = 10.*N = 9"),
    (torch.randn(1, 3), torch.randn(1, 2), {}, "N >= 2"),
    (torch.randn(10, 3), torch.randn(10, 2), {"eps0": -1e-3}, "eps0 must be"),
    (torch.randn(10, 3), torch.randn(10, 2), {"eps0": float("nan")}, "eps0 must be"),
    (torch.randn(10), torch.randn(10, 2), {}, "h must have shape"),
    (torch.randn(10, 3), torch.randn(10, 0), {}, "z has no feature columns"),
    (torch.randn(10, 3), torch.randint(0, 3, (10, 2)), {}, "z must be floating point"),
    (torch.randn(10, 3), torch.randn(10, 2), {"backend": "cuda"}, "backend must be one of"),
    (torch.randn(10, 3).index_fill_(0, torch.tensor([4]), float("nan")), torch.randn(10, 2), {}, "h contains NaN"),
    (torch.randn(10, 3), torch.randn(10, 2).index_fill_(0, torch.tensor([0]), float("inf")), {}, "z contains NaN"),
])
def test_bad_input_raises_naming_the_problem(h, z, kw, match):
    with pytest.raises(ValueError, match=match):
        fi.future_info(h, z, **kw)


def test_auto_never_runs_triton_on_cpu(monkeypatch):
    def refuse(*args):
        raise AssertionError("FutureInfo (Triton) must not run for CPU tensors under backend='auto'")

    monkeypatch.setattr(fi.FutureInfo, "apply", refuse)
    h, z = future_info_data(30, 4, 2)
    assert fi.future_info(h, z).item() == fi.future_info_reference(h, z).item()
    if fi._interpreted():
        with pytest.raises(AssertionError, match="must not run"):
            fi.future_info(h, z, backend="triton")  # forcing it does reach the Triton path
