"""Layouts that put torch's fused CPU attention to work on the options' mask: all T keys (`Dense`), or, with a
horizon, blocks (`Band`) so that attention costs O(T·h) instead of O(T²).

The fused op takes (N, H, L, D) tensors and a mask it broadcasts over N or H. `Band` cuts the T query rows into
blocks of `size` >= h - 1 and gives each block its own keys and the previous block's: position i reads only
i - h < j <= i, and i - h + 1 >= (the start of i's block) - size. Queries become (B·nb, H, size, D), a view when
the rows are evenly spaced (the model's q, a slice of one qkv matmul, is). Keys and values are copied once into
rows with `size` zero rows in front; block n reads rows [n·size, n·size + 2·size) of that copy, a view: the
previous block, then its own. A batch's first block reads the end of the batch before it (or the zero rows)
as its previous block, which the mask hides.
"""

from __future__ import annotations

import functools

import torch

from constrained.common.mask import attends


def query_key(is_query: torch.Tensor | None) -> tuple[bool, ...] | None:
    """is_query (T,) as a hashable key of the mask caches."""
    return None if is_query is None else tuple(bool(b) for b in is_query.tolist())


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where allowed, -inf elsewhere: what the fused op takes, and what the reference adds to its scores."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


@functools.lru_cache(maxsize=64)
def options_mask(T: int, horizon: int | None, is_query: tuple[bool, ...] | None, device: torch.device,
                 dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """(T, T) mask of `attends`: bool, or additive for a float dtype. Cached: the model asks for the same few
    masks every step."""
    pos = torch.arange(T, device=device)
    j_is_query = None if is_query is None else torch.tensor(is_query, dtype=torch.bool, device=device)[None, :]
    allowed = attends(pos[:, None], pos[None, :], horizon, j_is_query)  # (T, T)
    return allowed if dtype == torch.bool else additive(allowed, dtype)


class Dense:
    """Every query against all T keys, the options' mask as a (T, T) matrix (None: plain causal)."""

    def __init__(self, T: int, horizon: int | None, is_query: tuple[bool, ...] | None, device, dtype):
        self.T = T
        plain = horizon is None and is_query is None
        self.mask = None if plain else options_mask(T, horizon, is_query, device, dtype)

    def queries(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, T, ...) as the op reads it; extra: one more column, any shape that expands to (B, H, T)."""
        return x if extra is None else _with_column(x, extra)

    keys = queries

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        return x

    fold = rows


class Band:
    """Blocks of `size` queries, each against the previous block's keys and its own (module docstring)."""

    def __init__(self, B: int, T: int, size: int, horizon: int | None, is_query: tuple[bool, ...] | None,
                 device, dtype):
        """Every key i reads must lie at most `size` positions back: a horizon <= size + 1 (the reach band reads
        only the keys it weighs, with any horizon)."""
        self.B, self.T, self.size = B, T, size
        self.nb = -(-T // size)
        self.Tp = self.nb * size
        self.mask = _band_mask(B, T, size, horizon, is_query, device, dtype)

    def queries(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, T, ...) -> (B·nb, H, size, ...) (rows past T are zeros); extra: one more column, as in Dense."""
        if extra is not None:
            x = _with_column(x, extra)
        B, H, T = x.shape[:3]
        rest = x.shape[3:]
        if self.Tp > T:
            x = torch.cat([x, x.new_zeros(B, H, self.Tp - T, *rest)], 2)
        return x.view(B, H, self.nb, self.size, *rest).transpose(1, 2).reshape(B * self.nb, H, self.size, *rest)

    def keys(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, T, D) -> (B·nb, H, 2·size, D): block n's previous block then its own, a view of one copy."""
        B, H, T, D = x.shape
        D1 = D + (extra is not None)
        size = self.size
        buf = x.new_empty(size + B * self.Tp, H, D1)
        buf[:size] = 0
        body = buf[size:].view(B, self.Tp, H, D1)
        body[:, :T, :, :D] = x.transpose(1, 2)
        body[:, T:] = 0
        if extra is not None:
            body[:, :T, :, D] = extra.expand(B, H, T).transpose(1, 2)
        return buf.as_strided((B * self.nb, H, 2 * size, D1), (size * H * D1, D1, H * D1, 1))

    def rows(self, xb: torch.Tensor) -> torch.Tensor:
        """(B·nb, H, size, ...) -> (B, H, T, ...), laid out as (B, T, H, ...): the model reads it back that way."""
        rest = xb.shape[3:]
        H = xb.shape[1]
        out = xb.view(self.B, self.nb, H, self.size, *rest).transpose(2, 3).reshape(self.B, self.Tp, H, *rest)
        return out[:, :self.T].transpose(1, 2)

    def fold(self, gb: torch.Tensor) -> torch.Tensor:
        """The gradient of `keys` (B·nb, H, 2·size, D) -> (B, H, T, D): each block is read twice, as its own
        block's keys and as the next block's previous ones."""
        B, nb, size = self.B, self.nb, self.size
        H, D = gb.shape[1], gb.shape[3]
        g = gb.view(B, nb, H, 2 * size, D).transpose(2, 3)  # (B, nb, 2·size, H, D)
        out = g[:, :, size:].clone(memory_format=torch.contiguous_format)  # (B, nb, size, H, D)
        out[:, :-1] += g[:, 1:, :size]
        return out.view(B, self.Tp, H, D)[:, :self.T].transpose(1, 2)


def band_size(T: int, horizon: int | None) -> int | None:
    """The block size `Band` takes for a horizon, or None where all T keys cost about as little: blocks of h
    queries read 2h keys each, the causal pass T/2 on average, and small blocks pay the op's overhead per block."""
    if horizon is None:
        return None
    size = max(int(horizon), 16)
    return size if T >= 4 * size else None


def _with_column(x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    B, H, T = x.shape[:3]
    return torch.cat([x, extra.expand(B, H, T).unsqueeze(-1)], -1)


@functools.lru_cache(maxsize=32)
def _band_mask(B, T, size, horizon, is_query, device, dtype) -> torch.Tensor:
    """(B·nb, 1, size, 2·size) additive mask of `Band`: cached, the model asks for the same few every step."""
    _, _, allowed = block_grid(T, size, horizon, is_query, device)
    return additive(allowed, dtype).unsqueeze(1).repeat(B, 1, 1, 1)


def block_grid(T: int, size: int, horizon: int | None, is_query: tuple[bool, ...] | None, device, span: int = 1):
    """Query positions i (nb, size, 1), key positions j (nb, 1, (span + 1)·size) of blocks of `size` queries against
    the keys of the `span` blocks before them and their own (j < 0 before the first block, j >= T past the end),
    and where `attends` lets i read j (nb, size, (span + 1)·size)."""
    nb = -(-T // size)
    blocks = torch.arange(nb, device=device)[:, None, None] * size
    i = blocks + torch.arange(size, device=device)[:, None]
    j = blocks - span * size + torch.arange((span + 1) * size, device=device)
    j_is_query = None
    if is_query is not None:  # padded: no position before 0 or past T is a query
        flags = torch.tensor((False,) + is_query + (False,), dtype=torch.bool, device=device)
        j_is_query = flags[(j + 1).clamp(0, T + 1)]
    return i, j, attends(i, j, horizon, j_is_query) & (j >= 0)
