"""otlib.ops.quantize: the reference against hand-computed values, the Triton kernel (interpreted on CPU)
against the reference bit for bit, LUT floor, offsets, and the statistics of stochastic rounding."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers import assert_equal_verbose

from otlib.ops import quant_params, quantize
from otlib.ops.philox import philox_uniform
from otlib.ops.reference import quantize_core

triton = pytest.importorskip("triton", reason="Triton is not installed")
import triton.language as tl  # noqa: E402

from otlib.kernels.quantize import quantize_fwd  # noqa: E402
from otlib.kernels.utils import scaled_position  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _kernel(x, lo, hi, levels=256, *, lut_min=None, stochastic=False, seed=0, counter=0, stream=0, offset=0):
    p = quant_params(lo, hi, lut_min, x.device)
    rng = torch.tensor([seed, counter, stream], device=x.device)
    return quantize_fwd(x, p, rng, levels - 1, lut=lut_min is not None, stochastic=stochastic, offset=offset)


def _reference(x, lo, hi, levels=256, **kw):
    with torch.device(x.device):
        from otlib.ops import force_reference

        with force_reference():
            return quantize(x, lo, hi, levels, **kw)


def test_hand_computed_values():
    # lo=-1, hi=1, 5 levels (n=4): t = (x+1)/2·4; ties 1.5→2, 2.5→2, 3.5→4 (half to even)
    x = torch.tensor([-2.0, -1.0, -0.6, -0.25, 0.0, 0.25, 0.5, 0.75, 2.0])
    expected = torch.tensor([-1.0, -1.0, -0.5, 0.0, 0.0, 0.0, 0.5, 1.0, 1.0])
    assert_equal_verbose(quantize(x, -1.0, 1.0, 5), expected)


@pytest.mark.parametrize(
    ("lo", "hi", "lam", "expected"),
    [
        # grid step 0.5 around 0; positive floor λ·hi, negative floor −λ·|lo|; exact zero stays zero
        (-1.0, 1.0, 0.6, [-1.0, -0.6, 0.0, 0.6, 1.0]),
        (-1.0, 3.0, 0.3, [-1.0, -0.5, 0.0, 0.9, 1.0]),  # λ·hi = 0.9 lifts 0.5; −λ·|lo| = −0.3 leaves −0.5
        (-3.0, 1.0, 0.3, [-1.0, -0.9, 0.0, 0.5, 1.0]),  # −λ·|lo| = −0.9 lowers −0.5; λ·hi = 0.3 leaves 0.5
    ],
)
def test_lut_floor(lo, hi, lam, expected):
    levels = round((hi - lo) / 0.5) + 1
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    got = quantize(x, lo, hi, levels, lut_min=lam)
    assert_equal_verbose(got, torch.tensor(expected))
    assert_equal_verbose(_kernel(x.to(DEVICE), lo, hi, levels, lut_min=lam).cpu(), torch.tensor(expected))


@pytest.mark.parametrize("n", [1, 7, 1000, 131_101])
@pytest.mark.parametrize("lut_min", [None, 0.020040])
def test_kernel_matches_reference_deterministic(n, lut_min):
    x = torch.randn(n, device=DEVICE) * 3
    lo, hi = -2.3 * torch.rand(()).item(), 0.5 + 2 * torch.rand(()).item()
    assert_equal_verbose(_kernel(x, lo, hi, lut_min=lut_min), _reference(x, lo, hi, lut_min=lut_min))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    x = (torch.randn(3, 37, device=DEVICE) * 2).to(dtype)
    got = _kernel(x, -1.5, 2.0, lut_min=0.02)
    assert got.dtype == dtype
    assert_equal_verbose(got, _reference(x, -1.5, 2.0, lut_min=0.02))
    # arithmetic is fp32: the same as quantizing the fp32 upcast, then rounding to dtype
    assert_equal_verbose(got, quantize(x.float().cpu(), -1.5, 2.0, lut_min=0.02).to(dtype).to(got.device))


def test_tensor_range_equals_float_range():
    x = torch.randn(999)
    lo, hi = torch.tensor(-1.25), torch.tensor(1.75)
    assert_equal_verbose(quantize(x, lo, hi, 16, lut_min=0.1), quantize(x, -1.25, 1.75, 16, lut_min=0.1))
    assert_equal_verbose(
        quantize(x, lo, hi, stochastic=True, seed=torch.tensor(5), counter=torch.tensor(2)),
        quantize(x, -1.25, 1.75, stochastic=True, seed=5, counter=2),
    )


@pytest.mark.parametrize("impl", ["reference", "kernel"])
def test_offset_pieces_equal_whole(impl):
    x = torch.randn(10_001, device=DEVICE)
    q = _reference if impl == "reference" else _kernel
    kw = {"stochastic": True, "seed": 2**35 + 3, "counter": 9, "stream": 4}
    whole = q(x, -2.0, 2.0, **kw)
    pieces = torch.cat([q(x[:3333], -2.0, 2.0, **kw), q(x[3333:], -2.0, 2.0, offset=3333, **kw)])
    assert_equal_verbose(pieces, whole)


@pytest.mark.parametrize("lut_min", [None, 0.05])
def test_kernel_matches_reference_stochastic(lut_min):
    x = torch.randn(50_001, device=DEVICE)
    kw = {"lut_min": lut_min, "stochastic": True, "seed": 77, "counter": 3, "stream": 11, "offset": 2**32 - 100}
    assert_equal_verbose(_kernel(x, -1.7, 2.1, **kw), _reference(x, -1.7, 2.1, **kw))


def test_stochastic_unbiased_and_independent():
    n, lo, hi = 1_000_000, -1.0, 1.0
    step = (hi - lo) / 255
    x = torch.rand(n) * 1.9 - 0.95  # inside the range: no clamping bias
    err = (quantize(x, lo, hi, stochastic=True, seed=123) - x) / step
    assert err.abs().max() <= 1.0 + 1e-3  # never more than one level away
    assert abs(err.mean().item()) < 0.01 * 0.2  # mean error well under 0.01 of a level (std of the mean ≈ 3e-4)
    assert abs(torch.corrcoef(torch.stack([err[:-1], err[1:]]))[0, 1].item()) < 0.01  # neighbours uncorrelated
    # dithered rounding is exactly unbiased per element: E[k] = t; check one fractional position well
    t_frac = 0.3
    x1 = torch.full((200_000,), lo + t_frac * step)
    up = (quantize(x1, lo, hi, stochastic=True, seed=9) > x1).float().mean().item()
    assert abs(up - t_frac) < 0.005


def test_stochastic_varies_with_seed_counter_stream_and_reproduces():
    x = torch.randn(20_000)
    base = quantize(x, -2.0, 2.0, stochastic=True, seed=1, counter=1, stream=1)
    assert_equal_verbose(base, quantize(x, -2.0, 2.0, stochastic=True, seed=1, counter=1, stream=1))
    for kw in (
        {"seed": 2, "counter": 1, "stream": 1},
        {"seed": 1, "counter": 2, "stream": 1},
        {"seed": 1, "counter": 1, "stream": 2},
    ):
        other = quantize(x, -2.0, 2.0, stochastic=True, **kw)
        assert (other != base).float().mean() > 0.3, kw


def test_stochastic_level_clamped_at_saturation():
    # at t = n, n + u − ½ rounds up to n + ½ in fp32 when u is within an ulp of 1 (likely for large n,
    # where the ulp of n is coarse), and then to n + 1 (ties to even); fixed numerics clamp k to n
    x = torch.full((100_000,), 5.0)
    assert quantize(x, -1.0, 1.0, 65536, stochastic=True, seed=3).max().item() == 1.0
    p = quant_params(-1.0, 1.0, None, "cpu")
    u = philox_uniform(x.numel(), 3)
    unclamped = quantize_core(x, p, 65535, u=u, clamp_k=False)
    assert unclamped.max().item() > 1.0  # the peer's level n + 1 (defect 8) does occur


def test_bad_arguments():
    x = torch.randn(4)
    with pytest.raises(ValueError, match="levels"):
        quantize(x, -1.0, 1.0, 1)
    with pytest.raises(ValueError, match="lut_min"):
        quantize(x, -1.0, 1.0, lut_min=1.5)
    with pytest.raises(ValueError, match="offset"):
        quantize(x, -1.0, 1.0, offset=-1)


def _round_fp32(value: Fraction) -> float:
    """The fp32 nearest to an exact rational, ties to even (a reference rounding, no double rounding)."""
    f = np.float32(float(value))
    candidates = (f, np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf)))
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - value), int(np.array(c).view(np.int32)) & 1))


def test_level_division_without_ieee_divide_is_correctly_rounded():
    # The compiled kernels form k / n as q0 = k·RN(1/n), q = fma(fma(−q0, n, k), RN(1/n), q0)
    # (kernels/utils.py level_value). Exhaustive over every level count the kernels take (n ≤ 255) and every
    # level a read-out can produce (−1 ≤ k ≤ n + 1): q is the correctly rounded k / n, as torch divides.
    def fma(a, b, c):
        return _round_fp32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))

    bad = []
    for n in range(1, 256):
        r = _round_fp32(Fraction(1, n))
        for k in range(-1, n + 2):
            q0 = np.float32(np.float32(k) * r)
            q = fma(fma(-q0, n, k), r, q0)
            if q != np.float32(k) / np.float32(n):
                bad.append((k, n))
    assert not bad, bad[:10]


TINY_QUOTIENT = 2.0**-60  # below it, t = q·n < 2⁻⁵² gives level 0 with or without dither


def _divisors(count: int) -> list[np.float32]:
    """Divisors over the range scaled_position checks: random magnitudes and mantissas, its two ends, and
    mantissas next to powers of two."""
    from otlib.kernels.utils import QUOTIENT_MAX_DIV, QUOTIENT_MIN_DIV

    lo, hi = QUOTIENT_MIN_DIV.value, QUOTIENT_MAX_DIV.value
    rs = np.random.default_rng(1)
    ds = [np.float32(v) for v in 2.0 ** rs.uniform(np.log2(lo), np.log2(hi), count)]
    ds += [np.float32(v) for v in (lo, hi, 1.0, 1e-8, 1.00000001, 0.93, 1 / 3, 255.0)]
    ds += [np.nextafter(np.float32(2.0**e), np.float32(0)) for e in (-20, 0, 1, 40)]
    return ds


def test_reciprocal_quotient_equals_ieee_division_sampled():
    # The compiled encoders' quotient c / d (kernels/utils.py scaled_position): y = RN(1/d), q = RN(c·y), then
    # twice q = fma(fma(−q, d, c), y, q). Against numpy's IEEE fp32 division, FMAs emulated exactly, for c
    # sampled over [0, d] (uniform in the bits: every binade from the subnormals up): equal bit for bit, or
    # both below 2⁻⁶⁰. The GPU test below runs every fp32 c ∈ [0, d].
    def fma(a, b, c):
        return _round_fp32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))

    rs = np.random.default_rng(0)
    bad = []
    for d in _divisors(24):
        top = int(np.array(d).view(np.int32))
        bits = np.concatenate([rs.integers(0, top + 1, 200), [0, 1, 2**23, top - 1, top]]).astype(np.int32)
        y = np.float32(1) / d
        for c in bits.view(np.float32):
            q = np.float32(c * y)
            q = fma(fma(-q, d, c), y, q)
            q = fma(fma(-q, d, c), y, q)
            ieee = c / d
            if q != ieee and not (0 <= q < TINY_QUOTIENT and ieee < TINY_QUOTIENT):
                bad.append((float(c), float(d), float(q), float(ieee)))
    assert not bad, bad[:5]


@triton.jit
def _quotient_check_kernel(d_ptr, bad_ptr, top_bits, BLOCK: tl.constexpr):
    """Count the c ∈ [0, d] (fp32 bits 0..top_bits) whose scaled_position differs from the IEEE one."""
    d = tl.load(d_ptr)
    bits = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    c = bits.to(tl.int32).to(tl.float32, bitcast=True)
    t = scaled_position(c, 0.0, d, d, 255.0)
    ieee = tl.math.div_rn(c, tl.zeros_like(c) + d) * 255.0
    tiny = (t >= 0.0) & (t < 2.0**-60 * 255.0) & (ieee < 2.0**-60 * 255.0)
    bad = (bits <= top_bits) & (t.to(tl.int32, bitcast=True) != ieee.to(tl.int32, bitcast=True)) & ~tiny
    tl.atomic_add(bad_ptr, tl.sum(bad.to(tl.int32), axis=0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_reciprocal_quotient_equals_ieee_division_exhaustive():
    # every fp32 c ∈ [0, d] for each divisor, through the kernels' own scaled_position (compiled: the FMA path)
    bad = {}
    for d in _divisors(48):
        top = int(np.array(d).view(np.int32))
        d_t = torch.tensor([d], device="cuda")
        count = torch.zeros((), dtype=torch.int32, device="cuda")
        _quotient_check_kernel[(triton.cdiv(top + 1, 4096),)](d_t, count, top, BLOCK=4096)
        if count.item():
            bad[float(d)] = count.item()
    assert not bad, bad
