"""Attention's scaled, masked softmax in one pass per row, forward and backward.

P = softmax(dtype(S · scaling) + mask) in fp32, stored in P's dtype: the dtype flow of the unfused torch
ops (otlib.ops.softmax.scaled_masked_softmax_reference) — S · scaling rounded to S's dtype, the fp32 mask
added in fp32, exp and sums in fp32. The backward recomputes P from S (nothing T × S in fp32 is saved) and
returns dS = dtype(dtype(P·(dP − Σ dP·P)) · scaling), the torch ops' gradient with their roundings. Only the
row sums run in another order than torch's, so P may differ from the reference by an fp32 ulp before
its rounding to P's dtype (tests/otlib/test_softmax.py states the bounds).

Given the fully masked rows of a causal mask (`causal_rows`, bool [B, T]), every other row reads S, the mask and
dP only up to its causal diagonal (column t + S − T, rounded up to 16 columns): above it the mask's finfo.min
makes P exactly 0, so the skipped columns give the same bits (P = 0, dS = 0; benchmarks/NOTES.md 38).
"""

import torch
import triton
import triton.language as tl

from .utils import INTERPRETED, LAUNCH_OPTS, cast_for_store

MAX_COLUMNS = 16384  # one row per program, held in registers


@triton.jit
def _row_columns(rows_ptr, row, S, T, H, rs_b, rs_t, HAS_ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """The block's columns, those of the row (< S), and those read: up to the causal diagonal unless the row is
    fully masked (HAS_ROWS), else the row's."""
    cols = tl.arange(0, BLOCK)
    ok = cols < S
    if HAS_ROWS:
        t = row % T
        full = tl.load(rows_ptr + (row // (H * T)) * rs_b + t * rs_t)
        # up to the diagonal (column t + S − T), rounded up to a multiple of 16 columns: a bound the compiler knows
        # to be a multiple of 16 keeps the loads vectorised (a per-column bound made them scalar and the kernels
        # slower than reading the whole row); the few extra columns are masked ones, P = 0 either way
        last = tl.where(full, S, ((t + S - T) // 16 + 1) * 16)
        read = ok & (cols < last)
    else:
        read = ok
    return cols, ok, read


@triton.jit
def _probs(s_ptr, mask_ptr, row, cols, read, scaling, S, T, H, sm_b, sm_h, sm_t, sm_s, HAS_MASK: tl.constexpr):
    """fp32 P of one row over the block's columns (0 where not read)."""
    x = tl.load(s_ptr + row * S + cols, mask=read, other=0.0).to(tl.float32)
    x = cast_for_store(x * scaling, s_ptr).to(tl.float32)  # S · scaling in S's dtype, as the torch op
    if HAS_MASK:
        b = row // (H * T)
        h = (row // T) % H
        t = row % T
        x = x + tl.load(mask_ptr + b * sm_b + h * sm_h + t * sm_t + cols * sm_s, mask=read, other=0.0)
    x = tl.where(read, x, float("-inf"))
    e = tl.exp(x - tl.max(x, axis=0))
    return e / tl.sum(e, axis=0)


@triton.jit
def _nan_minmax(lo_a, hi_a, lo_b, hi_b):
    """Combine (min, max) pairs; a NaN on either side wins both."""
    nan = (lo_a != lo_a) | (hi_a != hi_a) | (lo_b != lo_b) | (hi_b != hi_b)
    return tl.where(nan, float("nan"), tl.minimum(lo_a, lo_b)), tl.where(nan, float("nan"), tl.maximum(hi_a, hi_b))


@triton.jit
def _softmax_fwd_kernel(
    s_ptr,
    mask_ptr,
    rows_ptr,
    p_ptr,
    stats_ptr,
    scaling,
    S,
    T,
    H,
    sm_b,
    sm_h,
    sm_t,
    sm_s,
    rs_b,
    rs_t,
    HAS_MASK: tl.constexpr,
    HAS_ROWS: tl.constexpr,
    ROW_STATS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols, ok, read = _row_columns(rows_ptr, row, S, T, H, rs_b, rs_t, HAS_ROWS, BLOCK)
    p = _probs(s_ptr, mask_ptr, row, cols, read, scaling, S, T, H, sm_b, sm_h, sm_t, sm_s, HAS_MASK)
    stored = cast_for_store(p, p_ptr)
    tl.store(p_ptr + row * S + cols, stored, mask=ok)
    if ROW_STATS:  # (min, max) of the row as stored, NaN if it holds one (torch.aminmax's rule)
        v = stored.to(tl.float32)
        lo, hi = tl.where(ok, v, float("inf")), tl.where(ok, v, float("-inf"))
        # compiled: one paired reduction (fewer shuffles); the interpreter runs a combine function element by
        # element, so there three plain reductions give the same values
        if INTERPRETED:
            nan = tl.max((v != v).to(tl.int32), axis=0) > 0
            lo = tl.where(nan, float("nan"), tl.min(lo, axis=0))
            hi = tl.where(nan, float("nan"), tl.max(hi, axis=0))
        else:
            lo, hi = tl.reduce((lo, hi), 0, _nan_minmax)
        tl.store(stats_ptr + 2 * row, lo)
        tl.store(stats_ptr + 2 * row + 1, hi)


@triton.jit
def _softmax_bwd_kernel(
    g_ptr,
    s_ptr,
    mask_ptr,
    rows_ptr,
    gs_ptr,
    scaling,
    S,
    T,
    H,
    sm_b,
    sm_h,
    sm_t,
    sm_s,
    rs_b,
    rs_t,
    HAS_MASK: tl.constexpr,
    HAS_ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols, ok, read = _row_columns(rows_ptr, row, S, T, H, rs_b, rs_t, HAS_ROWS, BLOCK)
    p = _probs(s_ptr, mask_ptr, row, cols, read, scaling, S, T, H, sm_b, sm_h, sm_t, sm_s, HAS_MASK)
    g = tl.load(g_ptr + row * S + cols, mask=read, other=0.0).to(tl.float32)
    gx = p * (g - tl.sum(g * p, axis=0))  # softmax backward in fp32
    gx = cast_for_store(gx, gs_ptr).to(tl.float32)  # the mask add hands S · scaling its gradient in S's dtype
    tl.store(gs_ptr + row * S + cols, cast_for_store(gx * scaling, gs_ptr), mask=ok)


def num_warps_for(block: int) -> int:
    """Warps per row program: one per 1024 columns. A 1024-column row in one warp reduces by shuffles alone
    (no shared-memory round trip): on an H200 the forward takes 61 µs instead of 78 µs with 4 warps at
    8 × 6 × 1024², the backward 84 instead of 102 (benchmarks/NOTES.md, change 25)."""
    return min(max(block // 1024, 1), 16)


def _launch(
    kernel,
    tensors: tuple,
    scores: torch.Tensor,
    mask: torch.Tensor | None,
    causal_rows: torch.Tensor | None,
    scaling: float,
    **flags: bool,
) -> None:
    B, H, T, S = scores.shape
    if scores.numel() == 0:
        return
    strides = mask.expand(B, H, T, S).stride() if mask is not None else (0, 0, 0, 0)
    row_strides = causal_rows.expand(B, T).stride() if causal_rows is not None else (0, 0)
    block = triton.next_power_of_2(S)
    kernel[(B * H * T,)](
        *tensors,
        float(scaling),
        S,
        T,
        H,
        *strides,
        *row_strides,
        HAS_MASK=mask is not None,
        HAS_ROWS=causal_rows is not None,
        BLOCK=block,
        **flags,
        num_warps=num_warps_for(block),
        **LAUNCH_OPTS,
    )


def softmax_fwd(
    scores: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    dtype: torch.dtype,
    row_stats: bool = False,
    causal_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """scores [B, H, T, S] contiguous, mask fp32 broadcastable to it or None → (P [B, H, T, S] in `dtype`, and with
    `row_stats` fp32 [B·H·T, 2] of each row's (min, max) as stored: P's range without another pass over P).
    causal_rows: bool broadcastable to [B, T], the rows a causal mask masks fully; the others are read only up to
    the diagonal (the caller's promise that the mask is causal)."""
    p = torch.empty(scores.shape, dtype=dtype, device=scores.device)
    stats = torch.empty(scores.numel() // max(scores.shape[-1], 1), 2, device=scores.device) if row_stats else None
    tensors = (scores, _or(mask, scores), _or(causal_rows, scores), p, stats if row_stats else p)
    _launch(_softmax_fwd_kernel, tensors, scores, mask, causal_rows, scaling, ROW_STATS=row_stats)
    return p, stats


def softmax_bwd(
    grad_p: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    causal_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """dS [B, H, T, S] in scores' dtype from dP (contiguous) and the forward's inputs."""
    grad_s = torch.empty_like(scores)
    tensors = (grad_p, scores, _or(mask, scores), _or(causal_rows, scores), grad_s)
    _launch(_softmax_bwd_kernel, tensors, scores, mask, causal_rows, scaling)
    return grad_s


def _or(tensor: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """A pointer argument for an optional tensor: the kernel does not read it when its flag is off."""
    return tensor if tensor is not None else placeholder
