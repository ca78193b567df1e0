"""Range-statistics updates folded on the device (otlib.kernels.ranges): one launch per observed tensor.

`RangeFold` names one RangeTracker row and its reduction state. `minmax_fold` folds a tensor's min/max into
it, `pair_fold` an already-reduced (min, max) pair (a product's accumulator range). Eager calls launch the
kernel directly; under torch.compile they are custom ops that mutate the tracker's buffers.
"""

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RangeFold:
    """Row `row` of a RangeTracker: `bounds` fp32 [n, 2], `scratch` fp32 [n, 2] (+inf, −inf), `tickets` int32
    [n, 2] (0, 0); `first`: the row takes the batch range as is (else the EMA with `beta`)."""

    bounds: Tensor
    scratch: Tensor
    tickets: Tensor
    row: int
    beta: float
    first: bool


def _minmax_fold(
    x: Tensor, bounds: Tensor, scratch: Tensor, tickets: Tensor, row: int, beta: float, first: bool
) -> None:
    from otlib.kernels.ranges import minmax_fold_

    minmax_fold_(x.detach(), bounds[row], scratch[row], tickets[row], beta, first)


def _pair_fold(lo: Tensor, hi: Tensor, bounds: Tensor, row: int, beta: float, first: bool) -> None:
    from otlib.kernels.ranges import pair_fold_

    pair_fold_(lo, hi, bounds[row], beta, first)


_minmax_fold_op = torch.library.custom_op(
    "otlib::minmax_fold", _minmax_fold, mutates_args=("bounds", "scratch", "tickets")
)
_pair_fold_op = torch.library.custom_op("otlib::pair_fold", _pair_fold, mutates_args=("bounds",))


@_minmax_fold_op.register_fake
def _(x, bounds, scratch, tickets, row, beta, first):
    return None


@_pair_fold_op.register_fake
def _(lo, hi, bounds, row, beta, first):
    return None


def minmax_fold(x: Tensor, fold: RangeFold) -> None:
    """Fold min/max of `x` (CUDA, numel > 0) into the row: NaN anywhere gives NaN, as torch.aminmax."""
    call = _minmax_fold_op if torch.compiler.is_compiling() else _minmax_fold
    call(x, fold.bounds, fold.scratch, fold.tickets, fold.row, fold.beta, fold.first)


def pair_fold(lo: Tensor, hi: Tensor, fold: RangeFold) -> None:
    """Fold the fp32 scalars (lo, hi) into the row."""
    call = _pair_fold_op if torch.compiler.is_compiling() else _pair_fold
    call(lo, hi, fold.bounds, fold.row, fold.beta, fold.first)
