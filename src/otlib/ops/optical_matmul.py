"""`otlib.ops.optical_matmul`: differentiable batched optical matmul (attention's Q·Kᵀ and P·V).

Forward (docs/numerics.md):  C = Q_stoch(Q_det(A) · LUT(Q_det(B)); out range), B the SLM operand.
a [..., M, K] @ b [..., K, N]; leading dims broadcast, and dim −3 may be grouped (GQA: a has H heads,
b has Hkv heads with H % Hkv == 0, head h uses b's head h // (H / Hkv)) so repeat_kv is not needed.
Backward (straight-through): grad_A = grad_C · Bᵀ, grad_B = Aᵀ · grad_C with unquantized operands,
summed over broadcast / grouped dims. For attention's 16-bit [B, H, M, K] @ [B, Hkv, K, N] on CUDA, strided
Triton GEMMs (otlib.kernels.grad_matmul) read the head-transposed operands in place and, given `causal_rows`,
skip the tiles a causal mask makes zero.

Entry points as in optical_linear.py: the custom op "otlib::optical_matmul" under `torch.compile`, a plain
`torch.autograd.Function` in eager mode (same forward and backward, less host time per call).
"""

import torch
from torch import Tensor

from .._shapes import broadcast_shapes
from ._dispatch import check_common, check_state, op_entry, use_kernels
from ._kernel_path import matmul_kernel_path
from .reference import expand_groups, optical_matmul_ref


def _out_shape(a: Tensor, b: Tensor) -> list[int]:
    lead_b = list(b.shape[:-2])
    if a.dim() >= 3 and b.dim() >= 3 and b.shape[-3] not in (1, a.shape[-3]) and a.shape[-3] % b.shape[-3] == 0:
        lead_b[-1] = a.shape[-3]  # grouped heads
    lead = broadcast_shapes(a.shape[:-2], lead_b)
    return [*lead, a.shape[-2], b.shape[-1]]


def _forward(
    a: Tensor,
    b: Tensor,
    ranges: Tensor,
    rng: Tensor,
    levels: int,
    lut_min: float | None,
    numerics: str,
    calibrate_out: bool,
    causal: bool,
    causal_rows: Tensor | None,
    heads_last: bool = False,
    zero_above: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    kw = {"levels": levels, "lut_min": lut_min, "numerics": numerics, "calibrate_out": calibrate_out, "causal": causal}
    # the op does its own fp32 arithmetic: autocast must not turn the reference's products into bf16 ones
    with torch.autocast(a.device.type, enabled=False):
        if not use_kernels(a, levels):
            c, c_min, c_max = optical_matmul_ref(a, b, ranges, rng, **kw)
        else:
            # a causal P's fully masked rows: the GEMM skips the rest's zeros above the diagonal (same values); causal
            # scores' (zero_above=False): the GEMM skips storing the zero tiles the softmax does not read
            rows = causal_rows if not causal or not zero_above else None
            c, c_min, c_max = matmul_kernel_path(
                a, b, ranges, rng, **kw, causal_rows=rows, heads_last=heads_last, zero_above=zero_above
            )
    # heads_last: [B, M, H, N] memory; a copy only where the GEMM did not write it so (contiguous() is then a no-op)
    return (c.transpose(1, 2).contiguous().transpose(1, 2) if heads_last else c), c_min, c_max


_optical_matmul_op = torch.library.custom_op("otlib::optical_matmul", _forward, mutates_args=())


@_optical_matmul_op.register_fake
def _(
    a, b, ranges, rng, levels, lut_min, numerics, calibrate_out, causal, causal_rows, heads_last=False, zero_above=True
):
    shape = _out_shape(a, b)
    c = a.new_empty([shape[0], shape[2], shape[1], shape[3]]).transpose(1, 2) if heads_last else a.new_empty(shape)
    stat = a.new_empty((), dtype=torch.float32)
    return c, stat, stat.clone()


def _reduce_grad_b(g: Tensor, b: Tensor) -> Tensor:
    """Sum a gradient of the expanded b back to b's shape (grouped heads, then broadcast dims)."""
    if g.dim() >= 3 and b.dim() >= 3 and g.shape[-3] != b.shape[-3] and b.shape[-3] != 1:
        g = g.unflatten(-3, (b.shape[-3], g.shape[-3] // b.shape[-3])).sum(-3)
    return g.sum_to_size(b.shape)


def _stackable_groups(a: Tensor, b: Tensor) -> bool:
    """a [..., H, M, K] and b [..., Hkv, K, N] with the same leading dims and H a multiple (> 1) of Hkv."""
    return (
        a.dim() >= 3
        and a.dim() == b.dim()
        and a.shape[:-3] == b.shape[:-3]
        and b.shape[-3] > 0
        and a.shape[-3] != b.shape[-3]
        and a.shape[-3] % b.shape[-3] == 0
    )


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], inputs[1], inputs[9])
    ctx.causal = inputs[8]
    ctx.zero_above = inputs[11] if len(inputs) > 11 else True


def _strided_grads_apply(a: Tensor, b: Tensor, grad_c: Tensor) -> bool:
    """Whether the Triton strided GEMMs take the gradients: CUDA kernels on, eager tensors (a traced backward
    takes torch's ops), a [B, H, M, K] and b [B, Hkv, K, N] with H a multiple of Hkv, one 16-bit float dtype."""
    return (
        use_kernels(grad_c)
        and type(grad_c) is Tensor
        and a.dim() == 4
        and b.dim() == 4
        and a.shape[0] == b.shape[0] > 0
        and b.shape[1] > 0
        and a.shape[1] % b.shape[1] == 0
        and grad_c.shape == (*a.shape[:-1], b.shape[-1])
        and a.dtype == b.dtype == grad_c.dtype
        and a.dtype in (torch.bfloat16, torch.float16)
    )


def _softmax_read(causal_rows: Tensor, t_len: int, s_len: int) -> Tensor:
    """bool [B, 1, T, S]: where the softmax's kernels read a causal T × S matrix — a row up to its diagonal rounded
    up to 16 columns (kernels/softmax.py's _row_last), a fully masked row whole."""
    t = torch.arange(t_len, device=causal_rows.device)
    end = ((t + s_len - t_len).clamp_min(0) // 16 + 1) * 16
    read = torch.arange(s_len, device=causal_rows.device) < end[:, None]
    return (read | causal_rows[:, :, None]).unsqueeze(1)


def _backward(ctx, grad_c: Tensor | None, _gmin: Tensor | None, _gmax: Tensor | None):
    # Straight-through: identity quantizers, so these are torch.matmul's gradients.
    a, b, causal_rows = ctx.saved_tensors
    if grad_c is None:  # c unused (the Function does not materialise zero gradients)
        return (None,) * 12
    if _strided_grads_apply(a, b, grad_c):  # attention's GQA products, read and written in place
        from ..kernels.grad_matmul import grouped_matmul_grads

        rows = causal_rows if causal_rows is not None and causal_rows.shape == (a.shape[0], a.shape[2]) else None
        ga, gb = grouped_matmul_grads(
            a,
            b,
            grad_c,
            *ctx.needs_input_grad[:2],
            causal_rows=rows,
            causal_c=ctx.causal,
            unread_above=not ctx.zero_above,
        )
        return ga, gb, *(None,) * 10
    if ctx.causal and not ctx.zero_above:
        # dS exists only where the softmax reads S (the strided kernels read it only there): zeros elsewhere
        grad_c = grad_c.masked_fill(~_softmax_read(causal_rows, grad_c.shape[-2], grad_c.shape[-1]), 0.0)
    dt = grad_c.dtype
    if _stackable_groups(a, b):
        # GQA: the G query heads of one K/V head stack along the rows, [..., Hkv, G·M, K], so both gradients are
        # one batched matmul per K/V head — no repeated copy of b, and gb comes out summed over the group.
        hkv = b.shape[-3]
        grad_g = grad_c.reshape(*grad_c.shape[:-3], hkv, -1, grad_c.shape[-1])
        a_g = a.to(dt).reshape(*a.shape[:-3], hkv, -1, a.shape[-1])
        ga = (grad_g @ b.to(dt).transpose(-1, -2)).view(a.shape).to(a.dtype) if ctx.needs_input_grad[0] else None
        gb = (a_g.transpose(-1, -2) @ grad_g).to(b.dtype) if ctx.needs_input_grad[1] else None
        return ga, gb, *(None,) * 10
    bx = expand_groups(a, b).to(dt)
    ga = (grad_c @ bx.transpose(-1, -2)).sum_to_size(a.shape).to(a.dtype) if ctx.needs_input_grad[0] else None
    gb = _reduce_grad_b(a.to(dt).transpose(-1, -2) @ grad_c, b).to(b.dtype) if ctx.needs_input_grad[1] else None
    return ga, gb, *(None,) * 10


_optical_matmul_op.register_autograd(_backward, setup_context=_setup_context)


_call_matmul = op_entry(_optical_matmul_op, _forward, _setup_context, _backward)


def optical_matmul(
    a: Tensor,
    b: Tensor,
    ranges: Tensor,
    rng: Tensor,
    *,
    levels: int,
    lut_min: float | None,
    numerics: str = "fixed",
    calibrate_out: bool = False,
    causal: bool = False,
    causal_rows: Tensor | None = None,
    heads_last: bool = False,
    zero_above: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Optical batched matmul: a [..., M, K] @ b [..., K, N] → (c in a's dtype, out_min, out_max).

    ranges fp32 [3, 2] rows (a, b, out) of (lo, hi); rng int64 [3] = (seed, call counter, stream).
    out_min/out_max: fp32 0-d min/max of the pre-quantization accumulator (mase: of the quantized output).
    causal: c is 0 above the causal diagonal (column > row + N − M), the entries a causal mask discards; the
    GEMM skips their read-out. The range still covers every product, and the gradients are those of the
    full product (straight-through), so a causal softmax of c gives what it gives without `causal`.
    causal_rows (bool [B, M], a [B, H, M, K]; attention under a causal mask): the caller's promise that the T × S
    matrix of the product — c's gradient if `causal` (Q·Kᵀ), else a (P·V) — is 0 above the causal diagonal except
    in these rows (the fully masked ones, whose softmax is uniform). The backward then skips the zero tiles, and
    P·V's forward GEMM the zeros of P; the results are the same.
    heads_last (a [B, H, M, K] and c [B, H, M, N]): c is a view of [B, M, H, N] memory, so that c.transpose(1, 2)
    is contiguous — attention's output in the layout its output projection reads, without a copy. Same values.
    zero_above=False (with causal_rows; attention's products, where `scaled_masked_softmax` given the same
    causal_rows reads the T × S matrices — up to the diagonal rounded up to 16 columns, and the whole of a fully
    masked row): elsewhere above the diagonal, that matrix is left unwritten (any value). With causal (Q·Kᵀ) it is
    c, whose zero tiles the GEMM then does not store, and c's gradient is read only in that region (the softmax's
    backward may leave the rest unwritten); without (P·V) a's gradient, dP, whose tiles there the backward's GEMM
    neither forms nor stores.
    Under torch.autocast both operands are first cast to the autocast dtype (as torch.matmul would); the
    quantizers still compute in fp32.
    """
    check_common(levels, lut_min, numerics)
    check_state(ranges, rng)
    if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"optical_matmul needs a [..., M, K] and b [..., K, N], got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    try:
        _out_shape(a, b)
    except RuntimeError as e:
        raise ValueError(f"leading dims of a {tuple(a.shape)} and b {tuple(b.shape)} do not broadcast") from e
    if causal_rows is not None and (
        a.dim() != 4 or causal_rows.dtype != torch.bool or tuple(causal_rows.shape) != (a.shape[0], a.shape[2])
    ):
        raise ValueError(
            f"causal_rows must be bool [B, M] = {(a.shape[0], a.shape[-2])} for a 4-D a, got "
            f"{causal_rows.dtype} {tuple(causal_rows.shape)} with a {tuple(a.shape)}"
        )
    if torch.is_autocast_enabled(a.device.type):  # torch.matmul's autocast rule: both operands to the autocast dtype
        dt = torch.get_autocast_dtype(a.device.type)
        a, b = a.to(dt), b.to(dt)
    if not zero_above and causal_rows is None:
        raise ValueError("optical_matmul: zero_above=False needs causal_rows")
    if heads_last and (a.dim() != 4 or len(_out_shape(a, b)) != 4):
        raise ValueError(
            f"heads_last needs a [B, H, M, K] and a 4-D product, got a {tuple(a.shape)}, b {tuple(b.shape)}"
        )
    return _call_matmul(
        a, b, ranges, rng, levels, lut_min, numerics, calibrate_out, causal, causal_rows, heads_last, zero_above
    )
