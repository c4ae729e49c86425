"""The attention mask rule, written once for torch tensors and z3 terms alike.

Only comparisons and the `&`, `|`, `~` operators appear, so `attends` evaluates on
integer tensors (broadcast grids of positions) and on z3 integer/boolean terms,
and the formal spec in proofs/ checks the very function the model calls.
"""

from __future__ import annotations


def attends(i, j, horizon=None, j_is_query=None):
    """True where query position i may read key position j.

    causal: j <= i; horizon h: i - h < j (the last h positions, i itself included);
    query tokens (concatenated ICL format) are read by no position but their own.
    """
    allowed = j <= i
    if horizon is not None:
        allowed = allowed & (i - j < horizon)
    if j_is_query is not None:
        allowed = allowed & (~j_is_query | (i == j))
    return allowed


def attention_mask(n_ctx: int, horizon: int | None = None, query_positions=None):
    """Boolean (n_ctx, n_ctx) tensor, True where row i may attend to column j."""
    import torch  # here, not at the top: the z3 spec imports this module for `attends` alone

    pos = torch.arange(n_ctx)
    i = pos[:, None]  # (T, 1)
    j = pos[None, :]  # (1, T)
    is_query = query_mask(n_ctx, query_positions)
    return attends(i, j, horizon, None if is_query is None else is_query[None, :])  # j_is_query (1, T)


def query_mask(n_ctx: int, query_positions=None):
    """Boolean (n_ctx,) tensor, True at the query positions; None when there are none."""
    import torch

    if query_positions is None:
        return None
    is_query = torch.zeros(n_ctx, dtype=torch.bool)
    is_query[list(query_positions)] = True
    return is_query
