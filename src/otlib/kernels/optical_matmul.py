"""Batched optical GEMM on fp16 level codes with a fused read-out epilogue; launchers for the optical matmul.

Algorithm (per call; docs/numerics.md "Level-code GEMM"):
    operands → fp16 codes by the operand encoder (quantize.py), once per call:
        Q_det(a) = c_a + s_a·a          a = k_a − z_a: the level minus the level nearest 0 (an exact integer)
        LUT(Q_det(b)) = c_b + s_b·b     b likewise; a floored element's b is its floor value's fp16 position
        plus the sums Σ_k a, Σ_k b per row of each operand (fp32)
    for each output tile (batch, m-block, n-block):
        D = Σ_k a·b                     one fp16 tensor-core pass, fp32 accumulator
        acc = s_a·(c_b·Σa + s_b·D) + c_a·Σ_k Qb      fp32; Σ_k Qb = K·c_b + s_b·Σb per column
        range observation: atomic min/max of acc into two fp32 scalars
        READOUT: y = Q_stoch(acc; out range) with Philox at the flat output index, + bias; else store acc
        CAUSAL: y = 0 above the causal diagonal (column > row + N − M); tiles wholly above skip the read-out
With few N tiles (attention's P·V) the GEMM encodes A's tiles itself in the K loop (A_RAW): the same codes
and sums, without the encoder's pass over A. An element of a at level 0 adds exactly nothing where lo_a = 0
(attention's softmax probabilities): then z_a = 0, its code is 0 and c_a = 0, so masked entries cannot leak
the values they multiply into the result. A_CAUSAL (with A_RAW: a causal P): a is 0 above its causal diagonal
(column > row + K − M) except in the fully masked rows given; such a 0 has code 0 where a's range starts at ≥ 0
(as P's does), so there a block of rows without a fully masked one stops its K loop at its last row's diagonal
(the same bits).
Every tile config issues the same k16 MMA instructions in K order, so results do not depend on the autotune
choice (bit for bit, tested on the GPU) — including the TMA configs, whose K loop loads the code tiles through
tensor descriptors (out-of-bounds elements read as 0, as masked loads do), one tile a program or persistent programs
looping over the tiles. Differences from mase-triton (docs/numerics.md): operands quantized
once per call instead of per tile (K padding adds exactly 0: defect 8), fp32 epilogue, per-element dither
(defect 1), range observed on the accumulator (defect 3), autotune keyed on shapes, 64-bit offsets.
"""

import math
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .._shapes import broadcast_shapes
from .quantize import operand_codes
from .utils import (
    EPS_BITS,
    INTERPRET,
    INTERPRETED,
    LAUNCH_OPTS,
    TunedLaunch,
    any_full_row,
    cast_for_store,
    code_params,
    deterministic_level,
    level_value,
    philox_uniform,
    philox_uniform_tile,
    range_params,
    read_end,
    round_half_even,
    sm_count,
    tile_grid,
)


def _even_k(K: int, block_k: int) -> bool:
    """Whether the K loop needs no masks (every K tile full)."""
    return K % block_k == 0


def _even_mn(M: int, N: int, block_m: int, block_n: int) -> bool:
    """Whether every output tile is full: no row or column masks in the loads, the range reduction and the store
    (the selects cost ~4 % of the attention's Q·Kᵀ GEMM, benchmarks/NOTES.md 56)."""
    return M % block_m == 0 and N % block_n == 0


def _longest_first() -> bool:
    """Whether a causal P·V launches its longest row blocks first (benchmarks/ab_training_step.py's switch)."""
    return True


def _philox_tile(N: int) -> bool:
    """Whether a row's outputs come in whole Philox counters (four per evaluation). A compile-time flag: with
    a runtime branch both read-out paths were compiled and the kernel spilled registers (NOTES.md 19)."""
    return N % 4 == 0


def _tma_blocks(args: dict) -> None:
    """A TMA config's pre-hook: the descriptors' block shapes are its tiles."""
    args["a_desc"].block_shape = [args["BLOCK_M"], args["BLOCK_K"]]
    args["b_desc"].block_shape = [args["BLOCK_N"], args["BLOCK_K"]]


def _prune_tma(configs: list[triton.Config], named_args: dict, **flags) -> list[triton.Config]:
    """TMA configs only where the launcher allows them (TMA_OK, a keyword flag of the launch)."""
    return [c for c in configs if flags["TMA_OK"] or not c.kwargs.get("TMA", False)]


def autotune_configs() -> list[triton.Config]:
    if INTERPRET:  # the interpreter runs one config; big tiles keep programs × ops small
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8})]
    configs = [
        triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s, maxnreg=cap
        )
        for bm, bn, bk, w, s, cap in [
            # the first is the OTLIB_AUTOTUNE=0 choice. Measured on the H200 (benchmarks/NOTES.md 19): 4-warp
            # programs (two per SM) are the fastest at most study shapes, as one program's read-out epilogue
            # then overlaps another's MMAs; 2 stages suit attention's K = 64
            (128, 64, 64, 8, 4, None),
            (64, 128, 64, 8, 4, None),
            (128, 128, 64, 8, 3, None),
            (128, 128, 64, 8, 4, None),
            (64, 64, 64, 4, 4, None),
            (64, 128, 64, 4, 3, None),
            (64, 64, 64, 4, 2, None),
            # at most 128 registers a thread: four programs per SM; P·V (the GEMM encoding P in its K loop)
            # 86.7 → 71.5 µs at 60M (NOTES.md 47)
            (64, 64, 64, 4, 3, 128),
        ]
    ]
    # tiles loaded through TMA by one or two persistent programs an SM, tried where the launcher allows them (TMA_OK:
    # one operand pair, A encoded beforehand, no causal mask, N and K ≥ 1024): the 600M linears' graphed forward −2
    # to −8 % (benchmarks/NOTES.md 78, 80)
    configs += [
        triton.Config(
            {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "TMA": True, "PERSISTENT": per_sm},
            num_warps=8,
            num_stages=4,
            pre_hook=_tma_blocks,
        )
        for per_sm in (1, 2)
    ]
    # OTLIB_AUTOTUNE=0: the first config only (quick compiles for tests; results never depend on the choice)
    return configs if os.environ.get("OTLIB_AUTOTUNE", "1") != "0" else configs[:1]


@triton.autotune(
    configs=autotune_configs(),
    key=["M_BUCKET", "N", "K", "READOUT", "A_RAW", "CAUSAL", "A_CAUSAL", "TMA_OK"],
    prune_configs_by={"early_config_prune": _prune_tma},
)
@triton.heuristics(
    {
        "EVEN_K": lambda args: _even_k(args["K"], args["BLOCK_K"]),
        "EVEN_MN": lambda args: _even_mn(args["M"], args["N"], args["BLOCK_M"], args["BLOCK_N"]),
        "PHILOX_TILE": lambda args: _philox_tile(args["N"]),
    }
)
@triton.jit
def _optical_gemm_kernel(
    # pointers: codes and sums from operand_codes (A_RAW: a_ptr is a itself, asum_ptr unused); ranges = fp32
    # [3, 2] (lo, hi) rows of (a, b, out)
    a_ptr,
    asum_ptr,
    b_ptr,
    bsum_ptr,
    c_ptr,
    bias_ptr,
    ranges_ptr,
    rng_ptr,
    min_ptr,
    max_ptr,
    rows_ptr,
    eps_bits,
    # sizes: a codes [B, H, M, K], b codes [B, H // GROUP, N, K] (inner dims contiguous), c [B·H, M, N]
    M,
    N,
    K,
    H,
    GROUP,
    M_BUCKET,
    n_f,
    # batch / head strides of a codes, a sums, b codes, b sums
    stride_ab,
    stride_ah,
    stride_sb,
    stride_sh,
    stride_bb,
    stride_bh,
    stride_qb,
    stride_qh,
    stride_rb,
    # TMA descriptors of a's and b's codes as [M, K] and [N, K] (TMA configs; else None)
    a_desc,
    b_desc,
    # meta-parameters
    READOUT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    A_RAW: tl.constexpr,
    CAUSAL: tl.constexpr,
    A_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
    EVEN_MN: tl.constexpr,
    PHILOX_TILE: tl.constexpr,
    HEADS_LAST: tl.constexpr,
    SKIP_ABOVE: tl.constexpr,
    LONGEST_FIRST: tl.constexpr,
    TMA_OK: tl.constexpr,  # the autotuner tries the TMA configs (descriptors given, a shape where they pay)
    TMA: tl.constexpr = False,  # the K loop loads its tiles through a_desc and b_desc
    PERSISTENT: tl.constexpr = 0,  # > 0: that many programs an SM, each looping over output tiles
):
    if PERSISTENT:  # one operand pair (TMA_OK); flatten: the next tile's loads issue during this tile's epilogue
        tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for pid in tl.range(tl.program_id(0), tiles, tl.num_programs(0), flatten=True):
            _gemm_tile(
                pid, tl.program_id(1), a_ptr, asum_ptr, b_ptr, bsum_ptr, c_ptr, bias_ptr, ranges_ptr, rng_ptr,
                min_ptr, max_ptr, rows_ptr, eps_bits, M, N, K, H, GROUP, n_f, stride_ab, stride_ah, stride_sb,
                stride_sh, stride_bb, stride_bh, stride_qb, stride_qh, stride_rb, a_desc, b_desc, READOUT, HAS_BIAS,
                A_RAW, CAUSAL, A_CAUSAL, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, EVEN_K, EVEN_MN, PHILOX_TILE, HEADS_LAST,
                SKIP_ABOVE, LONGEST_FIRST, TMA,
            )  # fmt: skip
    else:  # a loop of one iteration here instead cost the causal Q·Kᵀ 30 registers (128 → 158; sm_90 ptxas)
        _gemm_tile(
            tl.program_id(0), tl.program_id(1), a_ptr, asum_ptr, b_ptr, bsum_ptr, c_ptr, bias_ptr, ranges_ptr, rng_ptr,
            min_ptr, max_ptr, rows_ptr, eps_bits, M, N, K, H, GROUP, n_f, stride_ab, stride_ah, stride_sb, stride_sh,
            stride_bb, stride_bh, stride_qb, stride_qh, stride_rb, a_desc, b_desc, READOUT, HAS_BIAS, A_RAW, CAUSAL,
            A_CAUSAL, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, EVEN_K, EVEN_MN, PHILOX_TILE, HEADS_LAST, SKIP_ABOVE,
            LONGEST_FIRST, TMA,
        )  # fmt: skip


@triton.jit
def _gemm_tile(
    pid, bid,  # program-order output tile `pid` of operand pair `bid`; the rest: _optical_gemm_kernel's arguments
    a_ptr, asum_ptr, b_ptr, bsum_ptr, c_ptr, bias_ptr, ranges_ptr, rng_ptr, min_ptr, max_ptr, rows_ptr, eps_bits,
    M, N, K, H, GROUP, n_f,
    stride_ab, stride_ah, stride_sb, stride_sh, stride_bb, stride_bh, stride_qb, stride_qh, stride_rb,
    a_desc, b_desc,
    READOUT: tl.constexpr, HAS_BIAS: tl.constexpr, A_RAW: tl.constexpr, CAUSAL: tl.constexpr, A_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_MN: tl.constexpr, PHILOX_TILE: tl.constexpr, HEADS_LAST: tl.constexpr,
    SKIP_ABOVE: tl.constexpr, LONGEST_FIRST: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """One output tile of the level-code GEMM."""
    # ---- program id → (batch, m-block, n-block), grouped along M for L2 reuse of b
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group_id = pid // (GROUP_M * num_n)
    first_m = group_id * GROUP_M
    group_size = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % group_size
    pid_n = (pid % (GROUP_M * num_n)) // group_size
    if LONGEST_FIRST:
        # A causal P's K loop ends at its row block's diagonal: the last row blocks take the longest. Blocks launch
        # in grid order, so in the plain order every head's longest blocks queued behind the first heads' short ones
        # and ran last (the causal P·V took as long as the full one); here the grid runs them first, all heads'
        # last row block, then the one before it... The same tiles, so the same values.
        lin = bid * (num_m * num_n) + pid
        per_m = tl.num_programs(1) * num_n
        pid_m = num_m - 1 - lin // per_m
        bid = lin % per_m // num_n
        pid_n = lin % num_n
    batch = bid // H
    head = bid % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # ---- pointers: 64-bit tile bases, 32-bit offsets inside the tile (a 2-D tensor of 64-bit pointers per
    # operand costs two registers per element and made the kernel spill); b tiles are [BLOCK_K, BLOCK_N]
    # views of the [N, K] code layout
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    a_base = a_ptr + batch.to(tl.int64) * stride_ab + head.to(tl.int64) * stride_ah + (pid_m * BLOCK_M).to(tl.int64) * K
    b_base = (
        b_ptr
        + batch.to(tl.int64) * stride_bb
        + (head // GROUP).to(tl.int64) * stride_bh
        + (pid_n * BLOCK_N).to(tl.int64) * K
    )
    a_tile = rows[:, None] * K + offs_k[None, :]
    b_tile = cols[None, :] * K + offs_k[:, None]
    m_ok = offs_m[:, None] < M
    n_ok = offs_n[None, :] < N
    if EVEN_MN:  # constant masks, which the compiler drops from the loads, the selects and the store
        m_ok = tl.full((BLOCK_M, 1), True, tl.int1)
        n_ok = tl.full((1, BLOCK_N), True, tl.int1)
    # ---- K loop: fp16 codes on the tensor cores, fp32 accumulator; masked lanes load code 0 and add exactly 0.
    # A_RAW: A's tiles are encoded here, as operand_codes would (same levels, exact integer codes and sums)
    lo_a, hi_a, div_a, width_a = range_params(ranges_ptr, 0, eps_bits)
    s_a, z_a, c_a = code_params(lo_a, width_a, n_f)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    sum_a = tl.zeros((BLOCK_M,), dtype=tl.float32)
    k_tiles = tl.cdiv(K, BLOCK_K)
    if A_CAUSAL:  # up to the block's last diagonal, unless one of its rows (rows_ptr: bool [B, M]) is fully masked
        full = any_full_row(rows_ptr + batch.to(tl.int64) * stride_rb, offs_m, M)
        k_end = tl.maximum(tl.minimum(pid_m * BLOCK_M + BLOCK_M + (K - M), K), 0)
        # a 0 is code 0 where a's range starts at ≥ 0 (z = 0; P's always does); below 0, z need not be 0's level
        skip = ~full & (lo_a >= 0.0)
        k_tiles = tl.where(skip, tl.cdiv(k_end, BLOCK_K), k_tiles)
    for k in range(0, k_tiles):
        k0 = k * BLOCK_K
        if EVEN_K:
            a_mask = m_ok
            b_mask = n_ok
        else:
            a_mask = m_ok & (offs_k[None, :] < K - k0)
            b_mask = (offs_k[:, None] < K - k0) & n_ok
        if TMA:  # out-of-bounds elements read as 0, as the masked loads' `other`
            a = a_desc.load([pid_m * BLOCK_M, k0])
            b = b_desc.load([pid_n * BLOCK_N, k0]).T
        else:
            a = tl.load(a_base + k0 + a_tile, mask=a_mask, other=0.0)
            if A_RAW:
                code = deterministic_level(a.to(tl.float32), lo_a, hi_a, div_a, n_f) - z_a
                code = tl.where(a_mask, code, 0.0)
                sum_a += tl.sum(code, axis=1)
                a = code.to(tl.float16)
            b = tl.load(b_base + k0 + b_tile, mask=b_mask, other=0.0)
        acc = tl.dot(a, b, acc)
    # ---- epilogue 1: the product of the quantized operands from the code product and the code sums
    lo_b, _, _, width_b = range_params(ranges_ptr, 1, eps_bits)
    s_b, _, c_b = code_params(lo_b, width_b, n_f)
    if not A_RAW:
        a_sums = asum_ptr + batch.to(tl.int64) * stride_sb + head.to(tl.int64) * stride_sh
        sum_a = tl.load(a_sums + offs_m, mask=offs_m < M)
    sum_b = tl.load(
        bsum_ptr + batch.to(tl.int64) * stride_qb + (head // GROUP).to(tl.int64) * stride_qh + offs_n, mask=offs_n < N
    )
    col_value = c_b * K + s_b * sum_b  # Σ_k Qb per column
    val = s_a * (c_b * sum_a[:, None] + s_b * acc) + c_a * col_value[None, :]
    # ---- epilogue 2: range observation of the pre-quantization accumulator (order-free: atomics)
    valid = m_ok & n_ok
    # relaxed: nothing reads the two scalars before the kernel ends, so no ordering (fence) is needed
    tile_lo, tile_hi = tl.where(valid, val, float("inf")), tl.where(valid, val, float("-inf"))
    if INTERPRETED:  # the interpreter runs a combine function element by element: plain reductions, same values
        tile_lo, tile_hi = tl.min(tl.min(tile_lo, axis=1), axis=0), tl.max(tl.max(tile_hi, axis=1), axis=0)
    else:  # one paired reduction: one cross-warp round trip instead of two (12 → 9 barriers in the causal Q·Kᵀ)
        tile_lo, tile_hi = tl.reduce((tile_lo, tile_hi), 1, _minmax)
        tile_lo, tile_hi = tl.reduce((tile_lo, tile_hi), 0, _minmax)
    tl.atomic_min(min_ptr, tile_lo, sem="relaxed")
    tl.atomic_max(max_ptr, tile_hi, sem="relaxed")
    # ---- epilogue 3: stochastic read-out at the flat output index, digital bias, store. The tile's first
    # flat index is 64-bit, offsets inside it 32-bit (fewer registers: BLOCK_M · N < 2³¹)
    tile_start = bid.to(tl.int64) * M * N + (pid_m * BLOCK_M).to(tl.int64) * N + pid_n * BLOCK_N
    tile_offs = rows[:, None] * N + cols[None, :]
    out = val
    stored = valid
    if READOUT and CAUSAL:
        # a causal mask discards the scores above the diagonal: they are 0, and a tile wholly above it skips
        # the read-out (its products were formed and observed above: the range is over all of them)
        if pid_n * BLOCK_N > pid_m * BLOCK_M + BLOCK_M - 1 + (N - M):
            out = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            if SKIP_ABOVE:
                # nor the store, past where the softmax reads the block's rows (softmax._row_last: up to the
                # diagonal rounded up to 16 columns) unless one of them is fully masked (it reads the whole row)
                end = read_end(pid_m * BLOCK_M + BLOCK_M - 1, N - M)
                full = any_full_row(rows_ptr + batch.to(tl.int64) * stride_rb, offs_m, M)
                stored = valid & ((pid_n * BLOCK_N < end) | full)
        else:
            above = offs_n[None, :] > offs_m[:, None] + (N - M)
            y = _readout_tile(
                val, rng_ptr, ranges_ptr, eps_bits, n_f, tile_start, tile_offs, rows, N, BLOCK_M, BLOCK_N, PHILOX_TILE
            )
            out = tl.where(above, 0.0, y)
    elif READOUT:
        out = _readout_tile(
            val, rng_ptr, ranges_ptr, eps_bits, n_f, tile_start, tile_offs, rows, N, BLOCK_M, BLOCK_N, PHILOX_TILE
        )
        if HAS_BIAS:
            out = out + tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if HEADS_LAST:  # c in [B, M, H, N] memory: the layout attention's output projection reads (no copy after)
        c_tile = c_ptr + (batch.to(tl.int64) * M + pid_m * BLOCK_M) * H * N + head * N + pid_n * BLOCK_N
        tl.store(c_tile + rows[:, None] * (H * N) + cols[None, :], cast_for_store(out, c_ptr), mask=stored)
    else:
        tl.store(c_ptr + tile_start + tile_offs, cast_for_store(out, c_ptr), mask=stored)


@triton.jit
def _minmax(lo_a, hi_a, lo_b, hi_b):
    """Combine (min, max) pairs as tl.min and tl.max do (a NaN loses to a number)."""
    return tl.minimum(lo_a, lo_b), tl.maximum(hi_a, hi_b)


@triton.jit
def _readout_uniforms(
    rng_ptr, tile_start, tile_offs, rows, N,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PHILOX_TILE: tl.constexpr, N_ROUNDS: tl.constexpr = 10,
):  # fmt: skip
    """The read-out's dither: u ∈ [0, 1) per output of the tile, Philox at the flat output index (the seam that
    benchmarks/bench_dither_cost.py replaces to measure what the dither costs; N_ROUNDS ≠ 10 only there)."""
    seed = tl.load(rng_ptr + 0)
    counter = tl.load(rng_ptr + 1)
    stream = tl.load(rng_ptr + 2)
    if PHILOX_TILE:  # four consecutive elements of a row share one Philox evaluation (counter = index / 4)
        ctr_offs = rows[:, None] * (N // 4) + tl.arange(0, BLOCK_N // 4)[None, :]
        return philox_uniform_tile(seed, tile_start // 4, ctr_offs, counter, stream, BLOCK_M, BLOCK_N, N_ROUNDS)
    else:
        return philox_uniform(seed, tile_start + tile_offs, counter, stream, N_ROUNDS)


@triton.jit
def _readout_tile(
    val,
    rng_ptr,
    ranges_ptr,
    eps_bits,
    n_f,
    tile_start,
    tile_offs,
    rows,
    N,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PHILOX_TILE: tl.constexpr,
):
    """Q_stoch of a tile's accumulator values with the out range, Philox at the flat output index."""
    u = _readout_uniforms(rng_ptr, tile_start, tile_offs, rows, N, BLOCK_M, BLOCK_N, PHILOX_TILE)
    # the reference's quantizer, except that t multiplies by n / (hi − lo + 1e-8) instead of dividing (≤ 1 ulp
    # of t, far below the accumulator's own summation-order difference; docs/numerics.md)
    lo, hi, div, width = range_params(ranges_ptr, 2, eps_bits)
    t = (tl.minimum(tl.maximum(val, lo), hi) - lo) * tl.math.div_rn(n_f, div)
    k = tl.minimum(tl.maximum(round_half_even(t + (u - 0.5)), 0.0), n_f)
    return level_value(k, width, lo, n_f)


def optical_gemm(
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    group: int,
    bias: torch.Tensor | None,
    ranges: torch.Tensor,
    rng: torch.Tensor,
    n: int,
    minmax: tuple[torch.Tensor, torch.Tensor],
    *,
    readout: bool,
    out_dtype: torch.dtype,
    causal: bool = False,
    a_causal_rows: torch.Tensor | None = None,
    config: dict | None = None,
    heads_last: bool = False,
    c_causal_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Encoded a = (codes [B, H, M, K], sums [B, H, M]) times encoded b = (codes [B, H // group, N, K],
    sums [B, H // group, N]) → c [B·H, M, N]; inner dims contiguous. a = (a itself [B, H, M, K], None): the
    GEMM encodes A's tiles in its K loop (worth it where few N tiles re-read them: raw_a_pays). ranges:
    contiguous fp32 [3, 2] (lo, hi) of (a, b, out); b's LUT floor is already in its codes.

    readout: c is the read-out in out_dtype (+ bias); else the fp32 accumulator. causal (with readout): c is 0
    above the causal diagonal (column > row + N − M), where a causal mask discards it. minmax: fp32 0-d tensors
    holding (+inf, −inf) (operand_codes sets them), folded with the accumulator's range; set here when c is empty.
    a_causal_rows (bool [B, M], with a raw a): a is 0 above its causal diagonal except in these rows, so the K loop
    of a block of rows without one of them stops at its last row's diagonal (optical_matmul's causal_rows).
    config: fixed tile meta-parameters instead of autotuning (tests: results must not depend on them).
    heads_last: c is returned as [B, H, M, N], a view of [B, M, H, N] memory (its transpose(1, 2) contiguous).
    c_causal_rows (bool [B, M], unit stride along M; with causal): c's tiles wholly above the diagonal are left
    unwritten where the softmax given these rows does not read them (optical_matmul's zero_above=False).
    """
    if c_causal_rows is not None and (a_causal_rows is not None or not (causal and readout)):
        raise ValueError("optical_gemm: c_causal_rows needs a causal read-out and no a_causal_rows")
    a_codes, a_sums = a
    b_codes, b_sums = b
    a_raw = a_sums is None
    B, H, M, K = a_codes.shape
    N = b_codes.shape[-2]
    c_dtype = out_dtype if readout else torch.float32
    c = torch.empty((B, M, H, N) if heads_last else (B * H, M, N), dtype=c_dtype, device=a_codes.device)
    if c.numel() == 0:  # nothing to observe (and the encoder may not have launched to initialise the range)
        minmax[0].fill_(float("inf"))
        minmax[1].fill_(float("-inf"))
        return c.transpose(1, 2) if heads_last else c
    args = (
        a_codes,
        a_codes if a_raw else a_sums,
        b_codes,
        b_sums,
        c,
        bias if bias is not None else c,
        ranges,
        rng,
        *minmax,
        a_causal_rows if a_causal_rows is not None else c_causal_rows if c_causal_rows is not None else minmax[0],
        EPS_BITS,
        M,
        N,
        K,
        H,
        group,
        min(triton.next_power_of_2(M), 16384),
        float(n),
        a_codes.stride(0),
        a_codes.stride(1),
        0 if a_raw else a_sums.stride(0),
        0 if a_raw else a_sums.stride(1),
        b_codes.stride(0),
        b_codes.stride(1),
        b_sums.stride(0),
        b_sums.stride(1),
        next((rows.stride(0) for rows in (a_causal_rows, c_causal_rows) if rows is not None), 0),
    )
    flags = {
        "READOUT": readout,
        "HAS_BIAS": bias is not None,
        "A_RAW": a_raw,
        "CAUSAL": causal and readout,
        "A_CAUSAL": a_raw and a_causal_rows is not None,
    }
    # TMA descriptors (block shapes set for each config by _tma_blocks) where the autotuner tries TMA configs or the
    # caller fixed one; made only then, as they cost host time every call
    fixed_tma, pays = config is not None and bool(config.get("TMA")), _tma_pays(N, K)
    feasible = (fixed_tma or pays) and not (a_raw or causal or heads_last) and _tma_ok(a_codes, b_codes)
    if fixed_tma and not feasible:
        raise ValueError("optical_gemm: a TMA config needs one operand pair of encoded A, no causal mask or heads_last")
    flags["TMA_OK"] = feasible and pays
    descriptors = (None, None)
    if feasible:
        descriptors = tuple(TensorDescriptor.from_tensor(t[0, 0], [16, 16]) for t in (a_codes, b_codes))

    def derived(meta: dict) -> dict:
        if meta.get("TMA"):
            _tma_blocks({**meta, "a_desc": descriptors[0], "b_desc": descriptors[1]})
        return {
            "EVEN_K": _even_k(K, meta["BLOCK_K"]),
            "EVEN_MN": _even_mn(M, N, meta["BLOCK_M"], meta["BLOCK_N"]),
            "PHILOX_TILE": _philox_tile(N),
        }

    _GEMM(
        _config_key(M, N, K, c.dtype, **flags),
        _gemm_grid(M, N, B * H, c.device),
        (*args, *descriptors),
        flags
        | {"HEADS_LAST": heads_last, "SKIP_ABOVE": c_causal_rows is not None}
        | {"LONGEST_FIRST": a_causal_rows is not None and _longest_first()},
        config=config,
        derived=derived,
    )
    return c.transpose(1, 2) if heads_last else c


def _tma_ok(a_codes: torch.Tensor, b_codes: torch.Tensor) -> bool:
    """Whether TMA descriptors can load the codes: one operand pair of [M, K] and [N, K] codes, rows 16-byte
    aligned (K a multiple of 8), on a GPU with TMA (Hopper on) or in the interpreter."""
    if a_codes.shape[:2] != (1, 1) or b_codes.shape[:2] != (1, 1):
        return False
    a, b = a_codes[0, 0], b_codes[0, 0]
    if not (a.is_contiguous() and b.is_contiguous() and a.shape[1] % 8 == 0):
        return False
    if a.data_ptr() % 16 or b.data_ptr() % 16:
        return False
    return INTERPRET or torch.cuda.get_device_capability(a.device)[0] >= 9


def _tma_pays(N: int, K: int) -> bool:
    """Whether the autotuner tries the TMA configs: at the 600M linears (K, N ≥ 1152) it picks them, −2 to −8 % on
    the graphed forward; at the 200M ones they were no faster (benchmarks/NOTES.md 78, 80), so they are not offered
    there."""
    return N >= 1024 and K >= 1024


def _gemm_grid(M: int, N: int, batch: int, device: torch.device):
    """The GEMM's launch grid: a program per output tile, or PERSISTENT programs an SM (at most one per tile)."""
    per_tile = tile_grid(M, N, batch)

    def grid(meta: dict) -> tuple[int, int]:
        if meta.get("PERSISTENT"):
            tiles = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])
            return (min(tiles, meta["PERSISTENT"] * sm_count(device)), 1)
        return per_tile(meta)

    return grid


def _config_key(
    M: int,
    N: int,
    K: int,
    out_dtype: torch.dtype,
    *,
    READOUT: bool,
    HAS_BIAS: bool,
    A_RAW: bool = False,
    CAUSAL: bool = False,
    A_CAUSAL: bool = False,
    TMA_OK: bool = False,
) -> tuple:
    """The autotuner's key (M bucketed to a power of two up to 16384, N, K, the variant) plus the output dtype."""
    m_bucket = min(triton.next_power_of_2(M), 16384)
    return (m_bucket, N, K, out_dtype, READOUT, HAS_BIAS, A_RAW, CAUSAL, A_CAUSAL, TMA_OK)


def chosen_config(
    M: int,
    N: int,
    K: int,
    out_dtype: torch.dtype,
    *,
    readout: bool,
    has_bias: bool,
    raw_a: bool = False,
    causal: bool = False,
    a_causal: bool = False,
    tma_ok: bool = False,
) -> dict | None:
    """The tile config the GEMM launches for these sizes (the autotuner's choice), or None before the first call.
    tma_ok: TMA can load the codes (one operand pair, as a linear's, on Hopper or later)."""
    key = _config_key(
        M,
        N,
        K,
        out_dtype,
        READOUT=readout,
        HAS_BIAS=has_bias,
        A_RAW=raw_a,
        CAUSAL=causal,
        A_CAUSAL=a_causal,
        TMA_OK=tma_ok and _tma_pays(N, K),
    )
    return _GEMM.chosen.get(key)


_GEMM = TunedLaunch(_optical_gemm_kernel)


# Encoding A inside the GEMM re-encodes each A tile once per N tile: it pays where N fits in one or two tiles
# (attention's P·V, N = head_dim), and saves the encoder's pass over A and its codes (benchmarks/NOTES.md 20).
RAW_A_MAX_N = 128


def raw_a_pays(a3: torch.Tensor, N: int) -> bool:
    """Whether the GEMM should encode a3 [G, M, K] itself: N ≤ RAW_A_MAX_N and a3's rows K-contiguous."""
    return N <= RAW_A_MAX_N and a3.stride(-1) == 1 and (a3.shape[-2] <= 1 or a3.stride(-2) == a3.shape[-1])


def _rows_for_raw_a(causal_rows: torch.Tensor | None, a: torch.Tensor, raw_a: bool) -> torch.Tensor | None:
    """causal_rows as the GEMM reads them (bool [B, M], unit stride along M), where it encodes a 4-D a itself."""
    if causal_rows is None or not raw_a or a.dim() != 4 or causal_rows.shape != (a.shape[0], a.shape[2]):
        return None
    return _unit_stride_rows(causal_rows)


def _unit_stride_rows(causal_rows: torch.Tensor | None) -> torch.Tensor | None:
    """bool [B, M] rows with unit stride along M, as the GEMM reads them."""
    if causal_rows is None:
        return None
    return causal_rows if causal_rows.stride(1) == 1 else causal_rows.contiguous()


def new_minmax(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two fp32 0-d tensors for the accumulator range (separate: custom-op outputs must not alias)."""
    return torch.empty((), device=device), torch.empty((), device=device)


@triton.jit
def _reset_minmax_kernel(min_ptr, max_ptr):
    tl.store(min_ptr, float("inf"))
    tl.store(max_ptr, float("-inf"))


def reset_minmax(minmax: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Set the GEMM's range scalars to (+inf, −inf) in one launch (where no encoder launch before it does)."""
    _reset_minmax_kernel[(1,)](*minmax, num_warps=1, **LAUNCH_OPTS)


def optical_matmul_fwd(
    a: torch.Tensor,
    b: torch.Tensor,
    ranges: torch.Tensor,
    rng: torch.Tensor,
    n: int,
    *,
    lut_min: float | None,
    readout: bool,
    out_dtype: torch.dtype,
    raw_a: bool | None = None,
    causal: bool = False,
    causal_rows: torch.Tensor | None = None,
    config: dict | None = None,
    heads_last: bool = False,
    zero_above: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a [..., M, K] @ b [..., K, N] (broadcast leading dims; dim −3 may be grouped) → (c, acc min, acc max).

    ranges: contiguous fp32 [3, 2] (lo, hi) of (a, b, out). readout: c is the read-out, else the fp32 accumulator.
    raw_a: the GEMM encodes a itself (None: where raw_a_pays). The results are the same bit for bit.
    causal (with readout): c is 0 above the causal diagonal, and tiles wholly above it are not read out.
    causal_rows (bool [B, M] for a [B, H, M, K]): without causal, the caller's promise that a is 0 above its causal
    diagonal except in these rows (attention's P); where the GEMM encodes a itself, it skips those zeros' K tiles.
    With causal, the rows the softmax reads whole (zero_above=False).
    config: the GEMM's tile config, fixed (tests), as optical_gemm's.
    heads_last (a and the result 4-D, [B, H, M, ·]): c in [B, M, H, N] memory, as optical_gemm's.
    zero_above=False (causal read-out, causal_rows given): tiles wholly above the diagonal that the softmax given
    causal_rows does not read are not stored (optical_matmul's zero_above).
    """
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    lead_a, lead_b = list(a.shape[:-2]), list(b.shape[:-2])
    minmax = new_minmax(a.device)
    # a as [G, M, K] only where it is read that way: for a head-transposed view (the query) it is a copy
    needs_a3 = a.dim() != 4 or bool(raw_a) or (raw_a is None and N <= RAW_A_MAX_N)
    a3 = a.reshape(math.prod(lead_a), M, K) if needs_a3 else None
    if raw_a is None:
        raw_a = a3 is not None and raw_a_pays(a3, N)
    if raw_a:
        a_codes, a_sums = a3.contiguous(), None  # no copy where raw_a_pays
    else:  # a 4-D operand is encoded in place (the encoder takes [B, H, R, C] strides): no copy of a view
        a_codes, a_sums = operand_codes(a if a.dim() == 4 else a3, ranges, 0, n, minmax=minmax)
    # b as [G, N, K] (or [B, H, N, K]): codes come out K-contiguous, as the GEMM's tiles are read; with raw a, this
    # launch sets the accumulator range's initial (+inf, −inf)
    b_nk = b.transpose(-1, -2) if b.dim() == 4 else b.reshape(math.prod(lead_b), K, N).transpose(1, 2)
    b_codes, b_sums = operand_codes(b_nk, ranges, 1, n, lut_min=lut_min, minmax=minmax if raw_a else None)
    group = 1
    if lead_a and lead_b and lead_b[-1] not in (1, lead_a[-1]) and lead_a[-1] % lead_b[-1] == 0:
        group = lead_a[-1] // lead_b[-1]
    lead_b_heads = [*lead_b[:-1], lead_b[-1] * group] if lead_b else []
    lead = list(broadcast_shapes(lead_a, lead_b_heads))
    h = lead[-1] if lead else 1
    if heads_last and (len(lead) != 2 or a.dim() != 4):
        raise ValueError(f"heads_last needs a 4-D product [B, H, M, N], got leading dims {lead}")

    def fold(t: torch.Tensor, lead_t: list[int], heads: int, inner: list[int]) -> torch.Tensor:
        # expand (stride 0, no copy) to the common leading shape, then fold the outer dims into one
        outer = math.prod(lead[:-1])
        return t.view(*lead_t, *inner).expand(*lead[:-1], heads, *inner).reshape(outer, heads, *inner)

    a_enc = (fold(a_codes, lead_a, h, [M, K]), None if raw_a else fold(a_sums, lead_a, h, [M]))
    hb = h // group
    b_enc = (fold(b_codes, lead_b, hb, [N, K]), fold(b_sums, lead_b, hb, [N]))
    c = optical_gemm(
        a_enc,
        b_enc,
        group,
        None,
        ranges,
        rng,
        n,
        minmax,
        readout=readout,
        out_dtype=out_dtype,
        causal=causal,
        a_causal_rows=None if causal else _rows_for_raw_a(causal_rows, a, raw_a),  # causal_rows: a is P
        config=config,
        heads_last=heads_last,
        c_causal_rows=_unit_stride_rows(causal_rows) if causal and readout and not zero_above else None,
    )
    return c.view(*lead, M, N), minmax[0], minmax[1]
