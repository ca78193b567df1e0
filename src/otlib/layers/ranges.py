"""Range statistics of the optical products: [lo, hi] per operand, in fp32 device buffers.

Each optical product quantizes three tensors (two operands and the accumulator read-out) into
[lo, hi]. The ranges follow the spec (`otlib-numerics.md`): the first training batch sets them,
later training batches move them by an exponential moving average

    lo ← β·lo + (1 − β)·batch_lo,    hi ← β·hi + (1 − β)·batch_hi,

where batch_lo/hi are the batch min/max (`torch.aminmax`) or, with `q_quantiles = (a, b)`, its
exact a- and b-quantiles (torch.quantile's linear interpolation, any size; see `exact_quantiles`).

Three properties the peer lacked, on purpose:
- fp32 buffers whatever the model dtype (a bf16 EMA with β = 0.9 cannot move 1.0 → 1.05);
  `_apply` keeps them fp32 through `model.to(torch.bfloat16)`.
- No host–device synchronisation: statistics stay on the device and the EMA is in-place
  arithmetic. Whether a row has been set is mirrored in a Python list (`_initialised_host`),
  so no branch reads a device value; the mirror is rebuilt from the `initialised` buffer when a
  state dict is loaded.
- Multi-GPU: when torch.distributed is initialised, the batch statistics are all-reduced
  before the EMA (min → MIN, max → MAX, quantiles → mean), so every rank keeps identical ranges.

On CUDA (min/max statistics, one process) each observed tensor is reduced and folded into its row by one
Triton launch (otlib.ops.ranges: same values; `scratch` and `tickets` hold the reduction's state) instead of
aminmax, a stack and the EMA's in-place ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from otlib.ops._dispatch import use_kernels
from otlib.ops.ranges import RangeFold, minmax_folds, pair_fold


def exact_quantiles(t: Tensor, quantiles: tuple[float, float]) -> Tensor:
    """fp32 [2] tensor of the `quantiles` of all elements of `t`, like `torch.quantile`, any size.

    torch.quantile refuses inputs above 2**24 elements (MLP activations of one 1024-token batch
    pass that). For q, position p = q·(n − 1) in the sorted values v; the result is
    v[⌊p⌋] + (p − ⌊p⌋)·(v[⌊p⌋ + 1] − v[⌊p⌋]), with the order statistics from `kthvalue`
    (a selection, no full sort). Positions are computed on the host from the shape only.
    """
    flat = t.detach().reshape(-1)
    n = flat.numel()
    out = []
    for q in quantiles:
        pos = q * (n - 1)
        k = math.floor(pos)
        below = flat.kthvalue(k + 1).values.float()  # kthvalue is 1-based
        frac = pos - k
        if frac > 0.0:
            above = flat.kthvalue(k + 2).values.float()
            below = torch.lerp(below, above, frac)
        out.append(below)
    return torch.stack(out)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(stats: Tensor, use_mean: bool) -> Tensor:
    """Combine per-rank batch statistics [..., 2] of (lo, hi): MIN/MAX for extrema, the mean for quantiles."""
    if not _distributed():
        return stats
    if use_mean:
        stats = stats.clone()
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        return stats / dist.get_world_size()
    # one collective: max of (−lo, hi) gives (−min lo, max hi)
    signed = torch.stack([-stats[..., 0], stats[..., 1]], dim=-1)
    dist.all_reduce(signed, op=dist.ReduceOp.MAX)
    return torch.stack([-signed[..., 0], signed[..., 1]], dim=-1)


class RangeTracker(nn.Module):
    """[lo, hi] of each named operand of one optical product.

    Buffers: `bounds` fp32 [n, 2] (rows in `names` order, columns lo, hi) — for the ops' `ranges`
    argument — and `initialised` bool [n]. `preset` rows start set (attention's P starts at [0, 1]).
    """

    def __init__(
        self,
        names: tuple[str, ...],
        smooth_factor: float,
        quantiles: tuple[float, float] | None = None,
        preset: Mapping[str, tuple[float, float]] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.names = tuple(names)
        self.smooth_factor = float(smooth_factor)
        self.quantiles = quantiles
        self.preset = dict(preset or {})
        unknown = set(self.preset) - set(self.names)
        if unknown:
            raise ValueError(f"RangeTracker: preset names {sorted(unknown)} are not among {self.names}")
        self.register_buffer("bounds", torch.zeros(len(self.names), 2, dtype=torch.float32, device=device))
        self.register_buffer("initialised", torch.zeros(len(self.names), dtype=torch.bool, device=device))
        # the device fold's reduction state, back to (+inf, −inf) and (0, 0) after every fold
        self.register_buffer("scratch", torch.zeros(len(self.names), 2, device=device), persistent=False)
        self.register_buffer(
            "tickets", torch.zeros(len(self.names), 2, dtype=torch.int32, device=device), persistent=False
        )
        self._initialised_host = [False] * len(self.names)
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Forget all statistics (preset rows go back to their preset)."""
        self.bounds.zero_()
        self.initialised.zero_()
        self.scratch[:, 0].fill_(math.inf)
        self.scratch[:, 1].fill_(-math.inf)
        self.tickets.zero_()
        for name, (lo, hi) in self.preset.items():
            row = self.names.index(name)
            self.bounds[row, 0].fill_(lo)
            self.bounds[row, 1].fill_(hi)
            self.initialised[row].fill_(True)
        self._initialised_host = [name in self.preset for name in self.names]

    def is_set(self, row: int) -> bool:
        """Whether row `row` holds statistics (host mirror: no device read)."""
        return self._initialised_host[row]

    def folds_on_device(self, like: Tensor) -> bool:
        """Whether training updates from tensors like `like` take the device fold (CUDA, min/max statistics, one
        process); else `update`."""
        return self.quantiles is None and use_kernels(like) and not _distributed()

    def fold_target(self, row: int, like: Tensor) -> RangeFold | None:
        """The row as a device-fold target for a training update from tensors like `like`, or None where the
        fold does not apply (see folds_on_device)."""
        if not self.folds_on_device(like):
            return None
        return RangeFold(
            self.bounds, self.scratch, self.tickets, row, self.smooth_factor, not self._initialised_host[row]
        )

    @torch.no_grad()
    def mark_set(self, row: int) -> None:
        """Record that a fold has set row `row` (the host mirror and the `initialised` buffer)."""
        if not self._initialised_host[row]:
            self.initialised[row].fill_(True)  # fill_, not `= True`: that copies host → device (a sync)
            self._initialised_host[row] = True

    @torch.no_grad()
    def update_pair(self, row: int, lo: Tensor, hi: Tensor) -> None:
        """`update` from the batch (min, max) as two fp32 scalars (a product's accumulator range)."""
        fold = self.fold_target(row, lo)
        if fold is None:
            self.update(row, torch.stack([lo, hi]))
            return
        pair_fold(lo, hi, fold)
        self.mark_set(row)

    def batch_stats(self, t: Tensor) -> Tensor:
        """fp32 [2]: this batch's (lo, hi) of `t` — min/max, or the configured quantiles."""
        if self.quantiles is not None:
            return exact_quantiles(t, self.quantiles)
        lo, hi = torch.aminmax(t.detach())
        return torch.stack([lo, hi]).float()

    @torch.no_grad()
    def update(self, row: int, stats: Tensor, *, quantiles: bool = False) -> None:
        """Fold batch statistics fp32 [2] into row `row`: set on first use, EMA afterwards.

        `stats` are the batch (min, max) — ranks combine them by MIN/MAX — or, with `quantiles=True`,
        the batch quantiles — ranks average them.
        """
        self.update_rows([row], stats.reshape(1, 2), quantiles=quantiles)

    @torch.no_grad()
    def update_rows(self, rows: list[int], stats: Tensor, *, quantiles: bool = False) -> None:
        """`update` for several rows at once, stats fp32 [len(rows), 2]: consecutive rows in the same state
        (all set, or all unset) take one collective and one in-place EMA (fewer small launches per call)."""
        stats = _all_reduce(stats.detach().float(), use_mean=quantiles)
        first, last = rows[0], rows[-1] + 1
        states = {self._initialised_host[r] for r in rows}
        if rows != list(range(first, last)) or len(states) > 1:
            for i, row in enumerate(rows):  # mixed rows (a preset row beside an unset one): one at a time
                self.update_rows([row], stats[i : i + 1], quantiles=quantiles)
            return
        if states == {True}:
            beta = self.smooth_factor
            self.bounds[first:last].mul_(beta).add_(stats, alpha=1.0 - beta)
        else:
            self.bounds[first:last].copy_(stats)
            for row in rows:
                self.mark_set(row)

    def observe(
        self,
        operands: Mapping[int, Tensor],
        training: bool,
        counter: Tensor | None = None,
        copy_from: tuple[int, Tensor] | None = None,
    ) -> Tensor:
        """Ranges for one call, fp32 [n, 2], given the call's operand tensors by row.

        Training: fold the operands' statistics into the buffers, then return the buffers.
        Eval: rows never trained are calibrated from the batch itself (used, not stored), so an
        untrained optical model evaluates instead of producing NaN; trained rows are used as is.
        counter: the call's Philox counter (int64, its first element), advanced by one here — in the fold's launch
        where the device fold runs (one launch fewer per call).
        copy_from = (row, bounds): training only, the row set to the same row of another tracker's bounds, which
        has observed the same tensor (OpticalLinear's shared input) — in the fold's launch where it runs.
        """
        with torch.no_grad():
            if training:
                self._observe_training(operands, counter, copy_from)
                return self.bounds
            if counter is not None:
                counter.add_(1)
        missing = [row for row in operands if not self._initialised_host[row]]
        if not missing:
            return self.bounds
        bounds = self.bounds.clone()
        for row in missing:
            bounds[row] = self.batch_stats(operands[row])
        return bounds

    def _observe_training(
        self, operands: Mapping[int, Tensor], counter: Tensor | None, copy_from: tuple[int, Tensor] | None
    ) -> None:
        rows = list(operands)
        folds = [self.fold_target(row, operands[row]) for row in rows]
        copy = None if copy_from is None else (copy_from[1][copy_from[0]], self.bounds[copy_from[0]])
        if copy_from is not None:
            self.mark_set(copy_from[0])
        if not rows and use_kernels(self.bounds):  # nothing to fold: the counter and the copy in one launch
            minmax_folds([], counter, copy)
            return
        if rows and all(fold is not None and operands[row].numel() > 0 for row, fold in zip(rows, folds, strict=True)):
            targets = [(operands[row], fold) for row, fold in zip(rows, folds, strict=True)]
            for i in range(0, len(targets), 2):  # two per launch (a product's operands); counter and copy in the first
                minmax_folds(targets[i : i + 2], counter if i == 0 else None, copy if i == 0 else None)
            for row in rows:
                self.mark_set(row)
            return
        if copy is not None:
            copy[1].copy_(copy[0])
        if counter is not None:
            counter.add_(1)
        if not rows:
            return
        if self.quantiles is not None:
            stats = torch.stack([self.batch_stats(operands[row]) for row in rows])
        else:  # one stack of every operand's (min, max): a single small launch after the reductions
            stats = torch.stack([v for row in rows for v in torch.aminmax(operands[row].detach())]).view(-1, 2)
        self.update_rows(rows, stats, quantiles=self.quantiles is not None)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        # Loading is allowed to read the device once: rebuild the host mirror of `initialised`.
        self._initialised_host = [bool(v) for v in self.initialised.tolist()]

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> RangeTracker:
        # Keep the statistics fp32 through model.to(bf16)/half(): only device moves apply.
        bounds, scratch = self.bounds, self.scratch
        super()._apply(fn, recurse)
        if self.bounds.dtype != torch.float32:
            self.bounds = bounds.to(device=self.bounds.device, dtype=torch.float32)
        if self.scratch.dtype != torch.float32:
            self.scratch = scratch.to(device=self.scratch.device, dtype=torch.float32)
        return self

    def extra_repr(self) -> str:
        stats = f"quantiles={self.quantiles}" if self.quantiles is not None else "min/max"
        return f"names={self.names}, smooth_factor={self.smooth_factor}, {stats}"
