"""The straight-through gradients of the grouped optical matmul as strided batched GEMMs, without copies.

For a [B, H, M, K] @ b [B, Hkv, K, N] (head h reads b's head h // G, G = H / Hkv) and grad_c [B, H, M, N]:
    grad_a[b, h]   = grad_c[b, h] · b[b, h // G]ᵀ
    grad_b[b, hkv] = Σ_g a[b, hkv·G + g]ᵀ · grad_c[b, hkv·G + g]
Both are one kernel: out[b, j] = Σ_{g < RED} X[b, j·XM + g] · Y[b, (j·YM + g) // YD], every operand read
through its own four strides. Attention's operands are head-transposed views ([B, T, H, D] in memory): torch's
bmm must copy them into foldable batches, and its gradients come out [B, H, T, D], which the projections'
backward copies once more (7 strided copies per layer, benchmarks/NOTES.md 35). Here the gradients are written
in the layout of their operands, so nothing downstream copies either.
Under a causal mask the T × S matrix of the product (grad_c of Q·Kᵀ, a of P·V) is exactly 0 above the diagonal
(column > row + S − T) except in fully masked rows, where P is uniform; given those rows (`causal_rows`), the
kernel skips the K tiles that are wholly zero there (CAUSAL modes below; dP = dO·Vᵀ, bound by its store,
gains nothing from skipping its zero products, so it is formed in full). Skipped products are exact zeros, so the
result is the same bit for bit. dP may instead leave unwritten the tiles the softmax's backward kernel does not read
(`unread_above`: past a row's diagonal rounded up to 16 columns, unless the row is fully masked): half its stores.
bf16/fp16 operands on the tensor cores, fp32 accumulator, rounded once to the output dtype. Every config takes
the same K steps in the same order with the same (wgmma) MMA instructions, so results do not depend on the
autotune choice (tested on the GPU).
"""

import os

import torch
import triton
import triton.language as tl

from .utils import INTERPRET, INTERPRETED, TunedLaunch, any_full_row, cast_for_store, read_end, tile_grid

BLOCK_K = tl.constexpr(64)  # one K step for every config: the summation order does not depend on the tile shape
# CAUSAL modes; "full rows" are the rows r of the T × S matrix that a causal mask leaves fully masked (rows[b, r])
NOT_CAUSAL = 0
X_LOWER = 1  # X [T, S] (dQ = dS·K): X[m, k] = 0 for k > m + DIAG unless m is a full row
X_UPPER_T = 2  # X [S, T] (dK = dSᵀ·Q, dV = Pᵀ·dO): X[m, k] = 0 for m > k + DIAG unless k is a full row
_X_LOWER, _X_UPPER_T = tl.constexpr(X_LOWER), tl.constexpr(X_UPPER_T)


def autotune_configs() -> list[triton.Config]:
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64})]
    configs = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        # BLOCK_M ≥ 64 and 4 or 8 warps: Hopper's wgmma for every config (the order argument above)
        for bm, bn, w, s in [(128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 3), (64, 128, 4, 3), (128, 64, 8, 4)]
    ]
    return configs if os.environ.get("OTLIB_AUTOTUNE", "1") != "0" else configs[:1]


@triton.autotune(
    configs=autotune_configs(),
    key=["M", "N", "K", "RED", "sx_m", "sx_k", "sy_k", "sy_n", "CAUSAL", "SKIP_UNREAD", "X_READ"],
)
@triton.jit
def _grouped_bmm_kernel(
    x_ptr,
    y_ptr,
    c_ptr,
    rows_ptr,
    M,
    N,
    K,
    HOUT,
    RED,
    XM,
    YM,
    YD,
    DIAG,
    s_rows,
    sx_b,
    sx_h,
    sx_m,
    sx_k,
    sy_b,
    sy_h,
    sy_k,
    sy_n,
    sc_b,
    sc_h,
    sc_m,
    sc_n,
    CAUSAL: tl.constexpr,
    ONE_STEP: tl.constexpr,
    SKIP_UNREAD: tl.constexpr,
    X_READ: tl.constexpr,
    LONGEST_FIRST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    bid = tl.program_id(1)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    if LONGEST_FIRST:  # X_LOWER: the last row blocks' K loops are the longest; launch them first (as P·V's GEMM)
        lin = bid * tl.num_programs(0) + pid
        per_m = tl.num_programs(1) * num_n
        pid_m = tl.cdiv(M, BLOCK_M) - 1 - lin // per_m
        bid = lin % per_m // num_n
        pid_n = lin % num_n
    batch = bid // HOUT
    j = bid % HOUT
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m[:, None] < M
    n_ok = offs_n[None, :] < N
    x_tile = offs_m[:, None] * sx_m + offs_k[None, :] * sx_k
    y_tile = offs_k[:, None] * sy_k + offs_n[None, :] * sy_n
    # the K range of the dense loop, [k_lo, k_hi): all of K unless a causal mode bounds it
    rows = rows_ptr + batch.to(tl.int64) * s_rows
    m_last = pid_m * BLOCK_M + BLOCK_M - 1
    # C [T, S] (dP): a tile wholly past where the softmax backward reads its rows (utils.read_end); nested, as the
    # outer condition is a constexpr
    if SKIP_UNREAD:  # noqa: SIM102
        if (pid_n * BLOCK_N >= read_end(m_last, DIAG)) & ~any_full_row(rows, offs_m, M):
            return
    k_lo = 0
    k_hi = K
    if CAUSAL == _X_LOWER:  # without a full row, this M tile's nonzero columns end at m_last + DIAG
        k_hi = tl.where(any_full_row(rows, offs_m, M), K, tl.minimum(K, m_last + DIAG + 1))
    if CAUSAL == _X_UPPER_T:  # K tiles wholly left of column pid_m·BLOCK_M − DIAG are 0 but for full rows
        k_lo = tl.maximum(pid_m * BLOCK_M - DIAG, 0) // BLOCK_K * BLOCK_K
    x_end = K  # X_READ, X_LOWER: where each row of X = dS ends as the softmax backward writes it (_row_end)
    if X_READ and CAUSAL == _X_LOWER:
        x_end = _row_end(rows, offs_m, M, K, DIAG)[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if ONE_STEP:  # K ≤ BLOCK_K, one product (dP = dO·Vᵀ): no loop, so no pipeline buffers in shared memory
        x_base = x_ptr + batch.to(tl.int64) * sx_b + (j * XM).to(tl.int64) * sx_h + x_tile
        y_base = y_ptr + batch.to(tl.int64) * sy_b + (j * YM // YD).to(tl.int64) * sy_h + y_tile
        acc = _k_step(acc, x_base, y_base, 0, K, sx_k, sy_k, offs_k, m_ok, n_ok)
    else:
        for g in range(0, RED):
            x_base = x_ptr + batch.to(tl.int64) * sx_b + (j * XM + g).to(tl.int64) * sx_h + x_tile
            y_base = y_ptr + batch.to(tl.int64) * sy_b + ((j * YM + g) // YD).to(tl.int64) * sy_h + y_tile
            for k0 in range(0, k_lo, BLOCK_K):  # X_UPPER_T: the zero tiles, in K order, where a full row needs them
                if any_full_row(rows, k0 + offs_k, K):
                    x_ok = m_ok
                    if X_READ:
                        x_ok = m_ok & _x_written(rows, offs_m, k0 + offs_k, x_end, M, K, DIAG, CAUSAL)
                    acc = _k_step(acc, x_base, y_base, k0, K, sx_k, sy_k, offs_k, x_ok, n_ok)
            for k0 in range(k_lo, k_hi, BLOCK_K):
                x_ok = m_ok
                if X_READ:
                    x_ok = m_ok & _x_written(rows, offs_m, k0 + offs_k, x_end, M, K, DIAG, CAUSAL)
                acc = _k_step(acc, x_base, y_base, k0, K, sx_k, sy_k, offs_k, x_ok, n_ok)
    c_base = c_ptr + batch.to(tl.int64) * sc_b + j.to(tl.int64) * sc_h
    tl.store(c_base + offs_m[:, None] * sc_m + offs_n[None, :] * sc_n, cast_for_store(acc, c_ptr), mask=m_ok & n_ok)


@triton.jit
def _row_end(rows, t, T, S, DIAG):
    """Columns of the T × S rows t that the softmax backward writes: up to the diagonal rounded up to 16, a fully
    masked row whole (softmax._row_last); a multiple of 16, so masks against it keep the loads vectorised."""
    full = tl.load(rows + t, mask=t < T, other=0) != 0
    return tl.where(full, S, read_end(t, DIAG))


@triton.jit
def _x_written(rows, offs_m, offs_k, x_end, M, K, DIAG, CAUSAL: tl.constexpr):
    """Where X holds dS as a softmax backward that left the rest unwritten wrote it. X_LOWER: X = dS [T, S], rows
    ending at x_end; X_UPPER_T: X = dSᵀ [S, T], whose column k is row k of dS."""
    if CAUSAL == _X_LOWER:
        written = offs_k[None, :] < x_end
    else:
        written = offs_m[:, None] < _row_end(rows, offs_k, K, M, DIAG)[None, :]
    return written


@triton.jit
def _k_step(acc, x_tiles, y_tiles, k0, K, sx_k, sy_k, offs_k, m_ok, n_ok):
    """acc + X[:, k0 : k0 + BLOCK_K] · Y[k0 : k0 + BLOCK_K, :] (masked lanes add exactly 0)."""
    x = tl.load(x_tiles + k0 * sx_k, mask=m_ok & (offs_k[None, :] < K - k0), other=0.0)
    y = tl.load(y_tiles + k0 * sy_k, mask=(offs_k[:, None] < K - k0) & n_ok, other=0.0)
    if INTERPRETED:  # the interpreter's dot takes bf16 tiles for integers; fp32 holds them exactly
        x = x.to(tl.float32)
        y = y.to(tl.float32)
    return tl.dot(x, y, acc)


def _longest_first() -> bool:
    """Whether dQ (X_LOWER) launches its longest row blocks first (benchmarks/ab_training_step.py's switch)."""
    return True


def grouped_bmm(
    x: torch.Tensor,
    y: torch.Tensor,
    out: torch.Tensor,
    *,
    red: int,
    xm: int,
    ym: int,
    yd: int,
    causal: int = NOT_CAUSAL,
    rows: torch.Tensor | None = None,
    diag: int = 0,
    unread_above: bool = False,
    config: dict | None = None,
) -> torch.Tensor:
    """out[b, j] = Σ_{g < red} x[b, j·xm + g] @ y[b, (j·ym + g) // yd] for x [B, ·, M, K], y [B, ·, K, N] and
    out [B, J, M, N], all of any strides (out is written in place and returned). causal (a mode above) with rows
    (uint8 [B, T], 1 = full row; any batch stride) and diag (S − T): skip the tiles that mode makes zero.
    unread_above (with rows and diag): where the softmax backward given these rows reads or writes a T × S matrix —
    up to a row's diagonal rounded up to 16 columns, a fully masked row whole — and nowhere else. With out [T, S]
    (dP) and no causal mode, out's tiles wholly past that are left unwritten; with a causal mode (x holds dS), x
    is read only there (the softmax backward left the rest unwritten).
    config: fixed BLOCK_M/BLOCK_N (+ num_warps, num_stages) instead of autotuning (tests: results must not
    depend on it)."""
    B, J, M, N = out.shape
    K = x.shape[-1]
    if out.numel() == 0:
        return out
    if K == 0 or red == 0:
        return out.zero_()
    uses_rows = causal != NOT_CAUSAL or unread_above
    if uses_rows and (rows is None or rows.dim() != 2 or rows.dtype != torch.uint8):
        raise ValueError("grouped_bmm: a causal mode or unread_above needs rows, uint8 [B, T]")
    rows_arg, s_rows = (rows, rows.stride(0)) if uses_rows else (out, 0)
    args = (x, y, out, rows_arg, M, N, K, J, red, xm, ym, yd, diag, s_rows, *x.stride(), *y.stride(), *out.stride())
    key = (M, N, K, red, *x.stride()[2:], *y.stride()[2:], causal, unread_above)  # the autotuner's key
    # one K step without a loop: the store-bound dP (K = 64) gets more resident programs (benchmarks/NOTES.md 39)
    one_step = BLOCK_K.value >= K and red == 1 and causal == NOT_CAUSAL
    causal_x = causal != NOT_CAUSAL
    flags = {"CAUSAL": causal, "ONE_STEP": one_step, "SKIP_UNREAD": unread_above and not causal_x}
    flags["X_READ"] = unread_above and causal_x
    flags["LONGEST_FIRST"] = causal == X_LOWER and _longest_first()
    _GROUPED_BMM(key, tile_grid(M, N, B * J), args, flags, config=config)
    return out


_GROUPED_BMM = TunedLaunch(_grouped_bmm_kernel)


def grouped_matmul_grads(
    a: torch.Tensor,
    b: torch.Tensor,
    grad_c: torch.Tensor,
    need_a: bool,
    need_b: bool,
    *,
    causal_rows: torch.Tensor | None = None,
    causal_c: bool = False,
    unread_above: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(grad_a, grad_b) of c = a @ b for a [B, H, M, K], b [B, Hkv, K, N] (H a multiple of Hkv), grad_c
    [B, H, M, N], one float dtype; each gradient in its operand's layout (`empty_like`).

    causal_rows (bool [B, T]): the T × S matrix — grad_c if causal_c (Q·Kᵀ), else a (P·V) — is 0 above the
    causal diagonal except in these rows; the zero tiles are skipped (same result).
    unread_above (with causal_rows): the T × S matrices exist only where the softmax backward given causal_rows
    reads or writes them. P·V (not causal_c): grad_a (P's gradient) is left unwritten in the tiles it does not read;
    Q·Kᵀ (causal_c): grad_c (dS) is read only where it wrote it."""
    group = a.shape[1] // b.shape[1]
    rows = None if causal_rows is None else causal_rows.view(torch.uint8)
    ga = gb = None
    if need_a:  # grad_c[b, h] · b[b, h // G]ᵀ
        kw = {"red": 1, "xm": 1, "ym": 1, "yd": group}
        if rows is not None and causal_c:  # X = grad_c [T, S]
            diag = grad_c.shape[-1] - grad_c.shape[-2]
            kw |= {"causal": X_LOWER, "rows": rows, "diag": diag, "unread_above": unread_above}
        elif rows is not None and unread_above:  # out = grad_a [T, S]
            kw |= {"unread_above": True, "rows": rows, "diag": a.shape[-1] - a.shape[-2]}
        ga = grouped_bmm(grad_c, b.transpose(-1, -2), torch.empty_like(a), **kw)
    if need_b:  # Σ_g a[b, hkv·G + g]ᵀ · grad_c[b, hkv·G + g]
        gb = torch.empty_like(b)
        kw = {"red": group, "xm": group, "ym": group, "yd": 1}
        if rows is None:
            grouped_bmm(a.transpose(-1, -2), grad_c, gb, **kw)
        elif causal_c:  # as its transpose Σ_g grad_cᵀ · a, so that X = grad_cᵀ [S, T]
            diag = grad_c.shape[-1] - grad_c.shape[-2]
            grouped_bmm(
                grad_c.transpose(-1, -2),
                a,
                gb.transpose(-1, -2),
                **kw,
                causal=X_UPPER_T,
                rows=rows,
                diag=diag,
                unread_above=unread_above,
            )
        else:  # X = aᵀ [S, T]
            diag = a.shape[-1] - a.shape[-2]
            grouped_bmm(a.transpose(-1, -2), grad_c, gb, **kw, causal=X_UPPER_T, rows=rows, diag=diag)
    return ga, gb
