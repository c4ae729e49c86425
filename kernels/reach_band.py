"""Reach's band term on the CPU: N_i = Σ_j p_ij min(0, i - h - j), nonzero only for the keys within h of query i
(kernels/flash_cpu.py derives reach from it and the fused pass).

Queries in blocks of `size` >= ceil(h) - 1 against the previous block's keys and their own, as two (M, size,
size) products over contiguous blocks (M = B·H·nb): block m's previous block is block m - 1, and where that
belongs to another (batch, head) the weights hide it. The lse is folded into the product (q with -lse_i / scale
as one more column, k with 1), the weight into what the product adds (log(-min(0, i - h - j)), -inf where the
weight is 0 or i may not read j), so u_ij = exp(s_ij - lse_i + log(-w_ij)) = -p_ij w_ij comes from one baddbmm
and one exp.
"""

from __future__ import annotations

import functools
import math

import torch

from constrained.kernels.band import block_grid


def reach_band_size(reach_h: float) -> int:
    """Blocks of ceil(h) queries: the keys with 0 <= i - j < h are at most ceil(h) - 1 back (one more than needed,
    so a block is never empty)."""
    return max(1, math.ceil(reach_h))


class ReachBand:
    """The band of one (B, H, T) shape, reach horizon and mask. Its products read q and k as (B, H, Tp, D + 1)
    contiguous tensors (Tp: T rounded up to whole blocks) with the extra column of the module docstring: the
    fused pass's own padded copies where they fit (`fits`), else `columns`."""

    def __init__(self, B: int, H: int, T: int, reach_h: float, horizon: int | None,
                 is_query: tuple[bool, ...] | None, device, dtype):
        self.T, self.size = T, reach_band_size(reach_h)
        self.nb = -(-T // self.size)
        self.Tp = self.nb * self.size
        self.log_prev, self.log_own = _log_weights(B * H, T, self.size, float(reach_h), horizon, is_query, device,
                                                   dtype)

    def fits(self, x: torch.Tensor) -> bool:
        return x.shape[2] == self.Tp and x.is_contiguous()

    def columns(self, x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(B, H, T, D) with `last` (expands to (B, H, T)) as one more column -> (B, H, Tp, D + 1), zeros past T."""
        B, H, T, D = x.shape
        out = x.new_zeros(B, H, self.Tp, D + 1)
        out[:, :, :T, :D] = x
        out[:, :, :T, D] = last
        return out

    def forward(self, q1, k1, scale: float):
        """N (B, H, T) from q1 (q with -lse / scale as its last column) and k1 (k with 1), and the -p·w of the
        previous and own keys (M, size, size) the backward reads."""
        qb, kb = self._blocks(q1), self._blocks(k1)
        own = torch.baddbmm(self.log_own, qb, kb.mT, alpha=scale).exp_()
        prev = torch.empty_like(own)
        prev[0] = 0  # the first block has no previous block
        torch.baddbmm(self.log_prev[1:], qb[1:], kb[:-1].mT, alpha=scale, out=prev[1:]).exp_()
        n = own.sum(-1).add_(prev.sum(-1)).neg_()  # (M, size)
        return n.view(q1.shape[0], q1.shape[1], self.Tp)[:, :, :self.T], (prev, own)

    def backward(self, g, prev, own, q1, k1, want_dk: bool = True):
        """The band's share of dq and dk (B, H, T, D), less the factor scale: dS_ij = g_i p_ij w_ij = -g_i u_ij for
        g = dN (B, H, T). dk None unless wanted."""
        gb = -torch.nn.functional.pad(g, (0, self.Tp - self.T)).reshape(-1, self.size, 1)
        d_own, d_prev = own * gb, prev * gb
        D = q1.shape[-1] - 1
        q_, k_ = self._blocks(q1)[..., :D], self._blocks(k1)[..., :D]
        dq = torch.bmm(d_own, k_)
        dq[1:].baddbmm_(d_prev[1:], k_[:-1])
        dk = None
        if want_dk:
            dk = torch.bmm(d_own.mT, q_)
            dk[:-1].baddbmm_(d_prev[1:].mT, q_[1:])
        return self._rows(dq, q1), (None if dk is None else self._rows(dk, q1))

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, self.size, x.shape[-1])

    def _rows(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.view(like.shape[0], like.shape[1], self.Tp, -1)[:, :, :self.T]


@functools.lru_cache(maxsize=32)
def _log_weights(BH, T, size, reach_h, horizon, is_query, device, dtype):
    """(M, size, size) each for the previous and own keys of every block: log(-min(0, i - h - j)) where i reads j
    and the weight is not 0, -inf elsewhere. Whole (M rows, not nb): the product adds them as it is written."""
    i, j, allowed = block_grid(T, size, horizon, is_query, device)
    w = (i.to(dtype) - reach_h - j.to(dtype)).clamp(max=0.0)
    log_w = torch.where(allowed & (w < 0), (-w).log(), torch.tensor(float("-inf"), dtype=dtype, device=device))
    return tuple(x.repeat(BH, 1, 1) for x in (log_w[..., :size], log_w[..., size:]))
