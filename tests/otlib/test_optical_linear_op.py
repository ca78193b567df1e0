"""otlib.ops.optical_linear: Triton path (interpreted on CPU) against the reference, straight-through
gradients, torch.compile / opcheck, and the numerics="mase" defects reproduced on purpose."""

import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_verbose, assert_readout_close

from otlib.ops import force_reference, optical_linear, optical_linear_ref
from otlib.ops.philox import single_dither

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LEVELS, LUT = 256, 0.020040


def _state(x, w, out_scale=1.0, device=DEVICE):
    """Ranges a layer would hold: operand min/max, out range a bit narrower than the product's spread."""
    ranges = torch.tensor([[x.min(), x.max()], [w.min(), w.max()], [-out_scale, out_scale]], device=device)
    return ranges.float(), torch.tensor([1234, 5, 7], device=device)


def _inputs(m, k, n, dtype=torch.float32, device=DEVICE):
    x = torch.randn(m, k, device=device).to(dtype)
    w = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
    b = torch.randn(n, device=device).to(dtype)
    return x, w, b


def _kernel(*args, **kw):
    pytest.importorskip("triton", reason="Triton is not installed")
    from otlib.ops._kernel_path import linear_kernel_path

    return linear_kernel_path(*args, **kw)


@pytest.mark.parametrize(("m", "k", "n"), [(9, 41, 341), (64, 128, 96)])
@pytest.mark.parametrize("numerics", ["fixed", "mase"])
@pytest.mark.parametrize("calibrate_out", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_matches_reference(m, k, n, numerics, calibrate_out, bias):
    x, w, b = _inputs(m, k, n)
    b = b if bias else None
    ranges, rng = _state(x, w, out_scale=2.5)
    kw = {"levels": LEVELS, "lut_min": LUT, "numerics": numerics, "calibrate_out": calibrate_out}
    y, ymin, ymax = _kernel(x, w, b, ranges, rng, **kw)
    r, rmin, rmax = optical_linear_ref(x, w, b, ranges, rng, **kw)
    # min/max: same products summed in another order (fp32), so within 1e-5 relative
    assert_close_verbose(torch.stack([ymin, ymax]), torch.stack([rmin, rmax]), rtol=1e-5, atol=1e-6)
    lo, hi = (rmin.item(), rmax.item()) if calibrate_out else (-2.5, 2.5)
    assert_readout_close(y, r, (hi - lo) / (LEVELS - 1), msg=f"{numerics} cal={calibrate_out}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("m", "k", "n"), [(9, 41, 341), (4096, 768, 2048)])
def test_cuda_matches_reference(dtype, m, k, n):
    x, w, b = _inputs(m, k, n, dtype)
    ranges, rng = _state(x.float(), w.float(), out_scale=2.5)
    kw = {"levels": LEVELS, "lut_min": LUT}
    y, ymin, ymax = optical_linear(x, w, b, ranges, rng, **kw)
    with force_reference():
        r, rmin, rmax = optical_linear(x, w, b, ranges, rng, **kw)
    assert y.dtype == dtype
    assert_close_verbose(torch.stack([ymin, ymax]), torch.stack([rmin, rmax]), rtol=1e-5, atol=1e-5)
    # bf16 output: read-out + bias rounded to bf16 identically unless a level flipped (one step, plus bf16 rounding)
    step = 5.0 / (LEVELS - 1)
    assert_readout_close(y.float(), r.float(), step, rtol=1e-5 if dtype == torch.float32 else 8e-3)


def test_gradients_are_straight_through():
    x, w, b = _inputs(6, 33, 20, device="cpu")
    ranges, rng = _state(x, w, device="cpu")
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    y, _, _ = optical_linear(xs.view(2, 3, 33), ws, bs, ranges, rng, levels=LEVELS, lut_min=LUT)
    g = torch.randn_like(y)
    y.backward(g)
    xd, wd, bd = (t.clone().requires_grad_() for t in (x, w, b))
    F.linear(xd.view(2, 3, 33), wd, bd).backward(g)
    for got, ref in ((xs.grad, xd.grad), (ws.grad, wd.grad), (bs.grad, bd.grad)):
        assert_close_verbose(got, ref, rtol=1e-6, atol=1e-6)
        assert torch.isfinite(got).all()


def test_under_torch_compile_fullgraph():
    x, w, b = _inputs(8, 16, 12, device="cpu")
    ranges, rng = _state(x, w, device="cpu")

    def f(x, w, b):
        y, lo, hi = optical_linear(x, w, b, ranges, rng, levels=LEVELS, lut_min=LUT)
        return y.square().sum() + lo + hi

    ws = w.clone().requires_grad_()
    loss = torch.compile(f, backend="eager", fullgraph=True)(x, ws, b)
    loss.backward()
    assert_close_verbose(loss, f(x, w, b), rtol=0, atol=0)
    assert ws.grad is not None and torch.isfinite(ws.grad).all()


def test_opcheck():
    x, w, b = _inputs(5, 12, 7, device="cpu")
    ranges, rng = _state(x, w, device="cpu")
    torch.library.opcheck(
        torch.ops.otlib.optical_linear.default, (x.requires_grad_(), w, b, ranges, rng, LEVELS, LUT, "fixed", False)
    )


def test_out_stats_are_pre_quantization_accumulator():
    x, w, b = _inputs(32, 64, 48, device="cpu")
    ranges, rng = _state(x, w, out_scale=0.5, device="cpu")  # out range far narrower than the product
    _y, ymin, ymax = optical_linear(x, w, b, ranges, rng, levels=LEVELS, lut_min=LUT)
    acc = F.linear(x, w)
    assert ymax > 0.5 and ymin < -0.5  # the fix of defect 3: the range can grow
    assert abs(ymax.item() - acc.max().item()) < 0.05 * acc.abs().max().item()
    _y_m, mmin, mmax = optical_linear(x, w, b, ranges, rng, levels=LEVELS, lut_min=LUT, numerics="mase")
    assert mmax.item() <= 0.5 and mmin.item() >= -0.5  # defect 3: observed on the clamped output


def test_calibrate_uses_accumulator_range():
    x, w, _b = _inputs(32, 64, 48, device="cpu")
    ranges, rng = _state(x, w, out_scale=1e-3, device="cpu")
    y, ymin, ymax = optical_linear(x, w, None, ranges, rng, levels=LEVELS, lut_min=LUT, calibrate_out=True)
    assert y.min() == ymin and y.max() == ymax  # ends of the calibrated range are levels 0 and n
    assert (y - F.linear(x, w)).abs().max() < 0.05 * (ymax - ymin)


def test_mase_dither_is_one_constant_per_call():
    # many outputs with uniformly spread fractional levels: fixed numerics are unbiased, mase adds u0 − ½ levels
    x, w, _ = _inputs(256, 64, 256, device="cpu")
    ranges, _ = _state(x, w, out_scale=4.0, device="cpu")
    lo, hi = -4.0, 4.0
    step = (hi - lo) / (LEVELS - 1)
    acc = F.linear(x, w)
    inside = acc.abs() < 3.9
    errs = {}
    for numerics in ("fixed", "mase"):
        outs = []
        for counter in (1, 2):
            rng = torch.tensor([99, counter, 3])
            outs.append(optical_linear(x, w, None, ranges, rng, levels=LEVELS, lut_min=None, numerics=numerics)[0])
        errs[numerics] = outs
    u0 = single_dither(99, "cpu").item()
    # the reference quantizes X and W too; their error averages out, the dither bias does not
    mean_fixed = ((errs["fixed"][0] - acc)[inside] / step).mean().item()
    mean_mase = ((errs["mase"][0] - acc)[inside] / step).mean().item()
    assert abs(mean_fixed) < 0.05
    assert abs(mean_mase - (u0 - 0.5)) < 0.05 and abs(u0 - 0.5) > 0.1
    assert torch.equal(errs["mase"][0], errs["mase"][1])  # the counter does not advance the peer's dither
    assert not torch.equal(errs["fixed"][0], errs["fixed"][1])


def test_bad_arguments():
    x, w, b = _inputs(4, 8, 5, device="cpu")
    ranges, rng = _state(x, w, device="cpu")
    with pytest.raises(ValueError, match="numerics"):
        optical_linear(x, w, b, ranges, rng, levels=LEVELS, lut_min=LUT, numerics="peer")
    with pytest.raises(ValueError, match="weight"):
        optical_linear(x, w.t(), b, ranges, rng, levels=LEVELS, lut_min=LUT)
    with pytest.raises(ValueError, match="ranges"):
        optical_linear(x, w, b, ranges[:2], rng, levels=LEVELS, lut_min=LUT)
    with pytest.raises(ValueError, match="x_cast"):
        optical_linear(x, w, b, ranges, rng, levels=LEVELS, lut_min=LUT, x_cast=x[:2].bfloat16())
    with pytest.raises(ValueError, match="w_cast"):
        optical_linear(x, w, b, ranges, rng, levels=LEVELS, lut_min=LUT, w_cast=w.t().bfloat16())


def test_given_casts_are_what_the_op_multiplies():
    """x_cast is multiplied and saved instead of x, x's gradient returned in x's dtype; w_cast of y's dtype is the
    backward's weight: the same values as the op's own casts (autocast's), for bf16 casts of fp32 x and W."""
    x, w, b = _inputs(6, 16, 5, device="cpu")
    ranges, rng = _state(x, w, device="cpu")
    outs = []
    for given in (False, True):
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        casts = {"x_cast": x.bfloat16(), "w_cast": w.bfloat16()} if given else {}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = optical_linear(xg, wg, b, ranges, rng.clone(), levels=LEVELS, lut_min=LUT, **casts)[0]
        y.float().square().sum().backward()
        outs.append((y, xg.grad, wg.grad))
    for got, want in zip(outs[1], outs[0], strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert outs[1][1].dtype == torch.float32 and outs[1][0].dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_forward_backward_has_no_host_sync():
    x, w, b = _inputs(256, 128, 192, torch.bfloat16)
    ranges, rng = _state(x.float(), w.float(), out_scale=2.5)
    w.requires_grad_()
    for calibrate in (False, True):  # first calls autotune (which synchronises): warm up outside the check
        optical_linear(x, w, b, ranges, rng, levels=LEVELS, lut_min=LUT, calibrate_out=calibrate)[0].sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for calibrate in (False, True):
            y, lo, hi = optical_linear(x, w, b, ranges, rng, levels=LEVELS, lut_min=LUT, calibrate_out=calibrate)
            (y.float().sum() + lo + hi).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_custom_op_through_kernel_path(monkeypatch):
    # the registered op (aliasing checks included) with the Triton path forced on, interpreted on CPU
    pytest.importorskip("triton", reason="Triton is not installed")
    monkeypatch.setattr(sys.modules["otlib.ops.optical_linear"], "use_kernels", lambda t, levels: True)
    x, w, b = _inputs(9, 41, 34)
    ranges, rng = _state(x, w, out_scale=2.5)
    for calibrate in (False, True):
        y, lo, hi = optical_linear(
            x.view(3, 3, 41), w, b, ranges, rng, levels=LEVELS, lut_min=LUT, calibrate_out=calibrate
        )
        r, rlo, rhi = optical_linear_ref(
            x, w, b, ranges, rng, levels=LEVELS, lut_min=LUT, numerics="fixed", calibrate_out=calibrate
        )
        assert y.shape == (3, 3, 34)
        assert torch.isfinite(lo) and lo < hi
        assert_readout_close(y.view(9, 34), r, (rhi - rlo).item() / (LEVELS - 1) if calibrate else 5.0 / (LEVELS - 1))


def test_autocast_output_dtype_and_fp32_weight_grad():
    x, w, b = _inputs(8, 32, 16, device="cpu")
    ranges, rng = _state(x, w, device="cpu")
    ws = w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, lo, hi = optical_linear(x, ws, b, ranges, rng, levels=LEVELS, lut_min=LUT)
    assert y.dtype == torch.bfloat16 and lo.dtype == torch.float32 and hi > lo
    y.float().sum().backward()
    assert ws.grad.dtype == torch.float32 and torch.isfinite(ws.grad).all()
    # same as quantizing the bf16-rounded activation outside autocast
    r, _, _ = optical_linear(x.bfloat16(), w, b, ranges, rng, levels=LEVELS, lut_min=LUT)
    assert torch.equal(y, r)


@pytest.mark.parametrize("numerics", ["fixed", "mase"])
def test_given_weight_codes_equal_encoding_the_weight(numerics):
    """w_codes (a WeightBank's encode of the weight with the call's w range) gives the same outputs as the kernel
    path encoding the weight itself, with and without x codes given too (then a launch of its own resets the
    GEMM's range scalars)."""
    pytest.importorskip("triton", reason="Triton is not installed")
    from otlib.kernels.quantize import operand_codes

    x, w, b = _inputs(9, 41, 34)
    ranges, rng = _state(x, w)
    kw = {"levels": LEVELS, "lut_min": LUT, "numerics": numerics, "calibrate_out": False}
    w_codes, w_sums = operand_codes(w.unsqueeze(0), ranges, 1, LEVELS - 1, lut_min=LUT)
    x_codes, x_sums = operand_codes(x.unsqueeze(0), ranges, 0, LEVELS - 1)
    want = _kernel(x, w, b, ranges, rng, **kw)
    for x_pair in (None, (x_codes[0], x_sums[0])):
        got = _kernel(x, w, b, ranges, rng, **kw, x_codes=x_pair, w_codes=(w_codes[0], w_sums[0]))
        assert all(torch.equal(g, e) for g, e in zip(got, want, strict=True))
