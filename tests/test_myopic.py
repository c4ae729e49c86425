import pytest
import torch
import torch.nn.functional as F

from constrained.common.mask import attention_mask
from tests.helpers import tiny

T = 8


def grads_of_loss_at(model, x, t):
    """d(prediction at t) / d(every hook activation), per layer: {name: (T, d) gradient}."""
    names = [n for n in model.hook_points() if "pattern" not in n and "reach" not in n]
    out, cache = model.run_with_cache(x, names_filter=names, detach=False)
    grads = torch.autograd.grad(out[0, t].sum(), [cache[n] for n in names], allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(cache[n]))[0] for n, g in zip(names, grads)}


@pytest.mark.parametrize("horizon", [None, 3])
def test_myopic_loss_at_t_sends_no_gradient_to_earlier_positions(horizon):
    model = tiny(n_ctx=T, myopic_gradient=True, horizon=horizon)
    x = torch.randn(1, T, 5)
    for t in range(1, T):
        for name, g in grads_of_loss_at(model, x, t).items():
            assert torch.all(g[:t] == 0), f"{name}: gradient from t={t} reaches s<t"
            assert g[t].abs().sum() > 0, f"{name}: no gradient at t={t} itself"


def test_baseline_loss_at_t_reaches_earlier_positions():
    model = tiny(n_ctx=T)
    x = torch.randn(1, T, 5)
    g = grads_of_loss_at(model, x, T - 1)
    for name in ("hook_embed", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"):
        assert all(g[name][s].abs().sum() > 0 for s in range(T - 1)), name


def test_myopic_forward_equals_baseline_forward():
    """Myopia changes only gradients, never the function computed."""
    base = tiny(n_ctx=T)
    myopic = tiny(n_ctx=T, myopic_gradient=True)
    myopic.load_state_dict(base.state_dict())
    x = torch.randn(2, T, 5)
    torch.testing.assert_close(myopic(x), base(x), atol=1e-5, rtol=1e-5)


def test_myopic_weights_still_learn():
    model = tiny(n_ctx=T, myopic_gradient=True)
    model(torch.randn(2, T, 5)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# -- myopic descent as Wu, Morris & Levine define it ------------------------------------------------------------
#
# Give every position s its own copy θ_s of the parameters (the untied model below computes everything at s with
# θ_s, and the keys and values s contributes to later queries with θ_s too). The ordinary gradient of
# L = Σ_t L_t is Σ_s ∂L/∂θ_s; myopic descent keeps only the diagonal terms Σ_t ∂L_t/∂θ_t: the loss at t updates
# the parameters only through the computation at t itself.


def untied_forward(model, thetas, x):
    """The model's forward with position s computed by the parameter copy thetas[s] (name -> tensor)."""
    B, T_, _ = x.shape
    H = model.blocks[0].attn.n_heads
    Dh = model.blocks[0].attn.d_head
    allowed = attention_mask(T_, model.horizon, model.query_positions)

    def ln(p, name, v):
        return F.layer_norm(v, v.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"])

    def lin(p, name, v):
        return F.linear(v, p[f"{name}.weight"], p[f"{name}.bias"])

    h = [lin(thetas[s], "embed", x[:, s]) + thetas[s]["pos_embed"][s] for s in range(T_)]
    for i in range(len(model.blocks)):
        pre = f"blocks.{i}"
        qkv = [lin(thetas[s], f"{pre}.attn.W_qkv", ln(thetas[s], f"{pre}.ln1", h[s])).view(B, 3, H, Dh)
               for s in range(T_)]
        new = []
        for t in range(T_):
            keys = [s for s in range(T_) if allowed[t, s]]
            scores = torch.stack([(qkv[t][:, 0] * qkv[s][:, 1]).sum(-1) for s in keys], -1) / Dh ** 0.5  # (B, H, S)
            p = torch.softmax(scores, -1)
            out = sum(p[..., j:j + 1] * qkv[s][:, 2] for j, s in enumerate(keys))  # (B, H, Dh)
            r = h[t] + lin(thetas[t], f"{pre}.attn.W_o", out.reshape(B, H * Dh))
            m = lin(thetas[t], f"{pre}.mlp.0", ln(thetas[t], f"{pre}.ln2", r))
            new.append(r + lin(thetas[t], f"{pre}.mlp.2", F.gelu(m)))
        h = new
    return torch.stack([lin(thetas[t], "unembed", ln(thetas[t], "ln_final", h[t])) for t in range(T_)], 1)


@pytest.mark.parametrize("options", [{}, {"horizon": 3}, {"query_positions": [0, 2, 4, 6]}])
def test_myopic_gradient_is_the_diagonal_of_the_per_position_gradient(options):
    torch.manual_seed(0)
    base = tiny(n_ctx=T, **options).double()
    myopic = tiny(n_ctx=T, myopic_gradient=True, **options).double()
    myopic.load_state_dict(base.state_dict())
    x = torch.randn(2, T, 5, dtype=torch.float64)
    g = torch.randn(2, T, 1, dtype=torch.float64)
    names = [n for n, _ in base.named_parameters()]
    thetas = [{n: p.detach().clone().requires_grad_() for n, p in base.named_parameters()} for _ in range(T)]
    y = untied_forward(base, thetas, x)
    torch.testing.assert_close(y, base(x))  # the untied model computes the same function
    per_t = [(y[:, t] * g[:, t]).sum() for t in range(T)]
    every = torch.autograd.grad(sum(per_t), [th[n] for th in thetas for n in names], retain_graph=True)
    full = [sum(every[i::len(names)]) for i in range(len(names))]  # Σ_s ∂L/∂θ_s, parameter by parameter
    diag = {n: torch.zeros_like(thetas[0][n]) for n in names}
    for t in range(T):
        for n, d in zip(names, torch.autograd.grad(per_t[t], [thetas[t][n] for n in names], retain_graph=True,
                                                    allow_unused=True)):
            if d is not None:
                diag[n] += d
    for model, expected in ((base, dict(zip(names, full))), (myopic, diag)):
        got = torch.autograd.grad((model(x) * g).sum(), list(model.parameters()))
        for n, gr in zip(names, got):
            torch.testing.assert_close(gr, expected[n], msg=lambda m, n=n: f"{n}: {m}")


# -- both forms against an independent per-position computation -----------------------------------------------
#
# One forward per t with that form's cut at every layer, in plain torch (no kernel code): "kv" detaches the keys
# and values of every position but t, "input" detaches the attention input (after ln1) of every position but t
# before the key and value projections. The loss at t alone, its parameter gradients summed over t, is what each
# form's gradient of Σ_t L_t must be, on every attention path.


def cut_forward(model, x, t, form):
    T_ = x.shape[1]
    H, Dh = model.blocks[0].attn.n_heads, model.blocks[0].attn.d_head
    allowed = attention_mask(T_, model.horizon, model.query_positions)
    own = (torch.arange(T_) == t).view(1, T_, 1)
    h = model.embed(x) + model.pos_embed[:T_]
    for block in model.blocks:
        a = block.ln1(h)
        W, b = block.attn.W_qkv.weight, block.attn.W_qkv.bias
        D = a.shape[-1]
        q = F.linear(a, W[:D], b[:D])
        a_kv = torch.where(own, a, a.detach()) if form == "input" else a
        k, v = F.linear(a_kv, W[D:], b[D:]).chunk(2, -1)
        if form == "kv":
            k, v = torch.where(own, k, k.detach()), torch.where(own, v, v.detach())
        q, k, v = (z.view(z.shape[0], T_, H, Dh).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-1, -2) / Dh ** 0.5).masked_fill(~allowed, float("-inf"))
        out = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(x.shape[0], T_, H * Dh)
        h = h + block.attn.W_o(out)
        h = h + block.mlp(block.ln2(h))
    return model.unembed(model.ln_final(h))


def per_position_gradients(model, x, g, form):
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for t in range(x.shape[1]):
        y = cut_forward(model, x, t, form)
        for acc, d in zip(total, torch.autograd.grad((y[:, t] * g[:, t]).sum(), params, allow_unused=True)):
            if d is not None:
                acc += d
    return total


def model_gradients(model, x, g, path):
    hooks = []
    if path == "reference":  # a pattern hook sends the dispatch to the reference path
        hooks = [(f"blocks.{i}.attn.hook_pattern", lambda out, name: out) for i in range(len(model.blocks))]
    with model.hooks(hooks):
        y = model(x)
    return torch.autograd.grad((y * g).sum(), list(model.parameters()))


@pytest.mark.parametrize("path", ["reference", "sdpa"])
@pytest.mark.parametrize("options", [{}, {"horizon": 3}, {"query_positions": [0, 2, 4, 6]}])
@pytest.mark.parametrize("form", ["kv", "input"])
def test_each_form_equals_the_per_position_computation(form, options, path):
    torch.manual_seed(0)
    model = tiny(n_ctx=T, myopic_gradient=form, **options).double()
    x = torch.randn(2, T, 5, dtype=torch.float64)
    g = torch.randn(2, T, 1, dtype=torch.float64)
    got = model_gradients(model, x, g, path)
    names = [n for n, _ in model.named_parameters()]
    for n, a, b in zip(names, got, per_position_gradients(model, x, g, form)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=lambda m, n=n: f"{form} {path} {n}: {m}")
    # the planted mutation: the other form's cut gives other key/value projection gradients, so this test can fail
    other = per_position_gradients(model, x, g, "kv" if form == "input" else "input")
    qkv = names.index("blocks.0.attn.W_qkv.weight")
    assert not torch.allclose(got[qkv], other[qkv], atol=1e-6, rtol=1e-6)


def test_the_input_form_cuts_nothing_above_the_attention_input_that_the_strict_form_keeps():
    """Both forms send no gradient from t into the residual stream at s < t; they differ only in W_K, W_V."""
    torch.manual_seed(0)
    strict = tiny(n_ctx=T, myopic_gradient="kv").double()
    loose = tiny(n_ctx=T, myopic_gradient="input").double()
    loose.load_state_dict(strict.state_dict())
    x = torch.randn(1, T, 5, dtype=torch.float64)
    for t in range(1, T):
        for name, g in grads_of_loss_at(loose, x, t).items():
            assert torch.all(g[:t] == 0), f"{name}: gradient from t={t} reaches s<t"
    g = torch.randn(1, T, 1, dtype=torch.float64)
    a = dict(zip([n for n, _ in strict.named_parameters()], model_gradients(strict, x, g, "sdpa")))
    b = dict(zip([n for n, _ in loose.named_parameters()], model_gradients(loose, x, g, "sdpa")))
    differ = {n for n in a if not torch.allclose(a[n], b[n], atol=1e-12, rtol=0)}
    assert differ == {f"blocks.{i}.attn.W_qkv.{w}" for i in range(2) for w in ("weight", "bias")}
    for n in differ:
        d = a[n] - b[n]
        assert torch.all(d[:16].abs() < 1e-12) and d[16:].abs().max() > 1e-6, n  # W_Q the same, W_K and W_V not


@pytest.mark.parametrize("value", ["strict", "KV", 1.5, "off"])
def test_an_unknown_form_is_refused_naming_the_allowed_values(value):
    with pytest.raises(ValueError, match="myopic_gradient must be false, true"):
        tiny(n_ctx=T, myopic_gradient=value)
