"""Element-wise optical quantizer kernel (operand quantization and the stand-alone read-out).

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

from .utils import ELEMENTWISE_BLOCK, LAUNCH_OPTS, cast_for_store, philox_uniform, quantize_values, round_to_bf16

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
    y = quantize_values(x, p_ptr, n_f, u, STOCHASTIC, CLAMP_K, LUT)
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
