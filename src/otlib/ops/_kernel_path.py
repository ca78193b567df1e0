"""CUDA path of the optical ops: orchestrates the Triton launchers (imported lazily).

Per call: two operand-encoder launches and one level-code GEMM; the kernels form the quantizer
params from the fp32 ranges themselves (in fp64, as the reference), so no small device ops run here. Fast path (numerics="fixed", fixed out range): the GEMM's
epilogue observes the accumulator's min/max and does the stochastic read-out + bias. Otherwise
(calibrate_out, or "mase") the GEMM writes the fp32 accumulator and its min/max, the out range is
formed on the device, and the quantize kernel does the read-out — still no host sync.
"""

import torch
from torch import Tensor

from .reference import quant_params, zero_above_diagonal_


def _readout(
    acc: Tensor,
    acc_min: Tensor,
    acc_max: Tensor,
    bias: Tensor | None,
    ranges: Tensor,
    rng: Tensor,
    n: int,
    *,
    numerics: str,
    calibrate_out: bool,
    act_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    from ..kernels.quantize import quantize_fwd

    mase = numerics == "mase"
    lo, hi = (acc_min, acc_max) if calibrate_out else (ranges[2, 0], ranges[2, 1])
    pout = quant_params(lo, hi, None, acc.device)
    y = quantize_fwd(
        acc,
        pout,
        rng,
        n,
        stochastic=True,
        clamp_k=not mase,
        single_dither=mase,
        cast_dtype=act_dtype if mase else None,
        bias=None if mase else bias,
        out_dtype=torch.float32 if mase else act_dtype,
    )
    if not mase:
        return y, acc_min, acc_max
    ymin, ymax = torch.aminmax(y) if y.numel() else (acc_max.clone(), acc_min.clone())
    if bias is not None:
        y = y + bias.float()
    return y.to(act_dtype), ymin, ymax


def linear_kernel_path(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    ranges: Tensor,
    rng: Tensor,
    *,
    levels: int,
    lut_min: float | None,
    numerics: str,
    calibrate_out: bool,
    x_codes: tuple[Tensor, Tensor] | None = None,
    w_codes: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    from ..kernels.optical_linear import optical_linear_fwd

    n = levels - 1
    fused = numerics == "fixed" and not calibrate_out
    out, acc_min, acc_max = optical_linear_fwd(
        x.reshape(-1, x.shape[-1]),
        weight,
        bias if fused else None,
        ranges.contiguous(),
        rng,
        n,
        lut_min=lut_min,
        readout=fused,
        out_dtype=x.dtype,
        x_codes=x_codes,
        w_codes=w_codes,
    )
    if fused:
        y, omin, omax = out, acc_min, acc_max
    else:
        y, omin, omax = _readout(
            out,
            acc_min,
            acc_max,
            bias,
            ranges,
            rng,
            n,
            numerics=numerics,
            calibrate_out=calibrate_out,
            act_dtype=x.dtype,
        )
    return y.view(*x.shape[:-1], weight.shape[0]), omin, omax


def matmul_kernel_path(
    a: Tensor,
    b: Tensor,
    ranges: Tensor,
    rng: Tensor,
    *,
    levels: int,
    lut_min: float | None,
    numerics: str,
    calibrate_out: bool,
    causal: bool = False,
    causal_rows: Tensor | None = None,
    heads_last: bool = False,
    zero_above: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """heads_last: the fused GEMM writes c in [B, M, H, N] memory; other paths return it [B, H, M, N] contiguous."""
    from ..kernels.optical_matmul import optical_matmul_fwd

    n = levels - 1
    fused = numerics == "fixed" and not calibrate_out
    out, acc_min, acc_max = optical_matmul_fwd(
        a,
        b,
        ranges.contiguous(),
        rng,
        n,
        lut_min=lut_min,
        readout=fused,
        out_dtype=a.dtype,
        causal=causal,
        causal_rows=causal_rows,
        heads_last=heads_last and fused,
        zero_above=zero_above or not fused,
    )
    if fused:  # the GEMM zeroed what lies above the diagonal (causal), without reading it out
        return out, acc_min, acc_max
    c, cmin, cmax = _readout(
        out, acc_min, acc_max, None, ranges, rng, n, numerics=numerics, calibrate_out=calibrate_out, act_dtype=a.dtype
    )
    return (zero_above_diagonal_(c) if causal else c), cmin, cmax
