"""Assertion helpers for the otlib numerics tests: failures name the worst element and NaN/inf mismatches."""

import torch
from torch import Tensor


def _where(t: Tensor, flat_index: int) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), t.shape))


def assert_close_verbose(actual: Tensor, expected: Tensor, *, rtol: float, atol: float, msg: str = "") -> None:
    """Like torch.testing.assert_close, but reports the worst index, its values, and NaN/inf mismatches."""
    assert actual.shape == expected.shape, f"{msg} shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    nan_mismatch = torch.isnan(a) != torch.isnan(e)
    inf_mismatch = torch.isinf(a) != torch.isinf(e)
    if nan_mismatch.any() or inf_mismatch.any():
        bad = int((nan_mismatch | inf_mismatch).flatten().nonzero()[0])
        raise AssertionError(
            f"{msg} NaN/inf mismatch at {int(nan_mismatch.sum())}+{int(inf_mismatch.sum())} "
            f"elements, first {_where(a, bad)}: {a.flatten()[bad]} vs {e.flatten()[bad]}"
        )
    finite = torch.isfinite(e)
    err = torch.where(finite, (a - e).abs() - (atol + rtol * e.abs()), torch.zeros_like(a))
    if err.numel() and err.max() > 0:
        worst = int(err.flatten().argmax())
        n_bad = int((err > 0).sum())
        raise AssertionError(
            f"{msg} {n_bad}/{a.numel()} elements out of tolerance (rtol={rtol}, atol={atol}); worst at "
            f"{_where(a, worst)}: actual {a.flatten()[worst]:.9g} expected {e.flatten()[worst]:.9g}"
        )


def assert_equal_verbose(actual: Tensor, expected: Tensor, msg: str = "") -> None:
    """Bit-exact equality (NaN equal to NaN), reporting the count and the first mismatch."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
        f"{msg} {actual.dtype}{tuple(actual.shape)} vs {expected.dtype}{tuple(expected.shape)}"
    )
    if torch.equal(actual, expected):
        return
    a, e = actual.flatten(), expected.flatten()
    diff = (a != e) & ~(torch.isnan(a) & torch.isnan(e))
    if diff.any():
        first = int(diff.nonzero()[0])
        raise AssertionError(
            f"{msg} {int(diff.sum())}/{a.numel()} elements differ; first at "
            f"{_where(actual, first)}: {a[first].item()!r} vs {e[first].item()!r}"
        )


def assert_readout_close(
    actual: Tensor, expected: Tensor, step: float, *, rtol: float = 1e-5, max_flip_frac: float = 0.01, msg: str = ""
) -> None:
    """Read-outs of two fp32 accumulators that differ only by summation order.

    A last-bit difference in the accumulator moves t by ~1e-7 levels, which flips the rounded level
    only when t + u − ½ sits that close to a rounding boundary: such elements must differ by exactly
    one level `step` (and be rare), every other element agrees to rtol of the output's scale.
    """
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(a).all() and torch.isfinite(e).all(), f"{msg} non-finite read-out"
    tol = rtol * max(float(e.abs().max()), step) if e.numel() else 0.0
    d = (a - e).abs()
    same = d <= tol
    flip = (d - step).abs() <= tol + 1e-6 * step
    bad = ~(same | flip)
    if bad.any():
        worst = int((d * bad).flatten().argmax())
        raise AssertionError(
            f"{msg} {int(bad.sum())} elements differ by neither ~0 nor one level ({step:.6g}); worst at "
            f"{_where(a, worst)}: {a.flatten()[worst]:.9g} vs {e.flatten()[worst]:.9g}"
        )
    n_flip = int((flip & ~same).sum())
    assert n_flip <= max_flip_frac * a.numel(), f"{msg} {n_flip}/{a.numel()} one-level flips (> {max_flip_frac:.1%})"
