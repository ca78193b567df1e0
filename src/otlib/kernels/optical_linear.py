"""Fused optical linear: Y = Q_stoch(Q_det(X) · LUT(Q_det(W))ᵀ; out range) + b.

X and W are quantized once per call (quantize kernel), then the batched GEMM kernel of
optical_matmul.py runs with B = H = 1, reading W [N, K] as Wᵀ through strides (no transpose copy),
and does the range observation, stochastic read-out and digital bias in its fp32 epilogue.
"""

import torch

from .optical_matmul import DOT_PRECISION, optical_gemm
from .quantize import quantize_fwd


def optical_linear_fwd(
    x2: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    px: torch.Tensor,
    pw: torch.Tensor,
    pout: torch.Tensor | None,
    rng: torch.Tensor,
    n: int,
    *,
    lut: bool,
    out_dtype: torch.dtype,
    precision: str = DOT_PRECISION,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x2 [M, K], weight [N, K] → (y [M, N] read out in out_dtype, or the fp32 accumulator if pout is None; acc min; acc max)."""
    qx = quantize_fwd(x2, px, rng, n, out_dtype=torch.float32)
    qw = quantize_fwd(weight, pw, rng, n, lut=lut, out_dtype=torch.float32)
    M, K = qx.shape
    N = qw.shape[0]
    c, cmin, cmax = optical_gemm(
        qx.view(1, 1, M, K), qw.t().view(1, 1, K, N), 1, bias, pout, rng, n, out_dtype, precision
    )
    return c.view(M, N), cmin, cmax
