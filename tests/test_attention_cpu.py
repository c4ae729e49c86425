"""The attention kernel's CPU path without the pattern (kernels/attention.py: `attention_sdpa`, kernels/flash_cpu.py:
`FlashCPU`) against the PyTorch reference, and the dispatch that chooses it. The horizon's blocks and reach:
tests/test_attention_band.py."""

import pytest
import torch

import constrained.kernels.attention as K
from constrained.kernels.attention import attention, attention_reference
from constrained.kernels.flash_cpu import FlashCPU
from tests.helpers import tiny

CASES = {
    "horizon": {"horizon": 3},
    "queries": {"is_query": True},
    "myopic": {"myopic": True},
    "myopic+horizon": {"myopic": True, "horizon": 4},
    "myopic+horizon+queries": {"myopic": True, "horizon": 5, "is_query": True},
}


def strided_qkv(B=2, H=2, T=11, Dh=6, dtype=torch.float64):
    """q, k, v as the model makes them: strided views of one (B, T, 3, H, Dh) leaf."""
    leaf = torch.randn(B, T, 3, H, Dh, dtype=dtype, requires_grad=True)
    return leaf, *leaf.permute(2, 0, 3, 1, 4)


def out_and_grad(backend, leaf, q, k, v, **options):
    out, reach = attention(q, k, v, backend=backend, **options)
    assert reach is None
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), leaf)
    return out, grad


def options_for(case: str, T: int) -> dict:
    options = dict(CASES[case])
    if options.pop("is_query", False):
        options["is_query"] = torch.arange(T) % 3 == 1
    return options


@pytest.mark.parametrize("T", [1, 2, 11])
@pytest.mark.parametrize("case", list(CASES))
def test_sdpa_path_equals_the_reference_in_fp64(case, T):
    """Values and the gradients of q, k, v (through one strided qkv leaf) to fp64 precision."""
    leaf, q, k, v = strided_qkv(T=T)
    options = options_for(case, T)
    out, grad = out_and_grad("sdpa", leaf, q, k, v, **options)
    ref_out, ref_grad = out_and_grad("reference", leaf, q, k, v, **options)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grad, ref_grad, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("case", ["myopic", "myopic+horizon+queries"])
def test_sdpa_path_equals_the_reference_in_fp32_and_bf16(case):
    leaf, q, k, v = strided_qkv(T=30, Dh=32, dtype=torch.float32)
    options = options_for(case, 30)
    out, grad = out_and_grad("sdpa", leaf, q, k, v, **options)
    ref_out, ref_grad = out_and_grad("reference", leaf, q, k, v, **options)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)
    half = leaf.detach().bfloat16().requires_grad_()
    out, grad = out_and_grad("sdpa", half, *half.permute(2, 0, 3, 1, 4), **options)
    assert out.dtype == grad.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref_out, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(grad.float(), ref_grad, atol=3e-2, rtol=3e-2)


def test_non_myopic_sdpa_path_passes_gradcheck():
    """Without myopic the path is torch's own fused attention: its backward is the forward's derivative."""
    q, k, v = (torch.randn(1, 2, 7, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    is_query = torch.arange(7) % 3 == 2

    def f(q, k, v):
        return attention(q, k, v, horizon=3, is_query=is_query, backend="sdpa")[0]

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_myopic_flash_gradient_reaches_keys_and_values_only_on_the_diagonal():
    T = 12
    q, k, v = (torch.randn(1, 1, T, 4, requires_grad=True) for _ in range(3))
    for t in (1, 6, 11):
        out, _ = attention(q, k, v, myopic=True, backend="sdpa")
        dq, dk, dv = torch.autograd.grad(out[..., t, :].sum(), (q, k, v))
        for name, g in (("dk", dk), ("dv", dv)):
            others = torch.cat([g[..., :t, :], g[..., t + 1:, :]], dim=-2)
            assert torch.all(others == 0), f"{name}: gradient from t={t} reaches s != t"
            assert g[..., t, :].abs().sum() > 0, f"{name}: no gradient at t={t} itself"
        assert torch.all(dq[..., t + 1:, :] == 0) and dq[..., t, :].abs().sum() > 0


def test_cpu_auto_dispatch_takes_the_fused_path_unless_the_pattern_is_read(monkeypatch):
    """Every option on the CPU (myopic, horizon, query tokens, reach) runs fused; only a pattern hook, or reach in
    a half dtype, needs the pattern."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return attention_reference(*args, **kwargs)

    monkeypatch.setattr(K, "attention_reference", spy)
    flash_calls = []
    apply = FlashCPU.apply
    monkeypatch.setattr(FlashCPU, "apply", lambda *a: flash_calls.append(a) or apply(*a))
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    attention(q, k, v, myopic=True)
    attention(q, k, v, horizon=3, myopic=True, is_query=torch.arange(8) % 2 == 0)
    attention(q, k, v, horizon=3)
    attention(q, k, v, myopic=True, reach_h=1.0)
    assert len(flash_calls) == 4 and calls == []
    attention(q, k, v, myopic=True, pattern_hook=lambda p: p)
    attention(*(x.bfloat16() for x in (q, k, v)), reach_h=1.0)
    assert len(calls) == 2 and len(flash_calls) == 4


def test_sdpa_backend_refuses_what_it_cannot_do():
    q, k, v = (torch.randn(1, 1, 4, 2) for _ in range(3))
    with pytest.raises(ValueError, match="fp32 or fp64 only"):
        attention(*(x.bfloat16() for x in (q, k, v)), reach_h=1.0, backend="sdpa")
    with pytest.raises(ValueError, match="no pattern hook"):
        attention(q, k, v, myopic=True, pattern_hook=lambda p: p, backend="sdpa")
    meta = [x.to("meta") for x in (q, k, v)]
    with pytest.raises(ValueError, match="needs CPU tensors"):
        attention(*meta, myopic=True, backend="sdpa")
    with pytest.raises(ValueError, match="needs CPU tensors"):
        attention(*meta, reach_h=1.0, backend="sdpa")


@pytest.mark.parametrize("options", [{"myopic_gradient": True},
                                     {"myopic_gradient": True, "horizon": 3, "query_positions": [0, 4, 8]}])
def test_myopic_model_gradients_equal_those_of_the_reference_path(options):
    """The whole model: every parameter's gradient is the same whether attention runs fused (no hook) or
    through the reference (a hook on the pattern sends it there)."""
    model = tiny(**options).double()
    x = torch.randn(3, 12, 5, dtype=torch.float64)

    def grads(fwd_hooks):
        model.zero_grad()
        with model.hooks(fwd_hooks):
            model(x).square().sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    fused = grads([])
    reference = grads([(f"blocks.{i}.attn.hook_pattern", lambda p, name: None) for i in range(len(model.blocks))])
    for name in fused:
        torch.testing.assert_close(fused[name], reference[name], atol=1e-12, rtol=1e-12, msg=name)


@pytest.mark.parametrize("options", [{}, {"horizon": 3}, {"horizon": 16}, {"is_query": True}, {"reach_h": 2.5},
                                     {"reach_h": 1.0, "horizon": 16}])
def test_input_form_in_one_function_is_bit_for_bit_the_two_output_projection(monkeypatch, options):
    """`attention_input_form` on the CPU runs `FlashCPUProjected`; its output, reach and every gradient (input,
    weight, bias) equal, bit for bit in fp32, those of `ProjectionWithPast` feeding `attention` its past keys and
    values (the path it replaces, still taken elsewhere). T = 70 puts horizon 16 on the blocked layout."""
    torch.manual_seed(0)
    B, T, D, H = 2, 70, 24, 3
    if options.pop("is_query", False):
        options["is_query"] = torch.arange(T) % 3 == 1
    x0 = torch.randn(B, T, D)
    weight0, bias0 = torch.randn(3 * D, D) / D ** 0.5, torch.randn(3 * D) * 0.1
    applied = []
    fused_apply = K.FlashCPUProjected.apply
    monkeypatch.setattr(K.FlashCPUProjected, "apply", lambda *a: applied.append(a) or fused_apply(*a))

    def run(two_outputs: bool):
        x, weight, bias = (t.clone().requires_grad_() for t in (x0, weight0, bias0))
        if two_outputs:
            qkv, kv = K.ProjectionWithPast.apply(x, weight, bias, D)
            q, k, v = qkv.view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
            past = tuple(kv.view(B, T, 2, H, D // H).permute(2, 0, 3, 1, 4))
            out, reach = attention(q, k, v, myopic=True, past=past, **options)
        else:
            out, reach = K.attention_input_form(x, weight, bias, H, **options)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() + (0 if reach is None else 3 * reach)
        return [out, reach, *torch.autograd.grad(loss, (x, weight, bias))]

    one, two = run(False), run(True)
    assert len(applied) == 1
    for name, a, b in zip(("out", "reach", "dx", "dweight", "dbias"), one, two):
        assert (a is None) == (b is None) == (name == "reach" and "reach_h" not in options), name
        assert a is None or torch.equal(a, b), name
    # and the myopic cut is there: the input's gradient is not the full attention's
    x, weight, bias = (t.clone().requires_grad_() for t in (x0, weight0, bias0))
    q, k, v = torch.nn.functional.linear(x, weight, bias).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
    out, reach = attention(q, k, v, **options)
    loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() + (0 if reach is None else 3 * reach)
    (dx_full,) = torch.autograd.grad(loss, x)
    assert not torch.allclose(one[2], dx_full, atol=1e-4)


def test_input_form_takes_the_two_output_path_where_the_pattern_is_read():
    x, weight, bias = torch.randn(1, 8, 6), torch.randn(18, 6), torch.randn(18)
    seen = []
    K.attention_input_form(x, weight, bias, 2, pattern_hook=lambda p: seen.append(p.shape) or p)
    assert seen == [torch.Size([1, 2, 8, 8])]
    with pytest.raises(ValueError, match="divisible by n_heads"):
        K.attention_input_form(x, weight, bias, 4)
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        K.attention_input_form(x, weight, bias, 2, horizon=0)
