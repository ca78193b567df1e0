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

from .utils import INTERPRETED, LAUNCH_OPTS, cast_for_store, read_end

MAX_COLUMNS = 16384  # one row per program, held in registers


@triton.jit
def _row_last(rows_ptr, row, S, T, H, rs_b, rs_t, HAS_ROWS: tl.constexpr):
    """How many of the row's columns are read: up to the causal diagonal (column t + S − T) unless the row is fully
    masked (HAS_ROWS), else all S."""
    last = row * 0 + S  # int64, as row
    if HAS_ROWS:
        t = row % T
        full = tl.load(rows_ptr + (row // (H * T)) * rs_b + t * rs_t)
        # rounded up to a multiple of 16 columns (a per-column bound made the loads scalar and the kernels slower
        # than reading the whole row); the few extra columns are masked ones, P = 0 either way
        last = tl.where(full, S, read_end(t, S - T))
    return last


@triton.jit
def _logits(s_ptr, mask_ptr, row, cols, read, scaling, S, T, H, sm_b, sm_h, sm_t, sm_s, HAS_MASK: tl.constexpr):
    """fp32 S · scaling + mask of one row over the block's columns (−inf where not read)."""
    x = tl.load(s_ptr + row * S + cols, mask=read, other=0.0).to(tl.float32)
    x = cast_for_store(x * scaling, s_ptr).to(tl.float32)  # S · scaling in S's dtype, as the torch op
    if HAS_MASK:
        b = row // (H * T)
        h = (row // T) % H
        t = row % T
        x = x + tl.load(mask_ptr + b * sm_b + h * sm_h + t * sm_t + cols * sm_s, mask=read, other=0.0)
    return tl.where(read, x, float("-inf"))


@triton.jit
def _probs(x):
    """(fp32 P, row max, row sum of exp) of one row's logits."""
    m = tl.max(x, axis=0)
    e = tl.exp(x - m)
    total = tl.sum(e, axis=0)
    return e / total, m, total


@triton.jit
def _in_row(cols, S, FULL_ROW: tl.constexpr):
    """cols < S; a constant where the row fills its block (FULL_ROW: S = BLOCK), which the compiler then drops
    from the loads, selects and stores (benchmarks/NOTES.md 57)."""
    if FULL_ROW:
        return tl.full(cols.shape, True, tl.int1)
    return cols < S


@triton.jit
def _zero_beyond(ptr, row, S, PART: tl.constexpr, FULL_ROW: tl.constexpr):
    """Store 0 in the row's columns from PART on (above the diagonal, where P and dS are 0)."""
    cols = tl.arange(0, PART)
    zeros = tl.zeros((PART,), dtype=ptr.dtype.element_ty)
    for c0 in range(PART, S, PART):
        tl.store(ptr + row * S + c0 + cols, zeros, mask=_in_row(c0 + cols, S, FULL_ROW))


@triton.jit
def _nan_minmax(lo_a, hi_a, lo_b, hi_b):
    """Combine (min, max) pairs; a NaN on either side wins both."""
    nan = (lo_a != lo_a) | (hi_a != hi_a) | (lo_b != lo_b) | (hi_b != hi_b)
    return tl.where(nan, float("nan"), tl.minimum(lo_a, lo_b)), tl.where(nan, float("nan"), tl.maximum(hi_a, hi_b))


@triton.jit
def _fwd_row(
    s_ptr, mask_ptr, p_ptr, stats_ptr, norms_ptr, row, last, scaling, S, T, H, sm_b, sm_h, sm_t, sm_s,
    HAS_MASK: tl.constexpr, ROW_STATS: tl.constexpr, PART: tl.constexpr, BLOCK: tl.constexpr,
    FULL_ROW: tl.constexpr, SAVE_NORMS: tl.constexpr,
):  # fmt: skip
    """P of one row from its first PART columns (those read lie within them); the rest of the row is stored 0.
    SAVE_NORMS: the row's max and sum of exp too, so that the backward forms the same P without reducing again."""
    cols = tl.arange(0, PART)
    ok = _in_row(cols, S, FULL_ROW)
    x = _logits(s_ptr, mask_ptr, row, cols, ok & (cols < last), scaling, S, T, H, sm_b, sm_h, sm_t, sm_s, HAS_MASK)
    p, m, total = _probs(x)
    if SAVE_NORMS:
        tl.store(norms_ptr + 2 * row, m)
        tl.store(norms_ptr + 2 * row + 1, total)
    stored = cast_for_store(p, p_ptr)
    tl.store(p_ptr + row * S + cols, stored, mask=ok)
    if PART < BLOCK:
        _zero_beyond(p_ptr, row, S, PART, FULL_ROW)
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
        if PART < BLOCK:  # the zeros stored beyond the part (S > BLOCK / 2 ≥ PART: there are some)
            lo, hi = _nan_minmax(lo, hi, 0.0, 0.0)
        tl.store(stats_ptr + 2 * row, lo)
        tl.store(stats_ptr + 2 * row + 1, hi)


@triton.jit
def _bwd_row(
    g_ptr, s_ptr, mask_ptr, gs_ptr, norms_ptr, row, last, scaling, S, T, H, sm_b, sm_h, sm_t, sm_s,
    HAS_MASK: tl.constexpr, PART: tl.constexpr, BLOCK: tl.constexpr, FULL_ROW: tl.constexpr,
    STORE_READ: tl.constexpr, HAS_NORMS: tl.constexpr,
):  # fmt: skip
    """dS of one row from its first PART columns (those read lie within them); the rest of the row is stored 0,
    or with STORE_READ left unwritten past the columns read."""
    cols = tl.arange(0, PART)
    ok = _in_row(cols, S, FULL_ROW)
    read = ok & (cols < last)
    x = _logits(s_ptr, mask_ptr, row, cols, read, scaling, S, T, H, sm_b, sm_h, sm_t, sm_s, HAS_MASK)
    if HAS_NORMS:  # the forward's row max and sum: the same P, without the two reductions
        p = tl.exp(x - tl.load(norms_ptr + 2 * row)) / tl.load(norms_ptr + 2 * row + 1)
    else:
        p, _, _ = _probs(x)
    g = tl.load(g_ptr + row * S + cols, mask=read, other=0.0).to(tl.float32)
    gx = p * (g - tl.sum(g * p, axis=0))  # softmax backward in fp32
    gx = cast_for_store(gx, gs_ptr).to(tl.float32)  # the mask add hands S · scaling its gradient in S's dtype
    tl.store(gs_ptr + row * S + cols, cast_for_store(gx * scaling, gs_ptr), mask=read if STORE_READ else ok)
    if PART < BLOCK and not STORE_READ:
        _zero_beyond(gs_ptr, row, S, PART, FULL_ROW)


# A causal row reads t + 1 of its S columns (rounded up to 16): rows that end within the first quarter or half of the
# block run on that part alone (and store zeros beyond it) instead of computing the whole block, ~30 % less work
# over a causal T × T matrix (benchmarks/NOTES.md 52). Same bits as the whole block: a part of ≥ 256 columns a warp
# holds the same elements in the same registers of the same threads, the block's other registers hold exact zeros
# for the sums, and max and min are order-free (tests/otlib/test_softmax.py). Blocks below 1024 columns run whole.
MIN_PARTED_BLOCK = tl.constexpr(1024)


@triton.jit
def _softmax_fwd_kernel(
    s_ptr,
    mask_ptr,
    rows_ptr,
    p_ptr,
    stats_ptr,
    norms_ptr,
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
    FULL_ROW: tl.constexpr,
    SAVE_NORMS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    last = _row_last(rows_ptr, row, S, T, H, rs_b, rs_t, HAS_ROWS)
    args = (s_ptr, mask_ptr, p_ptr, stats_ptr, norms_ptr, row, last, scaling, S, T, H, sm_b, sm_h, sm_t, sm_s)
    if HAS_ROWS and BLOCK >= MIN_PARTED_BLOCK:
        if last <= BLOCK // 4:
            _fwd_row(*args, HAS_MASK, ROW_STATS, BLOCK // 4, BLOCK, FULL_ROW, SAVE_NORMS)
        elif last <= BLOCK // 2:
            _fwd_row(*args, HAS_MASK, ROW_STATS, BLOCK // 2, BLOCK, FULL_ROW, SAVE_NORMS)
        else:
            _fwd_row(*args, HAS_MASK, ROW_STATS, BLOCK, BLOCK, FULL_ROW, SAVE_NORMS)
    else:
        _fwd_row(*args, HAS_MASK, ROW_STATS, BLOCK, BLOCK, FULL_ROW, SAVE_NORMS)


@triton.jit
def _softmax_bwd_kernel(
    g_ptr,
    s_ptr,
    mask_ptr,
    rows_ptr,
    gs_ptr,
    norms_ptr,
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
    FULL_ROW: tl.constexpr,
    STORE_READ: tl.constexpr,
    HAS_NORMS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    last = _row_last(rows_ptr, row, S, T, H, rs_b, rs_t, HAS_ROWS)
    args = (g_ptr, s_ptr, mask_ptr, gs_ptr, norms_ptr, row, last, scaling, S, T, H, sm_b, sm_h, sm_t, sm_s)
    if HAS_ROWS and BLOCK >= MIN_PARTED_BLOCK:
        if last <= BLOCK // 4:
            _bwd_row(*args, HAS_MASK, BLOCK // 4, BLOCK, FULL_ROW, STORE_READ, HAS_NORMS)
        elif last <= BLOCK // 2:
            _bwd_row(*args, HAS_MASK, BLOCK // 2, BLOCK, FULL_ROW, STORE_READ, HAS_NORMS)
        else:
            _bwd_row(*args, HAS_MASK, BLOCK, BLOCK, FULL_ROW, STORE_READ, HAS_NORMS)
    else:
        _bwd_row(*args, HAS_MASK, BLOCK, BLOCK, FULL_ROW, STORE_READ, HAS_NORMS)


def _full_row(S: int, block: int) -> bool:
    """Whether a row fills its block (S a power of 2, as T = 1024 is): no column masks."""
    return block == S


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
        FULL_ROW=_full_row(S, block),
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
    norms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """scores [B, H, T, S] contiguous, mask fp32 broadcastable to it or None → (P [B, H, T, S] in `dtype`, and with
    `row_stats` fp32 [B·H·T, 2] of each row's (min, max) as stored: P's range without another pass over P).
    causal_rows: bool broadcastable to [B, T], the rows a causal mask masks fully; the others are read only up to
    the diagonal (the caller's promise that the mask is causal).
    norms: an fp32 [B·H·T, 2] buffer (`new_row_pairs`) that receives each row's max and sum of exp, for softmax_bwd."""
    p = torch.empty(scores.shape, dtype=dtype, device=scores.device)
    stats = new_row_pairs(scores) if row_stats else None
    tensors = (scores, _or(mask, scores), _or(causal_rows, scores), p, stats if row_stats else p, _or(norms, p))
    flags = {"ROW_STATS": row_stats, "SAVE_NORMS": norms is not None}
    _launch(_softmax_fwd_kernel, tensors, scores, mask, causal_rows, scaling, **flags)
    return p, stats


def new_row_pairs(scores: torch.Tensor) -> torch.Tensor:
    """fp32 [rows, 2], a pair per row of scores: softmax_fwd's row statistics, or the norms it saves."""
    return torch.empty(scores.numel() // max(scores.shape[-1], 1), 2, device=scores.device)


def softmax_bwd(
    grad_p: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    causal_rows: torch.Tensor | None = None,
    unread_above: bool = False,
    norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """dS [B, H, T, S] in scores' dtype from dP (contiguous) and the forward's inputs. unread_above (with
    causal_rows): dS is written only in the columns each row reads (up to its diagonal rounded up to 16, a fully
    masked row whole), not as zeros beyond — for a consumer that reads it only there (Q·Kᵀ's backward).
    norms: the rows' (max, sum of exp) that softmax_fwd saved for these inputs: P is then formed from them (the
    same P) without reducing the row twice more."""
    if unread_above and causal_rows is None:
        raise ValueError("softmax_bwd: unread_above needs causal_rows")
    grad_s = torch.empty_like(scores)
    tensors = (grad_p, scores, _or(mask, scores), _or(causal_rows, scores), grad_s, _or(norms, scores))
    flags = {"STORE_READ": unread_above, "HAS_NORMS": norms is not None}
    _launch(_softmax_bwd_kernel, tensors, scores, mask, causal_rows, scaling, **flags)
    return grad_s


def _or(tensor: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """A pointer argument for an optional tensor: the kernel does not read it when its flag is off."""
    return tensor if tensor is not None else placeholder
