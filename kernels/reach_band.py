"""Reach's band term on the CPU: N_i = Σ_j p_ij min(0, i - h - j), nonzero only for the keys within h of query i
(kernels/flash_cpu.py derives reach from it and the fused pass).

Queries in blocks of `size` against their own keys and those of the `span` blocks before them (all keys within
h), as (M, size, size) products over contiguous blocks (M = B·H·nb): block m against block m - d, and where that
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


def reach_band_shape(reach_h: float) -> tuple[int, int]:
    """(size, span): blocks of `size` queries against their own keys and the `span` blocks before them. The keys
    with 0 <= i - j < h lie at most ceil(h) - 1 back; blocks of about h/2 read ~1.5 h keys per query (blocks of h,
    2 h), and blocks under 16 rows cost more per product than they save."""
    reach = max(1, math.ceil(reach_h))
    size = min(reach, max(16, -(-reach // 2)))
    return size, -(-(reach - 1) // size)


class ReachBand:
    """The band of one (B, H, T) shape, reach horizon and mask. Its products read q and k as (B, H, Tp, D + 1)
    contiguous tensors (Tp: T rounded up to whole blocks) with the extra column of the module docstring: the
    fused pass's own padded copies where they fit (`fits`), else `columns`."""

    def __init__(self, B: int, H: int, T: int, reach_h: float, horizon: int | None,
                 is_query: tuple[bool, ...] | None, device, dtype):
        self.T = T
        self.size, self.span = reach_band_shape(reach_h)
        self.nb = -(-T // self.size)
        self.Tp = self.nb * self.size
        # log weights by offset d: block m against block m - d
        self.log_w = _log_weights(B * H, T, self.size, self.span, float(reach_h), horizon, is_query, device, dtype)

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
        """N (B, H, T) from q1 (q with -lse / scale as its last column) and k1 (k with 1), and the -p·w against each
        offset's keys (M, size, size) the backward reads."""
        qb, kb = self._blocks(q1), self._blocks(k1)
        M = len(qb)
        us = []
        n = None
        for d, log_w in enumerate(self.log_w):
            u = qb.new_empty(M, self.size, self.size)
            u[:d] = 0  # blocks with no d-th block before them
            torch.baddbmm(log_w[d:], qb[d:], kb[:M - d].mT, alpha=scale, out=u[d:]).exp_()
            n = u.sum(-1) if n is None else n.add_(u.sum(-1))
            us.append(u)
        return n.neg_().view(q1.shape[0], q1.shape[1], self.Tp)[:, :, :self.T], us

    def backward(self, g, us, q1, k1, want_dk: bool = True):
        """The band's share of dq and dk (B, H, T, D), less the factor scale: dS_ij = g_i p_ij w_ij = -g_i u_ij for
        g = dN (B, H, T). dk None unless wanted."""
        gb = -torch.nn.functional.pad(g, (0, self.Tp - self.T)).reshape(-1, self.size, 1)
        qb, kb = self._blocks(q1), self._blocks(k1)  # whole rows, extra column too: contiguous products
        M = len(qb)
        dq = dk = None
        for d, u in enumerate(us):
            ds = u[d:] * gb[d:]
            if d == 0:
                dq = torch.bmm(ds, kb)
                dk = torch.bmm(ds.mT, qb) if want_dk else None
                continue
            dq[d:].baddbmm_(ds, kb[:M - d])
            if want_dk:
                dk[:M - d].baddbmm_(ds.mT, qb[d:])
        D = q1.shape[-1] - 1
        return self._rows(dq[..., :D], q1), (None if dk is None else self._rows(dk[..., :D], q1))

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, self.size, x.shape[-1])

    def _rows(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.reshape(like.shape[0], like.shape[1], self.Tp, x.shape[-1])[:, :, :self.T]


@functools.lru_cache(maxsize=32)
def _log_weights(BH, T, size, span, reach_h, horizon, is_query, device, dtype):
    """(M, size, size) for each offset d = 0..span (block m's queries against block m - d's keys): log(-min(0,
    i - h - j)) where i reads j and the weight is not 0, -inf elsewhere. Whole (M rows, not nb): the product adds
    them as it is written."""
    i, j, allowed = block_grid(T, size, horizon, is_query, device, span)
    w = (i.to(dtype) - reach_h - j.to(dtype)).clamp(max=0.0)
    log_w = torch.where(allowed & (w < 0), (-w).log(), torch.tensor(float("-inf"), dtype=dtype, device=device))
    chunks = log_w.split(size, -1)  # key blocks m - span, ..., m
    return tuple(chunks[span - d].repeat(BH, 1, 1) for d in range(span + 1))
