"""Range-statistics updates folded on the device (otlib.kernels.ranges): one launch per product's operands.

`RangeFold` names one RangeTracker row and its reduction state. `minmax_fold` folds a tensor's min/max into
it, `minmax_folds` the two operands of a product into their rows in one launch (advancing the product's call
counter in it too), `pair_fold` an already-reduced (min, max) pair (a product's accumulator range). Eager calls
launch the kernel directly; under torch.compile they are custom ops that mutate the tracker's buffers.
"""

from collections.abc import Sequence
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
    minmax_folds([(x, fold)])


def minmax_folds(
    targets: Sequence[tuple[Tensor, RangeFold]],
    counter: Tensor | None = None,
    copy: tuple[Tensor, Tensor] | None = None,
) -> None:
    """minmax_fold of each (tensor, row) — none, one or two, of one tracker — and `counter` (int64, its first
    element) advanced by one, and copy = (source, target) fp32 [2] rows: target set to source: eagerly in one
    launch, under torch.compile by the custom ops and in-place ops."""
    if len(targets) > 2 or len({fold.beta for _, fold in targets}) > 1:
        raise ValueError(f"minmax_folds: at most two targets of one smoothing factor, got {len(targets)}")
    if not targets and counter is None and copy is None:
        return
    if torch.compiler.is_compiling():
        for x, fold in targets:
            _minmax_fold_op(x, fold.bounds, fold.scratch, fold.tickets, fold.row, fold.beta, fold.first)
        if counter is not None:
            counter.add_(1)
        if copy is not None:
            copy[1].copy_(copy[0])
        return
    from otlib.kernels.ranges import count_and_copy_, minmax_fold_

    if not targets:
        count_and_copy_(counter, copy)
        return
    (x, fold), second = targets[0], None
    if len(targets) == 2:
        y, other = targets[1]
        second = (y.detach(), other.bounds[other.row], other.scratch[other.row], other.tickets[other.row], other.first)
    row, scratch, ticket = fold.bounds[fold.row], fold.scratch[fold.row], fold.tickets[fold.row]
    minmax_fold_(x.detach(), row, scratch, ticket, fold.beta, fold.first, second=second, counter=counter, copy=copy)


def pair_fold(lo: Tensor, hi: Tensor, fold: RangeFold) -> None:
    """Fold the fp32 scalars (lo, hi) into the row."""
    call = _pair_fold_op if torch.compiler.is_compiling() else _pair_fold
    call(lo, hi, fold.bounds, fold.row, fold.beta, fold.first)
