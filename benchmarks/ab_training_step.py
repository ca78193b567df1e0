"""Benchmark: a same-process A/B of the graphed training step, one model per variant, replays alternated.

Run on a GPU machine from the repository root:
    PYTHONPATH=src python3 benchmarks/ab_training_step.py --model 60m --variants default,full-pv
Between processes the graphed step moves by ~0.5 ms (benchmarks/NOTES.md 49), as much as one change gains; within
one process two identical models time within ~0.05 ms (NOTES.md 51). Each variant's model is built under its
setting, warmed up and captured into one CUDA graph as bench_training_step.py's graphed variant does (the setting
holds while its kernels are chosen and captured); then --rounds rounds time --steps replays of every variant in
turn. Table: per variant, the median of its round medians, the range of the round medians, and the difference to
the first variant. Variants (each turns one optimisation off; "default" is the code as it is):
  default          the model as built
  unlinked-inputs  q/k/v and gate/up observe and encode their common input each (no SharedInput; NOTES.md 48)
  per-layer-weights each linear folds and encodes its weight in its own call (no WeightBank; NOTES.md 70)
  own-input-casts  k/v and up cast their fp32 input to bf16 each, not sharing q's and gate's cast (NOTES.md 75)
  unfused-input-cast q and gate cast their input in a launch before its encode, not in it (NOTES.md 75)
  own-weight-casts each linear's backward casts its fp32 weight to bf16; the bank writes no copies (NOTES.md 75)
  full-pv          P·V's K loop runs over the whole of a causal P (no skip past the diagonal; NOTES.md 53)
  masked-tiles     the level-code GEMM masks rows and columns of full output tiles too (no EVEN_MN; NOTES.md 56)
  masked-softmax   the softmax kernels mask the columns of rows that fill their block too (no FULL_ROW; NOTES.md 57)
  masked-codes     the operand encoder masks whole blocks of rows and columns too (no EVEN; NOTES.md 58)
  heads-first      P·V writes attention's output [B, H, T, D] and the attention copies it to [B, T, H, D] (NOTES.md 61)
  stored-zeros     Q·Kᵀ stores the zero tiles above the diagonal that the softmax does not read (NOTES.md 63)
  stored-dp        P·V's backward forms and stores dP where the softmax backward does not read it (NOTES.md 64)
  stored-ds        the softmax backward stores dS as zeros where Q·Kᵀ's backward does not read it (NOTES.md 65)
  plain-order-pv   the causal P·V GEMM launches its row blocks in grid order, not the longest first (NOTES.md 66)
  plain-order-dq   dQ = dS·K launches its row blocks in grid order, not the longest first (NOTES.md 66)
  reduced-norms    the softmax backward reduces each row for its max and sum again, unsaved (NOTES.md 67)
  digital          the digital model (SDPA): a reference point; compare modes in separate processes (NOTES.md 51)
"""

import argparse
import statistics
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from bench_training_step import PRESETS, build_model, csv_choice, make_step, time_steps
from report import emit, require_cuda  # benchmarks/report.py (scripts run from this folder)

VARIANTS = (
    "default",
    "unlinked-inputs",
    "per-layer-weights",
    "own-input-casts",
    "unfused-input-cast",
    "own-weight-casts",
    "full-pv",
    "masked-tiles",
    "masked-softmax",
    "masked-codes",
    "heads-first",
    "stored-zeros",
    "stored-dp",
    "stored-ds",
    "plain-order-pv",
    "plain-order-dq",
    "reduced-norms",
    "digital",
)


@contextmanager
def variant_setting(name: str, model: torch.nn.Module) -> Iterator[None]:
    """`name`'s setting applied to `model` (and, where it is a kernel switch, held while the model is captured)."""
    import otlib
    from otlib import ops
    from otlib.kernels import grad_matmul, optical_matmul, quantize, softmax
    from otlib.layers import SharedInput, attention
    from otlib.ops import WeightCodes
    from otlib.ops import softmax as softmax_op

    lookup, encode_input, refresh = SharedInput.lookup, ops.encode_input, WeightCodes.refresh

    def lookup_without_cast(share, layer, x):
        shared = lookup(share, layer, x)
        return shared if shared is None else (*shared[:2], None)

    def encode_after_cast(x, ranges, levels):
        return encode_input(ops.autocast_input(x), ranges, levels)

    link = {"unlinked-inputs": "shared_input", "per-layer-weights": "weight_bank"}.get(name)
    if link is not None:  # a link between the model's linears, undone
        for layer in model.modules():
            if isinstance(layer, otlib.OpticalLinear):
                setattr(layer, link, None)
    # kernel switches: a module function replaced while the model is built and captured
    switch = {
        "own-input-casts": (SharedInput, "lookup", lookup_without_cast),
        "unfused-input-cast": (ops, "encode_input", encode_after_cast),
        "own-weight-casts": (WeightCodes, "refresh", lambda codes, cast_dtype=None: refresh(codes)),
        "full-pv": (optical_matmul, "_rows_for_raw_a", lambda *args: None),  # the GEMM then runs its whole K loop
        "masked-tiles": (optical_matmul, "_even_mn", lambda *args: False),
        "masked-softmax": (softmax, "_full_row", lambda *args: False),
        "masked-codes": (quantize, "_even_blocks", lambda *args: False),
        "heads-first": (attention, "_heads_last", lambda: False),
        "stored-zeros": (attention, "_skip_unread_scores", lambda: False),
        "stored-dp": (attention, "_skip_unread_grads", lambda: False),
        "stored-ds": (attention, "_skip_unread_ds", lambda: False),
        "plain-order-pv": (optical_matmul, "_longest_first", lambda: False),
        "plain-order-dq": (grad_matmul, "_longest_first", lambda: False),
        "reduced-norms": (softmax_op, "_saved_norms", lambda: False),
    }.get(name)
    if switch is None:
        yield
        return
    module, attr, replacement = switch
    original = getattr(module, attr)
    setattr(module, attr, replacement)
    try:
        yield
    finally:
        setattr(module, attr, original)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=list(PRESETS), default="60m")
    ap.add_argument("--variants", type=csv_choice(VARIANTS), default=["default", "default"], help="comma list")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step")
    ap.add_argument("--block", type=int, default=1024, help="tokens per sequence")
    ap.add_argument("--warmup", type=int, default=3, help="eager steps before the capture (>= 2)")
    ap.add_argument("--rounds", type=int, default=6, help="rounds of timed replays, variants in turn")
    ap.add_argument("--steps", type=int, default=10, help="timed replays per variant and round")
    ap.add_argument("--out", default=None, help="write the markdown table here too (atomically)")
    args = ap.parse_args(argv)
    if args.warmup < 2 or args.rounds < 1 or args.steps < 1:
        ap.error("--warmup must be >= 2, --rounds and --steps >= 1")
    require_cuda(__file__)

    steps = []
    for name in args.variants:
        model = build_model(args.model, "digital" if name == "digital" else "optical", torch.device("cuda"))
        with variant_setting(name, model):
            steps.append(make_step(model, args.batch, args.block, "graphed", args.warmup))
        del model  # the step holds it
    rounds: list[list[float]] = [[] for _ in steps]
    for _ in range(args.rounds):
        for times, step in zip(rounds, steps, strict=True):
            times.append(statistics.median(time_steps(step, 2, args.steps)))
    lines = [
        f"GPU: {torch.cuda.get_device_name()}, {args.model}, graphed step, {args.batch} × {args.block} tokens, "
        f"{args.rounds} rounds × {args.steps} replays per variant",
        "",
        "| variant | ms/step (median of rounds) | rounds min–max | Δ to the first ms |",
        "|---|---|---|---|",
    ]
    first = statistics.median(rounds[0])
    for name, times in zip(args.variants, rounds, strict=True):
        ms = statistics.median(times)
        lines.append(f"| {name} | {ms:.2f} | {min(times):.2f}–{max(times):.2f} | {ms - first:+.2f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
