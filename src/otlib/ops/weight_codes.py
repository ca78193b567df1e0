"""Every weight of a model's optical linears folded into its range and encoded in two launches (CUDA only).

A linear's call folds its weight's min/max into the weight's range row (EMA) and encodes the weight with that
range into fp16 level codes: two of the call's launches, each ~3–5 µs on an H200 however small the weight
(latency, not bandwidth: benchmarks/NOTES.md 68). The weights do not change during a forward, so
`WeightCodes.refresh` does both for all of them at once at the forward's start: one launch folds every weight
into its own row, one encodes every weight with its updated row into one flat buffer. The same values: each
weight's fold is the same order-free min/max and the same EMA, its codes the same `operand_codes` arithmetic.

Device addresses of the weights and rows are read once into int64 tables (made again when the weights or range
buffers are other tensors or move: otlib.layers.linear.WeightBank); whether a row is set is read from its
`initialised` flag on the device, so the tables do not change once the ranges are set.
"""

from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class WeightRange:
    """A weight [N, K] (contiguous) and the range row it folds into: `row` of `bounds` fp32 [n, 2], with its
    reduction state `scratch` fp32 [n, 2] and `tickets` int32 [n, 2] and its flag `initialised` bool [n]."""

    weight: Tensor
    bounds: Tensor
    scratch: Tensor
    tickets: Tensor
    initialised: Tensor
    row: int


def _device_table(rows: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small host table on the device without a host sync (pinned memory, asynchronous copy)."""
    table = torch.tensor(rows, dtype=dtype)
    if device.type != "cuda":
        return table.to(device)
    return table.pin_memory().to(device, non_blocking=True)


class WeightCodes:
    """Fold-and-encode of a fixed set of weights of one dtype and one quantizer setting (levels, LUT floor,
    smoothing factor). `refresh()` folds every weight's min/max into its row and encodes it; `codes(i)` is
    weight i's (fp16 codes [N, K], fp32 row sums [N]) from the last refresh, as `operand_codes` gives them.
    `refresh(cast_dtype)` also writes every weight in `cast_dtype` in the same pass (`cast(i)`: weight i's
    `.to(cast_dtype)` values), for the products of an autocast backward (benchmarks/NOTES.md 75)."""

    def __init__(self, ranges: list[WeightRange], *, levels: int, lut_min: float | None, beta: float) -> None:
        from ..kernels.quantize import element_offset, weight_codes_even, weight_codes_rows
        from ..kernels.ranges import fold_plan

        weights = [r.weight for r in ranges]
        if not weights or len({(w.dtype, w.device) for w in weights}) != 1 or any(w.dim() != 2 for w in weights):
            raise ValueError("WeightCodes: 2-D weights of one dtype on one device")
        if not all(w.is_contiguous() for w in weights):
            raise ValueError("WeightCodes: weights must be contiguous")
        device = weights[0].device
        self.ranges = list(ranges)
        self.levels, self.lut_min, self.beta = levels, lut_min, beta
        shapes = [tuple(w.shape) for w in weights]
        sizes = [rows * cols for rows, cols in shapes]
        code_offsets = [0, *accumulate(sizes)]  # where each weight's codes and sums start in the flat buffers
        sum_offsets = [0, *accumulate(rows for rows, _ in shapes)]
        self._codes = torch.empty(code_offsets.pop(), dtype=torch.float16, device=device)
        self._sums = torch.empty(sum_offsets.pop(), dtype=torch.float32, device=device)
        self._views = [
            (self._codes[o : o + size].view(shape), self._sums[so : so + shape[0]])
            for o, so, size, shape in zip(code_offsets, sum_offsets, sizes, shapes, strict=True)
        ]
        self._casts: dict[torch.dtype, Tensor] = {}  # flat buffers of the weights cast, by dtype
        self._cast: Tensor | None = None  # the last refresh's

        def address(t: Tensor, offset: int) -> int:
            return t.data_ptr() + offset * t.element_size()

        like = weights[0]
        offsets = [element_offset(w, like) for w in weights]
        fold_rows, encode_rows = [], []
        for r, offset, (rows, cols), o, so in zip(self.ranges, offsets, shapes, code_offsets, sum_offsets, strict=True):
            row = address(r.bounds, 2 * r.row)
            state = (address(r.scratch, 2 * r.row), address(r.tickets, 2 * r.row), address(r.initialised, r.row))
            fold_rows.append((offset, rows * cols, row, *state))
            encode_rows.append((offset, rows, cols, row, o, so))
        block = weight_codes_rows()
        encode_plan = [(i, b) for i, (rows, _) in enumerate(shapes) for b in range(-(-rows // block))]
        self._fold_table = _device_table(fold_rows, torch.int64, device)
        self._fold_plan = _device_table(fold_plan(sizes, device), torch.int32, device)
        self._encode_table = _device_table(encode_rows, torch.int64, device)
        self._encode_plan = _device_table(encode_plan, torch.int32, device)
        self._even = weight_codes_even(weights)
        self._aligned = all(offset % 16 == 0 and size % 16 == 0 for offset, size in zip(offsets, sizes, strict=True))

    def refresh(self, cast_dtype: torch.dtype | None = None) -> None:
        """Fold each weight's min/max into its row, then encode each weight with its updated row (and write it in
        `cast_dtype`, if given and not the weights' dtype)."""
        from ..kernels.quantize import weight_codes_
        from ..kernels.ranges import minmax_fold_many_

        like = self.ranges[0].weight.detach()
        self._cast = None
        if cast_dtype is not None and cast_dtype != like.dtype:
            self._cast = self._casts.get(cast_dtype)
            if self._cast is None:
                self._cast = self._casts[cast_dtype] = torch.empty_like(self._codes, dtype=cast_dtype)
        minmax_fold_many_(self._fold_plan, self._fold_table, like, self.beta, aligned=self._aligned)
        weight_codes_(
            self._encode_plan,
            self._encode_table,
            like,
            self._codes,
            self._sums,
            self.levels - 1,
            lut_min=self.lut_min,
            even=self._even,
            casts=self._cast,
        )

    def codes(self, index: int) -> tuple[Tensor, Tensor]:
        return self._views[index]

    def cast(self, index: int) -> Tensor | None:
        """Weight i in the last refresh's `cast_dtype` ([N, K]), or None if it wrote none."""
        if self._cast is None:
            return None
        codes = self._views[index][0]  # the cast buffer holds each weight where the codes buffer does
        return self._cast.as_strided(codes.shape, codes.stride(), codes.storage_offset())
