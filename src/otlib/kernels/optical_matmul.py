"""Batched optical GEMM with a fused read-out epilogue; launchers for the optical matmul.

Algorithm (per call):
    Qa = Q_det(a), Qb = LUT(Q_det(b))         once per operand, by the quantize kernel (fp32)
    for each output tile (batch, m-block, n-block):
        acc = Σ_k Qa[m, k] · Qb[k, n]           fp32 accumulation; masked K lanes load 0 and add exactly 0
        partial min/max of acc over valid lanes → a per-program buffer (reduced on the device after)
        READOUT: y = Q_stoch(acc; out range) with Philox at the flat output index, + bias; else store acc
Differences from mase-triton (docs/numerics.md): operands quantized once per call instead of per tile
(and K padding is not quantized to `lo`: defect 8), fp32 epilogue (no cast to bf16), per-element dither
(defect 1), range observed on the accumulator (defect 3), autotune keyed on (N, K) not M, 64-bit offsets.
"""

import torch
import triton
import triton.language as tl

from .quantize import quantize_fwd
from .utils import INTERPRET, LAUNCH_OPTS, cast_for_store, philox_uniform, quantize_values

# fp32 operands on tensor cores: "tf32x3" (3 tf32 MMAs, ~fp32 accuracy); the interpreter is exact fp32.
DOT_PRECISION = "ieee" if INTERPRET else "tf32x3"


def autotune_configs() -> list[triton.Config]:
    if INTERPRET:  # the interpreter runs one config; big tiles keep programs × ops small
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8})]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in [
            (128, 128, 32, 8, 3),
            (128, 64, 32, 4, 4),
            (64, 128, 32, 4, 4),
            (128, 256, 32, 8, 3),
            (64, 64, 32, 4, 4),
        ]
    ]


_MIN_BLOCK_M = min(c.kwargs["BLOCK_M"] for c in autotune_configs())
_MIN_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in autotune_configs())


@triton.autotune(configs=autotune_configs(), key=["N", "K", "READOUT", "PRECISION"])
@triton.jit
def _optical_gemm_kernel(
    # pointers
    a_ptr,
    b_ptr,
    c_ptr,
    bias_ptr,
    pout_ptr,
    rng_ptr,
    part_ptr,
    # sizes: a is [B, H, M, K], b is [B, H // GROUP, K, N], c is [B·H, M, N] contiguous
    M,
    N,
    K,
    H,
    GROUP,
    n_f,
    # strides
    stride_ab,
    stride_ah,
    stride_am,
    stride_ak,
    stride_bb,
    stride_bh,
    stride_bk,
    stride_bn,
    # meta-parameters
    READOUT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # ---- program id → (batch, m-block, n-block), grouped along M for L2 reuse of b
    pid = tl.program_id(0)
    bid = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group_id = pid // (GROUP_M * num_n)
    first_m = group_id * GROUP_M
    group_size = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % group_size
    pid_n = (pid % (GROUP_M * num_n)) // group_size
    batch = bid // H
    head = bid % H
    # ---- pointers (64-bit bases)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_base = a_ptr + batch.to(tl.int64) * stride_ab + head.to(tl.int64) * stride_ah
    b_base = b_ptr + batch.to(tl.int64) * stride_bb + (head // GROUP).to(tl.int64) * stride_bh
    a_ptrs = a_base + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_base + offs_k[:, None] * stride_bk + offs_n[None, :].to(tl.int64) * stride_bn
    # ---- K loop: masked lanes load 0.0 and add exactly 0 (operands are already quantized)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    # ---- epilogue 1: range observation of the pre-quantization accumulator
    valid = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    part = (bid * num_m + pid_m) * num_n + pid_n
    tl.store(part_ptr + 2 * part, tl.min(tl.min(tl.where(valid, acc, float("inf")), axis=1), axis=0))
    tl.store(part_ptr + 2 * part + 1, tl.max(tl.max(tl.where(valid, acc, float("-inf")), axis=1), axis=0))
    # ---- epilogue 2: stochastic read-out at the flat output index, digital bias, store
    idx = bid.to(tl.int64) * M * N + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    out = acc
    if READOUT:
        u = philox_uniform(tl.load(rng_ptr + 0), idx, tl.load(rng_ptr + 1), tl.load(rng_ptr + 2))
        out = quantize_values(acc, pout_ptr, n_f, u, True, True, False)
        if HAS_BIAS:
            out = out + tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    tl.store(c_ptr + idx, cast_for_store(out, c_ptr), mask=valid)


def optical_gemm(
    qa: torch.Tensor,
    qb: torch.Tensor,
    group: int,
    bias: torch.Tensor | None,
    pout: torch.Tensor | None,
    rng: torch.Tensor,
    n: int,
    out_dtype: torch.dtype,
    precision: str = DOT_PRECISION,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qa [B, H, M, K] @ qb [B, H // group, K, N] (any strides, quantized fp32) → (c [B·H, M, N], acc min, acc max as fp32 0-d tensors).

    pout given: c is the read-out in out_dtype (+ bias); pout None: c is the fp32 accumulator.
    precision: tl.dot input precision for fp32 operands ("tf32x3" default; "tf32" only for benchmarks).
    """
    B, H, M, K = qa.shape
    N = qb.shape[-1]
    c = torch.empty((B * H, M, N), dtype=out_dtype if pout is not None else torch.float32, device=qa.device)
    # one (min, max) slot per program of the smallest-tile config; larger tiles leave ±inf slots unused
    n_part = B * H * triton.cdiv(M, _MIN_BLOCK_M) * triton.cdiv(N, _MIN_BLOCK_N)
    part = torch.empty((max(n_part, 1), 2), device=qa.device)  # filled on the device: no host-to-device copy
    part[:, 0] = float("inf")
    part[:, 1] = float("-inf")
    if c.numel():

        def grid(meta):
            return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), B * H)

        _optical_gemm_kernel[grid](
            qa,
            qb,
            c,
            bias if bias is not None else c,
            pout if pout is not None else part,
            rng,
            part,
            M,
            N,
            K,
            H,
            group,
            float(n),
            *qa.stride(),
            *qb.stride(),
            READOUT=pout is not None,
            HAS_BIAS=bias is not None,
            PRECISION=precision,
            **LAUNCH_OPTS,
        )
    return c, part[:, 0].min(), part[:, 1].max()  # separate tensors: custom-op outputs must not alias


def optical_matmul_fwd(
    a: torch.Tensor,
    b: torch.Tensor,
    pa: torch.Tensor,
    pb: torch.Tensor,
    pout: torch.Tensor | None,
    rng: torch.Tensor,
    n: int,
    *,
    lut: bool,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """a [..., M, K] @ b [..., K, N] (broadcast leading dims; dim −3 may be grouped) → (c, minmax)."""
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    qa = quantize_fwd(a, pa, rng, n, out_dtype=torch.float32)
    qb = quantize_fwd(b, pb, rng, n, lut=lut, out_dtype=torch.float32)
    lead_a, lead_b = list(a.shape[:-2]), list(b.shape[:-2])
    group = 1
    if lead_a and lead_b and lead_b[-1] not in (1, lead_a[-1]) and lead_a[-1] % lead_b[-1] == 0:
        group = lead_a[-1] // lead_b[-1]
        lead_b[-1] = lead_a[-1]
    lead = list(torch.broadcast_shapes(tuple(lead_a), tuple(lead_b)))
    h = lead[-1] if lead else 1
    outer = lead[:-1]
    # expand (stride 0, no copy) to the common leading shape, then fold all outer dims into one
    qa = qa.expand(*outer, h, M, K).reshape(-1, h, M, K)
    qb = qb.expand(*outer, h // group, K, N).reshape(-1, h // group, K, N)
    c, cmin, cmax = optical_gemm(qa, qb, group, None, pout, rng, n, out_dtype)
    return c.view(*lead, M, N), cmin, cmax
