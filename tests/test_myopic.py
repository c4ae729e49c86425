import pytest
import torch

from tests.conftest import tiny

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
