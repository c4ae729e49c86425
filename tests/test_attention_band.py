"""The CPU path's horizon in blocks and reach without the pattern (kernels/band.py, kernels/flash_cpu.py) against
the PyTorch reference: values and gradients in fp64, with and without myopic descent (both forms) and query
tokens; the plain path's causal flag; the layouts themselves."""

import itertools

import pytest
import torch

import constrained.kernels.band as band_lib
import constrained.kernels.flash_cpu as flash_lib
from constrained.kernels.attention import attention, attention_reference
from constrained.kernels.band import Band, band_size
from constrained.kernels.reach_band import reach_band_shape

FORMS = [None, "kv", "input"]


def run(backend, leaf, form, weight=3.0, **options):
    """out, reach and the gradient of one (B, T, 3, H, Dh) qkv leaf; the input form's past keys and values are
    the same numbers from their own graph."""
    q, k, v = leaf.permute(2, 0, 3, 1, 4)
    past = None if form != "input" else (k * 1.0, v * 1.0)
    out, reach = attention(q, k, v, backend=backend, myopic=form is not None, past=past, **options)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * weights).sum() + (0.0 if reach is None else weight * reach)
    (grad,) = torch.autograd.grad(loss, leaf)
    return out, reach, grad


def assert_matches_reference(T, form, dtype=torch.float64, tol=1e-12, **options):
    leaf = torch.randn(2, T, 3, 2, 5, dtype=dtype, requires_grad=True)
    fused = run("sdpa", leaf, form, **options)
    reference = run("reference", leaf, form, **options)
    for name, a, b in zip(("out", "reach", "grad"), fused, reference):
        if b is None:
            assert a is None, name
        else:
            torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=f"{name}: T={T} {form} {options}")


def queries(T):
    return torch.arange(T) % 3 == 1


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("T, horizon", [(64, 16), (70, 3), (70, 17), (96, 24)])
def test_horizon_in_blocks_equals_the_reference(one_thread, T, horizon, form):
    """T >= 4 blocks: the blocked layout (T = 70 pads the last block; horizon 17 fills a block of 17)."""
    assert band_size(T, horizon) is not None
    assert_matches_reference(T, form, horizon=horizon)
    assert_matches_reference(T, form, horizon=horizon, is_query=queries(T))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("T, reach_h", [(1, 2.0), (2, 0.0), (11, 2.5), (11, 3.0), (40, 9.0), (64, 16.0), (70, 16.0),
                                        (96, 20.0), (70, 33.5)])
def test_reach_without_the_pattern_equals_the_reference(one_thread, T, reach_h, form):
    """Blocks of ceil(h) with one block before them (h <= 16), and blocks of 16 or more with two (20, 33.5)."""
    assert_matches_reference(T, form, reach_h=reach_h)
    assert_matches_reference(T, form, reach_h=reach_h, is_query=queries(T))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("T, horizon, reach_h", [(11, 4, 2.0), (70, 5, 2.5), (70, 16, 20.0), (80, 20, 3.0)])
def test_reach_with_a_horizon_equals_the_reference(one_thread, T, horizon, reach_h, form):
    """Reach inside a horizon (zero beyond it) and beyond it, dense and in blocks."""
    assert_matches_reference(T, form, horizon=horizon, reach_h=reach_h, is_query=queries(T))


def test_reach_alone_is_differentiated(one_thread):
    """The loss reads reach only: the output's gradient is zero, the reach terms carry everything."""
    leaf = torch.randn(1, 40, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    for form in FORMS:
        q, k, v = leaf.permute(2, 0, 3, 1, 4)
        grads = []
        for backend in ("sdpa", "reference"):
            reach = attention(q, k, v, backend=backend, myopic=form is not None, reach_h=4.0, horizon=30)[1]
            grads.append(torch.autograd.grad(reach, leaf)[0])
        torch.testing.assert_close(grads[0], grads[1], atol=1e-13, rtol=1e-12)


def test_fp32_is_close_to_the_reference(one_thread):
    """fp32 at a longer context: the position column carries E_i up to T, so rounding grows with T, not more."""
    cases = ({"horizon": 32}, {"reach_h": 32.0}, {"reach_h": 8.0, "horizon": 64})
    for form, options in itertools.product(FORMS, cases):
        assert_matches_reference(256, form, dtype=torch.float32, tol=2e-5, **options)


def test_non_myopic_paths_pass_gradcheck():
    """Without myopic the backward is the forward's derivative, reach included, dense and in blocks."""
    is_query = torch.arange(70) % 5 == 2
    for T, options in ((9, {"reach_h": 2.0, "horizon": 4}), (70, {"horizon": 3, "is_query": is_query[:70]}),
                       (70, {"reach_h": 3.5, "horizon": 16})):
        q, k, v = (torch.randn(1, 1, T, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))

        def f(q, k, v, options=options):
            out, reach = attention(q, k, v, backend="sdpa", **options)
            return out if reach is None else (out, reach)

        assert torch.autograd.gradcheck(f, (q, k, v))


def test_a_horizon_is_computed_in_blocks_of_the_horizon(monkeypatch):
    """Long contexts take `Band` (each block against its own and the previous block of keys), short ones all keys."""
    built = []
    monkeypatch.setattr(flash_lib, "Band", lambda *a: built.append(a[2]) or Band(*a))
    q, k, v = (torch.randn(1, 2, 128, 4) for _ in range(3))
    attention(q, k, v, horizon=32)
    assert built == [32]
    attention(q[:, :, :100], k[:, :, :100], v[:, :, :100], horizon=32)
    assert built == [32]
    assert band_size(64, 8) == 16 and band_size(63, 8) is None and band_size(1024, 32) == 32
    assert reach_band_shape(8.0) == (8, 1) and reach_band_shape(32.0) == (16, 2) and reach_band_shape(33.5) == (17, 2)


def test_band_layout_round_trips_and_folds():
    """queries -> rows is the identity; fold is the adjoint of keys (each key row read by two blocks) where the
    mask lets a gradient through: not in the previous block of a batch's first block."""
    B, H, T, D, size = 2, 3, 13, 4, 4
    band = Band(B, T, size, size, None, torch.device("cpu"), torch.float64)
    x = torch.randn(B, H, T, D, dtype=torch.float64)
    torch.testing.assert_close(band.rows(band.queries(x)), x, atol=0, rtol=0)
    g = torch.randn(B * band.nb, H, 2 * size, D, dtype=torch.float64)
    g.view(B, band.nb, H, 2 * size, D)[:, 0, :, :size] = 0
    keys = band.keys(x)
    assert keys.shape == g.shape
    torch.testing.assert_close((keys * g).sum(), (x * band.fold(g)).sum())  # <keys(x), g> = <x, fold(g)>


def test_plain_path_is_the_causal_flag(monkeypatch):
    """No option: scaled_dot_product_attention with is_causal=True, no mask matrix."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    q, k, v = (torch.randn(1, 2, 9, 4, dtype=torch.float64) for _ in range(3))
    out, _ = attention(q, k, v)
    assert seen == [{"is_causal": True}]
    torch.testing.assert_close(out, attention_reference(q, k, v)[0], atol=1e-12, rtol=1e-12)


def test_masks_are_cached():
    device = torch.device("cpu")
    a = Band(2, 64, 16, 16, None, device, torch.float32).mask
    assert Band(2, 64, 16, 16, None, device, torch.float32).mask is a
    assert band_lib.options_mask(8, 3, None, device) is band_lib.options_mask(8, 3, None, device)
