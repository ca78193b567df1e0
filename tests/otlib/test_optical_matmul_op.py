"""otlib.ops.optical_matmul: batched / broadcast / grouped-head products, Triton path (interpreted on CPU)
against the reference, straight-through gradients, torch.compile, and the mase switch."""

import sys

import pytest
import torch
from helpers import assert_close_verbose, assert_readout_close

from otlib.ops import force_reference, optical_matmul, optical_matmul_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LEVELS, LUT = 256, 0.020040


def _state(a, b, out_scale, device=DEVICE):
    ranges = torch.tensor([[a.min(), a.max()], [b.min(), b.max()], [-out_scale, out_scale]], device=device).float()
    return ranges, torch.tensor([2**33 + 1, 12, 3], device=device)


def _kernel(*args, **kw):
    pytest.importorskip("triton", reason="Triton is not installed")
    from otlib.ops._kernel_path import matmul_kernel_path

    return matmul_kernel_path(*args, **kw)


SHAPES = [
    ((2, 3, 9, 41), (2, 3, 41, 34)),  # batched, odd sizes
    ((2, 4, 17, 16), (2, 2, 16, 17)),  # GQA: 4 query heads share 2 key heads
    ((3, 9, 16), (16, 7)),  # broadcast b over the batch
    ((33, 20), (20, 65)),  # plain 2-D
]


@pytest.mark.parametrize(("sa", "sb"), SHAPES)
@pytest.mark.parametrize(("numerics", "calibrate_out"), [("fixed", False), ("fixed", True), ("mase", False)])
def test_kernel_matches_reference(sa, sb, numerics, calibrate_out):
    a, b = torch.randn(sa, device=DEVICE), torch.randn(sb, device=DEVICE) / sb[-2] ** 0.5
    ranges, rng = _state(a, b, 2.0)
    kw = {"levels": LEVELS, "lut_min": LUT, "numerics": numerics, "calibrate_out": calibrate_out}
    c, cmin, cmax = _kernel(a, b, ranges, rng, **kw)
    r, rmin, rmax = optical_matmul_ref(a, b, ranges, rng, **kw)
    assert c.shape == r.shape
    assert_close_verbose(torch.stack([cmin, cmax]), torch.stack([rmin, rmax]), rtol=1e-5, atol=1e-6)
    lo, hi = (rmin.item(), rmax.item()) if calibrate_out else (-2.0, 2.0)
    assert_readout_close(c, r, (hi - lo) / (LEVELS - 1))


CAUSAL_SHAPES = [
    # GQA; some tiles lie wholly above the diagonal (no read-out), some straddle it (N − M = 10: not a tile multiple)
    ((1, 2, 150, 16), (1, 1, 16, 160)),
    ((2, 9, 16), (2, 16, 41)),  # more keys than queries (a cache): the diagonal shifts by N − M
    ((33, 20), (20, 17)),  # more rows than columns
]


@pytest.mark.parametrize(("sa", "sb"), CAUSAL_SHAPES)
@pytest.mark.parametrize(("numerics", "calibrate_out"), [("fixed", False), ("fixed", True), ("mase", False)])
def test_causal_is_the_full_product_zeroed_above_the_diagonal(sa, sb, numerics, calibrate_out):
    """causal=True changes only the entries above the causal diagonal (to 0): the others read out the same,
    bit for bit, and the range covers every product — kernels (interpreted on CPU) and reference alike."""
    a, b = torch.randn(sa, device=DEVICE), torch.randn(sb, device=DEVICE) / sb[-2] ** 0.5
    ranges, rng = _state(a, b, 2.0)
    kw = {"levels": LEVELS, "lut_min": LUT, "numerics": numerics, "calibrate_out": calibrate_out}
    for impl in (_kernel, optical_matmul_ref):
        full, full_min, full_max = impl(a, b, ranges, rng, **kw)
        c, c_min, c_max = impl(a, b, ranges, rng, **kw, causal=True)
        M, N = c.shape[-2:]
        above = torch.ones(M, N, dtype=torch.bool, device=c.device).triu(N - M + 1)
        assert above.any() and not above.all()
        assert torch.equal(c, full.masked_fill(above, 0)), impl.__name__
        assert torch.equal(c_min, full_min) and torch.equal(c_max, full_max), impl.__name__


def test_reference_is_close_to_matmul():
    a, b = torch.randn(2, 4, 17, 16), torch.randn(2, 2, 16, 17) / 4
    ranges, rng = _state(a, b, 6.0, device="cpu")
    c, _, _ = optical_matmul(a, b, ranges, rng, levels=LEVELS, lut_min=None)
    exact = a @ b.repeat_interleave(2, dim=1)
    assert (c - exact).abs().max() < 3 * 12.0 / (LEVELS - 1)  # within a few out levels


@pytest.mark.parametrize(("sa", "sb"), SHAPES)
def test_gradients_are_straight_through(sa, sb):
    a, b = torch.randn(sa), torch.randn(sb)
    ranges, rng = _state(a, b, 5.0, device="cpu")
    aq, bq = a.clone().requires_grad_(), b.clone().requires_grad_()
    c, _, _ = optical_matmul(aq, bq, ranges, rng, levels=LEVELS, lut_min=LUT)
    g = torch.randn_like(c)
    c.backward(g)
    ad, bd = a.clone().requires_grad_(), b.clone().requires_grad_()
    if len(sa) == 4 and sa[1] != sb[1]:
        torch.matmul(ad, bd.repeat_interleave(sa[1] // sb[1], dim=1)).backward(g)
    else:
        torch.matmul(ad, bd).backward(g)
    assert_close_verbose(aq.grad, ad.grad, rtol=1e-5, atol=1e-5)
    assert_close_verbose(bq.grad, bd.grad, rtol=1e-5, atol=1e-5)


def test_gqa_gradients_of_head_transposed_operands():
    """Attention's layout: query/key views of [B, T, H, D] (not contiguous in the head dim), grouped heads."""
    a_src, b_src = torch.randn(2, 17, 4, 16), torch.randn(2, 13, 2, 16)
    ranges, rng = _state(a_src, b_src, 5.0, device="cpu")
    aq, bq = a_src.clone().requires_grad_(), b_src.clone().requires_grad_()
    c, _, _ = optical_matmul(aq.transpose(1, 2), bq.permute(0, 2, 3, 1), ranges, rng, levels=LEVELS, lut_min=LUT)
    g = torch.randn_like(c)
    c.backward(g)
    ad, bd = a_src.clone().requires_grad_(), b_src.clone().requires_grad_()
    torch.matmul(ad.transpose(1, 2), bd.permute(0, 2, 3, 1).repeat_interleave(2, dim=1)).backward(g)
    assert_close_verbose(aq.grad, ad.grad, rtol=1e-5, atol=1e-5)
    assert_close_verbose(bq.grad, bd.grad, rtol=1e-5, atol=1e-5)


def test_under_torch_compile_fullgraph():
    a, b = torch.randn(2, 4, 8, 16), torch.randn(2, 2, 16, 8)
    ranges, rng = _state(a, b, 5.0, device="cpu")

    def f(a, b):
        c, lo, hi = optical_matmul(a, b, ranges, rng, levels=LEVELS, lut_min=LUT)
        return c.square().sum() + lo - hi

    bq = b.clone().requires_grad_()
    loss = torch.compile(f, backend="eager", fullgraph=True)(a, bq)
    loss.backward()
    assert_close_verbose(loss, f(a, b), rtol=0, atol=0)
    assert bq.grad.shape == b.shape and torch.isfinite(bq.grad).all()


def test_opcheck():
    a, b = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 8, 6)
    ranges, rng = _state(a, b, 5.0, device="cpu")
    rows = torch.zeros(2, 5, dtype=torch.bool)
    for causal, causal_rows in ((False, None), (True, None), (True, rows), (False, rows)):
        torch.library.opcheck(
            torch.ops.otlib.optical_matmul.default,
            (a.requires_grad_(), b, ranges, rng, LEVELS, LUT, "fixed", False, causal, causal_rows),
        )
    # heads_last: the fake gives the real output's strides ([B, M, H, N] memory)
    torch.library.opcheck(
        torch.ops.otlib.optical_matmul.default,
        (a.requires_grad_(), b, ranges, rng, LEVELS, LUT, "fixed", False, False, rows, True),
    )


def test_heads_last_output_has_the_projection_layout_and_needs_4d_operands():
    a, b = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 8, 6)
    ranges, rng = _state(a, b, 5.0, device="cpu")
    plain, _, _ = optical_matmul(a, b, ranges, rng.clone(), levels=LEVELS, lut_min=LUT)
    c, _, _ = optical_matmul(a, b, ranges, rng.clone(), levels=LEVELS, lut_min=LUT, heads_last=True)
    assert c.transpose(1, 2).is_contiguous() and torch.equal(c, plain)
    with pytest.raises(ValueError, match="heads_last needs"):
        optical_matmul(a[0], b[0], ranges, rng, levels=LEVELS, lut_min=LUT, heads_last=True)


def test_causal_rows_of_the_wrong_shape_are_refused():
    a, b = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 8, 6)
    ranges, rng = _state(a, b, 5.0, device="cpu")
    with pytest.raises(ValueError, match="causal_rows must be bool"):
        optical_matmul(a, b, ranges, rng, levels=LEVELS, lut_min=LUT, causal_rows=torch.zeros(2, 4, dtype=torch.bool))


def test_mase_counter_does_not_advance():
    a, b = torch.randn(4, 16, 32), torch.randn(4, 32, 16)
    ranges, _ = _state(a, b, 8.0, device="cpu")
    outs = {
        m: [
            optical_matmul(a, b, ranges, torch.tensor([5, c, 0]), levels=LEVELS, lut_min=LUT, numerics=m)[0]
            for c in (1, 2)
        ]
        for m in ("fixed", "mase")
    }
    assert torch.equal(*outs["mase"])
    assert not torch.equal(*outs["fixed"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_reference(dtype):
    a = torch.randn(4, 6, 1024, 64, device="cuda").to(dtype)
    b = (torch.randn(4, 2, 64, 1024, device="cuda") / 8).to(dtype)
    ranges, rng = _state(a.float(), b.float(), 3.0)
    c, cmin, cmax = optical_matmul(a, b, ranges, rng, levels=LEVELS, lut_min=LUT)
    with force_reference():
        r, rmin, rmax = optical_matmul(a, b, ranges, rng, levels=LEVELS, lut_min=LUT)
    assert c.dtype == dtype
    assert_close_verbose(torch.stack([cmin, cmax]), torch.stack([rmin, rmax]), rtol=1e-5, atol=1e-5)
    assert_readout_close(c.float(), r.float(), 6.0 / (LEVELS - 1), rtol=1e-5 if dtype == torch.float32 else 8e-3)


def test_bad_arguments():
    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 6, 4)
    ranges, rng = _state(a, b, 1.0, device="cpu")
    with pytest.raises(ValueError, match="optical_matmul needs"):
        optical_matmul(a, b, ranges, rng, levels=LEVELS, lut_min=LUT)
    with pytest.raises(ValueError, match="broadcast"):
        optical_matmul(a, torch.randn(5, 3, 5, 4), ranges, rng, levels=LEVELS, lut_min=LUT)


def test_custom_op_through_kernel_path(monkeypatch):
    # the registered op (aliasing checks included) with the Triton path forced on, interpreted on CPU
    pytest.importorskip("triton", reason="Triton is not installed")
    monkeypatch.setattr(sys.modules["otlib.ops.optical_matmul"], "use_kernels", lambda t, levels: True)
    a, b = torch.randn(2, 4, 9, 16, device=DEVICE), torch.randn(2, 2, 16, 9, device=DEVICE) / 4
    ranges, rng = _state(a, b, 2.0)
    for numerics in ("fixed", "mase"):
        c, lo, hi = optical_matmul(a, b, ranges, rng, levels=LEVELS, lut_min=LUT, numerics=numerics)
        r, _, _ = optical_matmul_ref(
            a, b, ranges, rng, levels=LEVELS, lut_min=LUT, numerics=numerics, calibrate_out=False
        )
        assert_readout_close(c, r, 4.0 / (LEVELS - 1))
        assert torch.isfinite(lo) and lo < hi


def test_autocast_casts_operands_and_keeps_fp32_product():
    a, b = torch.randn(2, 4, 8, 16), torch.randn(2, 2, 16, 8)
    ranges, rng = _state(a, b, 5.0, device="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c, lo, hi = optical_matmul(a, b, ranges, rng, levels=LEVELS, lut_min=LUT)
    assert c.dtype == torch.bfloat16 and lo.dtype == torch.float32 and lo < hi
    r, _, _ = optical_matmul(a.bfloat16(), b.bfloat16(), ranges, rng, levels=LEVELS, lut_min=LUT)
    assert torch.equal(c, r)


def test_head_transposed_query_is_not_copied():
    """The kernel path encodes a head-transposed 4-D operand (attention's query, a view of [B, T, H, D]) in place:
    no copy of it where the GEMM does not encode A itself (N > 128). Copies that read the query's memory, counted
    at the aten level (the interpreter copies its arguments back onto themselves afterwards: not counted)."""
    pytest.importorskip("triton", reason="Triton is not installed")
    from torch.utils._python_dispatch import TorchDispatchMode

    query = torch.randn(2, 160, 4, 16, device=DEVICE).transpose(1, 2)  # [B, H, T, D] view
    key_t = torch.randn(2, 2, 16, 160, device=DEVICE) / 4
    ranges, rng = _state(query, key_t, 2.0)
    storage = query.untyped_storage().data_ptr()

    class QueryCopies(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.copies = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            source = {torch.ops.aten.clone: 0, torch.ops.aten.copy_: 1}.get(func.overloadpacket)  # the tensor read
            reads_query = source is not None and args[source].untyped_storage().data_ptr() == storage
            onto_itself = source == 1 and args[0].untyped_storage().data_ptr() == storage
            if reads_query and not onto_itself:
                self.copies.append(str(func))
            return func(*args, **(kwargs or {}))

    with QueryCopies() as counter:
        _kernel(query, key_t, ranges, rng, levels=LEVELS, lut_min=LUT, numerics="fixed", calibrate_out=False)
    assert counter.copies == []
