"""Shared Triton plumbing: interpreter detection, block settings, and the jit helpers every kernel uses
(round-half-to-even, Philox uniforms, the quantizer itself, the fp16 level codes' scale).

The helpers repeat otlib.ops.reference op for op in fp32 so that deterministic results are
bit-identical: launchers pass `enable_fp_fusion=False` (no FMA contraction of t·n + ½ or k/n·r + lo),
divisions use `div_rn` (Triton's `/` on fp32 is the approximate div.full.f32 on NVIDIA) or a checked
correction step, and rounding uses libdevice `rint` compiled, exact floor arithmetic interpreted (the
interpreter has no `rint`, and its bf16/fp16 casts do not round to nearest even: cast_for_store).
"""

import functools
import os
import struct
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice
from triton.runtime.autotuner import Autotuner, Heuristics

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
INTERPRETED = tl.constexpr(INTERPRET)  # the same flag, readable inside kernels

# Element-wise kernels: under the interpreter the cost is programs × ops, so one huge block.
ELEMENTWISE_BLOCK = 65536 if INTERPRET else 1024
LAUNCH_OPTS = {"enable_fp_fusion": False}


@triton.jit
def round_half_even(t):
    """Round to nearest, ties to even (= torch.round / rint) for every fp32.

    Compiled: libdevice rint (one instruction). Interpreted (no rint there): floor arithmetic,
    exact because t − floor(t) is exact in fp32 (floor(t + ½) is not: it rounds 0.49999997 up).
    """
    if INTERPRETED:
        f = tl.floor(t)
        r = t - f
        f_odd = tl.floor(f * 0.5) * 2.0 != f
        up = (r > 0.5) | ((r == 0.5) & f_odd)
        return tl.where(up, f + 1.0, f)
    else:
        return libdevice.rint(t)


@triton.jit
def round_to_bf16(y):
    """fp32 → nearest bf16 value (ties to even), kept in fp32. The interpreter's own bf16 cast truncates;
    rounding the bits first makes every later cast exact, so interpreter and GPU agree with torch."""
    b = y.to(tl.uint32, bitcast=True)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    return tl.where(y != y, y, r)


@triton.jit
def round_to_f16(y):
    """fp32 → nearest fp16 value (ties to even), kept in fp32, for |y| < 65520 (the interpreter's fp16 cast
    does not round to nearest even). Subnormal fp16 values are multiples of 2⁻²⁴."""
    b = y.to(tl.uint32, bitcast=True)
    normal = ((b + 0xFFF + ((b >> 13) & 1)) & 0xFFFFE000).to(tl.float32, bitcast=True)
    tiny = round_half_even(y * 16777216.0) * 5.9604644775390625e-08
    return tl.where(y != y, y, tl.where(tl.abs(y) < 6.103515625e-05, tiny, normal))


def launch_meta(config: triton.Config) -> dict:
    """A config as keyword arguments of a direct launch: meta-parameters, num_warps, num_stages and, where the
    config sets one, its register cap (maxnreg; without it a capped config ran uncapped: NOTES.md 51)."""
    meta = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    if getattr(config, "maxnreg", None) is not None:
        meta["maxnreg"] = config.maxnreg
    return meta


class TunedLaunch:
    """Launches an autotuned kernel: the first call per key through the autotuner, later calls the jitted kernel
    directly with the autotuner's choice (the same config it would reuse). Launching through the autotune and
    heuristics wrappers costs ~70 µs of host time per call on an H200 host (benchmarks/NOTES.md).
    `chosen` maps each key to its config (launch_meta: meta-parameters and launch options)."""

    def __init__(self, kernel: Autotuner) -> None:
        self.kernel = kernel
        jit = kernel
        while isinstance(jit, Autotuner | Heuristics):  # the jitted (or interpreted) function underneath
            jit = jit.fn
        self.jit = jit
        self.chosen: dict[tuple, dict] = {}

    def __call__(
        self,
        key: tuple,
        grid: Callable[[dict], tuple[int, ...]],
        args: tuple,
        flags: dict,
        *,
        config: dict | None = None,
        derived: Callable[[dict], dict] | None = None,
    ) -> None:
        """Launch on `grid` with positional `args` and constexpr `flags`; `config` fixes the tile config
        instead (tests: results must not depend on it); `derived(config)` gives the meta-parameters the
        kernel's heuristics would (the direct launch bypasses them)."""
        meta = config or self.chosen.get(key)
        if meta is None:
            self.kernel[grid](*args, **flags, **LAUNCH_OPTS)
            self.chosen[key] = launch_meta(self.kernel.best_config)
            return
        extra = derived(meta) if derived is not None else {}
        self.jit[grid](*args, **flags, **meta, **extra, **LAUNCH_OPTS)


@functools.cache
def sm_count(device) -> int:
    """Streaming multiprocessors of a CUDA device (the interpreter, which runs programs one after another: 4)."""
    return 4 if INTERPRET else torch.cuda.get_device_properties(device).multi_processor_count


def tile_grid(M: int, N: int, batch: int):
    """Launch grid of a tiled GEMM: (M tiles · N tiles of the config's BLOCK_M × BLOCK_N, batch)."""

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), batch)

    return grid


@triton.jit
def read_end(t, diag):
    """How far the softmax's kernels read causal row t of a T × S matrix: the columns [0, end), its diagonal
    t + diag (diag = S − T) rounded up to 16 columns. A bound known to be a multiple of 16 keeps the loads and
    masks against it vectorised. The products that leave unread tiles unwritten, or read dS only where it was
    written, use the same bound (a fully masked row is read whole instead)."""
    return ((t + diag) // 16 + 1) * 16


@triton.jit
def any_full_row(rows, offs, limit):
    """Whether any of the rows `offs` (< limit) is fully masked (rows: uint8 or bool flags, unit stride)."""
    return tl.max(tl.load(rows + offs, mask=offs < limit, other=0).to(tl.int32), axis=0) != 0


@triton.jit
def cast_for_store(y, ptr):
    """fp32 values in the element type of `ptr`, rounded to nearest even (as torch's .to()); compiled, the
    conversion itself rounds to nearest even, the interpreter's does not."""
    if INTERPRETED and ptr.dtype.element_ty == tl.bfloat16:
        y = round_to_bf16(y)
    if INTERPRETED and ptr.dtype.element_ty == tl.float16:
        y = round_to_f16(y)
    return y.to(ptr.dtype.element_ty)


@triton.jit
def philox_words(seed, c0, c1, counter, stream, N_ROUNDS: tl.constexpr = 10):
    """Philox4x32-10's four output words at the counter whose low / high 32-bit words are c0 / c1 (uint32):
    counter words (c0, c1, counter lo, stream), key = seed (lo, hi words). Element i of a tensor takes word
    i mod 4 of counter i div 4. N_ROUNDS other than 10 is not otlib's numerics (bench_dither_cost.py's variant)."""
    c2 = tl.zeros_like(c0) + (counter & 0xFFFFFFFF).to(tl.uint32)
    c3 = tl.zeros_like(c0) + (stream & 0xFFFFFFFF).to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3, N_ROUNDS)


@triton.jit
def word_to_uniform(w):
    """u = (w >> 8) · 2⁻²⁴ ∈ [0, 1), exact in fp32."""
    return (w >> 8).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def philox_uniform(seed, idx, counter, stream, N_ROUNDS: tl.constexpr = 10):
    """u ∈ [0, 1) per int64 element index `idx` (any pattern; evaluates Philox once per element)."""
    ctr = idx >> 2
    w0, w1, w2, w3 = philox_words(
        seed, (ctr & 0xFFFFFFFF).to(tl.uint32), ((ctr >> 32) & 0xFFFFFFFF).to(tl.uint32), counter, stream, N_ROUNDS
    )
    lane = idx & 3
    return word_to_uniform(tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3))))


@triton.jit
def philox_uniform_tile(
    seed, ctr_base, ctr_off, counter, stream, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, N_ROUNDS: tl.constexpr = 10
):
    """[BLOCK_M, BLOCK_N] uniforms of a row-major tile whose flat indices along each row are 4·ctr + 0..3, for
    counters ctr = ctr_base (int64 scalar) + ctr_off (int32, shape [BLOCK_M, BLOCK_N // 4]): one Philox
    evaluation per four elements. The counter's two words come from 32-bit adds with a carry, so no 64-bit
    value per counter is live (register pressure, benchmarks/NOTES.md 19)."""
    off = ctr_off.to(tl.uint32)
    c0 = (ctr_base & 0xFFFFFFFF).to(tl.uint32) + off  # wraps modulo 2³²
    c1 = ((ctr_base >> 32) & 0xFFFFFFFF).to(tl.uint32) + (c0 < off).to(tl.uint32)  # the carry
    w0, w1, w2, w3 = philox_words(seed, c0, c1, counter, stream, N_ROUNDS)
    w = tl.join(tl.join(w0, w2), tl.join(w1, w3))  # [..., p, q] = word 2p + q
    return word_to_uniform(tl.reshape(w, (BLOCK_M, BLOCK_N)))


# Divisors for which scaled_position's reciprocal quotient is checked against the IEEE one (tests/otlib/test_quantize.py)
QUOTIENT_MIN_DIV = tl.constexpr(2.0**-30)
QUOTIENT_MAX_DIV = tl.constexpr(2.0**100)


@triton.jit
def scaled_position(x, lo, hi, div, n_f):
    """t = (clamp(x, lo, hi) − lo) / (hi − lo + 1e-8) · n, the quantizer's position in levels.

    Compiled, the quotient q = c / d of c ∈ [0, d] is formed without a per-element IEEE division (which made the
    encoders division-bound, benchmarks/NOTES.md 30): y = RN(1/d) once, q = c·y, then two correction steps
    q ← q + (c − q·d)·y, each two explicit FMAs (Markstein). For QUOTIENT_MIN_DIV ≤ d ≤ QUOTIENT_MAX_DIV, t equals
    the IEEE t bit for bit, or both quotients are below 2⁻⁶⁰ (c or c / d near underflow), which is level 0
    with or without dither — checked for every fp32 c ∈ [0, d] on the GPU. Other d (a corrupt range) and the
    interpreter (its FMA is not fused) divide.
    """
    c = tl.minimum(tl.maximum(x, lo), hi) - lo
    d = tl.zeros_like(c) + div
    if INTERPRETED:
        q = tl.math.div_rn(c, d)
    elif (div >= QUOTIENT_MIN_DIV) & (div <= QUOTIENT_MAX_DIV):
        y = tl.math.div_rn(div * 0.0 + 1.0, div)  # one scalar division
        q = c * y
        q = tl.fma(tl.fma(-q, d, c), y, q)
        q = tl.fma(tl.fma(-q, d, c), y, q)
    else:
        q = tl.math.div_rn(c, d)
    return q * n_f


@triton.jit
def deterministic_level(x, lo, hi, div, n_f):
    """k = rhte(t), the deterministic quantizer's level ∈ [0, n] of x (the operand encoder and the GEMM's
    in-loop encode of A share it, so their codes are the same by construction)."""
    return round_half_even(scaled_position(x, lo, hi, div, n_f))


@triton.jit
def level_value(k, rng, lo, n_f):
    """y = k / n · (hi − lo) + lo for integer-valued fp32 levels −1 ≤ k ≤ n + 1, n ≤ 255.

    Compiled, k / n is formed without the IEEE division: q0 = k·RN(1/n) and one correction step
    q = q0 + (k − q0·n)·RN(1/n) with two explicit FMAs (Markstein). That equals the correctly rounded
    k / n for every such k and n, checked exhaustively (tests/otlib/test_quantize.py); the interpreter
    divides (its FMA is not fused).
    """
    n_t = tl.zeros_like(k) + n_f
    if INTERPRETED:
        q = tl.math.div_rn(k, n_t)
    else:
        r = tl.zeros_like(k) + tl.math.div_rn(n_f * 0.0 + 1.0, n_f)  # one scalar division per program
        q0 = k * r
        q = tl.fma(tl.fma(-q0, n_t, k), r, q0)
    return q * rng + lo


def f64_bits(v: float) -> int:
    """The IEEE-754 bits of a Python float as an int: how fp64 constants reach a kernel unrounded
    (a float argument or literal would arrive as fp32)."""
    return struct.unpack("<q", struct.pack("<d", float(v)))[0]


EPS_BITS = f64_bits(1e-8)  # the quantizer's width guard, hi − lo + 1e-8


@triton.jit
def range_params(ranges_ptr, row, eps_bits):
    """Quantizer params (lo, hi, hi − lo + 1e-8, hi − lo) as fp32 scalars from the fp32 (lo, hi) at
    ranges_ptr + 2·row, formed in fp64 and rounded once, exactly as otlib.ops.reference.quant_params."""
    lo32 = tl.load(ranges_ptr + 2 * row)
    hi32 = tl.load(ranges_ptr + 2 * row + 1)
    width = hi32.to(tl.float64) - lo32.to(tl.float64)
    div = (width + eps_bits.to(tl.int64).to(tl.float64, bitcast=True)).to(tl.float32)
    return lo32, hi32, div, width.to(tl.float32)


@triton.jit
def lut_floors(lo32, hi32, lam_bits):
    """The LUT floor values (λ·hi, −λ·|lo|) of quant_params as fp32 scalars (formed in fp64, rounded once)."""
    lam = lam_bits.to(tl.int64).to(tl.float64, bitcast=True)
    return (lam * hi32.to(tl.float64)).to(tl.float32), (-(lam * tl.abs(lo32.to(tl.float64)))).to(tl.float32)


@triton.jit
def vector_params(p_ptr):
    """The same six fp32 scalars from a params vector made by quant_params (the element-wise kernel's input)."""
    return (
        tl.load(p_ptr + 0),
        tl.load(p_ptr + 1),
        tl.load(p_ptr + 2),
        tl.load(p_ptr + 3),
        tl.load(p_ptr + 4),
        tl.load(p_ptr + 5),
    )


@triton.jit
def quantize_values(
    x, lo, hi, div, width, pos, neg, n_f, u, DITHER: tl.constexpr, CLAMP_K: tl.constexpr, LUT: tl.constexpr
):
    """Q(x) in fp32 for the params (lo, hi, hi − lo + 1e-8, hi − lo, λ·hi, −λ·|lo|)."""
    t = scaled_position(x, lo, hi, div, n_f)
    if DITHER:
        t = t + (u - 0.5)
    k = round_half_even(t)
    if DITHER and CLAMP_K:
        k = tl.minimum(tl.maximum(k, 0.0), n_f)
    y = level_value(k, width, lo, n_f)
    if LUT:
        y = tl.where((y > 0.0) & (y < pos), pos, y)
        y = tl.where((y < 0.0) & (y > neg), neg, y)
    return y


@triton.jit
def code_params(lo, width, n_f):
    """(s, z, c) of the fp16 operand codes: level k ∈ [0, n] is stored as code k − z, with z the level nearest
    0 (clamped to [0, n]), and its value is c + s·(k − z) with s = (hi − lo) / n, c = lo + z·s. A range that
    starts at 0 (softmax probabilities) has z = 0 and c = 0 exactly: level 0 is code 0 and adds nothing."""
    s = tl.math.div_rn(width, n_f)
    s_safe = tl.where(s > 0.0, s, 1.0)
    z = tl.minimum(tl.maximum(round_half_even(tl.math.div_rn(-lo, s_safe)), 0.0), n_f)
    return s, z, lo + z * s


@triton.jit
def lut_codes(pos, neg, s, c):
    """The code-axis positions (λ·hi − c) / s and (−λ·|lo| − c) / s of the two LUT floor values (fp32; the
    encoder stores them as fp16, which holds them to 2⁻¹¹ relative: |·| ≤ λ·n + ½)."""
    s_safe = tl.where(s > 0.0, s, 1.0)
    return tl.math.div_rn(pos - c, s_safe), tl.math.div_rn(neg - c, s_safe)
