"""future_info: how much about the future is linearly decodable from hidden states.

    R²(Z | H) = tr(Zcᵀ Hc (HcᵀHc + εI)⁻¹ Hcᵀ Zc) / tr(Zcᵀ Zc),   ε = ε₀ · mean diag(HcᵀHc)

is the in-sample ridge R² of a future signal Z (N×d_z) from hidden states H (N×d), columns centred
over the N rows. It is what a freshly fitted linear probe would find, so a model cannot lower it by
moving the signal into low-variance directions (a linear-CKA penalty could be evaded that way).
ε scales with H, so R² does not change when H is rescaled; ε is held constant in the gradient.

Gradients (ε fixed, M = (HcᵀHc + εI)⁻¹ HcᵀZc, t = tr(ZcᵀZc), Hc M the ridge fit of Zc):

    ∂R²/∂H = 2 (Zc − Hc M) Mᵀ / t
    ∂R²/∂Z = 2 (Hc M − R² Zc) / t

Both are already column-centred (the columns of Zc, Hc and Hc M sum to zero), so the centring
contributes nothing further. Z gets a gradient too: it may be learned (e.g. a learned target).

This file holds, side by side:

- `_stats_kernel` (Triton): HᵀH, HᵀZ, Σ‖z‖² and column sums; the grid is row chunks × upper-triangle
  pairs of BLOCK_D-wide column tiles of HᵀH, each program writing its own partial sums (no atomics,
  so the result is deterministic; torch adds them up); centring is folded in algebraically, so no
  centred copy is made. When d fits one tile (d ≤ 64 on a GPU) it is one pass: each program loads
  its rows of H and Z once and takes every sum from that load. For wider H each program loads the
  two column tiles of its pair, so an H of n = d/BLOCK_D tiles is read n + 1 times (9 at d = 512)
  and Z n times (by the diagonal programs), though the programs of one row chunk, running side by
  side, may serve the re-reads from L2 (not measured). A single pass would need a d×d accumulator
  per program, beyond its registers and shared memory at d = 512;
- `_grad_kernel` (Triton): one more pass over H and Z that writes dH and dZ without materializing
  the residual;
- `future_info_reference`: the same math in plain PyTorch, differentiated by autograd;
- `FutureInfoTorch`: the reference's forward with the closed-form backward above (the CPU path): two
  products instead of autograd through the moments and the solve, which would solve again;
- `FutureInfo`: the autograd.Function over the two kernels (the small d×d solve stays in torch);
- `future_info`: the checked public entry with backend dispatch;
- `future_targets`, `residualize`: the default future signal (targets at t+2..t+K, residualized on
  the target at t).

Numerics: all sums accumulate in fp32 (fp64 for fp64 inputs). Both paths subtract the first row
before anything else: centring is shift-invariant, and sums of H − h₀ cancel far less than sums of
H when the columns have large means (the algebraic centring Σ hhᵀ − N μμᵀ would otherwise lose the
variance to rounding). fp16/bf16 H feed HᵀH to the tensor cores in their own dtype (products exact
in fp32); every other product uses fp32 operands at tf32x3 precision (about fp32 accuracy).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from constrained.common import formulas

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships for Linux x86_64 only (pyproject); the reference path needs none of it
    triton = tl = None

BACKENDS = ("auto", "triton", "torch", "reference")
MAX_DZ = 128  # one padded tile of Z columns per program; larger signals go to the reference


def _jit(fn):
    # Without triton the kernels stay plain functions that are never launched (future_info refuses
    # backend="triton" first); the string annotations (PEP 563) keep `tl.constexpr` unevaluated.
    return fn if triton is None else triton.jit(fn)


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------


@_jit
def _stats_kernel(
    h_ptr, z_ptr, pairs_ptr,
    hh_ptr, hz_ptr, sh_ptr, sz_ptr, zz_ptr,
    N, D, DZ, D_PAD, rows_per_chunk,
    stride_hn, stride_hd, stride_zn, stride_zd,
    HALF_DOT: tl.constexpr, PRECISION: tl.constexpr, SINGLE_TILE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Z: tl.constexpr,
):
    """Partial sums of one chunk of rows (axis 0) for one tile pair (ti ≤ tj) of HᵀH (axis 1).

    All sums are of the shifted rows h − h₀ and z − z₀ (h₀, z₀: row 0). Diagonal programs (ti = tj)
    also sum HᵢᵀZ and the columns of Hᵢ; the (0, 0) program also the columns of Z and of Z∘Z.
    Lower tiles of HᵀH are never computed (symmetry); the host mirrors the upper ones.
    SINGLE_TILE (d ≤ BLOCK_D, one pair): both sides of HᵀH come from one load of each row.
    """
    chunk = tl.program_id(0)
    pair = tl.program_id(1)
    ti = tl.load(pairs_ptr + 2 * pair)
    tj = tl.load(pairs_ptr + 2 * pair + 1)
    acc_t = hh_ptr.dtype.element_ty

    ci = ti * BLOCK_D + tl.arange(0, BLOCK_D)
    cj = tj * BLOCK_D + tl.arange(0, BLOCK_D)
    cz = tl.arange(0, BLOCK_Z)
    mi = ci < D
    mj = cj < D
    mz = cz < DZ
    h0i = tl.load(h_ptr + ci * stride_hd, mask=mi, other=0.0).to(acc_t)
    h0j = tl.load(h_ptr + cj * stride_hd, mask=mj, other=0.0).to(acc_t)
    z0 = tl.load(z_ptr + cz * stride_zd, mask=mz, other=0.0).to(acc_t)
    diag = ti == tj

    acc_hh = tl.zeros((BLOCK_D, BLOCK_D), dtype=acc_t)
    acc_hz = tl.zeros((BLOCK_D, BLOCK_Z), dtype=acc_t)
    acc_sh = tl.zeros((BLOCK_D,), dtype=acc_t)
    acc_sz = tl.zeros((BLOCK_Z,), dtype=acc_t)
    acc_zz = tl.zeros((BLOCK_Z,), dtype=acc_t)

    row_start = chunk * rows_per_chunk
    row_end = tl.minimum(row_start + rows_per_chunk, N)
    for r0 in range(row_start, row_end, BLOCK_N):
        rows = r0 + tl.arange(0, BLOCK_N)
        mr = rows < row_end
        rows64 = rows.to(tl.int64)  # row * stride can pass 2³¹ at N·d beyond 2G elements
        mask_i = mr[:, None] & mi[None, :]
        hi = tl.load(h_ptr + rows64[:, None] * stride_hn + ci[None, :] * stride_hd, mask=mask_i, other=0.0)
        # masked entries must be 0 after the shift, not −h₀, or they would enter every sum
        hi = tl.where(mask_i, hi.to(acc_t) - h0i[None, :], 0.0)
        if SINGLE_TILE:
            hj = hi
        else:
            mask_j = mr[:, None] & mj[None, :]
            hj = tl.load(h_ptr + rows64[:, None] * stride_hn + cj[None, :] * stride_hd, mask=mask_j, other=0.0)
            hj = tl.where(mask_j, hj.to(acc_t) - h0j[None, :], 0.0)
        if HALF_DOT:
            acc_hh = tl.dot(tl.trans(hi.to(h_ptr.dtype.element_ty)), hj.to(h_ptr.dtype.element_ty), acc_hh)
        else:
            acc_hh = tl.dot(tl.trans(hi), hj, acc_hh, input_precision=PRECISION)
        if diag:
            mask_z = mr[:, None] & mz[None, :]
            zt = tl.load(z_ptr + rows64[:, None] * stride_zn + cz[None, :] * stride_zd, mask=mask_z, other=0.0)
            zt = tl.where(mask_z, zt.to(acc_t) - z0[None, :], 0.0)
            acc_hz = tl.dot(tl.trans(hi), zt, acc_hz, input_precision=PRECISION)
            acc_sh += tl.sum(hi, axis=0)
            acc_sz += tl.sum(zt, axis=0)
            acc_zz += tl.sum(zt * zt, axis=0)

    # The partial buffers are padded to whole tiles, so the stores need no masks.
    tl.store(hh_ptr + chunk * D_PAD * D_PAD + ci[:, None] * D_PAD + cj[None, :], acc_hh)
    if diag:
        tl.store(hz_ptr + chunk * D_PAD * BLOCK_Z + ci[:, None] * BLOCK_Z + cz[None, :], acc_hz)
        tl.store(sh_ptr + chunk * D_PAD + ci, acc_sh)
        if ti == 0:
            tl.store(sz_ptr + chunk * BLOCK_Z + cz, acc_sz)
            tl.store(zz_ptr + chunk * BLOCK_Z + cz, acc_zz)


@_jit
def _grad_kernel(
    h_ptr, z_ptr, m_ptr, mu_h_ptr, mu_z_ptr, coef_ptr, dh_ptr, dz_ptr,
    N, D, DZ,
    stride_hn, stride_hd, stride_zn, stride_zd,
    stride_dhn, stride_dhd, stride_dzn, stride_dzd,
    NEED_DH: tl.constexpr, NEED_DZ: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Z: tl.constexpr,
):
    """One block of rows: P = Hc M, then dH = s (Zc − P) Mᵀ and dZ = s (P − R² Zc), s = 2g / t.

    H is read once (the first loop over d tiles builds P); the second loop only reads M tiles, so
    neither the residual nor the centred H ever goes to memory. coef_ptr holds (s, R²) on the
    device, so the backward needs no host synchronisation.
    """
    pid = tl.program_id(0)
    acc_t = m_ptr.dtype.element_ty
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mr = rows < N
    rows64 = rows.to(tl.int64)
    cz = tl.arange(0, BLOCK_Z)
    mz = cz < DZ
    mask_z = mr[:, None] & mz[None, :]

    mu_z = tl.load(mu_z_ptr + cz, mask=mz, other=0.0)
    zc = tl.load(z_ptr + rows64[:, None] * stride_zn + cz[None, :] * stride_zd, mask=mask_z, other=0.0)
    zc = tl.where(mask_z, zc.to(acc_t) - mu_z[None, :], 0.0)

    p = tl.zeros((BLOCK_N, BLOCK_Z), dtype=acc_t)
    for d0 in range(0, D, BLOCK_D):
        cd = d0 + tl.arange(0, BLOCK_D)
        md = cd < D
        mask_h = mr[:, None] & md[None, :]
        mu_h = tl.load(mu_h_ptr + cd, mask=md, other=0.0)
        hc = tl.load(h_ptr + rows64[:, None] * stride_hn + cd[None, :] * stride_hd, mask=mask_h, other=0.0)
        hc = tl.where(mask_h, hc.to(acc_t) - mu_h[None, :], 0.0)
        m = tl.load(m_ptr + cd[:, None] * DZ + cz[None, :], mask=md[:, None] & mz[None, :], other=0.0)
        p = tl.dot(hc, m, p, input_precision=PRECISION)

    scale = tl.load(coef_ptr)
    r2 = tl.load(coef_ptr + 1)
    if NEED_DZ:
        dz = scale * (p - r2 * zc)
        tl.store(dz_ptr + rows64[:, None] * stride_dzn + cz[None, :] * stride_dzd,
                 dz.to(dz_ptr.dtype.element_ty), mask=mask_z)
    if NEED_DH:
        r = zc - p  # zero in masked rows and columns: zc and p both are
        for d0 in range(0, D, BLOCK_D):
            cd = d0 + tl.arange(0, BLOCK_D)
            md = cd < D
            m = tl.load(m_ptr + cd[:, None] * DZ + cz[None, :], mask=md[:, None] & mz[None, :], other=0.0)
            dh = tl.dot(r, tl.trans(m), input_precision=PRECISION) * scale
            tl.store(dh_ptr + rows64[:, None] * stride_dhn + cd[None, :] * stride_dhd,
                     dh.to(dh_ptr.dtype.element_ty), mask=mr[:, None] & md[None, :])


# --------------------------------------------------------------------------------------------------
# Host side of the Triton path
# --------------------------------------------------------------------------------------------------


class _Config(NamedTuple):
    block_n: int
    block_d: int
    block_z: int
    n_split: int  # chunks of rows in the forward; each writes its own partial sums
    num_warps: int


def _interpreted() -> bool:
    """True when the kernels were decorated under TRITON_INTERPRET=1 (decided at import time)."""
    return triton is not None and type(_stats_kernel).__name__ == "InterpretedFunction"


def _launch_config(n: int, d: int, dz: int, device: torch.device) -> _Config:
    """Fixed block sizes by a simple rule (no autotuning: the interpreter cannot run several configs).

    On a GPU, enough row chunks to give every SM about two programs; in the interpreter (about 0.6 ms
    per program instance) small blocks and at most 3 chunks, so tests still cross tile boundaries.
    """
    block_z = max(16, triton.next_power_of_2(dz))  # tl.dot needs every dimension >= 16
    if device.type != "cuda":
        block_n, block_d = 32, 16
        return _Config(block_n, block_d, block_z, min(3, triton.cdiv(n, block_n)), 1)
    block_n, block_d = 64, min(64, max(16, triton.next_power_of_2(d)))
    n_tiles = triton.cdiv(d, block_d)
    n_pairs = n_tiles * (n_tiles + 1) // 2
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    # About two programs per SM, but at least 4 row blocks per chunk: every chunk writes a whole
    # d_pad² partial, which at small d and many chunks would outweigh reading H itself.
    n_split = max(1, min(triton.cdiv(2 * sms, n_pairs), triton.cdiv(n, 4 * block_n)))
    return _Config(block_n, block_d, block_z, n_split, 4)


@functools.lru_cache(maxsize=64)
def _tile_pairs(n_tiles: int, device: torch.device) -> torch.Tensor:
    """(n_pairs, 2) int32: the upper-triangle tile pairs (i ≤ j) of HᵀH, one per program on axis 1."""
    pairs = [(i, j) for j in range(n_tiles) for i in range(j + 1)]
    return torch.tensor(pairs, dtype=torch.int32, device=device)


def _acc_dtype(*xs: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def _precision(acc: torch.dtype, device: torch.device) -> str:
    # tf32x3: three tf32 tensor-core products recover about fp32 accuracy, at well above the FMA rate;
    # GPUs before Ampere have no tf32, and fp64 has no reduced-precision mode at all.
    if acc == torch.float64 or (device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0)):
        return "ieee"
    return "tf32x3"


def _triton_stats(h: torch.Tensor, z: torch.Tensor):
    """Centred second moments of h (N, d) and z (N, dz) by one pass of `_stats_kernel`.

    Returns (HcᵀHc (d, d), HcᵀZc (d, dz), tr(ZcᵀZc) (), μ_H (d,), μ_Z (dz,)) in the accumulation dtype.
    """
    n, d = h.shape
    dz = z.shape[1]
    acc = _acc_dtype(h, z)
    cfg = _launch_config(n, d, dz, h.device)
    n_tiles = triton.cdiv(d, cfg.block_d)
    d_pad = n_tiles * cfg.block_d
    pairs = _tile_pairs(n_tiles, h.device)
    rows_per_chunk = triton.cdiv(triton.cdiv(n, cfg.block_n), cfg.n_split) * cfg.block_n
    # Lower tiles of hh are never written and are never read either: triu() below selects (not
    # multiplies) the upper triangle, so whatever they hold, NaN included, cannot reach the result.
    hh = torch.empty(cfg.n_split, d_pad, d_pad, dtype=acc, device=h.device)
    hz = torch.empty(cfg.n_split, d_pad, cfg.block_z, dtype=acc, device=h.device)
    sh = torch.empty(cfg.n_split, d_pad, dtype=acc, device=h.device)
    sz = torch.empty(cfg.n_split, cfg.block_z, dtype=acc, device=h.device)
    zz = torch.empty(cfg.n_split, cfg.block_z, dtype=acc, device=h.device)
    half_dot = h.dtype in (torch.float16, torch.bfloat16) and acc == torch.float32
    _stats_kernel[(cfg.n_split, len(pairs))](
        h, z, pairs, hh, hz, sh, sz, zz,
        n, d, dz, d_pad, rows_per_chunk,
        h.stride(0), h.stride(1), z.stride(0), z.stride(1),
        HALF_DOT=half_dot, PRECISION=_precision(acc, h.device), SINGLE_TILE=n_tiles == 1,
        BLOCK_N=cfg.block_n, BLOCK_D=cfg.block_d, BLOCK_Z=cfg.block_z, num_warps=cfg.num_warps,
    )
    upper = hh.sum(0).triu()  # (d_pad, d_pad): the diagonal tiles are whole, so their upper halves are right
    s_hh = (upper + upper.triu(1).mT)[:d, :d]  # exactly symmetric
    s_hz = hz.sum(0)[:d, :dz]
    mean_h = sh.sum(0)[:d] / n  # means of the shifted rows
    mean_z = sz.sum(0)[:dz] / n
    chh = s_hh - n * torch.outer(mean_h, mean_h)
    chz = s_hz - n * torch.outer(mean_h, mean_z)
    tzz = (zz.sum(0)[:dz].sum() - n * mean_z.square().sum()).clamp_min(0)  # ≥ 0 up to rounding
    mu_h = h[0].to(acc) + mean_h
    mu_z = z[0].to(acc) + mean_z
    return chh, chz, tzz, mu_h, mu_z


def _triton_grads(h, z, m, mu_h, mu_z, coef, need_dh: bool, need_dz: bool):
    n, d = h.shape
    dz = z.shape[1]
    cfg = _launch_config(n, d, dz, h.device)
    dh = torch.empty_like(h) if need_dh else h  # an unused pointer still needs a valid tensor
    dzt = torch.empty_like(z) if need_dz else z
    _grad_kernel[(triton.cdiv(n, cfg.block_n),)](
        h, z, m.contiguous(), mu_h, mu_z, coef, dh, dzt,
        n, d, dz,
        h.stride(0), h.stride(1), z.stride(0), z.stride(1),
        dh.stride(0), dh.stride(1), dzt.stride(0), dzt.stride(1),
        NEED_DH=need_dh, NEED_DZ=need_dz, PRECISION=_precision(m.dtype, h.device),
        BLOCK_N=cfg.block_n, BLOCK_D=cfg.block_d, BLOCK_Z=cfg.block_z, num_warps=cfg.num_warps,
    )
    return (dh if need_dh else None), (dzt if need_dz else None)


# --------------------------------------------------------------------------------------------------
# Shared epilogue, reference, autograd.Function
# --------------------------------------------------------------------------------------------------


def _ridge_r2(chh: torch.Tensor, chz: torch.Tensor, tzz: torch.Tensor, eps0: float):
    """(R², M) from the centred moments; differentiable in chh, chz, tzz except through ε.

    ε gets a floor of the dtype's smallest normal number so that a constant H (chh = 0, chz = 0)
    gives M = 0 and R² = 0 instead of a singular solve; it is far below any real ridge.
    A constant Z (tzz = 0) gives R² = 0 rather than 0/0, with a zero (not NaN) gradient.
    """
    d = chh.shape[0]
    eps = (eps0 * chh.detach().diagonal().mean()).clamp_min(0) + torch.finfo(chh.dtype).tiny
    eye = torch.eye(d, dtype=chh.dtype, device=chh.device)

    def solve(c_hh, c_hz):  # (Chh + εI)⁻¹ Chz, (d, dz)
        # solve_ex: no error check, hence no host sync on CUDA; positive definite whenever eps0 > 0.
        return torch.linalg.solve_ex(c_hh + eps * eye, c_hz)[0]

    pos = tzz > 0
    # the formula the penalty_algebra spec proves; the guarded denominator only avoids 0/0
    r2, m = formulas.ridge_r2(chh, chz, torch.where(pos, tzz, torch.ones_like(tzz)), solve)
    return torch.where(pos, r2, torch.zeros_like(r2)), m


def future_info_reference(h: torch.Tensor, z: torch.Tensor, eps0: float = 1e-3) -> torch.Tensor:
    """R²(Z | H) in plain PyTorch, differentiable by autograd in h and z (ε detached).

    h (..., d), z (..., d_z) with the same leading shape, flattened to N rows. Computes in fp32
    (fp64 if either input is fp64) with autocast off: the centred moments are too cancellation-prone
    for half precision. Returns a 0-dim tensor in that dtype. Shapes and eps0 are checked here;
    finiteness only in `future_info` (it needs a host sync).
    """
    h2, z2 = _as_rows(h, z)
    _check_eps0(eps0)
    acc = _acc_dtype(h2, z2)
    with torch.autocast(device_type=h2.device.type, enabled=False):
        # Shift by the first row before centring, as the kernel does: same value, less cancellation.
        hs = h2.to(acc) - h2[:1].detach().to(acc)  # (N, d)
        zs = z2.to(acc) - z2[:1].detach().to(acc)  # (N, dz)
        hc, zc = formulas.centre(hs), formulas.centre(zs)
        r2, _ = _ridge_r2(hc.mT @ hc, hc.mT @ zc, zc.square().sum(), eps0)
    return r2


class FutureInfoTorch(torch.autograd.Function):
    """R²(Z | H) in PyTorch with the closed-form backward: forward(h (N, d), z (N, dz), eps0) -> 0-dim R².

    The forward is `future_info_reference`'s, op for op (same value); the backward is ∂R²/∂H =
    2 (Zc − Hc M) Mᵀ / t (`formulas.future_info_grad_h`, which the penalty_algebra spec proves; inlined here
    with t guarded) and ∂R²/∂Z = 2 (Hc M − R² Zc) / t, ε held constant as the reference holds it. Inputs are
    2-D rows (`future_info` flattens and checks them). The backward is not itself differentiable.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, z: torch.Tensor, eps0: float) -> torch.Tensor:
        acc = _acc_dtype(h, z)
        with torch.autocast(device_type=h.device.type, enabled=False):
            hc = formulas.centre(h.to(acc) - h[:1].to(acc))  # (N, d), shifted by row 0 as the reference does
            zc = formulas.centre(z.to(acc) - z[:1].to(acc))  # (N, dz)
            tzz = zc.square().sum()
            r2, m = _ridge_r2(hc.mT @ hc, hc.mT @ zc, tzz, eps0)
        ctx.save_for_backward(hc, zc, m, tzz, r2)
        ctx.dtypes = (h.dtype, z.dtype)
        return r2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        hc, zc, m, tzz, r2 = ctx.saved_tensors
        pos = tzz > 0  # a constant Z gives R² = 0 and a zero (not NaN) gradient, as in the reference
        scale = torch.where(pos, 2 * grad.to(tzz.dtype) / torch.where(pos, tzz, torch.ones_like(tzz)),
                            torch.zeros_like(tzz))
        dh = dz = None
        with torch.autocast(device_type=hc.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                if zc.shape[1] > hc.shape[1]:  # a wide signal: Hc (M Mᵀ) costs N·d² where (Hc M) Mᵀ costs N·d·dz
                    dh = (scale * (zc @ m.mT - hc @ (m @ m.mT))).to(ctx.dtypes[0])  # (N, d)
                else:
                    dh = (scale * ((zc - hc @ m) @ m.mT)).to(ctx.dtypes[0])  # (N, d)
            if ctx.needs_input_grad[1]:
                dz = (scale * (hc @ m - r2 * zc)).to(ctx.dtypes[1])  # (N, dz)
        return dh, dz, None


class FutureInfo(torch.autograd.Function):
    """R²(Z | H) by the Triton kernels: forward(h (N, d), z (N, dz), eps0) -> 0-dim R².

    Inputs are 2-D rows (`future_info` flattens and checks them). Saves M, μ_H, μ_Z, tr(ZcᵀZc) and
    R², so the backward streams H and Z once more and solves nothing. The backward is not itself
    differentiable (no double backward).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, z: torch.Tensor, eps0: float) -> torch.Tensor:
        chh, chz, tzz, mu_h, mu_z = _triton_stats(h, z)
        r2, m = _ridge_r2(chh, chz, tzz, eps0)
        ctx.save_for_backward(h, z, m, mu_h, mu_z, tzz, r2)
        return r2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        h, z, m, mu_h, mu_z, tzz, r2 = ctx.saved_tensors
        need_dh, need_dz = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_dh or need_dz):
            return None, None, None
        pos = tzz > 0
        scale = torch.where(pos, 2 * grad.to(tzz.dtype) / torch.where(pos, tzz, torch.ones_like(tzz)),
                            torch.zeros_like(tzz))
        coef = torch.stack([scale, r2]).contiguous()  # (2,): read by the kernel, no host sync
        dh, dz = _triton_grads(h, z, m, mu_h, mu_z, coef, need_dh, need_dz)
        return dh, dz, None


# --------------------------------------------------------------------------------------------------
# Public entry
# --------------------------------------------------------------------------------------------------


def _check_eps0(eps0: float) -> None:
    if not (isinstance(eps0, (int, float)) and math.isfinite(eps0) and eps0 >= 0):
        raise ValueError(f"future_info: eps0 must be a finite number >= 0, got {eps0!r}")


def _as_rows(h: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h (..., d), z (..., d_z) -> h (N, d), z (N, d_z), after the shape checks."""
    for name, x in (("h", h), ("z", z)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"future_info: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"future_info: {name} must have shape (..., features) with at least 2 dims, "
                             f"got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"future_info: {name} must be floating point, got {x.dtype}")
        if x.shape[-1] == 0:
            raise ValueError(f"future_info: {name} has no feature columns (shape {tuple(x.shape)})")
    if h.shape[:-1] != z.shape[:-1]:
        raise ValueError(f"future_info: h and z must have the same rows (leading shape): "
                         f"h {tuple(h.shape)} has N = {math.prod(h.shape[:-1])}, "
                         f"z {tuple(z.shape)} has N = {math.prod(z.shape[:-1])}")
    if h.device != z.device:
        raise ValueError(f"future_info: h and z must be on one device, got {h.device} and {z.device}")
    h2 = h.reshape(-1, h.shape[-1])  # (N, d)
    z2 = z.reshape(-1, z.shape[-1])  # (N, d_z)
    if h2.shape[0] < 2:
        raise ValueError(f"future_info: needs N >= 2 rows (centring leaves nothing of one row), got N = {h2.shape[0]}")
    return h2, z2


def future_info(h: torch.Tensor, z: torch.Tensor, eps0: float = 1e-3, backend: str = "auto",
                check_finite: bool = True) -> torch.Tensor:
    """In-sample ridge R² of the future signal z decoded linearly from hidden states h.

    Args:
        h: hidden states (..., d); leading dims are flattened to N rows.
        z: future signal (..., d_z), the same leading shape (row i of z belongs to row i of h).
        eps0: ridge ε relative to the mean variance of Hc (scale-free). eps0 = 0 is allowed but
            needs Hc of full column rank (N > d, no constant or collinear features); otherwise the
            solve is singular and the result inf/NaN (not checked: that would sync the GPU).
        backend: "auto" (Triton for CUDA tensors when triton is installed and d_z <= MAX_DZ, "torch"
            otherwise), "triton" (on CPU only under TRITON_INTERPRET=1, as the tests run it; fp32/fp64/fp16
            there, bf16 arithmetic is wrong in the interpreter), "torch" (`FutureInfoTorch`: the reference's
            forward, the closed-form backward) or "reference" (autograd through the reference).
        check_finite: raise on NaN/inf in h or z. It costs a pass over both and a host sync; a
            training loop that already checks its loss may turn it off.

    Returns:
        0-dim tensor in [0, 1] (fp32, or fp64 when an input is fp64), differentiable in h and z
        with ε held constant. A constant z (tr(ZcᵀZc) = 0) gives 0, not NaN; so does a constant h.
    """
    if backend not in BACKENDS:
        raise ValueError(f"future_info: backend must be one of {BACKENDS}, got {backend!r}")
    h2, z2 = _as_rows(h, z)
    _check_eps0(eps0)
    if check_finite:
        for name, x in (("h", h2), ("z", z2)):
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"future_info: {name} contains NaN or inf")
    if backend == "auto":
        fast = triton is not None and h2.device.type == "cuda" and z2.shape[1] <= MAX_DZ
        backend = "triton" if fast else "torch"
    if backend == "reference":
        return future_info_reference(h2, z2, eps0)
    if backend == "torch":
        return FutureInfoTorch.apply(h2, z2, float(eps0))
    if triton is None:
        raise ValueError("future_info: backend='triton' needs the triton package, which is not installed")
    if h2.device.type != "cuda" and not _interpreted():
        raise ValueError(f"future_info: backend='triton' needs CUDA tensors (got {h2.device}); on CPU it runs "
                         "only under TRITON_INTERPRET=1, set before the kernel module is imported")
    if _interpreted() and torch.bfloat16 in (h2.dtype, z2.dtype):
        raise ValueError("future_info: bf16 arithmetic is wrong in the Triton interpreter; use fp32/fp64/fp16")
    if z2.shape[1] > MAX_DZ:
        raise ValueError(f"future_info: backend='triton' supports d_z <= {MAX_DZ}, got {z2.shape[1]}; "
                         "use backend='reference'")
    return FutureInfo.apply(h2, z2, float(eps0))
