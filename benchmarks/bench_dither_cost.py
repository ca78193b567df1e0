"""Benchmark: what the read-out's dither costs. The fused optical linear forward, the optical layer's fwd+bwd and the
optical attention's fwd+bwd, graphed, against cuBLAS / nn.Linear / SDPA, with the library's dither and with cheaper
ones or none. It bounds what a numerics change could buy (benchmarks/NOTES.md 89); the library itself is unchanged.

Run on a GPU machine from the repository root:
    PYTHONPATH=src python3 benchmarks/bench_dither_cost.py --variants philox10,philox7,hash,none
Each variant runs in a process of its own: its dither replaces `optical_matmul._readout_uniforms` before any kernel
compiles (a process keeps its compiled kernels, so a patched and the library's read-out cannot share one). Variants:
  philox10  the library: Philox-4×32-10 per four outputs, as otlib.ops.reference draws them
  philox7   Philox-4×32 with 7 rounds (Salmon et al. 2011: the fewest that pass BigCrush; 10 is their margin)
  hash      one 32-bit integer hash an output (lowbias32 of its flat index xor a per-call key)
  none      no dither: round to nearest (no longer stochastic rounding; a lower bound on the read-out's cost)
Tables: per variant, the graphed forward's throughput ÷ cuBLAS and the graphed layer's time × nn.Linear at each
linear shape, and the graphed attention's time × SDPA (bench_optical_linear.py and bench_attention.py measure them).
"""

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import triton
import triton.language as tl
from report import emit, require_cuda  # benchmarks/report.py (scripts run from this folder)

from otlib.kernels import optical_matmul
from otlib.kernels.utils import word_to_uniform

VARIANTS = ("philox10", "philox7", "hash", "none")
RESULT_TAG = "bench_dither_cost result: "


LIBRARY_UNIFORMS = optical_matmul._readout_uniforms


@triton.jit
def _philox7_uniforms(
    rng_ptr, tile_start, tile_offs, rows, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PHILOX_TILE: tl.constexpr
):
    """The library's counters and words, 7 rounds instead of 10."""
    return LIBRARY_UNIFORMS(rng_ptr, tile_start, tile_offs, rows, N, BLOCK_M, BLOCK_N, PHILOX_TILE, 7)


@triton.jit
def _lowbias32(h):
    """A 32-bit integer hash (C. Wellons' lowbias32: two multiplies, three xor-shifts)."""
    h = h ^ (h >> 16)
    h = h * 0x7FEB352D
    h = h ^ (h >> 15)
    h = h * 0x846CA68B
    return h ^ (h >> 16)


@triton.jit
def _hash_uniforms(
    rng_ptr, tile_start, tile_offs, rows, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PHILOX_TILE: tl.constexpr
):
    """u from one hash of (the output's flat index, low 32 bits) xor a key hashed once from (seed, counter, stream)."""
    seed = tl.load(rng_ptr + 0)
    counter = tl.load(rng_ptr + 1)
    stream = tl.load(rng_ptr + 2)
    key = _lowbias32((seed ^ (counter * 0x9E3779B9) ^ (stream * 0x85EBCA6B)).to(tl.uint32))
    index = (tile_start & 0xFFFFFFFF).to(tl.uint32) + tile_offs.to(tl.uint32)
    return word_to_uniform(_lowbias32(index ^ key))


@triton.jit
def _no_uniforms(
    rng_ptr, tile_start, tile_offs, rows, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PHILOX_TILE: tl.constexpr
):
    """u = ½ everywhere: t + (u − ½) = t, the read-out rounds to nearest."""
    return tl.full((BLOCK_M, BLOCK_N), 0.5, tl.float32)


REPLACEMENTS = {"philox7": _philox7_uniforms, "hash": _hash_uniforms, "none": _no_uniforms}


@contextmanager
def dither(variant: str) -> Iterator[None]:
    """The read-out draws its dither from `variant` inside the block. Compiled kernels keep the dither they were
    compiled with, so on a GPU set it once per process, before the first launch (the interpreter looks it up at
    every call)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown dither variant {variant!r}; choose from {', '.join(VARIANTS)}")
    optical_matmul._readout_uniforms = REPLACEMENTS.get(variant, LIBRARY_UNIFORMS)
    try:
        yield
    finally:
        optical_matmul._readout_uniforms = LIBRARY_UNIFORMS


def measure(variant: str, tokens: int, shapes: list[str], block: int) -> dict[str, dict[str, float]]:
    """One variant's graphed ratios: linear shape → (fwd throughput ÷ cuBLAS, layer × nn.Linear), attention shape →
    × SDPA. Runs the two benchmarks' own measurements."""
    import bench_attention
    import bench_optical_linear

    out: dict[str, dict[str, float]] = {"fwd": {}, "layer": {}, "attention": {}}
    with dither(variant):
        for name, k, n in bench_optical_linear.SHAPES:
            if name in shapes:
                t = bench_optical_linear.bench_shape(tokens, k, n, bias=False)
                out["fwd"][name] = t["cublas_graph"] / t["otlib_graph"]
                out["layer"][name] = t["otlib_layer_graph"] / t["linear_layer_graph"]
        for name, batch, heads, kv_heads, dim in bench_attention.SHAPES:
            t = bench_attention.bench_shape(batch, heads, kv_heads, dim, block)
            out["attention"][name] = t["optical_graphed"] / t["sdpa_graphed"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--tokens", type=int, default=16384, help="M, the linears' token rows")
    ap.add_argument("--shapes", default="60M q,60M up,200M up,600M q,600M up", help="linear shapes (as named there)")
    ap.add_argument("--block", type=int, default=1024, help="T, the attention's sequence length")
    ap.add_argument("--out", default=None, help="write the markdown tables here too (atomically)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one variant, in this process
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    require_cuda(__file__)
    shapes = [s.strip() for s in args.shapes.split(",")]
    if args.child:
        print(RESULT_TAG + json.dumps(measure(args.child, args.tokens, shapes, args.block)), flush=True)
        return

    results = {}
    for variant in variants:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--tokens", str(args.tokens)]
        cmd += ["--shapes", args.shapes, "--block", str(args.block)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        found = [line for line in run.stdout.splitlines() if line.startswith(RESULT_TAG)]
        if run.returncode or not found:
            raise SystemExit(f"variant {variant} failed ({run.returncode}):\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
        results[variant] = json.loads(found[-1][len(RESULT_TAG) :])
        print(f"{variant}: done", flush=True)

    import torch

    lines = [f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
             f"M = {args.tokens}, T = {args.block}; graphed (CUDA-graph replays)", ""]  # fmt: skip
    titles = {
        "fwd": "fused forward throughput ÷ cuBLAS bf16 (target ≥ 0.9)",
        "layer": "layer fwd+bwd time × nn.Linear (target ≤ 1.15)",
        "attention": "attention fwd+bwd time × SDPA (target ≤ 1.5)",
    }
    for metric, title in titles.items():
        lines += [f"| {title} | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
        for shape in results[variants[0]][metric]:
            lines.append(f"| {shape} | " + " | ".join(f"{results[v][metric][shape]:.2f}" for v in variants) + " |")
        lines.append("")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
