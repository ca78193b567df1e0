"""Plain-PyTorch reference of the optical numerics: the CPU path and the oracle for the kernels.

Quantizer Q(x; lo, hi) with L levels, n = L − 1 (docs/numerics.md, otlib-numerics.md):
    t = (clamp(x, lo, hi) − lo) / (hi − lo + 1e-8) · n
    k = rhte(t)                         deterministic (round half to even, = torch.round)
    k = clamp(rhte(t + u − ½), 0, n)    stochastic, u ~ U[0, 1) per element (Philox)
    y = k / n · (hi − lo) + lo
    LUT floor (operand B only): 0 < y < λ·hi → λ·hi;  −λ·|lo| < y < 0 → −λ·|lo|;  zeros stay.
Per-element arithmetic is fp32 in exactly this operation order (the Triton kernels repeat it
op for op, with FMA contraction disabled, so deterministic results are bit-identical). The
per-call scalars (hi − lo, hi − lo + 1e-8, λ·hi, −λ·|lo|) are formed in fp64 from the fp32
range and rounded once to fp32 — the same values mase-triton gets from Python floats.
"""

import torch
from torch import Tensor

from .philox import philox_uniform, single_dither

# Layout of the per-quantizer scalar vector shared with the kernels (fp32, length 6).
P_LO, P_HI, P_DIV, P_RANGE, P_LUT_POS, P_LUT_NEG = range(6)
_CPU_CHUNK = 1 << 20


def quant_params(lo: float | Tensor, hi: float | Tensor, lut_min: float | None, device: torch.device) -> Tensor:
    """fp32 [6] = (lo, hi, hi − lo + 1e-8, hi − lo, λ·hi, −λ·|lo|); tensors stay on device (no sync)."""
    lo32 = torch.as_tensor(lo, dtype=torch.float32, device=device).reshape(())
    hi32 = torch.as_tensor(hi, dtype=torch.float32, device=device).reshape(())
    lo64, hi64 = lo32.double(), hi32.double()
    r64 = hi64 - lo64
    lam = 0.0 if lut_min is None else float(lut_min)
    return torch.stack([lo64, hi64, r64 + 1e-8, r64, lam * hi64, -lam * lo64.abs()]).float()


def quantize_core(
    x: Tensor, p: Tensor, n: int, *, u: Tensor | None = None, lut: bool = False, clamp_k: bool = True
) -> Tensor:
    """Q(x) in fp32 for an fp32 tensor `x` and params `p` from `quant_params`; `u` enables dithering."""
    lo, hi = p[P_LO], p[P_HI]
    t = (torch.clamp(x, lo, hi) - lo) / p[P_DIV] * n
    if u is not None:
        t = t + (u - 0.5)  # u − ½ is exact in fp32; one rounding, as in the kernel
    k = torch.round(t)  # round half to even
    if u is not None and clamp_k:
        k = k.clamp(0, n)  # dither can push t + u − ½ up to n + ½ (level n + 1): defect 8
    # k / n as a true division by a device tensor: torch's CUDA kernels turn division by a Python scalar
    # into multiplication by its reciprocal (one ulp off), the kernels and the CPU path divide exactly
    y = k / p.new_full((), n) * p[P_RANGE] + lo
    if lut:
        pos, neg = p[P_LUT_POS], p[P_LUT_NEG]
        y = torch.where((y > 0) & (y < pos), pos, y)
        y = torch.where((y < 0) & (y > neg), neg, y)
    return y


def _minmax(t: Tensor) -> tuple[Tensor, Tensor]:
    if t.numel() == 0:
        inf = torch.tensor(float("inf"), device=t.device)
        return inf, -inf
    return torch.aminmax(t)


def readout_ref(
    acc: Tensor,
    bias: Tensor | None,
    out_range: Tensor,
    rng: Tensor,
    n: int,
    *,
    numerics: str,
    calibrate_out: bool,
    act_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """Stochastic photodetector read-out of an fp32 accumulator (flat element index = RNG index) + digital bias."""
    acc_min, acc_max = _minmax(acc)
    mase = numerics == "mase"
    lo, hi = (acc_min, acc_max) if calibrate_out else (out_range[0], out_range[1])
    p = quant_params(lo, hi, None, acc.device)
    u0 = single_dither(rng[0], acc.device) if mase else None  # defect 1: one dither value per call, seed only
    y = torch.empty(acc.shape, dtype=torch.float32, device=acc.device)
    flat_acc, flat_y = acc.reshape(-1), y.view(-1)
    # CPU: bounded temporaries for big outputs (measured faster on 2 cores); the RNG index is the flat element index
    chunk = _CPU_CHUNK if acc.device.type == "cpu" else max(acc.numel(), 1)
    for s in range(0, acc.numel(), chunk):
        a = flat_acc[s : s + chunk]
        if mase:  # defect 8: the peer casts the accumulator to the activation dtype first
            a = a.to(act_dtype).float()
        u = u0 if mase else philox_uniform(a.numel(), rng[0], rng[1], rng[2], s, acc.device)
        flat_y[s : s + chunk] = quantize_core(a, p, n, u=u, clamp_k=not mase)
    if mase:  # defect 3: the range is observed on the already quantized output
        acc_min, acc_max = _minmax(y)
    if bias is not None:
        y.add_(bias.float())
    return y.to(act_dtype), acc_min, acc_max


def optical_linear_ref(
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
) -> tuple[Tensor, Tensor, Tensor]:
    """Y = Q_stoch(Q_det(X) · LUT(Q_det(W))ᵀ; out range) + b, fp32 accumulation."""
    n = levels - 1
    qx = quantize_core(x.reshape(-1, x.shape[-1]).float(), quant_params(ranges[0, 0], ranges[0, 1], None, x.device), n)
    pw = quant_params(ranges[1, 0], ranges[1, 1], lut_min, x.device)
    qw = quantize_core(weight.float(), pw, n, lut=lut_min is not None)
    acc = qx @ qw.t()
    y, omin, omax = readout_ref(
        acc, bias, ranges[2], rng, n, numerics=numerics, calibrate_out=calibrate_out, act_dtype=x.dtype
    )
    return y.view(*x.shape[:-1], weight.shape[0]), omin, omax


def expand_groups(a: Tensor, b: Tensor) -> Tensor:
    """b with its dim −3 repeated to a's size when a.size(−3) is a multiple of it (GQA heads)."""
    if a.dim() >= 3 and b.dim() >= 3 and b.shape[-3] not in (1, a.shape[-3]) and a.shape[-3] % b.shape[-3] == 0:
        return b.repeat_interleave(a.shape[-3] // b.shape[-3], dim=-3)
    return b


def zero_above_diagonal_(c: Tensor) -> Tensor:
    """c [..., M, N] with its entries above the causal diagonal (column > row + N − M) set to 0, in place."""
    M, N = c.shape[-2:]
    return c.masked_fill_(torch.ones(M, N, dtype=torch.bool, device=c.device).triu_(N - M + 1), 0)


def optical_matmul_ref(
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
) -> tuple[Tensor, Tensor, Tensor]:
    """C = Q_stoch(Q_det(A) · LUT(Q_det(B)); out range), batched over broadcast leading dims; causal: C is 0
    above the causal diagonal (after the range observation, which covers every product)."""
    n = levels - 1
    qa = quantize_core(a.float(), quant_params(ranges[0, 0], ranges[0, 1], None, a.device), n)
    qb = quantize_core(
        b.float(), quant_params(ranges[1, 0], ranges[1, 1], lut_min, a.device), n, lut=lut_min is not None
    )
    acc = torch.matmul(qa, expand_groups(qa, qb)).contiguous()
    c, cmin, cmax = readout_ref(
        acc, None, ranges[2], rng, n, numerics=numerics, calibrate_out=calibrate_out, act_dtype=a.dtype
    )
    return (zero_above_diagonal_(c) if causal else c), cmin, cmax
