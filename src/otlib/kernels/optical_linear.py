"""Fused optical linear: Y = Q_stoch(Q_det(X) · LUT(Q_det(W))ᵀ; out range) + b.

X and W are encoded once per call into fp16 level codes (operand encoder, quantize.py) — W [N, K] is already
in the [N, K] layout the GEMM wants — then the level-code GEMM of optical_matmul.py runs with B = H = 1
and does the range observation, stochastic read-out and digital bias in its fp32 epilogue.
"""

import torch

from .optical_matmul import new_minmax, optical_gemm, reset_minmax
from .quantize import operand_codes


def optical_linear_fwd(
    x2: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ranges: torch.Tensor,
    rng: torch.Tensor,
    n: int,
    *,
    lut_min: float | None,
    readout: bool,
    out_dtype: torch.dtype,
    config: dict | None = None,
    x_codes: tuple[torch.Tensor, torch.Tensor] | None = None,
    w_codes: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x2 [M, K], weight [N, K], ranges contiguous fp32 [3, 2] (lo, hi) of (x, w, out) → (y [M, N] read out in
    out_dtype + bias, or the fp32 accumulator if not readout; acc min; acc max).
    x_codes: x2's (codes [M, K], sums [M]) with this x range, already encoded for another layer reading x2.
    w_codes: the weight's (codes [N, K], sums [N]) with this w range and LUT floor, already encoded."""
    M, K = x2.shape
    N = weight.shape[0]
    minmax = new_minmax(x2.device)
    # the first encoder launch sets the GEMM's range scalars (minmax) to (+inf, −inf); with both operands encoded
    # already, a launch of its own
    unset = minmax
    if x_codes is None:
        x_codes, unset = operand_codes(x2.unsqueeze(0), ranges, 0, n, minmax=minmax), None
    if w_codes is None:
        w_codes, unset = operand_codes(weight.unsqueeze(0), ranges, 1, n, lut_min=lut_min, minmax=unset), None
    if unset is not None:
        reset_minmax(unset)
    x_codes, x_sums = x_codes
    w_codes, w_sums = w_codes
    c = optical_gemm(
        (x_codes.view(1, 1, M, K), x_sums.view(1, 1, M)),
        (w_codes.view(1, 1, N, K), w_sums.view(1, 1, N)),
        1,
        bias if readout else None,
        ranges,
        rng,
        n,
        minmax,
        readout=readout,
        out_dtype=out_dtype,
        config=config,
    )
    return c.view(M, N), minmax[0], minmax[1]
