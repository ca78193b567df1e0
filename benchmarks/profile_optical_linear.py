"""Where the time of one OpticalLinear training step (forward + backward) goes: torch.profiler's table.

Run on a GPU machine from the repository root:
    PYTHONPATH=src python benchmarks/profile_optical_linear.py --tokens 16384 --k 384 --n 384
Prints the operators sorted by self CPU time (host overhead: launches, Python ops) and by CUDA time.
"""

import argparse

import torch
from report import require_cuda  # benchmarks/report.py (scripts run from this folder)
from torch import nn
from torch.profiler import ProfilerActivity, profile


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--k", type=int, default=384)
    ap.add_argument("--n", type=int, default=384)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    require_cuda(__file__)
    from otlib.layers import OpticalLinear

    layer = OpticalLinear.from_linear(nn.Linear(args.k, args.n, bias=False, device="cuda"))
    x = torch.randn(args.tokens, args.k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    gy = torch.randn(args.tokens, args.n, device="cuda", dtype=torch.bfloat16)

    def step() -> None:
        with torch.autocast("cuda", torch.bfloat16):
            layer(x).backward(gy)

    for _ in range(3):  # calibration, compilation, autotuning
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    print(table.table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
