"""Benchmark: the range-statistics fold and attention's softmax kernels against the torch ops they replace.

Run on a GPU machine from the repository root:
    PYTHONPATH=src python3 benchmarks/bench_statistics.py --out bench_statistics.md
CUDA-graph replays (host time excluded), do_bench medians in µs per call, two markdown tables to stdout and --out:
- the fold of one tensor's min/max into a range row (`otlib.kernels.ranges.minmax_fold_`, an EMA step) against
  the torch path it replaced (aminmax, stack, mul_, add_), at the tensors a 60M step observes, with the time
  of one read of the tensor at 4 TB/s; and a linear's two operands folded (and its call counter advanced) in
  one launch against two folds and the counter's add_;
- the softmax forward (with and without P's row statistics) and backward at 8 × H × 1024², bf16 scores, the
  causal fp32 mask, per warps per row (`--warps`; `*` marks the kernels' own choice), also given the mask's
  fully masked rows (`causal_rows`: the rows read only up to the diagonal), and the torch ops
  (`scaled_masked_softmax_reference` and its autograd backward).
"""

import argparse
import math
from collections.abc import Callable

import torch
from report import emit, graphed_ms, require_cuda  # benchmarks/report.py (scripts run from this folder)

# (what, shape, dtype): a weight, the activations of the 60M attention and MLP inputs, P, and V
FOLD_SHAPES = [
    ("weight 384 × 384", (384, 384), torch.float32),
    ("weight 1408 × 384", (1408, 384), torch.float32),
    ("activation 8192 × 384", (8192, 384), torch.float32),
    ("activation 8192 × 1408", (8192, 1408), torch.float32),
    ("P 48 × 1024 × 1024", (48, 1024, 1024), torch.bfloat16),
    ("V 8 × 2 × 1024 × 64", (8, 2, 1024, 64), torch.bfloat16),
]
BETA = 0.9


def graphed_us(fn: Callable[[], object], reps: int = 20) -> float:
    """Median µs of one call of `fn`, replayed `reps` times from one CUDA graph."""
    return graphed_ms(fn, reps) * 1e3


def fold_table() -> list[str]:
    from otlib.kernels.ranges import minmax_fold_

    device = torch.device("cuda")
    bounds = torch.zeros(1, 2, device=device)
    row = torch.zeros(2, device=device)
    scratch = torch.tensor([math.inf, -math.inf], device=device)
    ticket = torch.zeros(2, dtype=torch.int32, device=device)

    def torch_path(x: torch.Tensor) -> None:
        stats = torch.stack(list(torch.aminmax(x))).float().view(1, 2)
        bounds.mul_(BETA).add_(stats, alpha=1.0 - BETA)

    lines = [
        "| tensor | torch path µs (aminmax, stack, mul_, add_) | fold µs | torch ÷ fold | one read at 4 TB/s µs |",
        "|---|---|---|---|---|",
    ]
    for what, shape, dtype in FOLD_SHAPES:
        x = torch.randn(shape, device=device).to(dtype)
        t_torch = graphed_us(lambda x=x: torch_path(x))
        t_fold = graphed_us(lambda x=x: minmax_fold_(x, row, scratch, ticket, BETA, first=False))
        floor = x.numel() * x.element_size() / 4.0e12 * 1e6
        lines.append(f"| {what} {str(dtype).removeprefix('torch.')} | {t_torch:.1f} | {t_fold:.1f} | "
                     f"{t_torch / t_fold:.2f} | {floor:.1f} |")  # fmt: skip
    lines += ["", "| a linear's operands (x bf16, W fp32) | two folds + counter add_ µs | one launch µs | saved µs |"]
    lines.append("|---|---|---|---|")
    rows = torch.zeros(2, 2, device=device)
    scratch2 = torch.tensor([[math.inf, -math.inf]] * 2, device=device)
    tickets = torch.zeros(2, 2, dtype=torch.int32, device=device)
    counter = torch.zeros(1, dtype=torch.int64, device=device)
    for m, k, n in ((8192, 384, 384), (8192, 384, 1408), (8192, 1408, 384), (8192, 768, 768)):
        x = torch.randn(m, k, device=device).bfloat16()
        w = torch.randn(n, k, device=device)

        def separate(x: torch.Tensor = x, w: torch.Tensor = w) -> None:
            counter.add_(1)
            minmax_fold_(x, rows[0], scratch2[0], tickets[0], BETA, first=False)
            minmax_fold_(w, rows[1], scratch2[1], tickets[1], BETA, first=False)

        def together(x: torch.Tensor = x, w: torch.Tensor = w) -> None:
            second = (w, rows[1], scratch2[1], tickets[1], False)
            minmax_fold_(x, rows[0], scratch2[0], tickets[0], BETA, first=False, second=second, counter=counter)

        t_sep, t_one = graphed_us(separate), graphed_us(together)
        lines.append(f"| {m} × {k} @ ({n} × {k})ᵀ | {t_sep:.1f} | {t_one:.1f} | {t_sep - t_one:.1f} |")
    return lines


def softmax_rows(heads: int, warps: list[int]) -> list[str]:
    """Table rows of the softmax kernels at 8 × heads × 1024², per warps per row, and of the torch ops."""
    import otlib.kernels.softmax as softmax_kernels
    from otlib.ops import scaled_masked_softmax_reference

    device = torch.device("cuda")
    scores = torch.randn(8, heads, 1024, 1024, device=device).to(torch.bfloat16)
    grad = torch.randn_like(scores)
    allowed = torch.ones(1024, 1024, device=device, dtype=torch.bool).tril()
    mask = torch.zeros(8, 1, 1024, 1024, device=device).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    no_full_rows = torch.zeros(8, 1024, device=device, dtype=torch.bool)  # the causal mask masks no row fully
    name = f"8 × {heads} × 1024²"
    own_choice = softmax_kernels.num_warps_for
    rows = []
    try:
        for w in warps:
            softmax_kernels.num_warps_for = lambda block, w=w: w
            fwd = graphed_us(lambda: softmax_kernels.softmax_fwd(scores, mask, 0.125, torch.bfloat16), 5)
            stats = graphed_us(
                lambda: softmax_kernels.softmax_fwd(scores, mask, 0.125, torch.bfloat16, row_stats=True), 5
            )
            bwd = graphed_us(lambda: softmax_kernels.softmax_bwd(grad, scores, mask, 0.125), 5)
            causal_stats = graphed_us(
                lambda: softmax_kernels.softmax_fwd(
                    scores, mask, 0.125, torch.bfloat16, row_stats=True, causal_rows=no_full_rows
                ),
                5,
            )
            causal_bwd = graphed_us(
                lambda: softmax_kernels.softmax_bwd(grad, scores, mask, 0.125, causal_rows=no_full_rows), 5
            )
            mark = "*" if w == own_choice(1024) else ""
            rows.append(
                f"| {name} | {w}{mark} | {fwd:.1f} | {stats:.1f} | {bwd:.1f} | {causal_stats:.1f} | {causal_bwd:.1f} |"
            )
    finally:
        softmax_kernels.num_warps_for = own_choice
    leaf = scores.detach().requires_grad_()

    def reference_fwd_bwd() -> object:
        return torch.autograd.grad(scaled_masked_softmax_reference(leaf, mask, 0.125, torch.bfloat16), leaf, grad)

    ref_fwd = graphed_us(lambda: scaled_masked_softmax_reference(scores, mask, 0.125, torch.bfloat16), 5)
    ref_fwd_bwd = graphed_us(reference_fwd_bwd, 5)
    rows.append(f"| {name} | torch ops | {ref_fwd:.1f} | — | {ref_fwd_bwd:.1f} (fwd + bwd) | — | — |")
    return rows


def softmax_table(heads: list[int], warps: list[int]) -> list[str]:
    lines = [
        "| scores | warps per row | forward µs | forward + row (min, max) µs | backward µs "
        "| forward + row (min, max), causal rows µs | backward, causal rows µs |",
        "|---|---|---|---|---|---|---|",
    ]
    for h in heads:
        lines += softmax_rows(h, warps)
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", default="6,16", help="softmax: query heads per batch of 8 (comma list)")
    ap.add_argument("--warps", default="1,2,4,8", help="softmax: warps per 1024-column row to time (comma list)")
    ap.add_argument("--out", default=None, help="write the markdown tables here too (atomically)")
    args = ap.parse_args(argv)
    require_cuda(__file__)
    import triton

    heads = [int(v) for v in args.heads.split(",")]
    warps = [int(v) for v in args.warps.split(",")]
    header = (
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
        "CUDA-graph replays, medians"
    )
    emit([header, "", *fold_table(), "", *softmax_table(heads, warps)], args.out)


if __name__ == "__main__":
    main()
