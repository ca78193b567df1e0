"""Element-wise optical quantizer kernels: the stand-alone quantizer / read-out, and the operand encoder
that turns an operand into fp16 level codes for the optical GEMM (optical_matmul.py).

Math (docs/numerics.md): t = (clamp(x, lo, hi) − lo) / (hi − lo + 1e-8) · n;
k = rhte(t) or clamp(rhte(t + u − ½), 0, n); y = k / n · (hi − lo) + lo; optional LUT floor.
u is Philox per global element index (offset + flat index), so results never depend on BLOCK.
Differences from mase-triton's `_ot_quantize_forward_kernel` (docs/numerics.md): Philox keyed by
(seed, counter, stream, global index) instead of `tl.rand(seed, offsets)` of the launch; k clamped to
[0, n]; range scalars read from device memory (no host floats, so no .item()); IEEE divisions and no FMA
contraction (bit-identical to the reference); 64-bit element offsets.
"""

import torch
import triton
import triton.language as tl

from .utils import (
    ELEMENTWISE_BLOCK,
    EPS_BITS,
    INTERPRET,
    LAUNCH_OPTS,
    cast_for_store,
    code_params,
    deterministic_level,
    f64_bits,
    level_value,
    lut_codes,
    lut_floors,
    philox_uniform,
    quantize_values,
    range_params,
    round_to_bf16,
    vector_params,
)

_CAST_CODES = {None: 0, torch.bfloat16: 1, torch.float16: 2, torch.float32: 0}


@triton.jit
def _quantize_fwd_kernel(
    # pointers
    x_ptr,
    y_ptr,
    bias_ptr,
    p_ptr,
    rng_ptr,
    # sizes
    n_elements,
    offset,
    n_cols,
    n_f,
    # meta-parameters
    STOCHASTIC: tl.constexpr,
    SINGLE_DITHER: tl.constexpr,
    CLAMP_K: tl.constexpr,
    LUT: tl.constexpr,
    CAST: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # ---- tile: 64-bit element indices (tensors may exceed 2³¹ elements)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if CAST == 1:  # numerics="mase": the peer rounds the accumulator to the activation dtype first
        x = round_to_bf16(x)
    elif CAST == 2:
        x = x.to(tl.float16).to(tl.float32)
    # ---- dither
    u = tl.zeros_like(x)
    if STOCHASTIC:
        seed = tl.load(rng_ptr + 0)
        if SINGLE_DITHER:  # defect 1 reproduced: one value per call from the seed alone
            u = philox_uniform(seed, tl.zeros_like(offs), 0 * seed, 0 * seed).to(tl.float32)
        else:
            u = philox_uniform(seed, offs + offset, tl.load(rng_ptr + 1), tl.load(rng_ptr + 2))
    # ---- quantize, digital bias, store
    lo, hi, div, width, pos, neg = vector_params(p_ptr)
    y = quantize_values(x, lo, hi, div, width, pos, neg, n_f, u, STOCHASTIC, CLAMP_K, LUT)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs % n_cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, cast_for_store(y, y_ptr), mask=mask)


def quantize_fwd(
    x: torch.Tensor,
    p: torch.Tensor,
    rng: torch.Tensor,
    n: int,
    *,
    lut: bool = False,
    stochastic: bool = False,
    offset: int = 0,
    clamp_k: bool = True,
    single_dither: bool = False,
    cast_dtype: torch.dtype | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Launch the quantizer on x (any layout; made contiguous); p: fp32 [6] params, rng: int64 [3] (seed, counter, stream)."""
    x = x.contiguous()
    y = torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    n_el = x.numel()
    if n_el == 0:
        return y
    n_cols = x.shape[-1] if x.dim() else 1
    grid = (triton.cdiv(n_el, ELEMENTWISE_BLOCK),)
    _quantize_fwd_kernel[grid](
        x,
        y,
        bias if bias is not None else x,
        p,
        rng,
        n_el,
        offset,
        n_cols,
        float(n),
        STOCHASTIC=stochastic,
        SINGLE_DITHER=single_dither,
        CLAMP_K=clamp_k,
        LUT=lut,
        CAST=_CAST_CODES[cast_dtype],
        HAS_BIAS=bias is not None,
        BLOCK=ELEMENTWISE_BLOCK,
        num_warps=4,
        **LAUNCH_OPTS,
    )
    return y


# ---------------------------------------------------------------------------------------------------------
# Operand encoder. Deterministic levels k ∈ [0, n] (bit-identical to the reference's) are stored as fp16 codes
# k − z, z the level nearest 0 (code_params), so Q = c + s·code; exact integers (|k − z| ≤ n ≤ 255). For the LUT
# operand, a floored element's code is the fp16 of the floor value's own position on that axis (lut_codes),
# so LUT(Q) = c + s·code to fp16 precision of |code| ≤ λ·n + ½ (2⁻⁹·s at the defaults). Per row of the
# output layout [G, R, C] (C = the reduction dim) it also writes Σ_c code in fp32 (exact for A's integer
# codes while C·n < 2²⁴), which the GEMM epilogue needs.

_CODES_BLOCK_R, _CODES_BLOCK_C = (64, 256) if INTERPRET else (32, 128)


def _even_blocks(R: int, C: int, block_r: int, block_c: int) -> bool:
    """Whether the encoder's programs see only whole blocks of rows and columns: then its masks are constants the
    compiler drops (the same arithmetic in the same order: the same codes and sums; benchmarks/NOTES.md 58)."""
    return R % block_r == 0 and C % block_c == 0


def _rows_per_program(rows: int) -> int:
    """Rows per encoder program: 32 for large operands, 8 below 32 Ki rows, so that a weight (384 rows) or one
    batch of activations (8192 rows) still spreads over several programs per SM (the launches were latency-bound,
    benchmarks/NOTES.md 20). Codes and sums do not depend on it (each row sums its columns in the same order)."""
    return _CODES_BLOCK_R if INTERPRET or rows >= 32 * 1024 else 8


@triton.jit
def _operand_codes_kernel(
    # pointers
    x_ptr,
    codes_ptr,
    sums_ptr,
    cast_ptr,
    ranges_ptr,
    min_ptr,
    max_ptr,
    # which (lo, hi) row of ranges, λ and 1e-8 as fp64 bits (see range_params)
    row,
    lam_bits,
    eps_bits,
    # sizes and strides of x viewed as [B, H, R, C] (program g along axis 1 is b = g // H, h = g % H)
    H,
    R,
    C,
    stride_b,
    stride_h,
    stride_r,
    stride_c,
    n_f,
    # meta-parameters
    LUT: tl.constexpr,
    CAST: tl.constexpr,
    INIT_MINMAX: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN: tl.constexpr,
):
    pid_r = tl.program_id(0)
    g = tl.program_id(1)
    if INIT_MINMAX:  # the GEMM launched next folds its accumulator range into these by atomics
        first = (pid_r == 0) & (g == 0)
        tl.store(min_ptr, float("inf"), mask=first)
        tl.store(max_ptr, float("-inf"), mask=first)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    b = g // H
    x_head = x_ptr + b.to(tl.int64) * stride_b + (g - b * H).to(tl.int64) * stride_h
    _encode_rows(
        x_head, stride_r, stride_c, codes_ptr + g.to(tl.int64) * R * C, sums_ptr + g.to(tl.int64) * R,
        cast_ptr + g.to(tl.int64) * R * C, offs_r, R, C, ranges_ptr + 2 * row, lam_bits, eps_bits, n_f, LUT, CAST,
        BLOCK_R, BLOCK_C, EVEN,
    )  # fmt: skip


@triton.jit
def _encode_rows(
    x_ptr, stride_r, stride_c, codes_ptr, sums_ptr, cast_ptr, offs_r, R, C, range_ptr, lam_bits, eps_bits, n_f,
    LUT: tl.constexpr, CAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, EVEN: tl.constexpr,
):  # fmt: skip
    """Rows offs_r of one [R, C] operand at x_ptr (strides stride_r, stride_c) → fp16 codes at codes_ptr ([R, C]
    contiguous) and fp32 row sums at sums_ptr, with the (lo, hi) at range_ptr. CAST: also store the operand in
    cast_ptr's dtype at the codes' offsets (rounded as torch's .to()); 1: encode the operand as read, 2: encode the
    cast values (the operand as an autocast linear would multiply it)."""
    lo, hi, div, width = range_params(range_ptr, 0, eps_bits)
    s, z, c = code_params(lo, width, n_f)
    if LUT:
        pos, neg = lut_floors(lo, hi, lam_bits)
        code_pos, code_neg = lut_codes(pos, neg, s, c)
    row_ok = offs_r < R
    if EVEN:  # whole blocks of rows and columns: constant masks, which the compiler drops
        row_ok = tl.full((BLOCK_R,), True, tl.int1)
    x_rows = x_ptr + offs_r[:, None].to(tl.int64) * stride_r
    out_rows = offs_r[:, None].to(tl.int64) * C
    code_sum = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        m = row_ok[:, None] & (offs_c[None, :] < C)
        if EVEN:
            m = tl.full((BLOCK_R, BLOCK_C), True, tl.int1)
        x = tl.load(x_rows + offs_c[None, :].to(tl.int64) * stride_c, mask=m, other=0.0).to(tl.float32)
        if CAST:
            x_cast = cast_for_store(x, cast_ptr)
            tl.store(cast_ptr + out_rows + offs_c[None, :], x_cast, mask=m)
            if CAST == 2:
                x = x_cast.to(tl.float32)
        k = deterministic_level(x, lo, hi, div, n_f)
        code = k - z
        if LUT:
            y = level_value(k, width, lo, n_f)  # the reference's value before the floor, bit for bit
            code = tl.where((y > 0.0) & (y < pos), code_pos, tl.where((y < 0.0) & (y > neg), code_neg, code))
        code = cast_for_store(tl.where(m, code, 0.0), codes_ptr)
        tl.store(codes_ptr + out_rows + offs_c[None, :], code, mask=m)
        code_sum += tl.sum(code.to(tl.float32), axis=1)
    tl.store(sums_ptr + offs_r, code_sum, mask=row_ok)


def operand_codes(
    x: torch.Tensor,
    ranges: torch.Tensor,
    row: int,
    n: int,
    *,
    lut_min: float | None = None,
    minmax: tuple[torch.Tensor, torch.Tensor] | None = None,
    cast: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode x [G, R, C] or [B, H, R, C] (any strides; C is the reduction dim; G = B·H) → (fp16 codes [G, R, C]
    contiguous, fp32 sums [G, R] = Σ_c codes). A 4-D x is read in place: attention's head-transposed query, key
    and value need no contiguous copy first.

    ranges: contiguous fp32 [rows, 2] (lo, hi) on the device; `row` is this operand's. lut_min: the LUT floor
    λ (the SLM operand B only; None = off). minmax: two fp32 0-d tensors this launch sets to (+inf, −inf) for the
    GEMM's range atomics. cast: a contiguous tensor of x's size in another float dtype; the launch writes
    x.to(cast.dtype) into it and encodes those values, not x's (an autocast linear's input, cast and encoded in
    one pass over x).
    """
    x4 = x if x.dim() == 4 else x.unsqueeze(1)
    B, H, R, C = x4.shape
    G = B * H
    codes = torch.empty((G, R, C), dtype=torch.float16, device=x.device)
    sums = torch.empty((G, R), dtype=torch.float32, device=x.device)
    if G * R == 0:
        return codes, sums
    block_r = _rows_per_program(G * R)
    grid = (triton.cdiv(R, block_r), G)
    if cast is not None and (cast.numel() != x.numel() or not cast.is_contiguous() or cast.dtype == x.dtype):
        raise ValueError("operand_codes: cast must be a contiguous tensor of x's size in another dtype")
    _operand_codes_kernel[grid](
        x,
        codes,
        sums,
        codes if cast is None else cast,
        ranges,
        *(minmax if minmax is not None else (sums, sums)),
        row,
        f64_bits(lut_min or 0.0),
        EPS_BITS,
        H,
        R,
        C,
        *x4.stride(),
        float(n),
        LUT=lut_min is not None,
        CAST=0 if cast is None else 2,
        INIT_MINMAX=minmax is not None,
        BLOCK_R=block_r,
        BLOCK_C=_CODES_BLOCK_C,
        EVEN=_even_blocks(R, C, block_r, _CODES_BLOCK_C),
        num_warps=4,
        **LAUNCH_OPTS,
    )
    return codes, sums


@triton.jit
def _weight_codes_kernel(
    plan_ptr, table_ptr, like_ptr, codes_ptr, sums_ptr, casts_ptr, lam_bits, eps_bits, n_f,
    LUT: tl.constexpr, CAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, EVEN: tl.constexpr,
):  # fmt: skip
    """Many contiguous [R, C] operands of like_ptr's dtype encoded in one launch (weight_codes_). Program p takes
    (operand i, its row block b) from plan_ptr[2p : 2p + 2]; operand i's int64 entry in table_ptr is (its offset
    from like_ptr in elements, R, C, address of its fp32 (lo, hi), offset of its codes in codes_ptr, offset of its
    sums in sums_ptr). Offsets from a pointer argument rather than addresses: the compiler knows the argument's
    alignment, so the loads vectorise."""
    pid = tl.program_id(0)
    entry = table_ptr + 6 * tl.load(plan_ptr + 2 * pid).to(tl.int64)
    offs_r = tl.load(plan_ptr + 2 * pid + 1) * BLOCK_R + tl.arange(0, BLOCK_R)
    offset, C, codes_offset = tl.load(entry), tl.load(entry + 2), tl.load(entry + 4)
    if EVEN:  # 16-byte aligned operands and whole blocks (C a multiple of BLOCK_C): 16-byte loads and stores
        offset, C, codes_offset = tl.multiple_of(offset, 16), tl.multiple_of(C, 16), tl.multiple_of(codes_offset, 16)
    _encode_rows(
        like_ptr + offset, C, 1, codes_ptr + codes_offset, sums_ptr + tl.load(entry + 5), casts_ptr + codes_offset,
        offs_r, tl.load(entry + 1), C, tl.load(entry + 3).to(tl.pointer_type(tl.float32)), lam_bits, eps_bits, n_f,
        LUT, CAST, BLOCK_R, BLOCK_C, EVEN,
    )  # fmt: skip


def weight_codes_(
    plan: torch.Tensor,
    table: torch.Tensor,
    like: torch.Tensor,
    codes: torch.Tensor,
    sums: torch.Tensor,
    n: int,
    *,
    lut_min: float | None,
    even: bool,
    casts: torch.Tensor | None = None,
) -> None:
    """operand_codes of many contiguous [R, C] operands of `like`'s dtype in one launch, each with its own range,
    into slices of the flat `codes` (fp16) and `sums` (fp32). `table` int64 [T, 6] per operand: offset from `like`
    in elements, R, C, range address, codes offset, sums offset. `plan` int32 [P, 2] per program: operand, row
    block (of `weight_codes_rows()` rows). even: every R and C a multiple of the blocks and every operand 16-byte
    aligned (the masks are then dropped, loads and stores vectorised). casts: a flat buffer like `codes` in another
    float dtype; each operand is also written there, cast as torch's .to() casts it, at its codes' offset (the
    operands are encoded as they are, not as cast)."""
    if casts is not None and (casts.numel() != codes.numel() or casts.dtype == like.dtype):
        raise ValueError("weight_codes_: casts must be a flat buffer of the codes' size in another dtype")
    _weight_codes_kernel[(plan.shape[0],)](
        plan,
        table,
        like,
        codes,
        sums,
        codes if casts is None else casts,
        f64_bits(lut_min or 0.0),
        EPS_BITS,
        float(n),
        LUT=lut_min is not None,
        CAST=0 if casts is None else 1,
        BLOCK_R=_CODES_BLOCK_R,
        BLOCK_C=_CODES_BLOCK_C,
        EVEN=even,
        num_warps=4,
        **LAUNCH_OPTS,
    )


def weight_codes_rows() -> int:
    """Rows per program of weight_codes_."""
    return _CODES_BLOCK_R


def weight_codes_even(operands: list[torch.Tensor]) -> bool:
    """weight_codes_'s `even` for these operands."""
    return all(
        _even_blocks(*w.shape, _CODES_BLOCK_R, _CODES_BLOCK_C) and w.data_ptr() % 16 == 0 for w in operands
    )  # fmt: skip


def element_offset(t: torch.Tensor, like: torch.Tensor) -> int:
    """t's first element as an offset from like's, in elements of their common dtype."""
    difference = t.data_ptr() - like.data_ptr()
    if t.dtype != like.dtype or difference % t.element_size():
        raise ValueError("element_offset: tensors of one dtype at element-aligned addresses")
    return difference // t.element_size()
