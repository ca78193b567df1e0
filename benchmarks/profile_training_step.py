"""GPU kernel time per kernel name in eager training steps of a random Llama, optical and digital.

Run on a GPU machine from the repository root:
    PYTHONPATH=src python3 benchmarks/profile_training_step.py --model 60m --modes optical,digital
Builds the model and step as bench_training_step.py does (eager), runs --warmup steps, then profiles --steps
steps with torch.profiler and prints, per mode, the total kernel time per step and the top kernels by their
self device time per step (with calls per step).
"""

import argparse

import torch
from bench_training_step import MODES, PRESETS, build_model, csv_choice, make_step
from report import require_cuda  # benchmarks/report.py (scripts run from this folder)


def kernel_times(step, steps: int) -> list[tuple[float, int, str]]:
    """(ms per step, calls per step, kernel name) of every kernel in `steps` profiled steps, longest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", 0)  # torch ≥ 2.4
        if us > 0:
            rows.append((us / steps / 1000, event.count // steps, event.key))
    return sorted(rows, reverse=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=list(PRESETS), default="60m")
    ap.add_argument("--modes", type=csv_choice(MODES), default=list(MODES), help="comma list")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--top", type=int, default=28)
    args = ap.parse_args(argv)
    require_cuda(__file__)
    for mode in args.modes:
        model = build_model(args.model, mode, torch.device("cuda"))
        step = make_step(model, args.batch, args.block, "eager", args.warmup)
        for _ in range(args.warmup):
            step()
        rows = kernel_times(step, args.steps)
        print(f"== {args.model} {mode}: kernel time per step {sum(r[0] for r in rows):.1f} ms")
        for ms, calls, name in rows[: args.top]:
            print(f"{ms:8.2f} ms {calls:6d}x  {name[:110]}")
        del step, model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
