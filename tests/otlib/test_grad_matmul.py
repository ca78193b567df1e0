"""otlib.kernels.grad_matmul: the straight-through gradients of the grouped matmul as strided batched GEMMs
(interpreted on CPU, compiled on a GPU) against an fp32 torch reference; layouts; the autotune choice; the op's
backward on attention's bf16 head-transposed operands."""

import sys

import pytest
import torch
from helpers import assert_close_verbose

from otlib.ops import optical_matmul

pytest.importorskip("triton", reason="Triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# one rounding of an fp32 accumulator to the output dtype: ≤ half an ulp, ≤ 2^-8 (bf16) / 2^-11 (fp16) of the value
RTOL = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def grouped_bmm_reference(x, y, red, xm, ym, yd, heads_out):
    """out[b, j] = Σ_{g < red} x[b, j·xm + g] @ y[b, (j·ym + g) // yd] in fp32: the kernel's definition."""
    out = []
    for j in range(heads_out):
        terms = [x[:, j * xm + g].float() @ y[:, (j * ym + g) // yd].float() for g in range(red)]
        out.append(torch.stack(terms).sum(0))
    return torch.stack(out, dim=1)


def _attention_operands(dtype, batch=2, heads=6, kv_heads=2, t_len=70, s_len=130, head_dim=32):
    """query [B, H, T, D] and keyᵀ [B, Hkv, D, S] as views of [B, T, H, D] / [B, S, Hkv, D] (attention's layout),
    and a contiguous grad_c [B, H, T, S]; T, S not multiples of the tiles, S over two K steps."""
    q = torch.randn(batch, t_len, heads, head_dim, device=DEVICE).to(dtype).transpose(1, 2)
    k_t = torch.randn(batch, s_len, kv_heads, head_dim, device=DEVICE).to(dtype).permute(0, 2, 3, 1)
    grad_c = torch.randn(batch, heads, t_len, s_len, device=DEVICE).to(dtype)
    return q, k_t, grad_c


def _value_operands(dtype, batch=2, heads=6, kv_heads=2, t_len=70, s_len=130, head_dim=32):
    """P [B, H, T, S] contiguous, value [B, Hkv, S, D] and grad_c [B, H, T, D] as views of [B, S, Hkv, D] /
    [B, T, H, D]: the P·V product, whose dP = grad_c · valueᵀ reduces over D in one K step."""
    p = torch.rand(batch, heads, t_len, s_len, device=DEVICE).to(dtype)
    v = torch.randn(batch, s_len, kv_heads, head_dim, device=DEVICE).to(dtype).transpose(1, 2)
    grad_c = torch.randn(batch, t_len, heads, head_dim, device=DEVICE).to(dtype).transpose(1, 2)
    return p, v, grad_c


def _tol(ref, dtype):
    return {"rtol": RTOL[dtype], "atol": 1e-6 * ref.abs().max().item()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("product", ["Q·Kᵀ", "P·V"])
def test_gradients_match_the_fp32_reference_in_the_operands_layout(dtype, product):
    from otlib.kernels.grad_matmul import grouped_matmul_grads

    a, b, grad_c = (_attention_operands if product == "Q·Kᵀ" else _value_operands)(dtype)
    group = a.shape[1] // b.shape[1]
    ga, gb = grouped_matmul_grads(a, b, grad_c, True, True)
    ref_a = grouped_bmm_reference(grad_c, b.transpose(-1, -2), 1, 1, 1, group, a.shape[1])
    ref_b = grouped_bmm_reference(a.transpose(-1, -2), grad_c, group, group, group, 1, b.shape[1])
    assert ga.dtype == gb.dtype == dtype
    assert ga.stride() == a.stride() and gb.stride() == b.stride()  # nothing downstream needs a copy
    assert_close_verbose(ga.float(), ref_a, **_tol(ref_a, dtype))
    assert_close_verbose(gb.float(), ref_b, **_tol(ref_b, dtype))
    # the bound has teeth: a wrong group mapping (query head h reading K/V head h % Hkv) fails it
    wrong = torch.stack([grad_c[:, h].float() @ b[:, h % b.shape[1]].transpose(-1, -2).float() for h in range(6)], 1)
    assert not torch.allclose(wrong, ref_a, **_tol(ref_a, dtype))


def test_one_head_per_group_and_only_one_gradient():
    from otlib.kernels.grad_matmul import grouped_matmul_grads

    a, b, grad_c = _attention_operands(torch.bfloat16, heads=2, kv_heads=2)
    ga, gb = grouped_matmul_grads(a, b, grad_c, False, True)
    assert ga is None
    ref_b = grouped_bmm_reference(a.transpose(-1, -2), grad_c, 1, 1, 1, 1, 2)
    assert_close_verbose(gb.float(), ref_b, **_tol(ref_b, torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_results_do_not_depend_on_the_tile_config():
    from otlib.kernels.grad_matmul import X_LOWER, X_UPPER_T, autotune_configs, grouped_bmm

    a, b, grad_c = _attention_operands(torch.bfloat16, batch=2, t_len=300, s_len=260, head_dim=64)
    _, value, grad_o = _value_operands(torch.bfloat16, batch=2, t_len=300, s_len=260, head_dim=64)
    rows = torch.zeros(2, 300, dtype=torch.uint8, device=DEVICE)
    rows[0, 5] = 1
    results = []
    for cfg in autotune_configs():
        meta = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        causal = {"rows": rows, "diag": -40, "config": meta}
        results.append((
            grouped_bmm(grad_c, b.transpose(-1, -2), torch.empty_like(a), red=1, xm=1, ym=1, yd=3, config=meta),
            grouped_bmm(a.transpose(-1, -2), grad_c, torch.empty_like(b), red=3, xm=3, ym=3, yd=1, config=meta),
            grouped_bmm(grad_c, b.transpose(-1, -2), torch.empty_like(a), red=1, xm=1, ym=1, yd=3, causal=X_LOWER, **causal),
            grouped_bmm(grad_c.transpose(-1, -2), a, torch.empty_like(b).transpose(-1, -2), red=3, xm=3, ym=3, yd=1,
                        causal=X_UPPER_T, **causal),
            grouped_bmm(grad_o, value.transpose(-1, -2), torch.empty(2, 6, 300, 260, device=DEVICE).bfloat16(),
                        red=1, xm=1, ym=1, yd=3, config=meta),  # dP: K = 64, one step without a loop
        ))  # fmt: skip
    for got in results[1:]:
        assert all(torch.equal(x, y) for x, y in zip(got, results[0], strict=True))


def test_op_backward_on_attention_operands_takes_the_strided_kernels(monkeypatch):
    """optical_matmul's backward on bf16 query/keyᵀ views: the Triton path (forced on CPU, where it runs
    interpreted), the gradients in the operands' layout and equal to the fp32 straight-through ones."""
    if DEVICE == "cpu":
        monkeypatch.setattr(sys.modules["otlib.ops.optical_matmul"], "use_kernels", lambda t, levels=2: True)
        monkeypatch.setattr(sys.modules["otlib.ops.optical_matmul"], "matmul_kernel_path", _reference_forward)
    q_src = torch.randn(2, 70, 6, 32, device=DEVICE).bfloat16().requires_grad_()
    k_src = torch.randn(2, 130, 2, 32, device=DEVICE).bfloat16().requires_grad_()
    q, k_t = q_src.transpose(1, 2), k_src.permute(0, 2, 3, 1)
    ranges = torch.tensor([[-4.0, 4.0], [-4.0, 4.0], [-30.0, 30.0]], device=DEVICE)
    rng = torch.tensor([1, 2, 3], device=DEVICE)
    c, _, _ = optical_matmul(q, k_t, ranges, rng, levels=256, lut_min=0.02)
    grad_c = torch.randn_like(c)
    c.backward(grad_c)
    assert q_src.grad.is_contiguous() and k_src.grad.is_contiguous()  # no copy on the way back to the projections
    ref_a = grouped_bmm_reference(grad_c, k_t.detach().transpose(-1, -2), 1, 1, 1, 3, 6).transpose(1, 2)
    ref_b = grouped_bmm_reference(q.detach().transpose(-1, -2), grad_c, 3, 3, 3, 1, 2).permute(0, 3, 1, 2)
    assert_close_verbose(q_src.grad.float(), ref_a, **_tol(ref_a, torch.bfloat16))
    assert_close_verbose(k_src.grad.float(), ref_b, **_tol(ref_b, torch.bfloat16))


def _reference_forward(*args, causal_rows=None, heads_last=False, zero_above=True, **kwargs):
    from otlib.ops import optical_matmul_ref

    assert not heads_last and (zero_above or not kwargs.get("causal"))  # P·V's zero_above concerns its backward
    return optical_matmul_ref(*args, **kwargs)  # causal_rows only lets the kernels skip zeros: the same values


@pytest.mark.parametrize("causal_c", [True, False])
def test_causal_skip_is_bit_identical(causal_c):
    """With causal_rows, the tiles a causal mask makes zero are skipped: the same gradients bit for bit as the
    unskipped kernel, for T < S (the diagonal offset S − T = 60) and full rows in the first and last row tiles."""
    from otlib.kernels.grad_matmul import grouped_matmul_grads

    batch, heads, kv_heads, t_len, s_len, head_dim = 2, 4, 2, 140, 200, 32
    full = torch.zeros(batch, t_len, dtype=torch.bool, device=DEVICE)
    full[0, :3] = True
    full[1, -2] = True
    above = torch.ones(t_len, s_len, dtype=torch.bool, device=DEVICE).triu(s_len - t_len + 1)
    zero = above & ~full[:, None, :, None]  # [B, 1, T, S]: 0 above the diagonal but in full rows
    causal_matrix = torch.randn(batch, heads, t_len, s_len, device=DEVICE).masked_fill(zero, 0.0).bfloat16()
    other = torch.randn(batch, kv_heads, s_len, head_dim, device=DEVICE).bfloat16()  # K (Q·Kᵀ) or V (P·V)
    if causal_c:  # Q·Kᵀ: a = Q [B, H, T, D], b = Kᵀ, grad_c = dS
        a, b = torch.randn(batch, heads, t_len, head_dim, device=DEVICE).bfloat16(), other.transpose(-1, -2)
        grad_c = causal_matrix
    else:  # P·V: a = P, b = V, grad_c = dO
        a, b, grad_c = causal_matrix, other, torch.randn(batch, heads, t_len, head_dim, device=DEVICE).bfloat16()
    skipped = grouped_matmul_grads(a, b, grad_c, True, True, causal_rows=full, causal_c=causal_c)
    dense = grouped_matmul_grads(a, b, grad_c, True, True)
    assert torch.equal(skipped[0], dense[0]) and torch.equal(skipped[1], dense[1])


@pytest.mark.parametrize("s_len", [40, 43])  # S − T a multiple of 16, and not (the softmax rounds its bound up)
def test_unread_dp_tiles_are_ones_the_softmax_backward_does_not_read(s_len, monkeypatch):
    """unread_above: P·V's backward leaves dP unwritten in tiles the softmax backward given the same causal_rows does
    not read. With the allocation poisoned (NaN), dP equals the dense one wherever it was written, some tile was
    left unwritten (but none in the row tiles of fully masked rows), and the softmax backward's dS from it equals
    the dS from the dense dP bit for bit."""
    from otlib.kernels.grad_matmul import grouped_matmul_grads
    from otlib.kernels.softmax import softmax_bwd

    batch, heads, kv_heads, t_len, head_dim = 2, 2, 1, 40, 16
    cfg = {"BLOCK_M": 16, "BLOCK_N": 16}  # small tiles: some lie wholly past the read bound at these sizes
    full = torch.zeros(batch, t_len, dtype=torch.bool, device=DEVICE)
    full[1, 3] = True  # a fully masked row in the first row tile of the second sequence: its row is read whole
    allowed = torch.ones(t_len, s_len, dtype=torch.bool, device=DEVICE).tril(s_len - t_len) | full[:, None, :, None]
    mask = torch.zeros(allowed.shape, device=DEVICE).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    scores = torch.randn(batch, heads, t_len, s_len, device=DEVICE).bfloat16()
    p = torch.softmax(scores.float() * 0.125 + mask, -1).bfloat16()
    v = torch.randn(batch, kv_heads, s_len, head_dim, device=DEVICE).bfloat16()
    grad_o = torch.randn(batch, heads, t_len, head_dim, device=DEVICE).bfloat16()
    dense, _ = grouped_matmul_grads(p, v, grad_o, True, False, causal_rows=full)
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: empty_like(*a, **k).fill_(float("nan")))
    kernels = sys.modules["otlib.kernels.grad_matmul"]
    bmm = kernels.grouped_bmm
    monkeypatch.setattr(kernels, "grouped_bmm", lambda *a, **k: bmm(*a, **k, config=cfg))
    skipped, _ = grouped_matmul_grads(p, v, grad_o, True, False, causal_rows=full, unread_above=True)
    monkeypatch.undo()
    written = ~skipped.isnan()
    assert not bool(written.all()) and bool(written[1, :, :16].all())
    assert torch.equal(skipped[written], dense[written])
    grad_s = [softmax_bwd(g, scores, mask, 0.125, causal_rows=full) for g in (dense, skipped)]
    assert torch.equal(grad_s[0], grad_s[1])


def test_op_leaves_dp_unread_only_where_asked(monkeypatch):
    """optical_matmul(zero_above=False) on P·V hands its backward unread_above (and only then); Q·Kᵀ's never."""
    ops_module = sys.modules["otlib.ops.optical_matmul"]
    kernels = sys.modules["otlib.kernels.grad_matmul"]
    monkeypatch.setattr(ops_module, "use_kernels", lambda t, levels=2: True)
    monkeypatch.setattr(ops_module, "matmul_kernel_path", _reference_forward)
    seen = []
    grads = kernels.grouped_matmul_grads
    monkeypatch.setattr(
        kernels, "grouped_matmul_grads", lambda *a, **k: seen.append(k["unread_above"]) or grads(*a, **k)
    )
    p = torch.rand(2, 4, 70, 70, device=DEVICE).tril().bfloat16().requires_grad_()
    v = torch.randn(2, 2, 70, 32, device=DEVICE).bfloat16()
    rows = torch.zeros(2, 70, dtype=torch.bool, device=DEVICE)
    ranges = torch.tensor([[0.0, 1.0], [-4.0, 4.0], [-30.0, 30.0]], device=DEVICE)
    rng = torch.tensor([1, 2, 3], device=DEVICE)
    for zero_above in (True, False):
        c, _, _ = optical_matmul(p, v, ranges, rng, levels=256, lut_min=0.02, causal_rows=rows, zero_above=zero_above)
        c.float().sum().backward()
    assert seen == [False, True]
    with pytest.raises(ValueError, match="zero_above=False needs causal_rows"):
        optical_matmul(p, v, ranges, rng, levels=256, lut_min=0.02, zero_above=False)


@pytest.mark.parametrize("s_len", [80, 99])  # T = S, and S − T not a multiple of 16
def test_ds_read_only_where_the_softmax_backward_writes_it(s_len, monkeypatch):
    """unread_above on Q·Kᵀ's backward: the softmax backward (unread_above) leaves dS unwritten past the columns it
    reads; dQ and dK read dS only there. With that allocation poisoned (NaN), dS is unwritten somewhere, and dQ and
    dK equal those from the fully written dS bit for bit (fully masked rows included)."""
    from otlib.kernels.grad_matmul import grouped_matmul_grads
    from otlib.kernels.softmax import softmax_bwd

    batch, heads, kv_heads, t_len, head_dim = 2, 2, 1, 80, 16  # two row blocks of the interpreter's 64 rows
    full = torch.zeros(batch, t_len, dtype=torch.bool, device=DEVICE)
    full[1, 3] = full[0, -1] = True
    allowed = torch.ones(t_len, s_len, dtype=torch.bool, device=DEVICE).tril(s_len - t_len) | full[:, None, :, None]
    mask = torch.zeros(allowed.shape, device=DEVICE).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    scores = torch.randn(batch, heads, t_len, s_len, device=DEVICE).bfloat16()
    grad_p = torch.randn(scores.shape, device=DEVICE).bfloat16()
    q = torch.randn(batch, heads, t_len, head_dim, device=DEVICE).bfloat16()
    k_t = torch.randn(batch, kv_heads, s_len, head_dim, device=DEVICE).bfloat16().transpose(-1, -2)
    dense = softmax_bwd(grad_p, scores, mask, 0.125, causal_rows=full)
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: empty_like(*a, **k).fill_(float("nan")))
    partial = softmax_bwd(grad_p, scores, mask, 0.125, causal_rows=full, unread_above=True)
    monkeypatch.undo()
    written = ~partial.isnan()
    assert not bool(written.all()) and torch.equal(partial[written], dense[written])
    want = grouped_matmul_grads(q, k_t, dense, True, True, causal_rows=full, causal_c=True)
    got = grouped_matmul_grads(q, k_t, partial, True, True, causal_rows=full, causal_c=True, unread_above=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_op_reads_scores_gradient_only_where_the_softmax_writes_it(monkeypatch):
    """Q·Kᵀ with zero_above=False: every backward path reads c's gradient only where the softmax backward
    (unread_above) writes dS — torch's ops (here, the reference path) as the strided kernels — so NaN elsewhere
    changes nothing; and that region (_softmax_read) is where the softmax backward writes, fully masked rows whole."""
    from otlib.kernels.softmax import softmax_bwd

    read_region = sys.modules["otlib.ops.optical_matmul"]._softmax_read
    t_len, s_len = 40, 75
    rows = torch.zeros(2, t_len, dtype=torch.bool, device=DEVICE)
    rows[1, 5] = True
    region = read_region(rows, t_len, s_len).expand(2, 4, t_len, s_len)
    allowed = torch.ones(t_len, s_len, dtype=torch.bool, device=DEVICE).tril(s_len - t_len) | rows[:, None, :, None]
    mask = torch.zeros(allowed.shape, device=DEVICE).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: empty_like(*a, **k).fill_(float("nan")))
    scores = torch.randn(region.shape, device=DEVICE)
    grad_s = softmax_bwd(torch.randn(region.shape, device=DEVICE), scores, mask, 0.125, rows, unread_above=True)
    monkeypatch.undo()
    assert torch.equal(~grad_s.isnan(), region)

    q = torch.randn(2, 4, t_len, 16, device=DEVICE).requires_grad_()
    k_t = torch.randn(2, 2, 16, s_len, device=DEVICE).requires_grad_()
    ranges = torch.tensor([[-4.0, 4.0], [-4.0, 4.0], [-30.0, 30.0]], device=DEVICE)
    rng = torch.tensor([1, 2, 3], device=DEVICE)
    grad_c = torch.randn(region.shape, device=DEVICE)
    grads = []
    for zero_above, outside in ((True, 0.0), (False, float("nan"))):
        c, _, _ = optical_matmul(
            q, k_t, ranges, rng, levels=256, lut_min=0.02, causal=True, causal_rows=rows, zero_above=zero_above
        )
        q.grad = k_t.grad = None
        c.backward(grad_c.masked_fill(~region, outside))
        grads.append((q.grad, k_t.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
