"""Range statistics on the device: a tensor's min/max folded into a RangeTracker row in one launch — or a
product's two operands into their two rows, advancing its call counter in the same launch (benchmarks/NOTES.md 40).

The grid reduces its share of the tensor and folds it into the row's scratch pair by relaxed atomics; the
last program to arrive (an acq_rel ticket) applies the update to the bounds row — the batch (min, max) on
first use, the EMA afterwards — and resets the scratch and ticket for the next call. This replaces
`torch.aminmax` (a single-block reduction: ~8 µs even for a 384 × 384 weight on an H200, benchmarks/NOTES.md
change 24), the stack of its two scalars and the EMA's two in-place ops: four launches, one here.

Same values as the torch path (otlib.layers.ranges): min and max are order-free; NaN anywhere gives NaN
bounds, as aminmax does; the EMA rounds as `bounds.mul_(β).add_(stats, alpha=1 − β)` does on CPU and CUDA,
fl(β·b) then one rounding of fl(β·b) + α·stat (an FMA): the sum is formed in fp64, where α·stat is exact,
and rounded once more to fp32 (equal to the FMA unless the fp64 sum lands exactly on an fp32 tie).
"""

import struct

import torch
import triton
import triton.language as tl

from .utils import INTERPRET, LAUNCH_OPTS, sm_count

BLOCK = 2048  # elements per program per loop step
PROGRAMS_PER_SM = 4


@triton.jit
def _ema(old, stat, beta, alpha):
    """fl(fl(β·old) + α·stat): torch's mul_(β).add_(stat, alpha=α) (fp64 sum, one more rounding)."""
    kept = old * beta
    return (kept.to(tl.float64) + stat.to(tl.float64) * alpha).to(tl.float32)


@triton.jit
def _update_row(row_ptr, lo, hi, beta, alpha, first):
    """The row's update from the batch range (lo, hi): set it when first != 0, else the EMA."""
    if first == 0:
        lo = _ema(tl.load(row_ptr), lo, beta, alpha)
        hi = _ema(tl.load(row_ptr + 1), hi, beta, alpha)
    tl.store(row_ptr, lo)
    tl.store(row_ptr + 1, hi)


@triton.jit
def _fold_program_range(lo, hi, has_nan, row_ptr, scratch_ptr, ticket_ptr, beta, alpha, first, num_programs):
    """Fold one program's (lo, hi, has_nan) into the grid's; the last program updates the bounds row.

    row_ptr: fp32 (lo, hi) of the tracker row; scratch_ptr: fp32 (+inf, −inf) between calls; ticket_ptr:
    int32 (arrivals, NaN flag), (0, 0) between calls. first != 0: the row takes the batch range as is.
    """
    tl.atomic_min(scratch_ptr, lo, sem="relaxed")
    tl.atomic_max(scratch_ptr + 1, hi, sem="relaxed")
    tl.atomic_or(ticket_ptr + 1, has_nan, sem="relaxed")
    arrived = tl.atomic_add(ticket_ptr, 1, sem="acq_rel")  # release: this program's folds; acquire: all others'
    if arrived == num_programs - 1:
        # read by atomics (ordered after the acquire, past any stale cache line); reset by plain stores, which
        # the kernel's end publishes to the next call
        batch_lo = tl.atomic_add(scratch_ptr, 0.0, sem="relaxed")
        batch_hi = tl.atomic_add(scratch_ptr + 1, 0.0, sem="relaxed")
        nan = tl.atomic_or(ticket_ptr + 1, 0, sem="relaxed")
        tl.store(scratch_ptr, float("inf"))
        tl.store(scratch_ptr + 1, float("-inf"))
        tl.store(ticket_ptr, 0)
        tl.store(ticket_ptr + 1, 0)
        batch_lo = tl.where(nan != 0, float("nan"), batch_lo)
        batch_hi = tl.where(nan != 0, float("nan"), batch_hi)
        _update_row(row_ptr, batch_lo, batch_hi, beta, alpha, first)


@triton.jit
def _fold_share(x_ptr, numel, pid, programs, row_ptr, scratch_ptr, ticket_ptr, beta, alpha, first, BLOCK: tl.constexpr):
    """Program `pid` of `programs` reduces its share of x and folds it into the row (minmax_fold_)."""
    lo = tl.full([BLOCK], float("inf"), tl.float32)
    hi = tl.full([BLOCK], float("-inf"), tl.float32)
    nan = tl.zeros([BLOCK], tl.int32)
    for start in range(pid.to(tl.int64) * BLOCK, numel, programs * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < numel
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        lo = tl.minimum(lo, tl.where(ok, x, float("inf")))
        hi = tl.maximum(hi, tl.where(ok, x, float("-inf")))
        nan = nan | (x != x).to(tl.int32)
    _fold_program_range(
        tl.min(lo, axis=0), tl.max(hi, axis=0), tl.max(nan, axis=0), row_ptr, scratch_ptr, ticket_ptr,
        beta, alpha, first, programs,
    )  # fmt: skip


@triton.jit
def _count_and_copy(pid, counter_ptr, copy_from, copy_to, COUNT: tl.constexpr, COPY: tl.constexpr):
    """In program 0: with COUNT, the int64 call counter advanced by one; with COPY, the fp32 pair at copy_from
    (written by an earlier launch) copied to copy_to."""
    if COUNT:
        tl.store(counter_ptr, tl.load(counter_ptr, mask=pid == 0, other=0) + 1, mask=pid == 0)
    if COPY:
        pair = tl.arange(0, 2)
        first_program = (pair < 2) & (pid == 0)
        tl.store(copy_to + pair, tl.load(copy_from + pair, mask=first_program), mask=first_program)


@triton.jit
def _count_and_copy_kernel(counter_ptr, copy_from, copy_to, COUNT: tl.constexpr, COPY: tl.constexpr):
    _count_and_copy(tl.program_id(0), counter_ptr, copy_from, copy_to, COUNT, COPY)


@triton.jit
def _minmax_fold_kernel(
    x_ptr,
    numel_x,
    row_x,
    scratch_x,
    ticket_x,
    first_x,
    programs_x,
    y_ptr,
    numel_y,
    row_y,
    scratch_y,
    ticket_y,
    first_y,
    counter_ptr,
    copy_from,
    copy_to,
    beta,
    alpha,
    TWO: tl.constexpr,
    COUNT: tl.constexpr,
    COPY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Programs [0, programs_x) fold x into its row; with TWO, the others fold y into its own. With COUNT, program
    0 also advances the int64 call counter by one (the op's Philox counter, read only by later launches); with
    COPY, it copies the fp32 pair at copy_from (written by an earlier launch) to copy_to."""
    pid = tl.program_id(0)
    _count_and_copy(pid, counter_ptr, copy_from, copy_to, COUNT, COPY)
    if TWO:
        if pid >= programs_x:
            _fold_share(
                y_ptr, numel_y, pid - programs_x, tl.num_programs(0) - programs_x, row_y, scratch_y, ticket_y,
                beta, alpha, first_y, BLOCK,
            )  # fmt: skip
        else:
            _fold_share(x_ptr, numel_x, pid, programs_x, row_x, scratch_x, ticket_x, beta, alpha, first_x, BLOCK)
    else:
        _fold_share(x_ptr, numel_x, pid, programs_x, row_x, scratch_x, ticket_x, beta, alpha, first_x, BLOCK)


@triton.jit
def _minmax_fold_many_kernel(plan_ptr, table_ptr, like_ptr, beta, alpha, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """Many tensors of like_ptr's dtype, each folded into its own row, one launch (minmax_fold_many_). Program p
    takes (tensor i, share j of its n shares) from plan_ptr[3p : 3p + 3]; tensor i's int64 entry in table_ptr is
    (offset from like_ptr in elements, numel, row, scratch, ticket, initialised flag): the row's device flag (bool)
    says whether it is set. ALIGNED: every offset and numel a multiple of 16 (16-byte loads)."""
    pid = tl.program_id(0)
    tensor = tl.load(plan_ptr + 3 * pid).to(tl.int64)
    share = tl.load(plan_ptr + 3 * pid + 1)
    shares = tl.load(plan_ptr + 3 * pid + 2)
    entry = table_ptr + 6 * tensor
    offset, numel = tl.load(entry), tl.load(entry + 1)
    if ALIGNED:
        offset, numel = tl.multiple_of(offset, 16), tl.multiple_of(numel, 16)
    row_ptr = tl.load(entry + 2).to(tl.pointer_type(tl.float32))
    scratch_ptr = tl.load(entry + 3).to(tl.pointer_type(tl.float32))
    ticket_ptr = tl.load(entry + 4).to(tl.pointer_type(tl.int32))
    first = (tl.load(tl.load(entry + 5).to(tl.pointer_type(tl.int8))) == 0).to(tl.int32)
    _fold_share(like_ptr + offset, numel, share, shares, row_ptr, scratch_ptr, ticket_ptr, beta, alpha, first, BLOCK)


@triton.jit
def _fold_pair_kernel(lo_ptr, hi_ptr, row_ptr, beta, alpha, first):
    """The update of one row from two fp32 scalars already reduced (a product's accumulator range)."""
    _update_row(row_ptr, tl.load(lo_ptr), tl.load(hi_ptr), beta, alpha, first)


def _fp32(v: float) -> float:
    """v rounded to fp32 (as torch rounds a Python scalar for an fp32 tensor), still a Python float: the kernel
    then sees the same value compiled (fp32 argument) and interpreted (Python float)."""
    return struct.unpack("f", struct.pack("f", v))[0]


def _max_programs(device: torch.device) -> int:
    return 4 if INTERPRET else PROGRAMS_PER_SM * sm_count(device)  # the interpreter runs programs one by one


def dense_flat(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when its elements fill one dense block of memory in some dimension order (a transposed or
    permuted contiguous tensor: min/max do not care about the order), else a contiguous copy."""
    if t.is_contiguous():
        return t
    order = sorted(range(t.dim()), key=lambda d: t.stride(d), reverse=True)
    permuted = t.permute(order)
    return permuted if permuted.is_contiguous() else t.contiguous()


def minmax_fold_(
    x: torch.Tensor,
    row: torch.Tensor,
    scratch: torch.Tensor,
    ticket: torch.Tensor,
    beta: float,
    first: bool,
    *,
    second: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool] | None = None,
    counter: torch.Tensor | None = None,
    copy: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Fold min/max of `x` (any float dtype, numel > 0) into `row` (fp32 [2], contiguous): set it when `first`,
    else the EMA with smoothing factor `beta`. `scratch` fp32 [2] = (+inf, −inf) and `ticket` int32 [2] = 0 are
    the row's reduction state; they are back to those values when the kernel ends.

    second = (y, row, scratch, ticket, first): fold y into another row in the same launch (a product's two
    operands). counter: an int64 tensor whose first element the launch advances by one (the call counter).
    copy = (source, target): fp32 [2] rows; the launch also sets target to source (a shared input's x range)."""
    targets = [(x, row, scratch, ticket, first)] + ([second] if second is not None else [])
    flats, programs = [], []
    for t, *_ in targets:
        flat = dense_flat(t)
        if flat.numel() == 0:  # an empty batch has no range (torch.aminmax raises too): it would poison the row
            raise ValueError(f"minmax_fold_: cannot take the range of an empty tensor of shape {tuple(t.shape)}")
        flats.append(flat)
        programs.append(max(1, min(triton.cdiv(flat.numel(), BLOCK), _max_programs(t.device))))
    (_, row_x, scratch_x, ticket_x, first_x), (_, row_y, scratch_y, ticket_y, first_y) = targets[0], targets[-1]
    _minmax_fold_kernel[(sum(programs),)](
        flats[0],
        flats[0].numel(),
        row_x,
        scratch_x,
        ticket_x,
        int(first_x),
        programs[0],
        flats[-1],
        flats[-1].numel(),
        row_y,
        scratch_y,
        ticket_y,
        int(first_y),
        counter if counter is not None else ticket_x,
        *(copy if copy is not None else (row_x, row_x)),
        _fp32(beta),
        _fp32(1.0 - beta),
        TWO=second is not None,
        COUNT=counter is not None,
        COPY=copy is not None,
        BLOCK=BLOCK,
        num_warps=8,
        **LAUNCH_OPTS,
    )


def minmax_fold_many_(
    plan: torch.Tensor, table: torch.Tensor, like: torch.Tensor, beta: float, *, aligned: bool
) -> None:
    """minmax_fold_ of many tensors of `like`'s dtype, each into its own row, in one launch: `table` int64 [T, 6]
    (offset from `like` in elements, numel, row, scratch, ticket, initialised flag) per tensor — contiguous
    tensors, fp32 [2] row and scratch, int32 [2] ticket, the row's bool `initialised` element (set: the EMA;
    unset: the batch range) — and `plan` int32 [P, 3] (tensor, share, shares) per program (`fold_plan`).
    aligned: every offset and numel a multiple of 16."""
    _minmax_fold_many_kernel[(plan.shape[0],)](
        plan, table, like, _fp32(beta), _fp32(1.0 - beta), BLOCK=BLOCK, ALIGNED=aligned, num_warps=8, **LAUNCH_OPTS
    )


def fold_plan(numels: list[int], device: torch.device) -> list[tuple[int, int, int]]:
    """minmax_fold_many_'s programs for tensors of these sizes: (tensor, share, shares), shares in proportion to
    the sizes, about `_max_programs` in all, at least one a tensor."""
    target, total = _max_programs(device), sum(numels)
    plan = []
    for i, numel in enumerate(numels):
        shares = max(1, min(triton.cdiv(numel, BLOCK), round(target * numel / total)))
        plan += [(i, j, shares) for j in range(shares)]
    return plan


def count_and_copy_(counter: torch.Tensor | None, copy: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """minmax_fold_'s `counter` and `copy` without a tensor to fold: one launch of one program."""
    counter_or_any = counter if counter is not None else copy[0]
    _count_and_copy_kernel[(1,)](
        counter_or_any,
        *(copy if copy is not None else (counter_or_any, counter_or_any)),
        COUNT=counter is not None,
        COPY=copy is not None,
        num_warps=1,
        **LAUNCH_OPTS,
    )


def pair_fold_(lo: torch.Tensor, hi: torch.Tensor, row: torch.Tensor, beta: float, first: bool) -> None:
    """Fold the fp32 scalars (lo, hi) into `row` (fp32 [2]) as minmax_fold_ does."""
    _fold_pair_kernel[(1,)](lo, hi, row, _fp32(beta), _fp32(1.0 - beta), int(first), num_warps=1, **LAUNCH_OPTS)
