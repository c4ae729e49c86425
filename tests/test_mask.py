import pytest
import torch

from constrained.common.mask import attends, attention_mask
from tests.helpers import tiny


@pytest.mark.parametrize("T,h", [(1, None), (6, None), (6, 1), (7, 3), (12, 8), (5, 10)])
def test_mask_matches_rule(T, h):
    mask = attention_mask(T, h)
    for i in range(T):
        for j in range(T):
            assert bool(mask[i, j]) == (j <= i and (h is None or i - j < h)), (i, j)
    assert mask.diagonal().all()


def test_query_tokens_are_read_only_by_themselves():
    T, queries = 8, [0, 2, 4, 6]
    mask = attention_mask(T, None, queries)
    for i in range(T):
        for j in range(T):
            assert bool(mask[i, j]) == (j <= i and (j not in queries or i == j))


def test_predicate_works_on_python_ints():
    assert attends(5, 3, 3) and not attends(5, 2, 3) and not attends(2, 3)


@pytest.mark.parametrize("h,n_layers", [(1, 1), (3, 1), (3, 2), (2, 3)])
def test_horizon_output_ignores_positions_outside_receptive_field(h, n_layers):
    """One layer reads the last h positions; L stacked layers reach back L * (h - 1)."""
    model = tiny(horizon=h, n_layers=n_layers).eval()
    x = torch.randn(1, 12, 5)
    y = model(x)
    i = 11
    oldest = i - n_layers * (h - 1)  # the oldest position that can still influence i
    edited = x.clone()
    edited[:, :oldest] += 5.0
    torch.testing.assert_close(model(edited)[:, i], y[:, i])
    changed = x.clone()
    changed[:, oldest] += 5.0
    assert not torch.allclose(model(changed)[:, i], y[:, i])


@pytest.mark.parametrize("bad", [0, -2])
def test_horizon_below_one_is_rejected(bad):
    with pytest.raises(ValueError, match="horizon"):
        tiny(horizon=bad)


def test_d_model_not_divisible_by_heads_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        tiny(d_model=18, n_heads=4)
