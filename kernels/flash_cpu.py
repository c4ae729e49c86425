"""The constrained attention on the CPU without the (T, T) pattern: torch's fused CPU flash attention (which also
returns each row's logsumexp) in a layout of kernels/band.py, with the options the fused op lacks.

- horizon: the `Band` layout, O(T·h).
- myopic gradient: dq is the full attention gradient (from the fused backward); each key and value gets gradient
  from its own query alone, as in the Triton kernel's myopic backward:

      p_jj = exp(s_jj - lse_j),  delta_j = do_j . o_j + dr_j r_j,  dS_jj = p_jj (do_j . v_j - delta_j),
      dk_j = dS_jj q_j / sqrt(Dh),  dv_j = p_jj do_j.

  With k_past, v_past (the same numbers as k, v, from another graph) the rest of the full gradient goes to them.
- reach r_i = Σ_j p_ij w_ij, w_ij = max(0, i - h - j) / T, without the pattern. For the keys i reads,
  max(0, i - h - j) = (i - h - j) - min(0, i - h - j), and Σ_j p_ij = 1, so

      T r_i = (i - h) - E_i - N_i,  E_i = Σ_j p_ij j,  N_i = Σ_j p_ij min(0, i - h - j).

  E_i is one more value column (the position j) in the fused pass (q gets a zero column, k any, so the scores
  stay); N_i is nonzero only for the keys within h of i: `ReachBand` (kernels/reach_band.py), p from the fused
  pass's lse.
  Backward: with g_i = -dr_i / T as do's extra column, the scores' gradient from reach is
  g_i p_ij (j + min(0, i - h - j) - E_i - N_i). The fused backward gives p_ij (g_i j - delta_i), and reads
  delta_i from the output it is handed: handing it E_i + N_i in the extra column puts g_i (E_i + N_i) there.
  What is left, g_i p_ij min(0, i - h - j), lives on the band.

Myopic descent's input form (`FlashCPUProjected`): the qkv projection and this attention in one Function, so that
the past keys and values need no second copy and the projection's gradient is built in one buffer.

Reach needs the position exactly: fp32 or fp64 only (`supports`). The backward is not the forward's derivative
with myopic (that is the point); tests compare everything with `attention_reference`.
"""

from __future__ import annotations

import math

import torch

from constrained.kernels.band import Band, Dense, band_size
from constrained.kernels.projection import split_heads
from constrained.kernels.reach_band import ReachBand

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def supports(dtype: torch.dtype, reach_h: float | None) -> bool:
    """Whether `FlashCPU` computes these options in this dtype: reach's position column needs fp32 or fp64."""
    return reach_h is None or dtype in (torch.float32, torch.float64)


def layout_for(B: int, T: int, horizon: int | None, is_query: tuple[bool, ...] | None, device, dtype):
    size = band_size(T, horizon)
    if size is None:
        return Dense(T, horizon, is_query, device, dtype)
    return Band(B, T, size, horizon, is_query, device, dtype)


def flash_forward(q, k, v, horizon=None, is_query=None, myopic=False, reach_h=None, past=False):
    """FlashCPU's forward: (out, r, saved, options); `flash_backward` takes saved and options back."""
    B, H, T, D = q.shape
    scale = 1.0 / math.sqrt(D)
    layout = layout_for(B, T, horizon, is_query, q.device, q.dtype)
    # no key lies beyond h: reach is exactly 0 (the identity below would leave rounding in its place)
    farthest = T - 1 if horizon is None else min(T, horizon) - 1
    reach = reach_h is not None and farthest > reach_h
    zero = one = pos = None
    if reach:
        pos = torch.arange(T, device=q.device, dtype=q.dtype)
        zero, one = pos.new_zeros(()), pos.new_ones(())
    qx, kx = layout.queries(q, zero), layout.keys(k, one)  # k's extra column meets q's zero: any value serves
    vx = layout.keys(v, pos)
    if layout.mask is None:
        ox, lse_x = _flash(qx, kx, vx, is_causal=True, scale=scale)[:2]
    else:
        ox, lse_x = _flash(qx, kx, vx, attn_mask=layout.mask, scale=scale)[:2]
    out = layout.rows(ox)
    r = band = None
    near = []
    if reach:
        out, e = out[..., :D], out[..., D]
        lse = layout.rows(lse_x)
        band = ReachBand(B, H, T, reach_h, horizon, is_query, q.device, q.dtype)
        # the fused pass's (B, H, T, D + 1) copies serve the band where they fit (qx's column lent meanwhile)
        shared = isinstance(layout, Dense) and band.fits(qx) and band.fits(kx)
        q1, k1 = (qx, kx) if shared else (band.columns(q, 0.0), band.columns(k, one))
        q1[:, :, :T, D] = -lse / scale
        n, near = band.forward(q1, k1, scale)  # N_i (B, H, T)
        if shared:
            qx[..., D] = 0
        else:
            near += [q1, k1]
        r = ((pos - reach_h) - e - n) / T
        ox[..., D] = layout.queries(e + n)  # what the backward's delta reads (module docstring)
    elif reach_h is not None:
        r = q.new_zeros(B, H, T)
    saved = (q, k, v, qx, kx, vx, ox, lse_x, r if reach else None, *near)
    return out, r, saved, (layout, band, myopic, past, scale)


def flash_backward(saved, options, want_dq, do, dr):
    """FlashCPU's backward: (dq, dk, dv, dk_past, dv_past), the last two None without past; dq may be None
    with myopic and without past where want_dq is false."""
    q, k, v, qx, kx, vx, ox, lse_x, r, *near = saved
    layout, band, myopic, past, scale = options
    D, T = q.shape[-1], q.shape[2]
    reach = r is not None
    if reach and dr is None:
        dr = torch.zeros_like(r)
    dq = dk_full = dv_full = None
    if not myopic or past or want_dq:
        g = None if not reach else -dr / T
        dox = layout.queries(do, g)
        dqx, dkx, dvx = _flash_backward(dox, qx, kx, vx, ox, lse_x, 0.0, layout.mask is None,
                                        attn_mask=layout.mask, scale=scale)[:3]
        want_dk = not myopic or past
        dq = layout.rows(dqx)[..., :D]
        if want_dk:
            dk_full, dv_full = layout.fold(dkx)[..., :D], layout.fold(dvx)[..., :D]
        if reach:
            us, copies = near[:band.span + 1], near[band.span + 1:]
            q1, k1 = copies or (qx, kx)
            dq_near, dk_near = band.backward(g, us, q1, k1, want_dk)
            # in place: dq, dk_full are views of the fused backward's fresh outputs (or fresh copies of them)
            dq.add_(dq_near, alpha=scale)
            if want_dk:
                dk_full.add_(dk_near, alpha=scale)
    if not myopic:
        return dq, dk_full, dv_full, None, None
    o = layout.rows(ox)[..., :D]
    lse = layout.rows(lse_x)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32  # as the Triton kernel accumulates
    qa, doa = q.to(acc), do.to(acc)
    p_own = torch.exp(torch.linalg.vecdot(qa, k.to(acc)) * scale - lse.to(acc))  # (B, H, T)
    ds_own = torch.linalg.vecdot(doa, v.to(acc) - o.to(acc))  # do_j . v_j - delta_j without reach's share
    if reach:
        ds_own = ds_own - dr.to(acc) * r.to(acc)
    ds_own = p_own * ds_own
    dk = ((ds_own * scale).unsqueeze(-1) * qa).to(k.dtype)
    dv = (p_own.unsqueeze(-1) * doa).to(v.dtype)
    if not past:
        return dq, dk, dv, None, None
    return dq, dk, dv, dk_full.sub_(dk), dv_full.sub_(dv)


class FlashCPU(torch.autograd.Function):
    """apply(q, k, v, horizon, is_query, myopic, reach_h, k_past, v_past) -> (out, r).

    is_query: the hashable key of kernels.band.query_key, or None; r: the per-row reach (B, H, T), None without
    reach_h. Arguments must already be validated (`attention` does it).
    """

    @staticmethod
    def forward(ctx, q, k, v, horizon=None, is_query=None, myopic=False, reach_h=None, k_past=None, v_past=None):
        out, r, saved, ctx.options = flash_forward(q, k, v, horizon, is_query, myopic, reach_h, k_past is not None)
        ctx.save_for_backward(*saved)
        return out, r

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dr):
        dq, dk, dv, dk_past, dv_past = flash_backward(ctx.saved_tensors, ctx.options, ctx.needs_input_grad[0], do, dr)
        return dq, dk, dv, None, None, None, None, dk_past, dv_past


class FlashCPUProjected(torch.autograd.Function):
    """Myopic descent's input form on this path, the qkv projection included: apply(x, weight, bias, n_heads,
    horizon, is_query, reach_h) -> (out, r), x the attention input (B, T, D).

    The same numbers as `ProjectionWithPast` (kernels/projection.py) feeding FlashCPU its past keys and values,
    without their second (B, T, 2D) copy and the gradient buffers autograd would give each view: the backward
    writes dq and the own-position dk, dv into one (B, T, 3D) buffer, takes the input's gradient from it, then adds
    the past keys' and values' gradient in place for the weight's and bias's (in the order the two-output version
    adds them, so every gradient is bit for bit the same)."""

    @staticmethod
    def forward(ctx, x, weight, bias, n_heads, horizon=None, is_query=None, reach_h=None):
        B, T, D = x.shape
        qkv = torch.nn.functional.linear(x, weight, bias)
        q, k, v = split_heads(qkv, n_heads, D // n_heads)
        out, r, saved, ctx.options = flash_forward(q, k, v, horizon, is_query, True, reach_h, True)
        ctx.save_for_backward(x, weight, *saved)
        ctx.has_bias = bias is not None
        return out, r

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dr):
        x, weight, *saved = ctx.saved_tensors
        dq, dk, dv, dk_past, dv_past = flash_backward(saved, ctx.options, True, do, dr)
        B, H, T, Dh = dq.shape
        grad = dq.new_empty(B, T, 3, H, Dh)
        for i, g in enumerate((dq, dk, dv)):
            grad[:, :, i] = g.transpose(1, 2)
        flat = grad.view(B * T, 3 * H * Dh)
        dx = (flat @ weight).view(x.shape) if ctx.needs_input_grad[0] else None
        grad[:, :, 1] += dk_past.transpose(1, 2)
        grad[:, :, 2] += dv_past.transpose(1, 2)
        dweight = flat.T @ x.reshape(-1, x.shape[-1])
        dbias = flat.sum(0) if ctx.has_bias else None
        return dx, dweight, dbias, None, None, None, None
