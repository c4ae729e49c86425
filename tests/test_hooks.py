import pytest
import torch

from tests.helpers import tiny

NAMES = ["hook_embed", "hook_pos_embed"] + [
    f"blocks.{l}.{n}" for l in range(2)
    for n in ("hook_resid_pre", "attn.hook_pattern", "attn.hook_reach", "hook_attn_out", "hook_mlp_out",
              "hook_resid_post")
]


def test_every_design_hook_exists():
    assert set(tiny().hook_points()) == set(NAMES)


def test_run_with_cache_returns_what_was_asked_with_shapes():
    model = tiny()
    x = torch.randn(3, 10, 5)
    out, cache = model.run_with_cache(x, names_filter=NAMES, reach_h=4.0)  # reach fires only when asked for
    assert set(cache) == set(NAMES)
    assert out.shape == (3, 10, 1)
    for name, t in cache.items():
        expected = (3, 2, 10, 10) if "pattern" in name else () if "reach" in name else (3, 10, 16)
        assert t.shape == expected, name
    _, only = model.run_with_cache(x, names_filter="blocks.1.hook_resid_post")
    assert list(only) == ["blocks.1.hook_resid_post"]
    _, by_fn = model.run_with_cache(x, names_filter=lambda n: n.endswith("resid_pre"))
    assert set(by_fn) == {"blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"}


def test_cache_does_not_change_output_and_pattern_rows_sum_to_one():
    model = tiny()
    x = torch.randn(2, 12, 5)
    plain = model(x)  # fused path, no pattern built
    cached, cache = model.run_with_cache(x, names_filter=lambda n: "pattern" in n)
    torch.testing.assert_close(plain, cached, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"].sum(-1), torch.ones(2, 2, 12))


def test_resid_post_feeds_next_resid_pre():
    _, cache = tiny().run_with_cache(torch.randn(2, 8, 5))
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], cache["blocks.1.hook_resid_pre"])


def test_hooks_can_replace_activations_and_are_removed_afterwards():
    model = tiny()
    x = torch.randn(2, 8, 5)
    with model.hooks([("blocks.1.hook_resid_post", lambda t, name: torch.zeros_like(t))]):
        ablated = model(x)
    expected = model.unembed(model.ln_final(torch.zeros(2, 8, 16)))
    torch.testing.assert_close(ablated, expected)
    assert not any(p.active for p in model.hook_points().values())


def test_unknown_hook_name_is_a_clear_error():
    with pytest.raises(KeyError, match="blocks.9.hook_resid_post"):
        tiny().run_with_cache(torch.randn(1, 4, 5), names_filter=["blocks.9.hook_resid_post"])


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="expected input"):
        tiny()(torch.randn(2, 13, 5))
    with pytest.raises(ValueError, match="expected input"):
        tiny()(torch.randn(2, 4, 3))
