"""`otlib.ops.quantize`: the elementwise optical quantizer (forward only).

Straight-through gradients live in the optical_linear / optical_matmul ops, not here; this is
the building block users call to inspect or reproduce what an operand goes through.
"""

import torch
from torch import Tensor

from ._dispatch import check_common, use_kernels
from .philox import _as_i64, philox_uniform
from .reference import quant_params, quantize_core


def quantize(
    x: Tensor,
    lo: float | Tensor,
    hi: float | Tensor,
    levels: int = 256,
    *,
    lut_min: float | None = None,
    stochastic: bool = False,
    seed: int | Tensor = 0,
    offset: int = 0,
    counter: int | Tensor = 0,
    stream: int | Tensor = 0,
) -> Tensor:
    """Q(x; lo, hi) with `levels` levels, same shape and dtype as `x` (arithmetic in fp32).

    lo, hi: Python floats or 0-d tensors on x's device (read on the device, no host sync).
    lut_min: SLM floor λ (None = off). stochastic: dithered rounding with per-element Philox
    uniforms keyed by (seed, counter, stream) at element index offset + i (row-major), so a
    tensor quantized in pieces with matching offsets equals it quantized whole.
    """
    check_common(levels, lut_min, "fixed")
    if not x.dtype.is_floating_point:
        raise ValueError(f"quantize needs a floating-point tensor, got {x.dtype}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    p = quant_params(lo, hi, lut_min, x.device)
    if use_kernels(x):
        from ..kernels.quantize import quantize_fwd

        rng = torch.stack([_as_i64(seed, x.device), _as_i64(counter, x.device), _as_i64(stream, x.device)])
        return quantize_fwd(x, p, rng, levels - 1, lut=lut_min is not None, stochastic=stochastic, offset=offset)
    u = None
    if stochastic:
        u = philox_uniform(x.numel(), seed, counter, stream, offset, x.device).view(x.shape)
    return quantize_core(x.float(), p, levels - 1, u=u, lut=lut_min is not None).to(x.dtype)
