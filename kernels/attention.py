"""Fused causal attention with the constrained variants' options: horizon mask, myopic gradient, reach.

Plain fused attentions (scaled_dot_product_attention, flash-attention) take a causal flag or a dense
mask, and differentiate the function they compute. The constrained models need three things they
cannot give without a T×T matrix in memory:

- horizon h: the mask comes from `constrained.common.mask.attends`, the predicate the model and the z3 spec
  use, evaluated in-kernel per tile; key tiles wholly outside [i - h + 1, i] are never visited, so
  attention costs O(T·h) instead of O(T²).
- myopic gradient: keys and values of other positions are read as detached, so dK and dV come only
  from each position's own query (the diagonal term) and need no sweep over later queries.
- reach: attention mass beyond a soft horizon h weighted by excess distance, accumulated online next
  to the softmax denominator and differentiated inside the flash backward.

Side by side: the Triton kernels, the PyTorch reference of the same math (`attention_reference`: the
CPU path when the pattern is read), the same options through torch's fused attention (`attention_sdpa`, the
CPU path otherwise: `FlashCPU` in kernels/flash_cpu.py, a horizon in blocks of kernels/band.py, the myopic
backward and reach from the CPU flash op's logsumexp), the Triton autograd.Function (`FusedAttention`), and
the dispatching entry point (`attention`).
"""

import functools
import math
import numbers
import types

import torch

from constrained.common import formulas
from constrained.common.mask import attends
from constrained.kernels.band import options_mask, query_key
from constrained.kernels.flash_cpu import FlashCPU, FlashCPUProjected, supports
from constrained.kernels.projection import ProjectionWithPast, split_heads

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships for Linux x86-64 only; the reference path needs none of it

    class _NoTriton:
        """Stands in for triton and triton.language so the kernel definitions below still import."""

        constexpr = None

        @staticmethod
        def jit(fn):
            return fn

    triton = tl = _NoTriton()
    HAS_TRITON = False
    INTERPRETED = False
else:
    HAS_TRITON = True
    # True when the kernels run in Triton's CPU interpreter (tests only). triton.jit reads the switch
    # when the kernels below are decorated, but triton.language decorates its own helpers (tl.zeros)
    # when triton is first imported: both must have seen TRITON_INTERPRET=1 for the interpreter to work.
    INTERPRETED = bool(triton.knobs.runtime.interpret) and type(tl.zeros).__name__ == "InterpretedFunction"

BACKENDS = ("auto", "triton", "sdpa", "reference")
MAX_HEAD_DIM = 128


def _jit_with_language(fn):
    """triton.jit of `fn` itself (same code object, so the same source and bytecode).

    Only its globals gain `tl`: the interpreter patches triton.language through the globals of each
    jitted function, and mask.py must not import triton (it also serves z3 and CPU-only installs).
    """
    if not HAS_TRITON:
        return fn
    glob = {**fn.__globals__, "tl": tl}
    return triton.jit(types.FunctionType(fn.__code__, glob, fn.__name__, fn.__defaults__, fn.__closure__))


_attends = _jit_with_language(attends)


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _load(ptrs, row_ok, col_ok, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr):
    # masks only where a tile can cross T or the padded head dim: unmasked loads vectorize better
    if CHECK_ROWS:
        if CHECK_COLS:
            x = tl.load(ptrs, mask=row_ok & col_ok, other=0.0)
        else:
            x = tl.load(ptrs, mask=row_ok, other=0.0)
    else:
        if CHECK_COLS:
            x = tl.load(ptrs, mask=col_ok, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _allowed(i, j, T, horizon, IS_QUERY):
    """The model's mask predicate on a tile of (query i, key j) positions, plus the bounds of T."""
    j_is_query = None
    if IS_QUERY is not None:
        j_is_query = tl.load(IS_QUERY + j, mask=j < T, other=0) != 0
    return _attends(i, j, horizon, j_is_query) & (i < T) & (j < T)


@triton.jit
def _reach_weight(i, j, T, reach_h, ACC: tl.constexpr):
    # w_ij = max(0, i - j - h) / T, in the accumulation dtype so fp64 stays fp64
    return tl.maximum((i - j).to(ACC) - reach_h, 0.0) / T


@triton.jit
def _fwd_tiles(acc, l_i, m_i, r_i, q, K, V, IS_QUERY, offs_m, offs_d, lo, hi, T, scale, horizon, reach_h,
               stride_kt, stride_kd, stride_vt, stride_vd,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
               ACC: tl.constexpr, PRECISION: tl.constexpr):
    """Online-softmax sweep over key tiles [lo, hi); MASKED tiles evaluate the mask, the others are
    wholly allowed and in bounds."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kT = _load(K + offs_n[None, :] * stride_kt + offs_d[:, None] * stride_kd,
                   offs_n[None, :] < T, offs_d[:, None] < HEAD_DIM, MASKED, HEAD_DIM != BLOCK_D)  # (D, N)
        v = _load(V + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd,
                  offs_n[:, None] < T, offs_d[None, :] < HEAD_DIM, MASKED, HEAD_DIM != BLOCK_D)  # (N, D)
        s = tl.dot(q, kT, out_dtype=ACC, input_precision=PRECISION) * scale  # (M, N)
        if MASKED:
            s = tl.where(_allowed(offs_m[:, None], offs_n[None, :], T, horizon, IS_QUERY), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # a row with nothing allowed yet keeps m = -inf; exp(-inf - -inf) would be NaN
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_ref = m_new
        alpha = tl.exp(m_i - m_ref)
        p = tl.exp(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, out_dtype=ACC, input_precision=PRECISION)
        if reach_h is not None:
            w = _reach_weight(offs_m[:, None], offs_n[None, :], T, reach_h, ACC)
            r_i = r_i * alpha + tl.sum(p * w, 1)
        m_i = m_new
    return acc, l_i, m_i, r_i


@triton.jit
def _query_segments(m0, T, horizon, IS_QUERY, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key-tile bounds for the query tile [m0, m0 + BLOCK_M): masked [lo, full_lo), wholly allowed
    [full_lo, full_hi), masked [full_hi, hi). Tiles before lo (beyond the horizon) and from hi on
    (above the diagonal) are skipped."""
    hi = tl.minimum(m0 + BLOCK_M, T)
    full_hi = (m0 + 1) // BLOCK_N * BLOCK_N  # tiles ending at or before the first row's diagonal
    if horizon is not None:
        lo = tl.maximum(m0 - horizon + 1, 0) // BLOCK_N * BLOCK_N
        # allowed for every row of the tile: the last row's window starts at m0 + BLOCK_M - horizon
        full_lo = (tl.maximum(m0 + BLOCK_M - horizon, 0) + BLOCK_N - 1) // BLOCK_N * BLOCK_N
        full_lo = tl.minimum(tl.maximum(full_lo, lo), full_hi)
    else:
        lo = 0
        full_lo = 0
    if IS_QUERY is not None:  # query columns can sit anywhere: every tile evaluates the mask
        full_lo = lo
        full_hi = lo
    return lo, full_lo, full_hi, hi


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, R, IS_QUERY,
                stride_qb, stride_qh, stride_qt, stride_qd,
                stride_kb, stride_kh, stride_kt, stride_kd,
                stride_vb, stride_vh, stride_vt, stride_vd,
                stride_ob, stride_oh, stride_ot, stride_od,
                H, T, SCALE, horizon, REACH_H,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                ACC: tl.constexpr, PRECISION: tl.constexpr):
    """One query tile of one (batch, head): O, the row logsumexp and, with reach, the row reach r_i."""
    scale = tl.load(SCALE)
    reach_h = REACH_H
    if REACH_H is not None:
        reach_h = tl.load(REACH_H)
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    O += b * stride_ob + h * stride_oh
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load(Q + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
              offs_m[:, None] < T, offs_d[None, :] < HEAD_DIM, True, HEAD_DIM != BLOCK_D)  # (M, D)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    l_i = tl.zeros([BLOCK_M], dtype=ACC)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    r_i = tl.zeros([BLOCK_M], dtype=ACC)  # running sum_j exp(s_ij - m_i) w_ij, rescaled with l_i
    lo, full_lo, full_hi, hi = _query_segments(m0, T, horizon, IS_QUERY, BLOCK_M, BLOCK_N)
    acc, l_i, m_i, r_i = _fwd_tiles(acc, l_i, m_i, r_i, q, K, V, IS_QUERY, offs_m, offs_d, lo, full_lo, T, scale,
                                    horizon, reach_h, stride_kt, stride_kd, stride_vt, stride_vd,
                                    HEAD_DIM, BLOCK_D, BLOCK_N, True, ACC, PRECISION)
    acc, l_i, m_i, r_i = _fwd_tiles(acc, l_i, m_i, r_i, q, K, V, IS_QUERY, offs_m, offs_d, full_lo, full_hi, T,
                                    scale, horizon, reach_h, stride_kt, stride_kd, stride_vt, stride_vd,
                                    HEAD_DIM, BLOCK_D, BLOCK_N, False, ACC, PRECISION)
    acc, l_i, m_i, r_i = _fwd_tiles(acc, l_i, m_i, r_i, q, K, V, IS_QUERY, offs_m, offs_d, full_hi, hi, T,
                                    scale, horizon, reach_h, stride_kt, stride_kd, stride_vt, stride_vd,
                                    HEAD_DIM, BLOCK_D, BLOCK_N, True, ACC, PRECISION)

    # every real row reads at least itself (l >= 1); only padding rows past T have l = 0
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    m_safe = tl.where(m_i == float("-inf"), 0.0, m_i)
    row_ok = offs_m < T
    o = (acc / l_safe[:, None]).to(O.dtype.element_ty)
    tl.store(O + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od, o,
             mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))
    tl.store(LSE + bh * T + offs_m, m_safe + tl.log(l_safe), mask=row_ok)
    if reach_h is not None:
        tl.store(R + bh * T + offs_m, r_i / l_safe, mask=row_ok)


@triton.jit
def _bwd_preprocess(O, DO, R, DR, DELTA,
                    stride_ob, stride_oh, stride_ot, stride_od,
                    stride_dob, stride_doh, stride_dot, stride_dod,
                    H, T, REACH_H,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, ACC: tl.constexpr):
    """delta_i = rowsum(dO ∘ O) + dr_i · r_i: the row term that dS subtracts, reach's share folded in
    (dS_ij = A_ij (dP_ij + dr_i w_ij - delta_i))."""
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < T
    tile_ok = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od,
                mask=tile_ok, other=0.0).to(ACC)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod,
                 mask=tile_ok, other=0.0).to(ACC)
    delta = tl.sum(o * do, 1)
    if REACH_H is not None:
        r = tl.load(R + bh * T + offs_m, mask=row_ok, other=0.0)
        dr = tl.load(DR + bh * T + offs_m, mask=row_ok, other=0.0)
        delta += dr * r
    tl.store(DELTA + bh * T + offs_m, delta, mask=row_ok)


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, dr, K, V, IS_QUERY, offs_m, offs_d, lo, hi, T, scale, horizon, reach_h,
              stride_kt, stride_kd, stride_vt, stride_vd,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
              ACC: tl.constexpr, PRECISION: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load(K + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd,
                  offs_n[:, None] < T, offs_d[None, :] < HEAD_DIM, MASKED, HEAD_DIM != BLOCK_D)  # (N, D)
        vT = _load(V + offs_n[None, :] * stride_vt + offs_d[:, None] * stride_vd,
                   offs_n[None, :] < T, offs_d[:, None] < HEAD_DIM, MASKED, HEAD_DIM != BLOCK_D)  # (D, N)
        s = tl.dot(q, tl.trans(k), out_dtype=ACC, input_precision=PRECISION) * scale  # (M, N)
        if MASKED:
            s = tl.where(_allowed(offs_m[:, None], offs_n[None, :], T, horizon, IS_QUERY), s, float("-inf"))
        p = tl.exp(s - lse[:, None])
        dp = tl.dot(do, vT, out_dtype=ACC, input_precision=PRECISION)  # (M, N)
        if reach_h is not None:
            dp += dr[:, None] * _reach_weight(offs_m[:, None], offs_n[None, :], T, reach_h, ACC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, out_dtype=ACC, input_precision=PRECISION)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, DK, DV, LSE, DELTA, DR, IS_QUERY,
                   stride_qb, stride_qh, stride_qt, stride_qd,
                   stride_kb, stride_kh, stride_kt, stride_kd,
                   stride_vb, stride_vh, stride_vt, stride_vd,
                   stride_dob, stride_doh, stride_dot, stride_dod,
                   H, T, SCALE, horizon, REACH_H,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   MYOPIC: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """dQ of one query tile over every key it reads. With MYOPIC also this tile's dK and dV, which
    come from the diagonal term alone (other positions' keys and values are detached)."""
    scale = tl.load(SCALE)
    reach_h = REACH_H
    if REACH_H is not None:
        reach_h = tl.load(REACH_H)
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    DO += b * stride_dob + h * stride_doh
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < T
    col_ok = offs_d[None, :] < HEAD_DIM
    q = _load(Q + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
              row_ok[:, None], col_ok, True, HEAD_DIM != BLOCK_D)  # (M, D)
    do = _load(DO + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod,
               row_ok[:, None], col_ok, True, HEAD_DIM != BLOCK_D)  # (M, D)
    lse = tl.load(LSE + bh * T + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + bh * T + offs_m, mask=row_ok, other=0.0)
    dr = delta  # unused without reach
    if reach_h is not None:
        dr = tl.load(DR + bh * T + offs_m, mask=row_ok, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    lo, full_lo, full_hi, hi = _query_segments(m0, T, horizon, IS_QUERY, BLOCK_M, BLOCK_N)
    dq = _dq_tiles(dq, q, do, lse, delta, dr, K, V, IS_QUERY, offs_m, offs_d, lo, full_lo, T, scale, horizon,
                   reach_h, stride_kt, stride_kd, stride_vt, stride_vd, HEAD_DIM, BLOCK_D, BLOCK_N, True, ACC,
                   PRECISION)
    dq = _dq_tiles(dq, q, do, lse, delta, dr, K, V, IS_QUERY, offs_m, offs_d, full_lo, full_hi, T, scale, horizon,
                   reach_h, stride_kt, stride_kd, stride_vt, stride_vd, HEAD_DIM, BLOCK_D, BLOCK_N, False, ACC,
                   PRECISION)
    dq = _dq_tiles(dq, q, do, lse, delta, dr, K, V, IS_QUERY, offs_m, offs_d, full_hi, hi, T, scale, horizon,
                   reach_h, stride_kt, stride_kd, stride_vt, stride_vd, HEAD_DIM, BLOCK_D, BLOCK_N, True, ACC,
                   PRECISION)
    out_ok = row_ok[:, None] & col_ok
    # DQ, DK, DV are fresh contiguous (B, H, T, Dh) tensors
    rows = bh.to(tl.int64) * T * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DQ + rows, (dq * scale).to(DQ.dtype.element_ty), mask=out_ok)

    if MYOPIC:
        k = _load(K + offs_m[:, None] * stride_kt + offs_d[None, :] * stride_kd,
                  row_ok[:, None], col_ok, True, HEAD_DIM != BLOCK_D)  # (M, D): each row's own key
        v = _load(V + offs_m[:, None] * stride_vt + offs_d[None, :] * stride_vd,
                  row_ok[:, None], col_ok, True, HEAD_DIM != BLOCK_D)
        s_own = tl.sum(q.to(ACC) * k.to(ACC), 1) * scale
        p_own = tl.exp(s_own - lse)
        # reach adds nothing here: w_ii = max(0, -h) / T = 0
        ds_own = p_own * (tl.sum(do.to(ACC) * v.to(ACC), 1) - delta)
        tl.store(DK + rows, (ds_own[:, None] * q.to(ACC) * scale).to(DK.dtype.element_ty), mask=out_ok)
        tl.store(DV + rows, (p_own[:, None] * do.to(ACC)).to(DV.dtype.element_ty), mask=out_ok)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, Q, DO, LSE, DELTA, DR, IS_QUERY, offs_n, offs_d, lo, hi, T, scale, horizon, reach_h,
                stride_qt, stride_qd, stride_dot, stride_dod,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
                ACC: tl.constexpr, PRECISION: tl.constexpr):
    # transposed tiles (keys along rows) so dK and dV accumulate without a transpose per step.
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load(Q + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                  offs_m[:, None] < T, offs_d[None, :] < HEAD_DIM, MASKED, HEAD_DIM != BLOCK_D)  # (M, D)
        do = _load(DO + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod,
                   offs_m[:, None] < T, offs_d[None, :] < HEAD_DIM, MASKED, HEAD_DIM != BLOCK_D)  # (M, D)
        if MASKED:
            lse = tl.load(LSE + offs_m, mask=offs_m < T, other=0.0)
            delta = tl.load(DELTA + offs_m, mask=offs_m < T, other=0.0)
        else:
            lse = tl.load(LSE + offs_m)
            delta = tl.load(DELTA + offs_m)
        sT = tl.dot(k, tl.trans(q), out_dtype=ACC, input_precision=PRECISION) * scale  # (N, M)
        if MASKED:
            keep = _allowed(offs_m[None, :], offs_n[:, None], T, horizon, IS_QUERY)
            sT = tl.where(keep, sT, float("-inf"))
        pT = tl.exp(sT - lse[None, :])
        dv += tl.dot(pT.to(do.dtype), do, out_dtype=ACC, input_precision=PRECISION)
        dpT = tl.dot(v, tl.trans(do), out_dtype=ACC, input_precision=PRECISION)  # (N, M)
        if reach_h is not None:
            if MASKED:
                dr = tl.load(DR + offs_m, mask=offs_m < T, other=0.0)
            else:
                dr = tl.load(DR + offs_m)
            dpT += dr[None, :] * _reach_weight(offs_m[None, :], offs_n[:, None], T, reach_h, ACC)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, out_dtype=ACC, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, DR, IS_QUERY,
                     stride_qb, stride_qh, stride_qt, stride_qd,
                     stride_kb, stride_kh, stride_kt, stride_kd,
                     stride_vb, stride_vh, stride_vt, stride_vd,
                     stride_dob, stride_doh, stride_dot, stride_dod,
                     H, T, SCALE, horizon, REACH_H,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     ACC: tl.constexpr, PRECISION: tl.constexpr):
    """dK, dV of one key tile over the queries that read it: from its diagonal down to T, or with a
    horizon only to the last query whose window still covers the tile (not used with myopic: there the
    dq kernel writes dK, dV from the diagonal alone)."""
    scale = tl.load(SCALE)
    reach_h = REACH_H
    if REACH_H is not None:
        reach_h = tl.load(REACH_H)
    n0 = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    DO += b * stride_dob + h * stride_doh
    LSE += bh * T
    DELTA += bh * T
    if reach_h is not None:
        DR += bh * T
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_n < T
    col_ok = offs_d[None, :] < HEAD_DIM
    k = _load(K + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd,
              row_ok[:, None], col_ok, True, HEAD_DIM != BLOCK_D)  # (N, D)
    v = _load(V + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd,
              row_ok[:, None], col_ok, True, HEAD_DIM != BLOCK_D)  # (N, D)

    # query tiles: masked [lo, full_lo), wholly allowed [full_lo, full_hi), masked [full_hi, hi)
    lo = n0 // BLOCK_M * BLOCK_M
    hi = T
    full_lo = (n0 + BLOCK_N - 1 + BLOCK_M - 1) // BLOCK_M * BLOCK_M  # first row at or below the last key
    full_hi = T // BLOCK_M * BLOCK_M
    if horizon is not None:
        hi = tl.minimum(T, n0 + BLOCK_N - 1 + horizon)  # query i reads key j only while i - j < horizon
        full_hi = tl.minimum(full_hi, (n0 + horizon) // BLOCK_M * BLOCK_M)
    if IS_QUERY is not None:
        full_lo = lo
        full_hi = lo
    full_hi = tl.maximum(full_hi, full_lo)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q, DO, LSE, DELTA, DR, IS_QUERY, offs_n, offs_d, lo, tl.minimum(full_lo, hi),
                         T, scale, horizon, reach_h, stride_qt, stride_qd, stride_dot, stride_dod,
                         HEAD_DIM, BLOCK_D, BLOCK_M, True, ACC, PRECISION)
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q, DO, LSE, DELTA, DR, IS_QUERY, offs_n, offs_d, full_lo, full_hi,
                         T, scale, horizon, reach_h, stride_qt, stride_qd, stride_dot, stride_dod,
                         HEAD_DIM, BLOCK_D, BLOCK_M, False, ACC, PRECISION)
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q, DO, LSE, DELTA, DR, IS_QUERY, offs_n, offs_d, full_hi, hi,
                         T, scale, horizon, reach_h, stride_qt, stride_qd, stride_dot, stride_dod,
                         HEAD_DIM, BLOCK_D, BLOCK_M, True, ACC, PRECISION)
    rows = bh.to(tl.int64) * T * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    out_ok = row_ok[:, None] & col_ok
    tl.store(DK + rows, (dk * scale).to(DK.dtype.element_ty), mask=out_ok)
    tl.store(DV + rows, dv.to(DV.dtype.element_ty), mask=out_ok)


# ----------------------------------------------------------------------------------------------
# Launch configuration and host-side launchers
# ----------------------------------------------------------------------------------------------


def _config(dtype: torch.dtype, head_dim: int) -> dict:
    """Fixed tile sizes per head dim and dtype (multi-config autotune crashes the interpreter).

    The interpreter runs every program instance in Python (~0.6 ms each), so there the tiles are the
    smallest tl.dot accepts. fp64 tiles stay small: fp64 dots take 4× the registers of fp16.
    Keys: fwd / dq are (query tile, key tile); dkdv is (query tile, key tile) too.
    """
    if INTERPRETED:
        return {"fwd": (16, 16), "dq": (16, 16), "dkdv": (16, 16), "warps": 4, "stages": 1}
    if dtype == torch.float64:
        return {"fwd": (32, 32), "dq": (32, 32), "dkdv": (32, 32), "warps": 4, "stages": 1}
    if head_dim <= 64:
        return {"fwd": (128, 64), "dq": (128, 32), "dkdv": (32, 128), "warps": 4, "stages": 3}
    return {"fwd": (128, 64), "dq": (64, 64), "dkdv": (64, 64), "warps": 8, "stages": 2}


def _acc_dtype(dtype: torch.dtype):
    # fp64 accumulates in fp64 (so gradcheck holds); everything narrower in fp32
    return tl.float64 if dtype == torch.float64 else tl.float32


def _row_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _precision(dtype: torch.dtype) -> str:
    # fp32 follows torch's own matmul switch, so the kernel is as exact as the eager path it replaces
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _strides(x: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(x.stride())


@functools.lru_cache(maxsize=64)
def _constants(scale: float, reach_h: float | None, dtype: torch.dtype, device: torch.device):
    """(SCALE, REACH_H) pointers for the kernels: the softmax scale and the reach horizon in the row
    dtype, REACH_H None without reach. A float argument reaches a compiled kernel as fp32, which would
    round both for fp64 inputs. Cached, so a training step copies nothing to the device."""
    values = torch.tensor([scale, 0.0 if reach_h is None else reach_h], dtype=_row_dtype(dtype), device=device)
    return values[0:], (None if reach_h is None else values[1:])


def _fwd(q, k, v, horizon, reach_h, is_query):
    """O (B, H, T, Dh), logsumexp per row (B·H, T), reach per row (B·H, T) or None."""
    B, H, T, Dh = q.shape
    cfg = _config(q.dtype, Dh)
    scale, reach_ptr = _constants(1.0 / math.sqrt(Dh), reach_h, q.dtype, q.device)
    block_m, block_n = cfg["fwd"]
    o = torch.empty((B, H, T, Dh), dtype=q.dtype, device=q.device)
    lse = torch.empty((B * H, T), dtype=_row_dtype(q.dtype), device=q.device)
    r = torch.empty_like(lse) if reach_h is not None else None
    if B * H == 0:  # an empty grid is not launchable
        return o, lse, r
    grid = (triton.cdiv(T, block_m), B * H)
    _fwd_kernel[grid](
        q, k, v, o, lse, r, is_query,
        *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        H, T, scale, horizon, reach_ptr,
        HEAD_DIM=Dh, BLOCK_D=_block_d(Dh), BLOCK_M=block_m, BLOCK_N=block_n,
        ACC=_acc_dtype(q.dtype), PRECISION=_precision(q.dtype),
        num_warps=cfg["warps"], num_stages=cfg["stages"],
    )
    return o, lse, r


def _bwd(do, q, k, v, o, lse, r, dr, horizon, reach_h, is_query, myopic, past=False):
    """dq, dk, dv for dO and, with reach, the gradient dr of the per-row reach (B·H, T). With myopic and past,
    also the gradient of the keys and values other positions read: (dq, dk, dv, dk_past, dv_past), dk and dv
    the diagonal terms, dk_past and dv_past the rest of the full gradient."""
    B, H, T, Dh = q.shape
    cfg = _config(q.dtype, Dh)
    acc, block_d = _acc_dtype(q.dtype), _block_d(Dh)
    if dr is None:  # reach computed but not differentiated: its backward terms vanish
        reach_h = None
    scale, reach_ptr = _constants(1.0 / math.sqrt(Dh), reach_h, q.dtype, q.device)
    if B * H == 0:
        zeros = (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v))
        return zeros + (torch.zeros_like(k), torch.zeros_like(v)) if myopic and past else zeros
    delta = torch.empty_like(lse)
    pre_m = cfg["dq"][0]
    _bwd_preprocess[(triton.cdiv(T, pre_m), B * H)](
        o, do, r, dr, delta, *_strides(o), *_strides(do), H, T, reach_ptr,
        HEAD_DIM=Dh, BLOCK_D=block_d, BLOCK_M=pre_m, ACC=acc, num_warps=cfg["warps"],
    )
    dq = torch.empty((B, H, T, Dh), dtype=q.dtype, device=q.device)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(dq)
    common = (H, T, scale, horizon, reach_ptr)
    block_m, block_n = cfg["dq"]
    _bwd_dq_kernel[(triton.cdiv(T, block_m), B * H)](
        q, k, v, do, dq, dk, dv, lse, delta, dr, is_query,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *common,
        HEAD_DIM=Dh, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n, MYOPIC=myopic,
        ACC=acc, PRECISION=_precision(q.dtype), num_warps=cfg["warps"], num_stages=cfg["stages"],
    )
    if myopic and not past:  # the dq kernel already wrote dk, dv from the diagonal: the only gradient they get
        return dq, dk, dv
    # the full dk, dv (into their own buffers when the dq kernel wrote the diagonal terms into dk, dv)
    dk_full, dv_full = (torch.empty_like(dq), torch.empty_like(dq)) if myopic else (dk, dv)
    block_m, block_n = cfg["dkdv"]
    _bwd_dkdv_kernel[(triton.cdiv(T, block_n), B * H)](
        q, k, v, do, dk_full, dv_full, lse, delta, dr, is_query,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *common,
        HEAD_DIM=Dh, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
        ACC=acc, PRECISION=_precision(q.dtype), num_warps=cfg["warps"], num_stages=cfg["stages"],
    )
    if myopic:
        return dq, dk, dv, dk_full - dk, dv_full - dv
    return dq, dk, dv


def _block_d(head_dim: int) -> int:
    # tl.dot needs every tile dim >= 16 and a power of two; the padding lanes load as zero
    return max(16, triton.next_power_of_2(head_dim))


# ----------------------------------------------------------------------------------------------
# PyTorch reference (the CPU path when the pattern is read)
# ----------------------------------------------------------------------------------------------


def reach_weights(T: int, reach_h: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """(T, T) weights w_ij = max(0, i - j - h) / T: excess distance beyond the soft horizon."""
    pos = torch.arange(T, device=device, dtype=dtype)
    return formulas.reach_weight(pos[:, None], pos[None, :], T, reach_h, lambda x: x.clamp(min=0))  # (T, T)


@functools.lru_cache(maxsize=32)
def _cached_reach_weights(T: int, reach_h: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return reach_weights(T, reach_h, device, dtype)  # the model asks for the same weights every step


def reach_from_pattern(pattern: torch.Tensor, reach_h: float) -> torch.Tensor:
    """Reach of an attention pattern (..., T, T): mean over every leading index and query i of
    Σ_j A_ij · max(0, i - j - h) / T."""
    T = pattern.shape[-1]
    w = _cached_reach_weights(T, float(reach_h), pattern.device, _row_dtype(pattern.dtype))
    return formulas.reach_rows(pattern, w).mean()


def attention_reference(q, k, v, horizon=None, myopic=False, reach_h=None, is_query=None, pattern_hook=None,
                        past=None):
    """Masked-softmax attention with the kernel's options, materializing the (T, T) pattern: the CPU path
    of the constrained model when a hook reads the pattern or reach is asked for, and the reference the
    Triton kernel and `attention_sdpa` are tested against.

    Returns (out (B, H, T, Dh), reach scalar or None). myopic reads other positions' keys and values from
    past = (k_past, v_past), by default k and v detached: the forward is plain attention (past holds the same
    numbers as k, v), only the gradient is split: k and v get the diagonal term alone (each key and value from
    its own query), past the rest. pattern_hook(pattern) -> pattern, when given,
    sees (and may replace) the (B, H, T, T) attention pattern: the model's hook_pattern.
    """
    _validate(q, k, v, horizon, reach_h, is_query)
    T, Dh = q.shape[-2:]
    scale = 1.0 / math.sqrt(Dh)
    # additive: 0 where `attends`, -inf elsewhere; adding it gives masked_fill's values in one pass fewer
    mask = options_mask(T, horizon, query_key(is_query), q.device, q.dtype)  # (T, T)
    if myopic:
        k_past, v_past = (k.detach(), v.detach()) if past is None else past
        eye = torch.eye(T, dtype=torch.bool, device=q.device)
        own = (q * k).sum(-1) * scale  # (B, H, T): each query against its own key
        scores = (q @ k_past.transpose(-1, -2)) * scale  # (B, H, T, T)
        scores = torch.where(eye, own.unsqueeze(-1), scores)
    else:
        scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, T, T)
    scores = scores + mask
    # the softmax in at least fp32, as the kernel accumulates it
    pattern = torch.softmax(scores, dim=-1, dtype=_row_dtype(q.dtype))  # (B, H, T, T)
    if pattern_hook is not None:
        pattern = pattern_hook(pattern)
    if myopic:
        diag = pattern.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)  # (B, H, T, 1)
        out = pattern.masked_fill(eye, 0.0).to(q.dtype) @ v_past + diag.to(q.dtype) * v
    else:
        out = pattern.to(q.dtype) @ v
    reach = None if reach_h is None else reach_from_pattern(pattern, reach_h)
    return out, reach


# ----------------------------------------------------------------------------------------------
# torch's fused attention with the options (the CPU path when no pattern is read)
# ----------------------------------------------------------------------------------------------


def attention_sdpa(q, k, v, horizon=None, myopic=False, is_query=None, past=None, reach_h=None):
    """Causal attention with the options through torch's fused attention, no pattern in memory: on the CPU
    `FlashCPU` (kernels/flash_cpu.py: a horizon in blocks, the myopic gradient, reach); elsewhere
    scaled_dot_product_attention with the options' mask as a matrix (no myopic, no reach). Returns (out, r), r
    the per-row reach (B, H, T) or None; arguments must already be validated."""
    if q.device.type == "cpu":
        return FlashCPU.apply(q, k, v, horizon, query_key(is_query), myopic, reach_h, *(past or ()))
    mask = options_mask(q.shape[2], horizon, query_key(is_query), q.device)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask), None


# ----------------------------------------------------------------------------------------------
# autograd.Function and the public entry point
# ----------------------------------------------------------------------------------------------


class FusedAttention(torch.autograd.Function):
    """Triton attention: apply(q, k, v, horizon, myopic, reach_h, is_query) -> (out, r).

    r is the per-row reach (B, H, T) (None without reach_h); reach is its mean. Arguments must
    already be validated (`attention` does it). With myopic the backward is the myopic gradient,
    which is not the derivative of the forward: gradcheck applies only without it; k_past, v_past (myopic
    only) receive the off-diagonal part of the full dk, dv.
    """

    @staticmethod
    def forward(ctx, q, k, v, horizon=None, myopic=False, reach_h=None, is_query=None, k_past=None, v_past=None):
        B, H, T, _ = q.shape
        if is_query is not None:
            is_query = is_query.to(device=q.device, dtype=torch.int8).contiguous()  # (T,)
        o, lse, r = _fwd(q, k, v, horizon, reach_h, is_query)
        ctx.save_for_backward(q, k, v, o, lse, r, is_query)
        ctx.options = (horizon, myopic, reach_h, k_past is not None)
        if r is not None:
            r = r.view(B, H, T)  # (B·H, T) -> (B, H, T)
        return o, r

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dr):
        q, k, v, o, lse, r, is_query = ctx.saved_tensors
        horizon, myopic, reach_h, past = ctx.options
        B, H, T, _ = q.shape
        if dr is not None:
            dr = dr.reshape(B * H, T).to(lse.dtype).contiguous()  # (B, H, T) -> (B·H, T)
        grads = _bwd(do, q, k, v, o, lse, r, dr, horizon, reach_h, is_query, myopic, past)
        return *grads[:3], None, None, None, None, *(grads[3:] if len(grads) == 5 else (None, None))


def _validate(q, k, v, horizon, reach_h, is_query) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a (B, H, T, Dh) tensor, got {shape}")
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"q, k, v must have the same shape (B, H, T, Dh), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype or not q.is_floating_point():
        raise ValueError(f"q, k, v must share one float dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[2] < 1 or q.shape[3] < 1:
        raise ValueError(f"T and Dh must be >= 1, got shape {tuple(q.shape)}")
    _validate_options(q.shape[2], horizon, reach_h, is_query)


def _validate_options(T, horizon, reach_h, is_query) -> None:
    if horizon is not None:
        if isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral):
            raise ValueError(f"horizon must be an int or None, got {horizon!r}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1 (or None for no horizon), got {horizon}")
    if reach_h is not None:
        if isinstance(reach_h, bool) or not isinstance(reach_h, numbers.Real):
            raise ValueError(f"reach_h must be a number or None, got {reach_h!r}")
        if not reach_h >= 0:  # also rejects NaN
            raise ValueError(f"reach_h must be >= 0, got {reach_h}")
    if is_query is not None:
        if not isinstance(is_query, torch.Tensor) or tuple(is_query.shape) != (T,) or is_query.is_floating_point():
            shape = tuple(is_query.shape) if isinstance(is_query, torch.Tensor) else type(is_query).__name__
            raise ValueError(f"is_query must be a bool tensor of shape (T,) = ({T},), got {shape}")


def _validate_past(q, k, v, myopic, past) -> None:
    if not myopic:
        raise ValueError("past (the keys and values other positions read) applies only with myopic=True")
    if not (isinstance(past, (tuple, list)) and len(past) == 2 and all(isinstance(x, torch.Tensor) for x in past)):
        raise ValueError("past must be a pair of tensors (k_past, v_past)")
    for name, x, ref in (("k_past", past[0], k), ("v_past", past[1], v)):
        if x.shape != ref.shape or x.dtype != ref.dtype or x.device != ref.device:
            raise ValueError(f"{name} must match {'k' if name == 'k_past' else 'v'} in shape, dtype and device, "
                             f"got {tuple(x.shape)} {x.dtype} {x.device}")


def resolve_backend(backend: str, device: torch.device, head_dim: int, myopic: bool = False,
                    reach_h: float | None = None, dtype: torch.dtype = torch.float32) -> str:
    """The path `attention` takes when an option is set and no hook reads the pattern: "auto" means Triton
    for CUDA tensors whose head dim one tile holds (<= MAX_HEAD_DIM); else torch's fused attention ("sdpa"):
    on the CPU every option (reach in fp32 and fp64: `FlashCPU`), elsewhere neither myopic (its backward needs
    the CPU flash op's logsumexp) nor reach; else the reference, as future_info does for wide signals."""
    if backend != "auto":
        return backend
    if HAS_TRITON and device.type == "cuda" and head_dim <= MAX_HEAD_DIM:
        return "triton"
    if device.type == "cpu" and supports(dtype, reach_h):
        return "sdpa"
    if reach_h is None and not myopic:
        return "sdpa"
    return "reference"


def attention(q, k, v, horizon=None, myopic=False, reach_h=None, is_query=None, backend="auto", pattern_hook=None,
              past=None):
    """Causal attention of q, k, v (B, H, T, Dh) with scale 1/sqrt(Dh) -> (out, reach).

    horizon: position i reads only j with i - h < j <= i (constrained.common.mask.attends).
    myopic: myopic descent's gradient: a position's own key and value get gradient from its own query
        only; the keys and values other positions read are constants (no gradient at all, so no dK/dV
        sweep over later queries). Forward unchanged.
    past: with myopic, (k_past, v_past), the keys and values other positions read, equal in value to k, v but
        from their own graph: they get the rest of the full gradient (the off-diagonal terms). Myopic descent's
        input form passes keys and values recomputed from the detached attention input, so the projections
        still learn from every position and nothing below the attention input does; None is the strict form.
    reach_h: also return reach, mean over (B, H, i) of Σ_j A_ij max(0, i - j - reach_h) / T, a
        differentiable scalar (in fp32 for half inputs); None otherwise.
    is_query: bool (T,), the concatenated-format clause: no position reads a query token but itself.
    backend: "auto" (plain causal attention without a pattern hook: scaled_dot_product_attention with
        is_causal on any device; with an option: `resolve_backend`, i.e. Triton on CUDA tensors with Dh <=
        MAX_HEAD_DIM, else "sdpa" where it can, else the PyTorch reference), "triton" (CUDA, or CPU under
        TRITON_INTERPRET=1 in fp32/fp64/fp16), "sdpa" (`attention_sdpa`: myopic on CPU only, reach on CPU in
        fp32/fp64 only), "reference".
    pattern_hook: a function of the (B, H, T, T) pattern (the model's hook_pattern); only the reference
        materializes the pattern, so a hook sends "auto" there.

    This is the one dispatch of the model's attention (constrained.models.attention calls it).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if past is not None:
        _validate_past(q, k, v, myopic, past)
    plain = not myopic and reach_h is None and horizon is None and is_query is None
    if backend == "auto" and pattern_hook is not None:
        backend = "reference"
    if backend == "auto" and plain:
        _validate(q, k, v, horizon, reach_h, is_query)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), None
    if isinstance(q, torch.Tensor) and q.dim() == 4:  # a malformed q gets its error from _validate
        backend = resolve_backend(backend, q.device, q.shape[-1], myopic, reach_h, q.dtype)
    if backend == "reference":
        return attention_reference(q, k, v, horizon, myopic, reach_h, is_query, pattern_hook, past)
    _validate(q, k, v, horizon, reach_h, is_query)
    if backend == "sdpa":
        if pattern_hook is not None:
            raise ValueError("backend='sdpa' never forms the attention pattern, so it runs no pattern hook; "
                             "use backend='auto' or 'reference'")
        if (myopic or reach_h is not None) and q.device.type != "cpu":
            raise ValueError(f"backend='sdpa' with myopic or reach needs CPU tensors (got {q.device}); "
                             "use backend='auto'")
        if not supports(q.dtype, reach_h):
            raise ValueError(f"backend='sdpa' computes reach in fp32 or fp64 only (got {q.dtype}); "
                             "use backend='auto'")
        out, r = attention_sdpa(q, k, v, None if horizon is None else int(horizon), bool(myopic), is_query, past,
                                None if reach_h is None else float(reach_h))
        return out, (None if r is None else r.mean())
    if not HAS_TRITON:
        raise ValueError("backend='triton' needs triton installed")
    if not (q.is_cuda or INTERPRETED):
        raise ValueError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is imported")
    if INTERPRETED and q.dtype == torch.bfloat16:
        raise ValueError("backend='triton': bf16 arithmetic is wrong in the Triton interpreter (TRITON_INTERPRET=1); "
                         "use fp32/fp64/fp16 there")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"the Triton kernel supports head dims up to {MAX_HEAD_DIM}, got {q.shape[-1]}; "
                         "use backend='auto' or 'reference'")
    out, r = FusedAttention.apply(q, k, v, None if horizon is None else int(horizon), bool(myopic),
                                  None if reach_h is None else float(reach_h), is_query, *(past or ()))
    return out, (None if r is None else r.mean())


def attention_input_form(x, weight, bias, n_heads, horizon=None, reach_h=None, is_query=None, backend="auto",
                         pattern_hook=None):
    """Myopic descent's input form from the attention input x (B, T, D): the qkv projection (weight, bias), then
    `attention` with myopic, whose past keys and values are the projections of x as a constant (their gradient
    reaches weight and bias, not x) -> (out, reach). Where `attention` would take torch's fused CPU path, one
    Function does both (`FlashCPUProjected`, the same numbers with fewer copies); elsewhere `ProjectionWithPast`
    gives `attention` the past keys and values."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] % n_heads:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a (B, T, D) tensor with D divisible by n_heads = {n_heads}, got {shape}")
    B, T, D = x.shape
    if (pattern_hook is None and x.device.type == "cpu" and x.is_floating_point()
            and resolve_backend(backend, x.device, D // n_heads, True, reach_h, x.dtype) == "sdpa"):
        _validate_options(T, horizon, reach_h, is_query)
        if not supports(x.dtype, reach_h):
            raise ValueError(f"backend='sdpa' computes reach in fp32 or fp64 only (got {x.dtype}); "
                             "use backend='auto'")
        out, r = FlashCPUProjected.apply(x, weight, bias, n_heads, None if horizon is None else int(horizon),
                                         query_key(is_query), None if reach_h is None else float(reach_h))
        return out, (None if r is None else r.mean())
    qkv, kv = ProjectionWithPast.apply(x, weight, bias, D)
    q, k, v = split_heads(qkv, n_heads, D // n_heads)  # each (B, H, T, Dh)
    k_past, v_past = split_heads(kv, n_heads, D // n_heads)
    return attention(q, k, v, horizon=horizon, myopic=True, reach_h=reach_h, is_query=is_query, backend=backend,
                     pattern_hook=pattern_hook, past=(k_past, v_past))
