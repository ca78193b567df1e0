"""`otlib.ops.optical_linear`: differentiable optical linear layer op (torch.library custom op).

Forward (docs/numerics.md):  Y = Q_stoch(Q_det(X) · LUT(Q_det(W))ᵀ; out range) + b, bias digital.
Backward (straight-through): grad_X = grad_Y · W, grad_W = grad_Yᵀ · X, grad_b = Σ grad_Y, with the
UNQUANTIZED operands; ranges and rng are state, never differentiated.

Two entry points share one implementation and one backward: under `torch.compile` the call is the
`torch.library.custom_op` "otlib::optical_linear" with a fake (meta) kernel, so `fullgraph=True` traces
through it; eager calls go through a plain `torch.autograd.Function`, which skips the custom op's
dispatch and autograd wrappers (~1 ms of host time per layer step on an H200 host, benchmarks/NOTES.md).
CUDA tensors run the Triton kernels, all others the PyTorch reference.
"""

import torch
from torch import Tensor

from ._dispatch import check_common, check_state, op_entry, use_kernels
from ._kernel_path import linear_kernel_path
from .reference import optical_linear_ref


def _forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    ranges: Tensor,
    rng: Tensor,
    levels: int,
    lut_min: float | None,
    numerics: str,
    calibrate_out: bool,
    x_codes: Tensor | None = None,
    x_sums: Tensor | None = None,
    w_codes: Tensor | None = None,
    w_sums: Tensor | None = None,
    x_cast: Tensor | None = None,
    w_cast: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    kw = {"levels": levels, "lut_min": lut_min, "numerics": numerics, "calibrate_out": calibrate_out}
    x = x if x_cast is None else x_cast  # autocast's cast of x, made already (w_cast is for the backward only)
    # the op does its own fp32 arithmetic: autocast must not turn the reference's products into bf16 ones
    with torch.autocast(x.device.type, enabled=False):
        if not use_kernels(x, levels):
            return optical_linear_ref(x, weight, bias, ranges, rng, **kw)
        x_pair = None if x_codes is None or x_sums is None else (x_codes, x_sums)
        w_pair = None if w_codes is None or w_sums is None else (w_codes, w_sums)
        return linear_kernel_path(x, weight, bias, ranges, rng, **kw, x_codes=x_pair, w_codes=w_pair)


_optical_linear_op = torch.library.custom_op("otlib::optical_linear", _forward, mutates_args=())


@_optical_linear_op.register_fake
def _(
    x, weight, bias, ranges, rng, levels, lut_min, numerics, calibrate_out, x_codes=None, x_sums=None, w_codes=None,
    w_sums=None, x_cast=None, w_cast=None,
):  # fmt: skip
    y = (x if x_cast is None else x_cast).new_empty((*x.shape[:-1], weight.shape[0]))
    stat = x.new_empty((), dtype=torch.float32)
    return y, stat, stat.clone()


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias = inputs[:3]
    x_cast, w_cast = inputs[13:15] if len(inputs) > 13 else (None, None)
    x_op = x if x_cast is None else x_cast
    # the backward multiplies in the gradient's dtype, which is y's, x_op's: a weight given in it is saved instead
    w_op = w_cast if w_cast is not None and w_cast.dtype == x_op.dtype else weight
    ctx.save_for_backward(x_op, w_op)
    ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
    ctx.has_bias = bias is not None
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad_y: Tensor | None, _gmin: Tensor | None, _gmax: Tensor | None):
    # Straight-through: the quantizers are treated as identity, so these are nn.Linear's gradients.
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    if grad_y is None:  # y unused (the Function does not materialise zero gradients)
        return (None,) * 15
    dt = grad_y.dtype
    gy2 = grad_y.reshape(-1, grad_y.shape[-1])
    gx = (grad_y @ weight.to(dt)).to(ctx.x_dtype) if need_x else None
    gw = (gy2.t() @ x.reshape(-1, x.shape[-1]).to(dt)).to(ctx.w_dtype) if need_w else None
    gb = gy2.float().sum(0).to(ctx.bias_dtype) if (need_b and ctx.has_bias) else None
    return gx, gw, gb, *(None,) * 12


_optical_linear_op.register_autograd(_backward, setup_context=_setup_context)


_call_linear = op_entry(_optical_linear_op, _forward, _setup_context, _backward)


def optical_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    ranges: Tensor,
    rng: Tensor,
    *,
    levels: int,
    lut_min: float | None,
    numerics: str = "fixed",
    calibrate_out: bool = False,
    x_codes: tuple[Tensor, Tensor] | None = None,
    w_codes: tuple[Tensor, Tensor] | None = None,
    x_cast: Tensor | None = None,
    w_cast: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Optical linear layer.

    x [..., K] (fp32/bf16/fp16), weight [N, K], bias [N] or None; ranges fp32 [3, 2] rows (x, w, out)
    of (lo, hi); rng int64 [3] = (seed, call counter, stream id), read on the device.
    calibrate_out (host bool): use this call's accumulator min/max as the out range.
    Under torch.autocast, x is first cast to the autocast dtype (as nn.Linear's output would be).
    Returns y [..., N] in x's dtype, and fp32 0-d out_min/out_max of the pre-quantization accumulator
    (numerics="mase": of the quantized output, the peer's defect 3).
    x_codes: `encode_input(x, ranges, levels)` of this x and ranges, computed for another layer reading the same x
    (OpticalLinear's shared input): the kernel path skips encoding x again; the reference path ignores it.
    w_codes: the same for the weight with the w range of `ranges` (fp16 codes [N, K], fp32 sums [N]), encoded for
    all the model's weights at once (OpticalLinear's weight bank, otlib.ops.weight_codes).
    x_cast: `autocast_input(x)`'s values, made already (`encode_input` or a sibling's): the op multiplies and
    saves x_cast, not a cast of its own, and returns x's gradient in x's dtype (x_cast is not differentiated).
    w_cast: `weight.to(dtype)`'s values in y's dtype, made already (the weight bank): the backward multiplies by
    it instead of casting the weight (not differentiated; ignored in another dtype).
    """
    check_common(levels, lut_min, numerics)
    check_state(ranges, rng)
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"weight must be [N, {x.shape[-1]}] for x of shape {tuple(x.shape)}, got {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if x_cast is None:
        x = autocast_input(x)
    elif x_cast.shape != x.shape or not x_cast.is_floating_point():
        raise ValueError(f"x_cast must be a float tensor of x's shape {tuple(x.shape)}, got {tuple(x_cast.shape)}")
    if w_cast is not None and w_cast.shape != weight.shape:
        raise ValueError(f"w_cast must have the weight's shape {tuple(weight.shape)}, got {tuple(w_cast.shape)}")
    x_pair = (None, None) if x_codes is None else x_codes
    w_pair = (None, None) if w_codes is None else w_codes
    return _call_linear(
        x, weight, bias, ranges, rng, levels, lut_min, numerics, calibrate_out, *x_pair, *w_pair, x_cast, w_cast
    )


def autocast_input(x: Tensor) -> Tensor:
    """x as `optical_linear` multiplies it: under torch.autocast, cast to the autocast dtype. nn.Linear's autocast
    rule for the output dtype: the activation is cast, so y has that dtype; weight and bias are read in their own
    dtype (fp32 master weights are quantized directly, no bf16 copy)."""
    return x.to(autocast_dtype(x))


def autocast_dtype(x: Tensor) -> torch.dtype:
    """The dtype torch.autocast casts x to in a product: the autocast dtype where autocast is on for x's device and
    x is a float tensor, else x's own."""
    if torch.is_autocast_enabled(x.device.type) and x.is_floating_point():
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def encode_input(x: Tensor, ranges: Tensor, levels: int) -> tuple[tuple[Tensor, Tensor] | None, Tensor]:
    """x ([..., K], a linear's input) as `optical_linear` multiplies it and its kernel-path encoding with the x
    range of `ranges`: (fp16 level codes [M, K] and their row sums for `optical_linear(x_codes=...)`, or None where
    the reference runs, which encodes inside its own arithmetic; `autocast_input(x)`'s values, detached, for
    `optical_linear(x_cast=...)`). On the kernel path one launch casts and encodes a contiguous x
    (benchmarks/NOTES.md 75)."""
    dtype = autocast_dtype(x)
    if not use_kernels(x, levels):
        return None, x.detach().to(dtype)
    from ..kernels.quantize import operand_codes

    x = x.detach()
    cast = None
    if dtype != x.dtype and x.is_contiguous():
        cast = torch.empty(x.shape, dtype=dtype, device=x.device)
    else:
        x = x.to(dtype)
    codes, sums = operand_codes(x.reshape(1, -1, x.shape[-1]), ranges.contiguous(), 0, levels - 1, cast=cast)
    return (codes[0], sums[0]), x if cast is None else cast
