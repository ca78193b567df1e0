"""Attention's scaled, masked softmax: the Triton kernels (interpreted on CPU, compiled on a GPU machine)
against the torch ops of the reference, forward and backward.

Bounds: the kernels sum each row in another order than torch (and the GPU's exp and division are within a
few fp32 ulps), so fp32 P agrees to 2e-6 relative; rounded to bf16, an element can land one bf16 ulp away
(at most 2 % of them here). Masked entries are exactly 0 in both.
"""

import pytest
import torch
from helpers import assert_close_verbose

from otlib.ops import scaled_masked_softmax, scaled_masked_softmax_reference
from otlib.ops.softmax import fused_softmax

triton = pytest.importorskip("triton", reason="Triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = pytest.mark.skipif(DEVICE == "cpu", reason="interpreted, rows of 1024 columns take minutes")
ON_CPU = pytest.mark.skipif(DEVICE != "cpu", reason="a compiled kernel keeps the MIN_PARTED_BLOCK it was built with")
SCALING = 0.125


def _inputs(dtype, b=2, h=3, t=37, s=37, batch_mask=True):
    scores = (torch.randn(b, h, t, s, device=DEVICE) * 4).to(dtype)
    allowed = torch.ones(t, s, device=DEVICE, dtype=torch.bool).tril(diagonal=s - t)
    allowed = allowed.expand(b if batch_mask else 1, 1, t, s).clone()
    if batch_mask:
        allowed[1, :, :, :5] = False  # left padding of the second sequence
        allowed[1, :, 3] = False  # one fully masked row: a uniform row, as torch gives
    mask = torch.zeros(allowed.shape, device=DEVICE).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return scores, mask, allowed


def _assert_probs_close(p, ref):
    if p.dtype == torch.float32:
        assert_close_verbose(p, ref, rtol=2e-6, atol=1e-8)
    else:  # one bf16 ulp at most, on few elements
        diff = (p.float() - ref.float()).abs()
        assert bool((diff <= ref.float().abs() * 2.0**-7 + 1e-30).all())
        assert (diff > 0).float().mean() < 0.02


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("t", "s", "batch_mask"), [(37, 37, True), (20, 100, False), (16, 16, None)])
def test_forward_matches_the_torch_ops(dtype, t, s, batch_mask):
    scores, mask, allowed = _inputs(dtype, t=t, s=s, batch_mask=bool(batch_mask))
    mask = None if batch_mask is None else mask
    p = fused_softmax(scores, mask, SCALING, dtype)
    ref = scaled_masked_softmax_reference(scores, mask, SCALING, dtype)
    assert p.dtype == ref.dtype == dtype and p.shape == ref.shape
    _assert_probs_close(p, ref)
    if mask is not None:
        masked = (~allowed & allowed.any(-1, keepdim=True)).expand_as(p)  # fully masked rows are uniform
        assert bool((p[masked] == 0).all()) and bool((ref[masked] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_matches_the_torch_ops(dtype):
    scores, mask, _ = _inputs(dtype)
    grad = torch.randn(scores.shape, device=DEVICE).to(dtype)
    s1 = scores.clone().requires_grad_()
    s2 = scores.clone().requires_grad_()
    fused_softmax(s1, mask, SCALING, dtype).backward(grad)
    scaled_masked_softmax_reference(s2, mask, SCALING, dtype).backward(grad)
    assert s1.grad.dtype == s2.grad.dtype == dtype
    scale = s2.grad.float().abs().max().item()
    if dtype == torch.float32:
        assert_close_verbose(s1.grad, s2.grad, rtol=1e-5, atol=1e-6 * scale)
    else:  # P and the fp32 gradient move by ulps, then round to bf16 twice
        assert_close_verbose(s1.grad, s2.grad, rtol=2.0**-6, atol=2e-3 * scale)


def test_dispatch_on_cpu_is_the_reference():
    scores, mask, _ = _inputs(torch.bfloat16)
    cpu = scores.cpu(), mask.cpu()
    assert torch.equal(
        scaled_masked_softmax(*cpu, SCALING, torch.bfloat16),
        scaled_masked_softmax_reference(*cpu, SCALING, torch.bfloat16),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("t", "s", "batch_mask", "h", "parted_from"),
    [
        (37, 37, True, 3, None),
        (20, 100, False, 3, None),
        # rows ending in the first quarter or half of a block of ≥ 1024 columns run on that part alone
        pytest.param(1024, 1024, True, 2, None, marks=ON_GPU),
        pytest.param(600, 1100, False, 2, None, marks=ON_GPU),
        # the same logic interpreted, at small sizes
        pytest.param(37, 37, True, 1, 64, marks=ON_CPU),
        pytest.param(70, 80, False, 1, 64, marks=ON_CPU),
    ],
)
def test_reading_only_up_to_the_causal_diagonal_changes_nothing(dtype, t, s, batch_mask, h, parted_from, monkeypatch):
    """Given the fully masked rows of a causal mask, the kernels read the other rows only up to the diagonal: P, its
    row statistics and dS equal those of the full rows bit for bit, fully masked (uniform) rows included.
    parted_from: rows of blocks from this many columns on run on parts of the block (interpreted: the parts' logic at
    small sizes; the kernels part blocks from 1024 columns on, where the compiled layouts keep the bits)."""
    from otlib.kernels import softmax
    from otlib.kernels.softmax import softmax_bwd, softmax_fwd

    if parted_from is not None:
        monkeypatch.setattr(softmax, "MIN_PARTED_BLOCK", triton.language.constexpr(parted_from))
    scores, mask, allowed = _inputs(dtype, h=h, t=t, s=s, batch_mask=batch_mask)
    full_rows = ~allowed[:, 0].any(-1)  # [B or 1, T]
    assert bool(full_rows.any()) == batch_mask  # the padded batch holds one
    grad = torch.randn(scores.shape, device=DEVICE).to(dtype)
    p_full, stats_full = softmax_fwd(scores, mask, SCALING, dtype, row_stats=True)
    p_skip, stats_skip = softmax_fwd(scores, mask, SCALING, dtype, row_stats=True, causal_rows=full_rows)
    assert torch.equal(p_skip, p_full) and torch.equal(stats_skip, stats_full)
    assert torch.equal(
        softmax_bwd(grad, scores, mask, SCALING, causal_rows=full_rows), softmax_bwd(grad, scores, mask, SCALING)
    )


@pytest.mark.parametrize(
    ("t", "h", "parted_from"),
    [pytest.param(1024, 2, None, marks=ON_GPU), pytest.param(64, 1, 64, marks=ON_CPU), pytest.param(64, 1, None)],
)
def test_rows_that_fill_their_block_drop_their_column_masks_with_the_same_bits(t, h, parted_from, monkeypatch):
    """With S a power of 2 every row fills its block (FULL_ROW): the kernels run without column masks. P, its row
    statistics and dS equal those of the masked path bit for bit, causal rows (parted blocks) or not."""
    from otlib.kernels import softmax
    from otlib.kernels.softmax import softmax_bwd, softmax_fwd

    if parted_from is not None:
        monkeypatch.setattr(softmax, "MIN_PARTED_BLOCK", triton.language.constexpr(parted_from))
    scores, mask, allowed = _inputs(torch.bfloat16, h=h, t=t, s=t)
    full_rows = ~allowed[:, 0].any(-1)
    grad = torch.randn(scores.shape, device=DEVICE).to(torch.bfloat16)

    def run():
        outs = []
        for rows in (None, full_rows):
            outs += [*softmax_fwd(scores, mask, SCALING, torch.bfloat16, row_stats=True, causal_rows=rows)]
            outs.append(softmax_bwd(grad, scores, mask, SCALING, causal_rows=rows))
        return outs

    assert softmax._full_row(t, triton.next_power_of_2(t))
    unmasked = run()
    monkeypatch.setattr(softmax, "_full_row", lambda *args: False)
    for got, want in zip(run(), unmasked, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("dtype", "t", "s", "h", "parted_from"),
    [
        (torch.float32, 20, 100, 1, None),
        (torch.bfloat16, 37, 37, 1, None),
        pytest.param(torch.bfloat16, 1024, 1024, 2, None, marks=ON_GPU),
        pytest.param(torch.bfloat16, 600, 1100, 2, None, marks=ON_GPU),
        pytest.param(torch.bfloat16, 70, 80, 1, 64, marks=ON_CPU),
    ],
)
def test_saved_row_norms_give_the_backward_the_same_bits(dtype, t, s, h, parted_from, monkeypatch):
    """The forward's saved row max and sum (norms) let the backward form P without reducing each row again: dS
    equals the reducing backward's bit for bit — with and without causal rows (parted blocks), fully masked rows
    included — and the forward's P and row statistics do not change."""
    from otlib.kernels import softmax
    from otlib.kernels.softmax import new_row_pairs, softmax_bwd, softmax_fwd

    if parted_from is not None:
        monkeypatch.setattr(softmax, "MIN_PARTED_BLOCK", triton.language.constexpr(parted_from))
    scores, mask, allowed = _inputs(dtype, h=h, t=t, s=s)
    full_rows = ~allowed[:, 0].any(-1)
    grad = torch.randn(scores.shape, device=DEVICE).to(dtype)
    for rows in (None, full_rows):
        norms = new_row_pairs(scores)
        p, stats = softmax_fwd(scores, mask, SCALING, dtype, row_stats=True, causal_rows=rows)
        p_n, stats_n = softmax_fwd(scores, mask, SCALING, dtype, row_stats=True, causal_rows=rows, norms=norms)
        assert torch.equal(p_n, p) and torch.equal(stats_n, stats)
        want = softmax_bwd(grad, scores, mask, SCALING, causal_rows=rows)
        assert torch.equal(softmax_bwd(grad, scores, mask, SCALING, causal_rows=rows, norms=norms), want)


def test_reading_up_to_the_diagonal_reads_nothing_above_it():
    """The rows that are not fully masked never read S beyond the diagonal's group of 16 columns (the kernels round
    the bound up to keep their loads vectorised): NaNs there leave P finite. A mutation check of the skip itself;
    with the full rows read, the NaNs reach P."""
    from otlib.kernels.softmax import softmax_fwd

    scores, mask, allowed = _inputs(torch.float32, t=64, s=64)
    full_rows = ~allowed[:, 0].any(-1)
    rows, cols = torch.arange(64, device=DEVICE)[:, None], torch.arange(64, device=DEVICE)
    poisoned = scores.masked_fill(cols >= (rows // 16 + 1) * 16, float("nan"))
    p, _ = softmax_fwd(poisoned, mask, SCALING, torch.float32, causal_rows=full_rows)
    assert bool(p[~full_rows[:, None, :, None].expand_as(p)].isfinite().all())
    assert bool(p[full_rows[:, None, :, None].expand_as(p)].isnan().all())  # full rows read every column
    assert bool(softmax_fwd(poisoned, mask, SCALING, torch.float32)[0].isnan().any())


def test_the_kernels_apply_where_the_dispatch_takes_them(monkeypatch):
    """fused_softmax_applies (what Q·Kᵀ's unstored zero tiles rely on: only the kernels read a causal row up to its
    diagonal alone) says what scaled_masked_softmax dispatches to: not for a 16-bit or differentiable mask, nor for
    rows longer than MAX_COLUMNS."""
    from otlib.kernels.softmax import MAX_COLUMNS
    from otlib.ops import softmax as softmax_op

    scores, mask, _ = _inputs(torch.float32)
    assert not softmax_op.fused_softmax_applies(scores, scores.shape[-1], mask) or DEVICE != "cpu"
    monkeypatch.setattr(softmax_op, "use_kernels", lambda t, levels=2: True)
    assert softmax_op.fused_softmax_applies(scores, scores.shape[-1], mask)
    assert softmax_op.fused_softmax_applies(scores, scores.shape[-1], None)
    assert not softmax_op.fused_softmax_applies(scores, scores.shape[-1], mask.bfloat16())
    assert not softmax_op.fused_softmax_applies(scores, scores.shape[-1], mask.clone().requires_grad_())
    assert not softmax_op.fused_softmax_applies(scores, MAX_COLUMNS + 1, mask)
    taken = []
    monkeypatch.setattr(softmax_op, "fused_softmax", lambda *args: taken.append(True) or args[0])
    softmax_op.scaled_masked_softmax(scores, mask, SCALING, torch.float32)
    softmax_op.scaled_masked_softmax(scores, mask.bfloat16(), SCALING, torch.float32)
    assert taken == [True]


def test_causal_rows_of_the_wrong_shape_are_refused():
    scores, mask, _ = _inputs(torch.float32)
    with pytest.raises(ValueError, match="causal_rows must be bool"):
        scaled_masked_softmax(scores, mask, SCALING, torch.float32, causal_rows=torch.zeros(2, 36, dtype=torch.bool))
    with pytest.raises(ValueError, match="causal_rows must be bool"):
        scaled_masked_softmax(scores, mask, SCALING, torch.float32, causal_rows=torch.zeros(2, 37))
