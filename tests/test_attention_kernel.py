"""The fused attention kernel (kernels/attention.py) against its PyTorch reference.

Kernel tests run Triton's interpreter on CPU. It must be switched on before triton is first imported
(tests/conftest.py does, before any test imports the model and with it triton); were triton imported without
it all the same (a plugin, another conftest), one test reruns this file's interpreter tests in a fresh
process that has it, rather than letting them fail or silently skip.
"""

import os
import subprocess
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernel module is imported

import pytest
import torch

import constrained.kernels.attention as K
from constrained.common.mask import attends
from constrained.kernels.attention import FusedAttention, attention, attention_reference

interpreted = pytest.mark.skipif(
    not K.INTERPRETED, reason="triton was imported before TRITON_INTERPRET=1; test_interpreter_tests_in_subprocess "
    "runs these")

OPTIONS = {
    "plain": {},
    "horizon": {"horizon": 5},
    "myopic": {"myopic": True},
    "reach": {"reach_h": 3.0},
    # h = 36 > two 16-tiles: exercises the wholly-allowed tile segments under a horizon
    "horizon+reach": {"horizon": 36, "reach_h": 0.5},
    "horizon+myopic+reach": {"horizon": 9, "myopic": True, "reach_h": 2.5},
}


def qkv(B=1, H=2, T=16, Dh=16, dtype=torch.float32, requires_grad=True):
    return [torch.randn(B, H, T, Dh, dtype=dtype, requires_grad=requires_grad) for _ in range(3)]


def outputs_and_grads(backend, q, k, v, **options):
    """out, reach and d(q, k, v) of a loss that weighs every output element differently plus 3·reach."""
    out, reach = attention(q, k, v, backend=backend, **options)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * weights).sum() + (0.0 if reach is None else 3.0 * reach)
    return out, reach, torch.autograd.grad(loss, (q, k, v))


def assert_matches_reference(q, k, v, atol=1e-5, rtol=1e-5, **options):
    out, reach, grads = outputs_and_grads("triton", q, k, v, **options)
    ref_out, ref_reach, ref_grads = outputs_and_grads("reference", q, k, v, **options)
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol)
    assert (reach is None) == (ref_reach is None)
    if reach is not None:
        torch.testing.assert_close(reach, ref_reach, atol=atol, rtol=rtol)
    for name, g, ref_g in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(g, ref_g, atol=atol, rtol=rtol, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("T", [1, 7, 16, 33, 48])
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.interpreter
@interpreted
def test_matches_reference(T, option):
    """Forward, reach and all three gradients, each option alone and combined, T across tile edges."""
    assert_matches_reference(*qkv(T=T), **OPTIONS[option])


@pytest.mark.parametrize("horizon", [1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 100])
@pytest.mark.interpreter
@interpreted
def test_tile_skipping_matches_reference(horizon):
    """Every split of the key/query loops into masked, wholly-allowed and skipped tiles (16-tiles, T=48)."""
    assert_matches_reference(*qkv(B=1, H=1, T=48), horizon=horizon, reach_h=1.0)


@pytest.mark.parametrize("myopic", [False, True])
@pytest.mark.interpreter
@interpreted
def test_is_query_matches_reference(myopic):
    is_query = torch.rand(40) < 0.3
    assert_matches_reference(*qkv(T=40), horizon=11, myopic=myopic, reach_h=1.5, is_query=is_query)


@pytest.mark.interpreter
@interpreted
def test_non_power_of_two_head_dim_and_strided_inputs():
    """Dh = 24 pads to 32 lanes; q, k, v as the model makes them: strided views of one qkv tensor."""
    B, T, H, Dh = 2, 21, 2, 24
    qkv_ = torch.randn(B, T, 3, H, Dh, requires_grad=True)
    q, k, v = qkv_.permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh), not contiguous
    assert not q.is_contiguous()
    assert_matches_reference(q, k, v, horizon=6, reach_h=2.0)
    assert_matches_reference(q, k, v, myopic=True)


@pytest.mark.interpreter
@interpreted
def test_fp16_matches_reference():
    q, k, v = qkv(T=33, dtype=torch.float16)
    assert_matches_reference(q, k, v, atol=2e-3, rtol=2e-3, horizon=7, reach_h=2.0)


@pytest.mark.interpreter
@interpreted
def test_fp64_matches_reference_to_fp64_precision():
    """fp64 values and gradients to fp64 accuracy, with a scale 1/sqrt(24) and a reach horizon 0.1 that
    fp32 cannot hold. The interpreter passes float arguments at full precision either way; the kernels
    read both from an fp64 tensor so the compiled path does too (bench/check_compiled.py checks it)."""
    q, k, v = qkv(B=2, T=21, Dh=24, dtype=torch.float64)
    assert_matches_reference(q, k, v, atol=1e-12, rtol=1e-12, horizon=9, reach_h=0.1)
    out, _ = attention(q, k, v, myopic=True, reach_h=0.1, backend="triton")
    ref, _ = attention_reference(q, k, v, myopic=True, reach_h=0.1)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, ref_g in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref_g, atol=1e-12, rtol=1e-12)


@pytest.mark.interpreter
@interpreted
def test_interpreter_refuses_bf16():
    """bf16 arithmetic gives silent garbage in the interpreter: a clear error instead."""
    q, k, v = qkv(T=8, dtype=torch.bfloat16, requires_grad=False)
    with pytest.raises(ValueError, match="bf16 arithmetic is wrong in the Triton interpreter"):
        attention(q, k, v, backend="triton")
    out, _ = attention(q, k, v)  # backend="auto" on CPU: the reference, which handles bf16
    assert out.dtype == torch.bfloat16


def test_auto_dispatch_falls_back_for_wide_heads():
    """One kernel tile holds at most MAX_HEAD_DIM lanes: beyond it "auto" takes torch's fused attention on
    CUDA too, or the reference where that cannot serve (reach; myopic off the CPU), as future_info does for
    d_z > MAX_DZ; naming "triton" keeps the clear error."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert K.resolve_backend("auto", cuda, K.MAX_HEAD_DIM + 1, reach_h=1.0) == "reference"
    assert K.resolve_backend("auto", cuda, K.MAX_HEAD_DIM + 1, myopic=True) == "reference"
    assert K.resolve_backend("auto", cuda, K.MAX_HEAD_DIM + 1) == "sdpa"
    assert K.resolve_backend("auto", cuda, K.MAX_HEAD_DIM, reach_h=1.0) == ("triton" if K.HAS_TRITON else "reference")
    assert K.resolve_backend("auto", cpu, 16, myopic=True) == "sdpa"
    assert K.resolve_backend("auto", cpu, 16, reach_h=1.0) == "sdpa"
    assert K.resolve_backend("auto", cpu, 16, reach_h=1.0, dtype=torch.bfloat16) == "reference"
    assert K.resolve_backend("triton", cuda, 4 * K.MAX_HEAD_DIM) == "triton"
    assert K.resolve_backend("reference", cuda, 16) == "reference"


@pytest.mark.interpreter
@interpreted
def test_explicit_triton_backend_refuses_wide_heads():
    q, k, v = qkv(T=4, Dh=K.MAX_HEAD_DIM + 1, requires_grad=False)
    with pytest.raises(ValueError, match=f"head dims up to {K.MAX_HEAD_DIM}"):
        attention(q, k, v, backend="triton")


@pytest.mark.parametrize("options", [{"horizon": 3, "reach_h": 1.0},
                                     {"horizon": 16, "reach_h": 1.5, "is_query": True}])
@pytest.mark.interpreter
@interpreted
def test_gradcheck_fp64(options):
    """The kernel's backward is the derivative of its forward (fp64 accumulates in fp64). Myopic is
    left out: its backward is by design not the derivative of the (plain-attention) forward."""
    T, Dh = (6, 4) if options["horizon"] == 3 else (17, 2)  # 17 crosses a 16-tile edge
    q, k, v = (torch.randn(1, 1, T, Dh, dtype=torch.float64, requires_grad=True) for _ in range(3))
    is_query = torch.arange(T) % 3 == 2 if options.get("is_query") else None

    def f(q, k, v):
        return FusedAttention.apply(q, k, v, options["horizon"], False, options["reach_h"], is_query)

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6)


@pytest.mark.interpreter
@interpreted
def test_horizon_output_ignores_positions_beyond_it():
    """Row i is a function of positions i - h + 1 .. i only: edits of k, v at s <= i - h leave it unchanged."""
    T, h, edited = 40, 6, 12  # edit positions 0..12
    q, k, v = qkv(T=T, requires_grad=False)
    out, _ = attention(q, k, v, horizon=h, backend="triton")
    k2, v2 = k.clone(), v.clone()
    k2[..., : edited + 1, :] = torch.randn_like(k2[..., : edited + 1, :]) * 3
    v2[..., : edited + 1, :] = torch.randn_like(v2[..., : edited + 1, :]) * 3
    out2, _ = attention(q, k2, v2, horizon=h, backend="triton")
    torch.testing.assert_close(out2[..., edited + h:, :], out[..., edited + h:, :], atol=0, rtol=0)
    assert (out2[..., edited, :] - out[..., edited, :]).abs().max() > 1e-3  # the edit itself matters


@pytest.mark.interpreter
@interpreted
def test_myopic_gradient_reaches_keys_and_values_only_on_the_diagonal():
    """Through the kernel's backward: d(out at t)/d(k, v at s) is zero for s != t, non-zero at s = t,
    while dq and the plain (non-myopic) gradient do reach earlier positions."""
    T = 20
    q, k, v = qkv(B=1, H=1, T=T)
    for t in (1, 5, 16, 19):  # (t = 0 reads only itself: A = 1, so its key gets no gradient)
        out, _ = attention(q, k, v, myopic=True, backend="triton")
        dq, dk, dv = torch.autograd.grad(out[..., t, :].sum(), (q, k, v))
        for name, g in (("dk", dk), ("dv", dv)):
            others = torch.cat([g[..., :t, :], g[..., t + 1:, :]], dim=-2)
            assert torch.all(others == 0), f"{name}: gradient from t={t} reaches s != t"
            assert g[..., t, :].abs().sum() > 0, f"{name}: no gradient at t={t} itself"
        assert torch.all(dq[..., t + 1:, :] == 0) and dq[..., t, :].abs().sum() > 0
        out, _ = attention(q, k, v, backend="triton")
        _, dk_plain, dv_plain = torch.autograd.grad(out[..., t, :].sum(), (q, k, v))
        assert dk_plain[..., :t, :].abs().sum() > 0 and dv_plain[..., :t, :].abs().sum() > 0


@pytest.mark.parametrize("T", [16, 33])
@pytest.mark.interpreter
@interpreted
def test_reach_is_zero_beyond_the_sequence(T):
    """max(0, i - j - h) = 0 for every pair once h >= T - 1."""
    q, k, v = qkv(T=T)
    for h in (T - 1, T, T + 5.5):
        _, reach = attention(q, k, v, reach_h=h, backend="triton")
        assert reach.item() == 0.0
        dq, dk, dv = torch.autograd.grad(reach, (q, k, v))
        assert all(torch.all(g == 0) for g in (dq, dk, dv))
    _, reach = attention(q, k, v, reach_h=1.0, backend="triton")
    assert reach.item() > 0


def mean_distance(q, k):
    """Attention-weighted mean of i - j over queries (the causal pattern, from the reference)."""
    T = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5  # (B, H, T, T)
    pos = torch.arange(T)
    scores = scores.masked_fill(~attends(pos[:, None], pos[None, :]), float("-inf"))
    dist = (pos[:, None] - pos[None, :]).clamp(min=0).float()  # (T, T)
    return (torch.softmax(scores, -1) * dist).sum(-1).mean()


@pytest.mark.interpreter
@interpreted
def test_reach_gradient_moves_attention_nearer():
    """A gradient-descent step on q against reach's kernel gradient lowers reach and pulls mass to nearer keys."""
    T, h = 32, 2.0
    q, k, v = qkv(B=1, H=2, T=T)
    _, reach = attention(q, k, v, reach_h=h, backend="triton")
    (dq,) = torch.autograd.grad(reach, (q,))
    with torch.no_grad():
        q2 = q - 0.1 * dq / dq.norm() * q.norm()
        _, reach2 = attention(q2, k, v, reach_h=h, backend="triton")
        assert reach2 < reach
        assert mean_distance(q2, k) < mean_distance(q, k)


@pytest.mark.parametrize("horizon", [None, 1, 2, 5, 16, 17, 30])
@pytest.mark.parametrize("with_queries", [False, True])
@pytest.mark.interpreter
@interpreted
def test_in_kernel_mask_is_attends(horizon, with_queries):
    """With q = 0 a row attends uniformly to its allowed keys; with v = identity (Dh = T) the output row
    is that set: out[i, j] > 0 exactly where attends(i, j, h, j_is_query)."""
    T = 40
    is_query = (torch.arange(T) % 4 == 3) if with_queries else None
    q = torch.zeros(1, 1, T, T)
    v = torch.eye(T).expand(1, 1, T, T).contiguous()  # (1, 1, T, Dh=T)
    out, _ = attention(q, torch.randn(1, 1, T, T), v, horizon=horizon, is_query=is_query, backend="triton")
    pos = torch.arange(T)
    expected = attends(pos[:, None], pos[None, :], horizon, None if is_query is None else is_query[None, :])
    assert torch.equal(out[0, 0] > 0, expected)


def test_reference_reach_is_the_definition():
    """reach = mean over (b, h, i) of Σ_j A_ij max(0, i - j - h) / T, checked by explicit loops."""
    q, k, v = qkv(B=2, H=1, T=9, Dh=4, requires_grad=False)
    h = 1.5
    _, reach = attention_reference(q, k, v, horizon=6, reach_h=h)
    pos = torch.arange(9)
    scores = (q @ k.transpose(-1, -2)) / 2.0
    A = torch.softmax(scores.masked_fill(~attends(pos[:, None], pos[None, :], 6), float("-inf")), -1)
    total = sum(A[b, 0, i, j] * max(0.0, i - j - h) / 9 for b in range(2) for i in range(9) for j in range(9))
    torch.testing.assert_close(reach, total / (2 * 9))


@pytest.mark.parametrize("backend", ["reference", "sdpa", "triton"])
def test_bad_input_raises_clear_errors(backend):
    q, k, v = qkv(T=8, requires_grad=False)
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        attention(q, k, v, horizon=0, backend=backend)
    with pytest.raises(ValueError, match="reach_h must be >= 0"):
        attention(q, k, v, reach_h=-1.0, backend=backend)
    with pytest.raises(ValueError, match="reach_h must be >= 0"):
        attention(q, k, v, reach_h=float("nan"), backend=backend)
    with pytest.raises(ValueError, match="same shape"):
        attention(q, k[..., :4, :], v, backend=backend)
    with pytest.raises(ValueError, match=r"\(B, H, T, Dh\)"):
        attention(q[0], k[0], v[0], backend=backend)
    with pytest.raises(ValueError, match="is_query"):
        attention(q, k, v, is_query=torch.zeros(7, dtype=torch.bool), backend=backend)
    with pytest.raises(ValueError, match="backend must be one of"):
        attention(q, k, v, backend="cuda")


def test_cpu_auto_dispatch_never_runs_the_kernel(monkeypatch):
    """On CPU tensors "auto" takes torch's fused attention (reach included), the reference only for a hook."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return attention_reference(*args, **kwargs)

    def no_kernel(*args, **kwargs):
        raise AssertionError("the Triton path ran on CPU tensors with backend='auto'")

    monkeypatch.setattr(K, "attention_reference", spy)
    monkeypatch.setattr(K.FusedAttention, "apply", no_kernel)
    q, k, v = qkv(T=8)
    out, reach = attention(q, k, v, horizon=3, myopic=True, reach_h=1.0)
    assert calls == [] and out.shape == q.shape and reach.dim() == 0
    attention(q, k, v, horizon=3, myopic=True, reach_h=1.0, pattern_hook=lambda p: p)
    assert len(calls) == 1
    _, reach = attention(q, k, v)
    assert reach is None


@pytest.mark.interpreter
@pytest.mark.skipif(K.INTERPRETED, reason="the interpreter tests ran in this process")
def test_interpreter_tests_in_subprocess():
    """Runs this file's interpreter tests where TRITON_INTERPRET=1 precedes the first triton import."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-m", "interpreter"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def grads_with_past(backend, q, k, v, **options):
    """d(q, k, v, k_past, v_past) of a weighted loss (+ 3·reach), with past = detached copies of k and v."""
    k_past, v_past = (z.detach().clone().requires_grad_() for z in (k, v))
    out, reach = attention(q, k, v, backend=backend, myopic=True, past=(k_past, v_past), **options)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * weights).sum() + (0.0 if reach is None else 3.0 * reach)
    return out, torch.autograd.grad(loss, (q, k, v, k_past, v_past))


@pytest.mark.parametrize("options", [{}, {"horizon": 9, "reach_h": 2.5}, {"is_query": "mask"}])
@pytest.mark.interpreter
@interpreted
def test_myopic_input_form_past_gradients_match_reference_in_fp64(options):
    """The input form's split of the key and value gradients: the diagonal into k, v, the rest into past."""
    T = 33
    if options.get("is_query") == "mask":
        options = {"is_query": torch.arange(T) % 3 == 0}
    q, k, v = qkv(B=2, T=T, Dh=24, dtype=torch.float64)
    backends = ["triton", "reference"] + ([] if "reach_h" in options else ["sdpa"])
    results = {b: grads_with_past(b, q, k, v, **options) for b in backends}
    ref_out, ref_grads = results.pop("reference")
    _, _, full = outputs_and_grads("reference", q, k, v, **options)  # the ordinary gradient
    for part in (1, 2):  # diagonal + rest = the ordinary dk, dv
        torch.testing.assert_close(ref_grads[part] + ref_grads[part + 2], full[part], atol=1e-12, rtol=1e-12)
    for backend, (out, grads) in results.items():
        torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
        for name, g, ref_g in zip(("q", "k", "v", "k_past", "v_past"), grads, ref_grads):
            torch.testing.assert_close(g, ref_g, atol=1e-12, rtol=1e-12,
                                       msg=lambda m, n=name, b=backend: f"{b} d{n}: {m}")


def test_past_needs_myopic_and_matching_tensors():
    q, k, v = qkv(T=8)
    with pytest.raises(ValueError, match="only with myopic"):
        attention(q, k, v, past=(k, v))
    with pytest.raises(ValueError, match="k_past must match"):
        attention(q, k, v, myopic=True, past=(k[..., :4], v))
