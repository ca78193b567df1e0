"""Shared Triton plumbing: interpreter detection, block settings, and the jit helpers every kernel uses
(round-half-to-even, Philox uniforms, the quantizer itself).

The helpers repeat otlib.ops.reference op for op in fp32 so that deterministic results are
bit-identical: launchers pass `enable_fp_fusion=False` (no FMA contraction of t·n + ½ or k/n·r + lo),
divisions use `div_rn` (Triton's `/` on fp32 is the approximate div.full.f32 on NVIDIA), and rounding
uses floor arithmetic that is exact for every fp32 (no libdevice `rint`, which the interpreter lacks).
"""

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Element-wise kernels: under the interpreter the cost is programs × ops, so one huge block.
ELEMENTWISE_BLOCK = 65536 if INTERPRET else 1024
LAUNCH_OPTS = {"enable_fp_fusion": False}


@triton.jit
def round_half_even(t):
    """Round to nearest, ties to even (= torch.round / rint) for every finite fp32.

    t − floor(t) is exact in fp32, so the tie test is exact (floor(t + ½) is not: it rounds
    0.49999997 up).
    """
    f = tl.floor(t)
    r = t - f
    f_odd = tl.floor(f * 0.5) * 2.0 != f
    up = (r > 0.5) | ((r == 0.5) & f_odd)
    return tl.where(up, f + 1.0, f)


@triton.jit
def round_to_bf16(y):
    """fp32 → nearest bf16 value (ties to even), kept in fp32. The interpreter's own bf16 cast truncates;
    rounding the bits first makes every later cast exact, so interpreter and GPU agree with torch."""
    b = y.to(tl.uint32, bitcast=True)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    return tl.where(y != y, y, r)


@triton.jit
def cast_for_store(y, ptr):
    """fp32 values in the element type of `ptr`, rounded to nearest even (as torch's .to())."""
    if ptr.dtype.element_ty == tl.bfloat16:
        y = round_to_bf16(y)
    return y.to(ptr.dtype.element_ty)


@triton.jit
def philox_uniform(seed, idx, counter, stream):
    """u ∈ [0, 1) per int64 element index `idx`: Philox4x32-10 with key = seed (lo, hi words),
    counter = (idx lo, idx hi, counter lo, stream); u = (word0 >> 8) · 2⁻²⁴ (see otlib.ops.philox)."""
    c0 = (idx & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((idx >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c2 = tl.zeros_like(c0) + (counter & 0xFFFFFFFF).to(tl.uint32)
    c3 = tl.zeros_like(c0) + (stream & 0xFFFFFFFF).to(tl.uint32)
    w0, _w1, _w2, _w3 = tl.philox(seed, c0, c1, c2, c3)
    return (w0 >> 8).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def quantize_values(x, p_ptr, n_f, u, DITHER: tl.constexpr, CLAMP_K: tl.constexpr, LUT: tl.constexpr):
    """Q(x) in fp32 with params p = (lo, hi, hi − lo + 1e-8, hi − lo, λ·hi, −λ·|lo|) at p_ptr."""
    lo = tl.load(p_ptr + 0)
    hi = tl.load(p_ptr + 1)
    div = tl.load(p_ptr + 2)
    rng = tl.load(p_ptr + 3)
    t = tl.minimum(tl.maximum(x, lo), hi) - lo
    t = tl.math.div_rn(t, tl.zeros_like(t) + div) * n_f
    if DITHER:
        t = t + (u - 0.5)
    k = round_half_even(t)
    if DITHER and CLAMP_K:
        k = tl.minimum(tl.maximum(k, 0.0), n_f)
    y = tl.math.div_rn(k, tl.zeros_like(k) + n_f) * rng + lo
    if LUT:
        pos = tl.load(p_ptr + 4)
        neg = tl.load(p_ptr + 5)
        y = tl.where((y > 0.0) & (y < pos), pos, y)
        y = tl.where((y < 0.0) & (y > neg), neg, y)
    return y
