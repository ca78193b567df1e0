"""Benchmark: the level-code GEMM with its read-out epilogue at every tile config, against cuBLAS bf16.

Run on a GPU machine from the repository root:
    PYTHONPATH=src python3 benchmarks/bench_gemm_configs.py --out gemm_configs.md
Operands are encoded once (operand_codes), then `optical_gemm` runs with each config of the autotune list
(kernels/optical_matmul.py) fixed, read-out on, bf16 output: what the autotuner chooses between, and how far
the best config is from cuBLAS bf16 on the same (batched) product. Shapes: attention's Q·Kᵀ (full, and causal:
no read-out above the diagonal) and P·V (random A, and a causal P: the K loop stops at its diagonal) of the
60M model (batch 8, 6 heads, T = 1024, head_dim 64), the causal Q·Kᵀ of the 200M model (12 heads), and the 60M
and 600M up projections at M = 8192 / 16384 tokens.
`--configs 64x64x64:w8:s2,...` times candidate tile configs instead of the autotune list (":m128" appended: at
most 128 registers per thread; results never depend on the config: tested on the GPU). Medians of
triton.testing.do_bench in µs; one table, markdown, to stdout and --out.
"""

import argparse

import torch
from report import emit, require_cuda, short  # benchmarks/report.py (scripts run from this folder)

# name → (batch·heads G, M, N, K, causal: the read-out is 0 above the diagonal (Q·Kᵀ) / A is a causal P (P·V))
SHAPES = {
    "60M attention Q·Kᵀ": (48, 1024, 1024, 64, False),
    "60M attention Q·Kᵀ, causal": (48, 1024, 1024, 64, True),
    "200M attention Q·Kᵀ, causal": (96, 1024, 1024, 64, True),
    "60M attention P·V": (48, 1024, 64, 1024, False),
    "60M attention P·V, causal P": (48, 1024, 64, 1024, True),
    "60M up 384→1408": (1, 8192, 1408, 384, False),
    "600M up 1152→4096": (1, 16384, 4096, 1152, False),
}


def time_shape(g: int, m: int, n: int, k: int, causal: bool, configs: list) -> tuple[bool, float, list]:
    """(A encoded by the GEMM?, cuBLAS bf16 µs, per config µs or an error text) for random bf16 operands."""
    from triton.testing import do_bench

    from otlib.kernels.optical_matmul import new_minmax, optical_gemm, raw_a_pays
    from otlib.kernels.quantize import operand_codes
    from otlib.kernels.utils import launch_meta

    a = torch.randn(g, m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(g, n, k, device="cuda", dtype=torch.bfloat16)
    ranges = torch.tensor([[-3.0, 3.0], [-3.0, 3.0], [-20.0, 20.0]], device="cuda")
    rng = torch.tensor([1, 2, 3], dtype=torch.int64, device="cuda")
    minmax = new_minmax(a.device)
    raw_a = raw_a_pays(a, n)  # as optical_matmul_fwd decides (attention's P·V: the GEMM encodes P itself)
    p_causal = causal and raw_a  # P·V under a causal mask: P's rows sum to 1 up to the diagonal, 0 beyond it
    a_rows = None
    if p_causal:
        a = torch.softmax(a.float().masked_fill(torch.ones(m, k, dtype=torch.bool, device="cuda").triu(1), -1e4), -1)
        a = a.to(torch.bfloat16)
        ranges[0] = torch.tensor([0.0, 1.0])  # the attn range's preset
        a_rows = torch.zeros(1, m, dtype=torch.bool, device="cuda")  # no fully masked row
    b_enc = tuple(t.unsqueeze(0) for t in operand_codes(b, ranges, 1, 255, lut_min=0.02, minmax=minmax))
    a_enc = (a.unsqueeze(0), None) if raw_a else tuple(t.unsqueeze(0) for t in operand_codes(a, ranges, 0, 255))
    cublas = do_bench(lambda: torch.matmul(a, b.transpose(1, 2))) * 1e3
    cells = []
    for cfg in configs:
        meta = launch_meta(cfg)

        def run(meta=meta):
            optical_gemm(a_enc, b_enc, 1, None, ranges, rng, 255, minmax, readout=True,
                         out_dtype=torch.bfloat16, causal=causal and not raw_a, a_causal_rows=a_rows, config=meta)  # fmt: skip

        try:
            cells.append(do_bench(run) * 1e3)
        except Exception as exc:  # a config the GPU cannot run (shared memory): reported, not fatal
            cells.append(short(exc, 40))
    return raw_a, cublas, cells


def parse_configs(text: str) -> list:
    """ "BMxBNxBK:wW:sS" items, comma separated, ":mR" appended for a register cap of R per thread (maxnreg: more
    programs resident per SM) → triton.Config objects (GROUP_M 8, as the autotune list)."""
    import triton

    configs = []
    for item in text.split(","):
        try:
            tiles, warps, stages, *cap = item.strip().split(":")
            bm, bn, bk = (int(v) for v in tiles.split("x"))
            if (
                not (warps.startswith("w") and stages.startswith("s"))
                or len(cap) > 1
                or not all(c.startswith("m") for c in cap)
            ):
                raise ValueError
            num_warps, num_stages = int(warps[1:]), int(stages[1:])
            maxnreg = int(cap[0][1:]) if cap else None
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad tile config {item!r}: expected BMxBNxBK:wW:sS[:mR]") from None
        meta = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}
        configs.append(triton.Config(meta, num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg))
    return configs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the markdown table here too (atomically)")
    ap.add_argument("--configs", type=parse_configs, default=None, help="BMxBNxBK:wW:sS,... (default: autotune list)")
    args = ap.parse_args(argv)
    require_cuda(__file__)
    import triton

    from otlib.kernels.optical_matmul import autotune_configs

    torch.manual_seed(0)
    configs = args.configs or autotune_configs()
    names = [
        f"{c.kwargs['BLOCK_M']}×{c.kwargs['BLOCK_N']}×{c.kwargs['BLOCK_K']} w{c.num_warps} s{c.num_stages}"
        + (f" m{c.maxnreg}" if c.maxnreg else "")
        for c in configs
    ]
    lines = [
        f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}; "
        "level-code GEMM + read-out (bf16 out), µs (median of do_bench)",
        "",
        "| shape (G × M × N × K) | A encoded by | cuBLAS bf16 | " + " | ".join(names) + " | best time ÷ cuBLAS |",
        "|---|---|---|" + "---|" * len(names) + "---|",
    ]
    for name, (g, m, n, k, causal) in SHAPES.items():
        raw_a, cublas, cells = time_shape(g, m, n, k, causal, configs)
        times = [c for c in cells if isinstance(c, float)]
        best = f"{min(times) / cublas:.2f}" if times else "—"
        shown = [f"{c:.1f}" if isinstance(c, float) else c for c in cells]
        where = "the GEMM (raw_a)" if raw_a else "operand_codes"
        lines.append(
            f"| {name} ({g} × {m} × {n} × {k}) | {where} | {cublas:.1f} | " + " | ".join(shown) + f" | {best} |"
        )
        print(lines[-1], flush=True)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
