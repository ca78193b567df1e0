"""Run every otlib benchmark on a GPU machine in one command and write one markdown report.

Run from the repository root:
    PYTHONPATH=src python3 benchmarks/run_all.py --out benchmarks/report-h200.md
Runs bench_optical_linear.py (fused linear and layer vs cuBLAS / nn.Linear / the peer), bench_gemm_configs.py
(the level-code GEMM at every tile config vs cuBLAS), bench_statistics.py (the range fold and softmax kernels vs
the torch ops), bench_attention.py (vs SDPA), bench_attention_grads.py (the attention backward's GEMMs vs torch's
bmm path) and bench_training_step.py
(vs the digital step), each in its own process so that one's CUDA
state and compile caches do not colour another's timings, then writes the report: the hardware and
software, and per benchmark the exact command, its wall time and its table (or its exit status and the
end of its output when it failed). docs/performance.md quotes such reports.
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import require_cuda, write_atomic  # benchmarks/report.py (scripts run from this folder)

HERE = Path(__file__).resolve().parent


def benchmark_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """name → argv (without --out) of each benchmark script."""
    return {
        "Fused optical linear and layer": ["bench_optical_linear.py", "--tokens", str(args.tokens)],
        "Level-code GEMM per tile config": ["bench_gemm_configs.py"],
        "Range statistics and softmax kernels": ["bench_statistics.py"],
        "Optical attention": ["bench_attention.py", "--block", str(args.block)],
        "Attention backward GEMMs": ["bench_attention_grads.py", "--block", str(args.block)],
        "Training step": [
            "bench_training_step.py",
            "--models",
            args.models,
            "--variants",
            args.step_variants,
            "--block",
            str(args.block),
        ],
    }


def hardware_line() -> str:
    import torch

    versions = [f"torch {torch.__version__}"]
    for module in ("triton", "transformers"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            versions.append(f"{module} not installed")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU"
    return f"{gpu}; {', '.join(versions)}; Python {platform.python_version()}"


def run_one(argv: list[str], workdir: str) -> tuple[str, float]:
    """Run one benchmark script; its markdown table, or a failure note with the end of its output."""
    out = os.path.join(workdir, argv[0] + ".md")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HERE / argv[0]), *argv[1:], "--out", out], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode == 0 and os.path.exists(out):
        return Path(out).read_text(), seconds
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    return f"FAILED (exit status {proc.returncode}); end of its output:\n\n```\n{tail}\n```\n", seconds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the markdown report (written atomically)")
    ap.add_argument("--tokens", type=int, default=16384, help="M of the linear benchmark")
    ap.add_argument("--block", type=int, default=1024, help="sequence length of attention and training")
    ap.add_argument("--models", default="60m,200m", help="training-step models (comma list)")
    ap.add_argument(
        "--step-variants",
        default="eager,graphed",
        help="training-step variants (comma list; compiled,cudagraphs add torch.compile runs of minutes each)",
    )
    args = ap.parse_args(argv)

    require_cuda(__file__)
    sections = [f"# otlib benchmarks, {time.strftime('%Y-%m-%d')}", "", f"**Hardware / software:** {hardware_line()}"]
    with tempfile.TemporaryDirectory() as workdir:
        for title, bench_argv in benchmark_commands(args).items():
            text, seconds = run_one(bench_argv, workdir)
            command = " ".join(["PYTHONPATH=src python3", f"benchmarks/{bench_argv[0]}", *bench_argv[1:]])
            sections += ["", f"## {title}", "", f"Command: `{command}` ({seconds:.0f} s)", "", text.strip()]
            print(f"{title}: {seconds:.0f} s", flush=True)
    write_atomic(args.out, "\n".join(sections) + "\n")
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()
