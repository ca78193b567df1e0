"""The level-code GEMM (kernels/optical_matmul.py) and its operand encoder (kernels/quantize.py) against
the PyTorch reference: codes are the reference's levels bit for bit (the LUT-floored weights to fp16
precision), the accumulator equals the exact product of the reference-quantized operands to a stated bound,
and results do not depend on the tile shape.

Interpreted on CPU (TRITON_INTERPRET=1), compiled on a GPU machine.
"""

import itertools

import pytest
import torch
from helpers import assert_equal_verbose

from otlib.ops import quant_params
from otlib.ops.reference import P_DIV, P_LO, P_LUT_NEG, P_LUT_POS, P_RANGE, quantize_core

triton = pytest.importorskip("triton", reason="Triton is not installed")
from otlib.kernels.optical_linear import optical_linear_fwd  # noqa: E402
from otlib.kernels.optical_matmul import optical_matmul_fwd  # noqa: E402
from otlib.kernels.quantize import operand_codes  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LUT, N = 0.020040, 255
RNG = torch.tensor([5, 3, 1], device=DEVICE)


# the register-capped tile the autotuner picks for P·V on an H200 (benchmarks/NOTES.md 47)
PV_CAPPED = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 3, "maxnreg": 128}


def _ranges(x, w, out=3.0):
    return torch.tensor([[x.min(), x.max()], [w.min(), w.max()], [-out, out]], device=x.device).float()


def _levels(x, ranges, row):
    """The reference's deterministic levels k ∈ [0, n] of x (quantize_core's arithmetic up to the rounding)."""
    p = quant_params(ranges[row, 0], ranges[row, 1], None, x.device)
    lo, hi = p[P_LO], ranges[row, 1]
    return torch.round((torch.clamp(x.float(), lo, hi) - lo) / p[P_DIV] * N)


def _code_params(ranges, row):
    """(s, z, c) as the kernels form them (utils.code_params): code = level − z, value = c + s·code."""
    p = quant_params(ranges[row, 0], ranges[row, 1], None, ranges.device)
    s = p[P_RANGE] / N
    z = torch.round(-p[P_LO] / s).clamp(0, N)
    return s, z, p[P_LO] + z * s


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("shift", [0.3, 12.0])  # the level nearest 0 inside the range, and below it (z = 0)
def test_operand_a_codes_are_reference_levels(dtype, transposed, shift):
    x = (torch.randn(2, 150, 77, device=DEVICE) * 2 + shift).to(dtype)
    if transposed:  # strided input (the attention's V is read K-strided)
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    ranges = _ranges(x.float(), x.float())
    codes, sums = operand_codes(x, ranges, 0, N)
    k = _levels(x, ranges, 0)
    _, z, _ = _code_params(ranges, 0)
    assert codes.dtype == torch.float16 and sums.dtype == torch.float32
    assert (z == 0) == (shift == 12.0)
    assert_equal_verbose(codes.float() + z, k)
    assert_equal_verbose(sums, (k - z).sum(-1))  # integers: exact


def test_operand_b_codes_carry_the_lut_floor():
    w = torch.randn(3, 96, 130, device=DEVICE) * 0.1  # [G, N, K]
    ranges = _ranges(w, w)
    codes, sums = operand_codes(w, ranges, 1, N, lut_min=LUT)
    p = quant_params(ranges[1, 0], ranges[1, 1], LUT, w.device)
    q_ref = quantize_core(w, p, N, lut=True)  # the reference's LUT(Q_det(w))
    k = _levels(w, ranges, 1)
    floored = q_ref != quantize_core(w, p, N)
    assert 0.01 < floored.float().mean() < 0.5  # the test exercises the floor
    s, z, c = (v.double().item() for v in _code_params(ranges, 1))
    # unfloored elements: code = level − z exactly
    assert_equal_verbose((codes.float() + z)[~floored], k[~floored])
    # floored elements: the floor value's own position on the code axis, rounded once to fp16
    exact_pos = (torch.where(q_ref > 0, p[P_LUT_POS], p[P_LUT_NEG]).double() - c) / s
    assert bool((codes.double() - exact_pos).abs()[floored].le(exact_pos.abs()[floored] * 2.0**-11 + 1e-6).all())
    # every element: c + s·code represents the reference value (unfloored: to fp32 rounding)
    err = (c + s * codes.double() - q_ref.double()).abs()
    assert err[~floored].max() <= 4e-7 * w.abs().max().item()
    assert err[floored].max() <= s * 2.0**-8  # |position| ≤ λ·n + ½ < 8: half an fp16 ulp ≤ 2⁻⁹ levels
    assert_close = torch.testing.assert_close
    assert_close(sums, codes.float().sum(-1), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("lut", [None, LUT])
def test_encoder_without_masks_on_whole_blocks_gives_the_same_codes(lut, monkeypatch):
    """Where the operand fills whole blocks of rows and columns the encoder runs without masks (EVEN): the same
    codes and sums as its masked path, bit for bit (fractional LUT codes included, whose sums are not exact)."""
    from otlib.kernels import quantize

    block_r, block_c = quantize._rows_per_program(2 * 64), quantize._CODES_BLOCK_C
    x = torch.randn(2, 64, 2 * block_c, device=DEVICE) * 0.1  # [G, R, C]: whole blocks
    assert quantize._even_blocks(64, 2 * block_c, block_r, block_c)
    ranges = _ranges(x, x)
    unmasked = operand_codes(x, ranges, 1, N, lut_min=lut)
    monkeypatch.setattr(quantize, "_even_blocks", lambda *args: False)
    for got, want in zip(operand_codes(x, ranges, 1, N, lut_min=lut), unmasked, strict=True):
        assert_equal_verbose(got, want)


def test_accumulator_matches_exact_product_of_quantized_operands():
    """Bound: the fp32 sum of the code products plus ≤ 2⁻⁹·s_w per floored weight (fp16 positions): measured
    max 7.5e-4 of a read-out level here (the fp16 floor positions: the code-product sum adds nothing
    measurable), against ~9e-5 for an fp32 matmul of the same operands."""
    m, k, n = 256, 384, 192
    x = torch.randn(m, k, device=DEVICE)
    w = torch.randn(n, k, device=DEVICE) / k**0.5
    ranges = _ranges(x, w)
    rng = torch.tensor([1, 2, 3], device=DEVICE)
    acc, amin, amax = optical_linear_fwd(x, w, None, ranges, rng, N, lut_min=LUT, readout=False, out_dtype=x.dtype)
    qx = quantize_core(x, quant_params(ranges[0, 0], ranges[0, 1], None, x.device), N)
    qw = quantize_core(w, quant_params(ranges[1, 0], ranges[1, 1], LUT, x.device), N, lut=True)
    exact = qx.double() @ qw.double().t()
    level = 6.0 / N  # the read-out step of the out range [−3, 3]
    err = (acc.double() - exact).abs()
    assert err.max() < 2e-3 * level and err.pow(2).mean().sqrt() < 3e-4 * level
    assert amin == acc.min() and amax == acc.max()


@pytest.mark.parametrize("readout", [True, False])
def test_results_do_not_depend_on_the_tile_shape(readout):
    """Compiled, every config issues the same k16 MMA instructions in K order. The interpreter multiplies each
    BLOCK_K slab with numpy and adds it to the accumulator, so there the configs share BLOCK_K."""
    m, k, n = 200, 300, 136  # no dimension a multiple of the tiles
    x = torch.randn(m, k, device=DEVICE).bfloat16()
    w = torch.randn(n, k, device=DEVICE) / k**0.5
    b = torch.randn(n, device=DEVICE)
    ranges, rng = _ranges(x.float(), w), torch.tensor([9, 4, 1], device=DEVICE)
    interpreted = DEVICE == "cpu"
    outs = [
        optical_linear_fwd(x, w, b, ranges, rng, N, lut_min=LUT, readout=readout, out_dtype=x.dtype, config=cfg)
        for cfg in (
            {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64 if interpreted else 32, "GROUP_M": 2},
            {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64 if interpreted else 128, "GROUP_M": 8},
            None,  # the autotuned choice
        )
    ]
    for y, lo, hi in outs[1:]:
        assert_equal_verbose(y, outs[0][0])
        assert_equal_verbose(torch.stack([lo, hi]), torch.stack(outs[0][1:]))


@pytest.mark.parametrize("bias", [True, False])
def test_tma_and_persistent_tiles_give_the_same_bits(bias):
    """The K loop through TMA descriptors, one tile a program or persistent programs looping over the tiles (one
    or two an SM): the same read-out, accumulator and range as pointer loads, bit for bit, with partial tiles in
    every dimension (out-of-bounds TMA elements read as 0, as masked loads do)."""
    m, k, n = 200, 296, 136  # K a multiple of 8 (16-byte rows of fp16 codes), none a multiple of the tiles
    x = torch.randn(m, k, device=DEVICE).bfloat16()
    w = torch.randn(n, k, device=DEVICE) / k**0.5
    b = torch.randn(n, device=DEVICE) if bias else None
    ranges, rng = _ranges(x.float(), w), torch.tensor([4, 6, 2], device=DEVICE)
    tile = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 2}
    for readout in (True, False):
        want = optical_linear_fwd(x, w, b, ranges, rng, N, lut_min=LUT, readout=readout, out_dtype=x.dtype, config=tile)
        for tma in ({"TMA": True}, {"TMA": True, "PERSISTENT": 1}, {"TMA": True, "PERSISTENT": 2}):
            got = optical_linear_fwd(
                x, w, b, ranges, rng, N, lut_min=LUT, readout=readout, out_dtype=x.dtype, config=tile | tma
            )
            for g, e in zip(got, want, strict=True):
                assert_equal_verbose(g, e)


def test_tma_configs_are_offered_only_where_the_launcher_allows_them():
    """The autotuner's pruning keeps the TMA configs exactly when the launch's TMA_OK flag is set; TMA_OK needs
    one operand pair of contiguous codes with 16-byte rows, and shapes where TMA was measured to pay; a persistent
    config launches at most one program per tile."""
    from otlib.kernels import optical_matmul as om

    configs = [triton.Config({"BLOCK_M": 64}), triton.Config({"BLOCK_M": 128, "TMA": True, "PERSISTENT": 1})]
    assert om._prune_tma(configs, {}, TMA_OK=False) == configs[:1]
    assert om._prune_tma(configs, {}, TMA_OK=True) == configs
    codes = torch.zeros(1, 1, 64, 1152, dtype=torch.float16, device=DEVICE)
    assert om._tma_ok(codes, codes) == (DEVICE == "cpu" or torch.cuda.get_device_capability()[0] >= 9)
    assert not om._tma_ok(codes.expand(2, 1, 64, 1152), codes)  # a batch of operand pairs
    assert not om._tma_ok(codes[..., :1148], codes[..., :1148])  # rows of 1148 codes: not 16-byte multiples
    assert not om._tma_ok(codes[..., 4:], codes[..., 4:])  # rows not contiguous
    assert om._tma_pays(4096, 1152) and not om._tma_pays(768, 2048) and not om._tma_pays(2048, 768)
    grid = om._gemm_grid(1000, 300, 1, torch.device(DEVICE))
    tiles = 8 * 3  # 1000 rows in 128-row blocks, 300 columns in 128-column ones
    assert grid({"BLOCK_M": 128, "BLOCK_N": 128}) == (tiles, 1)
    assert grid({"BLOCK_M": 128, "BLOCK_N": 128, "PERSISTENT": 1000}) == (tiles, 1)
    per_sm = grid({"BLOCK_M": 128, "BLOCK_N": 128, "PERSISTENT": 1})[0]
    assert 1 <= per_sm <= tiles


def test_tma_config_is_refused_where_descriptors_cannot_load():
    """A causal product (or a batch of operand pairs) has no TMA path: an explicit TMA config is an error, not a
    silent fallback to pointer loads."""
    q = torch.randn(1, 2, 32, 64, device=DEVICE)
    kt = torch.randn(1, 2, 32, 64, device=DEVICE).transpose(-1, -2)
    cfg = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 2, "TMA": True}
    with pytest.raises(ValueError, match="TMA config"):
        optical_matmul_fwd(q, kt, _ranges(q, kt), RNG, N, lut_min=LUT, readout=True, out_dtype=q.dtype, config=cfg)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_scores_do_not_depend_on_the_tile_shape(causal):
    """Q·Kᵀ (K = 64: one MMA step a tile) at tile shapes, warp counts and register caps that lay out the epilogue
    differently: the same scores, zeros above the diagonal and range, bit for bit; T ≠ S and sizes off the tiles."""
    q = torch.randn(2, 40, 3, 64, device=DEVICE).transpose(1, 2)  # [B, H, T, D] view
    k = torch.randn(2, 72, 3, 64, device=DEVICE).transpose(1, 2)  # S = 72 keys (a cache longer than T)
    kt = k.transpose(-1, -2)
    ranges, rng = _ranges(q, k, out=4.0), torch.tensor([7, 2, 5], device=DEVICE)
    outs = [
        optical_matmul_fwd(
            q, kt, ranges, rng, N, lut_min=LUT, readout=True, out_dtype=q.dtype, causal=causal, config=cfg
        )
        for cfg in (
            {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 2},
            {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "maxnreg": 128},
            None,  # the autotuned choice
        )
    ]
    if causal:  # the test would pass vacuously if nothing were zeroed
        assert bool((outs[0][0][..., 0, 34:] == 0).all()) and bool((outs[0][0][..., 0, :33] != 0).any())
    for c, lo, hi in outs[1:]:
        assert_equal_verbose(c, outs[0][0])
        assert_equal_verbose(torch.stack([lo, hi]), torch.stack(outs[0][1:]))


@pytest.mark.parametrize("product", ["linear", "causal scores"])
def test_full_and_partial_output_tiles_give_the_same_bits(product):
    """Where every output tile is full (EVEN_MN) the kernel runs without row and column masks: the same results
    as a tile shape that leaves partial tiles, bit for bit (and the test checks that both paths ran)."""
    from otlib.kernels.optical_matmul import _even_mn

    full = {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 2}
    partial = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}
    if product == "linear":
        m, n = 192, 96
        x = torch.randn(m, 128, device=DEVICE).bfloat16()
        w = torch.randn(n, 128, device=DEVICE) / 128**0.5
        b = torch.randn(n, device=DEVICE)
        ranges, rng = _ranges(x.float(), w), torch.tensor([3, 8, 2], device=DEVICE)
        outs = [
            optical_linear_fwd(x, w, b, ranges, rng, N, lut_min=LUT, readout=True, out_dtype=x.dtype, config=cfg)
            for cfg in (full, partial)
        ]
    else:
        m = n = 192
        q = torch.randn(2, m, 2, 64, device=DEVICE).transpose(1, 2)
        kt = torch.randn(2, n, 2, 64, device=DEVICE).transpose(1, 2).transpose(-1, -2)
        ranges, rng = _ranges(q, kt, out=4.0), torch.tensor([6, 1, 3], device=DEVICE)
        outs = [
            optical_matmul_fwd(
                q, kt, ranges, rng, N, lut_min=LUT, readout=True, out_dtype=q.dtype, causal=True, config=cfg
            )
            for cfg in (full, partial)
        ]
    assert _even_mn(m, n, full["BLOCK_M"], full["BLOCK_N"]) and not _even_mn(
        m, n, partial["BLOCK_M"], partial["BLOCK_N"]
    )
    assert_equal_verbose(outs[1][0], outs[0][0])
    assert_equal_verbose(torch.stack(outs[1][1:]), torch.stack(outs[0][1:]))


@pytest.mark.parametrize("product", ["P·V", "scores"])
def test_heads_last_output_is_the_same_product_in_the_projection_layout(product):
    """heads_last: c written in [B, M, H, N] memory (attention's output as o_proj reads it): the same values bit
    for bit, and c.transpose(1, 2) contiguous (no copy after)."""
    cfg = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 2}
    a = torch.randn(2, 70, 4, 64, device=DEVICE).transpose(1, 2)
    b = torch.randn(2, 70, 2, 64, device=DEVICE).transpose(1, 2)  # grouped: 4 query heads, 2 K/V heads
    if product == "P·V":
        a = torch.softmax(a @ a.transpose(-1, -2), -1).bfloat16()  # [2, 4, 70, 70], encoded in the GEMM
    else:
        b = b.transpose(-1, -2)
    ranges = _ranges(a.float(), b.float(), out=2.0)
    outs = [
        optical_matmul_fwd(
            a, b, ranges, RNG, N, lut_min=LUT, readout=True, out_dtype=a.dtype, config=cfg, heads_last=heads_last
        )
        for heads_last in (False, True)
    ]
    assert outs[0][0].is_contiguous() and outs[1][0].transpose(1, 2).is_contiguous()
    for got, want in zip(outs[1], outs[0], strict=True):
        assert_equal_verbose(got, want)


@pytest.mark.parametrize("s", [72, 75])  # S − T a multiple of 16, and not (the softmax rounds its bound up to 16)
def test_unstored_zero_tiles_are_ones_the_softmax_does_not_read(s, monkeypatch):
    """zero_above=False: Q·Kᵀ leaves tiles wholly above the diagonal unstored where the softmax given the same
    causal_rows does not read them. With every allocation poisoned (NaN), the softmax's P, row statistics and dS
    equal those from the zero-filled scores bit for bit — fully masked rows (read whole) included — and some tile
    was indeed left unstored."""
    from otlib.kernels.softmax import softmax_bwd, softmax_fwd

    cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 64, "GROUP_M": 2}
    t = 40
    q = torch.randn(2, t, 2, 64, device=DEVICE).transpose(1, 2)
    kt = torch.randn(2, s, 1, 64, device=DEVICE).transpose(1, 2).transpose(-1, -2)
    allowed = torch.ones(t, s, device=DEVICE, dtype=torch.bool).tril(diagonal=s - t).expand(2, 1, t, s).clone()
    allowed[1, :, 3] = False  # a fully masked row in the first row block of the second sequence
    mask = torch.zeros(allowed.shape, device=DEVICE).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    rows = ~allowed[:, 0].any(-1)
    ranges = _ranges(q, kt, out=4.0)
    zeroed, lo, hi = optical_matmul_fwd(q, kt, ranges, RNG, N, lut_min=LUT, readout=True, out_dtype=q.dtype,
                                        causal=True, config=cfg)  # fmt: skip
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: empty(*a, **k).fill_(float("nan")))
    skipped, lo2, hi2 = optical_matmul_fwd(q, kt, ranges, RNG, N, lut_min=LUT, readout=True, out_dtype=q.dtype,
                                           causal=True, causal_rows=rows, zero_above=False, config=cfg)  # fmt: skip
    monkeypatch.setattr(torch, "empty", empty)
    # tiles past the read bound were not stored, but none in the row block holding the fully masked row
    assert bool(skipped[0].isnan().any()) and not bool(skipped[1, :, :16].isnan().any())
    assert torch.equal(torch.stack([lo, hi]), torch.stack([lo2, hi2]))
    grad_p = torch.randn(zeroed.shape, device=DEVICE)
    for scores in (zeroed, skipped):
        p, stats = softmax_fwd(scores, mask, 0.125, torch.float32, row_stats=True, causal_rows=rows)
        grad_s = softmax_bwd(grad_p, scores, mask, 0.125, causal_rows=rows)
        if scores is zeroed:
            want = (p, stats, grad_s)
    for got, exp in zip((p, stats, grad_s), want, strict=True):
        assert_equal_verbose(got, exp)


def test_grouped_batched_matmul_equals_per_head_products():
    a = torch.randn(2, 6, 33, 16, device=DEVICE)  # 6 query heads
    b = torch.randn(2, 2, 16, 40, device=DEVICE)  # 2 KV heads: groups of 3
    ranges = _ranges(a, b)
    rng = torch.tensor([5, 1, 0], device=DEVICE)
    c, _, _ = optical_matmul_fwd(a, b, ranges, rng, N, lut_min=LUT, readout=False, out_dtype=a.dtype)
    per_head = torch.stack(
        [
            torch.stack(
                [
                    optical_matmul_fwd(
                        a[i, h], b[i, h // 3], ranges, rng, N, lut_min=LUT, readout=False, out_dtype=a.dtype
                    )[0]
                    for h in range(6)
                ]
            )
            for i in range(2)
        ]
    )
    assert_equal_verbose(c, per_head)  # the same tiles and MMA order per head: the batching changes nothing


@pytest.mark.parametrize("readout", [True, False])
def test_head_transposed_operands_equal_their_contiguous_copies(readout):
    """Attention's layout: Q, K as views of [B, T, H, D] (Q·Kᵀ with b = Kᵀ), and V for P·V; the encoder reads
    the 4-D views in place. Same results bit for bit as contiguous 5-D copies (encoded as [G, R, C])."""
    q = torch.randn(2, 37, 6, 16, device=DEVICE).transpose(1, 2)  # [B, H, T, D], not contiguous
    k = torch.randn(2, 29, 2, 16, device=DEVICE).transpose(1, 2)  # [B, Hkv, S, D]
    v = torch.randn(2, 29, 2, 16, device=DEVICE).transpose(1, 2)
    p = torch.rand(2, 6, 37, 29, device=DEVICE)
    rng = torch.tensor([5, 3, 1], device=DEVICE)
    for a, b in ((q, k.transpose(-1, -2)), (p, v)):
        assert not b.is_contiguous()
        ranges = _ranges(a, b, out=2.0)
        got = optical_matmul_fwd(a, b, ranges, rng, N, lut_min=LUT, readout=readout, out_dtype=a.dtype, raw_a=False)
        a5, b5 = a.contiguous().unsqueeze(0), b.contiguous().unsqueeze(0)
        want = optical_matmul_fwd(a5, b5, ranges, rng, N, lut_min=LUT, readout=readout, out_dtype=a.dtype, raw_a=False)
        assert_equal_verbose(got[0], want[0].squeeze(0))
        for g, w in zip(got[1:], want[1:], strict=True):
            assert_equal_verbose(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("readout", [True, False])
@pytest.mark.parametrize(("m", "k", "n"), [(40, 72, 16), (33, 100, 130)])  # K and M off the tiles; N > one tile
def test_gemm_encoding_a_itself_equals_the_encoder_path(dtype, readout, m, k, n):
    """raw_a (attention's P·V): the GEMM encodes A's tiles in its K loop — the same codes, sums, products and
    read-out as the separate encoder, bit for bit, including the range it observes; grouped heads. Compiled, also
    at the register-capped tile the autotuner picks for P·V on an H200 (the interpreter ignores warps and register
    caps, and its numpy products need not sum a tile of another width in the same order)."""
    a = (torch.rand(2, 6, m, k, device=DEVICE) * 1.3 - 0.1).to(dtype)
    b = torch.randn(2, 2, k, n, device=DEVICE).to(dtype)
    ranges = _ranges(a.float(), b.float(), out=2.0)
    rng = torch.tensor([5, 3, 1], device=DEVICE)
    want, *got = (
        optical_matmul_fwd(a, b, ranges, rng, N, lut_min=LUT, readout=readout, out_dtype=dtype, raw_a=raw, config=cfg)
        for raw, cfg in ((False, None), (True, None), *([(True, {**PV_CAPPED})] if DEVICE == "cuda" else []))
    )
    for outs in got:
        for g, w in zip(outs, want, strict=True):
            assert_equal_verbose(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("m", "k"), [(192, 192), (150, 170)])  # the diagonal at column row + K − M
def test_causal_p_stops_the_k_loop_at_its_diagonal(dtype, m, k):
    """P·V with causal_rows: blocks of rows without a fully masked one skip the K tiles past their last diagonal,
    where P is 0 (code 0 whatever P's range). The same outputs and range bit for bit as the whole K loop; a P that
    is not 0 above its diagonal shows the tiles are skipped. Compiled, also at the register-capped P·V tile."""
    lower = torch.ones(m, k, dtype=torch.bool, device=DEVICE).tril(diagonal=k - m)
    p = torch.rand(2, 4, m, k, device=DEVICE).masked_fill(~lower, 0.0)
    rows = torch.zeros(2, m, dtype=torch.bool, device=DEVICE)
    rows[1, 3] = True  # a fully masked row: its softmax is uniform, not 0 above the diagonal
    p[1, :, 3] = 1.0 / k
    p = (p / p.sum(-1, keepdim=True)).to(dtype)
    v = torch.randn(2, 2, k, 64, device=DEVICE).to(dtype)
    ranges = _ranges(p.float(), v.float(), out=2.0)
    assert ranges[0, 0] == 0
    rng = torch.tensor([5, 3, 1], device=DEVICE)
    configs = [None] + ([{**PV_CAPPED}] if DEVICE == "cuda" else [])
    for readout, cfg in itertools.product((True, False), configs):
        kw = {"lut_min": LUT, "readout": readout, "out_dtype": dtype, "raw_a": True, "config": cfg}
        want = optical_matmul_fwd(p, v, ranges, rng, N, **kw)
        got = optical_matmul_fwd(p, v, ranges, rng, N, **kw, causal_rows=rows)
        for g, w in zip(got, want, strict=True):
            assert_equal_verbose(g, w)
    if m == k:  # square: with any tile config the first block of rows ends before the last K tile
        kw = {"lut_min": LUT, "readout": False, "out_dtype": dtype, "raw_a": True}
        dense = torch.rand(2, 4, m, k, device=DEVICE).to(dtype)  # breaks the promise: the skipped tiles are missing
        whole = optical_matmul_fwd(dense, v, ranges, rng, N, **kw)[0]
        assert not torch.equal(optical_matmul_fwd(dense, v, ranges, rng, N, **kw, causal_rows=rows)[0], whole)
        # with a's range below 0 a 0 need not be code 0: no tile is skipped, even of a P that breaks the promise
        below = ranges.clone()
        below[0, 0] = -0.3
        whole = optical_matmul_fwd(dense, v, below, rng, N, **kw)[0]
        assert_equal_verbose(optical_matmul_fwd(dense, v, below, rng, N, **kw, causal_rows=rows)[0], whole)


def test_entries_at_level_zero_add_nothing():
    """Causal attention: P·V with P = 0 on future keys and P's range starting at 0. Changing the future values
    must not change a single bit of the earlier rows (their codes are 0 and c_a = 0: they add exactly nothing)."""
    p = torch.rand(2, 3, 40, 40, device=DEVICE).tril()  # row i attends to keys 0..i
    p = p / p.sum(-1, keepdim=True)
    v = torch.randn(2, 3, 40, 16, device=DEVICE)
    ranges = torch.tensor([[0.0, 1.0], [v.min(), v.max()], [-2.0, 2.0]], device=DEVICE)
    rng = torch.tensor([3, 1, 2], device=DEVICE)
    later = v.clone()
    later[:, :, 25:] = torch.randn(2, 3, 15, 16, device=DEVICE) * 0.5
    for readout in (False, True):
        c1 = optical_matmul_fwd(p, v, ranges, rng, N, lut_min=LUT, readout=readout, out_dtype=p.dtype)[0]
        c2 = optical_matmul_fwd(p, later, ranges, rng, N, lut_min=LUT, readout=readout, out_dtype=p.dtype)[0]
        assert_equal_verbose(c1[:, :, :25], c2[:, :, :25])
        assert not torch.equal(c1[:, :, 25:], c2[:, :, 25:])


@pytest.mark.parametrize(("lead", "m", "k", "n"), [((2,), 0, 8, 4), ((0,), 5, 8, 4), ((), 5, 8, 0), ((2,), 5, 0, 4)])
def test_empty_products(lead, m, k, n):
    """No output elements: empty result and an unobserved range (+inf, −inf); K = 0: all-zero accumulator."""
    ranges = torch.tensor([[-1.0, 1.0], [-1.0, 1.0], [-2.0, 2.0]], device=DEVICE)
    rng = torch.tensor([1, 2, 3], device=DEVICE)
    a, b = torch.randn(*lead, m, k, device=DEVICE), torch.randn(*lead, k, n, device=DEVICE)
    c, lo, hi = optical_matmul_fwd(a, b, ranges, rng, N, lut_min=LUT, readout=False, out_dtype=a.dtype)
    assert c.shape == (*lead, m, n)
    if c.numel() == 0:
        assert lo == float("inf") and hi == float("-inf")
    else:
        assert bool((c == 0).all()) and lo == 0 and hi == 0


def test_later_calls_launch_the_autotuner_choice_directly():
    # the first call per key goes through the autotuner; later calls launch the jitted kernel with its choice
    # (optical_gemm's cache) — the same results, bit for bit, and the choice recorded under the call's key
    from otlib.kernels import optical_matmul

    m, k, n = 70, 96, 40
    x = torch.randn(m, k, device=DEVICE)
    w = torch.randn(n, k, device=DEVICE) / k**0.5
    ranges, rng = _ranges(x, w), torch.tensor([3, 7, 2], device=DEVICE)
    optical_matmul._GEMM.chosen.clear()
    first = optical_linear_fwd(x, w, None, ranges, rng, N, lut_min=LUT, readout=True, out_dtype=x.dtype)
    assert len(optical_matmul._GEMM.chosen) == 1
    ((key, chosen),) = optical_matmul._GEMM.chosen.items()
    assert key[:3] == (triton.next_power_of_2(m), n, k) and {"BLOCK_M", "BLOCK_N", "BLOCK_K"} <= set(chosen)
    again = optical_linear_fwd(x, w, None, ranges, rng, N, lut_min=LUT, readout=True, out_dtype=x.dtype)
    for a, b in zip(first, again, strict=True):
        assert_equal_verbose(b, a)


def test_direct_launch_keeps_the_chosen_register_cap():
    # a capped config (maxnreg) must launch capped after the autotuner picked it, not only in the autotuning call
    from otlib.kernels.utils import TunedLaunch

    capped = triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=3, maxnreg=128)
    plain = triton.Config({"BLOCK_M": 128}, num_warps=8, num_stages=4)
    launches = []

    class FakeKernel:
        best_config = capped

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(kwargs)

    for best, cap in ((capped, 128), (plain, None)):
        FakeKernel.best_config = best
        launch = TunedLaunch(FakeKernel())
        launch(("key",), None, (), {"FLAG": True})  # through the autotuner
        launch(("key",), None, (), {"FLAG": True})  # direct, with its choice
        assert launches[-1].get("maxnreg") == cap
        assert launches[-1]["num_warps"] == best.num_warps and launches[-1]["num_stages"] == best.num_stages
        assert launches[-1]["BLOCK_M"] == best.kwargs["BLOCK_M"] and launches[-1]["FLAG"] is True
