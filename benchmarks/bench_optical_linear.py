"""Benchmark: fused optical linear forward against cuBLAS (bf16 and fp32) on the study's shapes.

Run on a GPU machine from the repository root:
    PYTHONPATH=src python benchmarks/bench_optical_linear.py --tokens 16384 --out bench_linear.md
Reports do_bench medians (ms), TFLOP/s (2·M·K·N / time) and the ratio to cuBLAS bf16, plus a
breakdown of the optical call (operand quantization alone, GEMM with fused read-out alone) and the
tl.dot precision variant, so NOTES.md predictions can be checked. One table, markdown, to stdout and --out.
"""

import argparse
import os
import tempfile

import torch
import torch.nn.functional as F

# (name, K, N) of the 60M / 200M / 600M Llamas' q, up and down projections (docs/performance.md)
SHAPES = [
    ("60M q", 384, 384),
    ("60M up", 384, 1408),
    ("60M down", 1408, 384),
    ("200M q", 768, 768),
    ("200M up", 768, 2048),
    ("200M down", 2048, 768),
    ("600M q", 1152, 1152),
    ("600M up", 1152, 4096),
    ("600M down", 4096, 1152),
]


def setup_optical_linear(m: int, k: int, n: int, dtype: torch.dtype, bias: bool) -> dict:
    """Inputs for one shape: activations, weight, optional bias, layer state (ranges, rng)."""
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = (torch.randn(n, k, device="cuda") / k**0.5).to(dtype)
    b = torch.randn(n, device="cuda", dtype=dtype) if bias else None
    ranges = torch.tensor([[-4.0, 4.0], [-0.2, 0.2], [-4.0, 4.0]], device="cuda")
    rng = torch.tensor([1, 0, 0], device="cuda")
    return {"x": x, "w": w, "b": b, "ranges": ranges, "rng": rng}


def bench_shape(m: int, k: int, n: int, bias: bool) -> dict[str, float]:
    from triton.testing import do_bench

    from otlib.kernels.optical_linear import optical_linear_fwd
    from otlib.kernels.optical_matmul import optical_gemm
    from otlib.kernels.quantize import quantize_fwd
    from otlib.ops import optical_linear, quant_params

    s = setup_optical_linear(m, k, n, torch.bfloat16, bias)
    x, w, b, ranges, rng = s["x"], s["w"], s["b"], s["ranges"], s["rng"]
    px, pw, po = (quant_params(ranges[i, 0], ranges[i, 1], 0.02 if i == 1 else None, x.device) for i in range(3))
    qx = quantize_fwd(x, px, rng, 255, out_dtype=torch.float32)
    qw = quantize_fwd(w, pw, rng, 255, lut=True, out_dtype=torch.float32)
    x32, w32 = x.float(), w.float()
    fns = {
        "cublas_bf16": lambda: F.linear(x, w, b),
        "cublas_fp32": lambda: F.linear(x32, w32, None if b is None else b.float()),
        "optical": lambda: optical_linear(x, w, b, ranges, rng, levels=256, lut_min=0.02),
        "quantize_x": lambda: quantize_fwd(x, px, rng, 255, out_dtype=torch.float32),
        "gemm_readout": lambda: optical_gemm(qx.view(1, 1, m, k), qw.t().view(1, 1, k, n), 1, b, po, rng, 255, x.dtype),
        "optical_tf32": lambda: optical_linear_fwd(
            x, w, b, px, pw, po, rng, 255, lut=True, out_dtype=x.dtype, precision="tf32"
        ),
    }
    torch.backends.cuda.matmul.allow_tf32 = False  # cublas_fp32 is true fp32
    out = {}
    for name, fn in fns.items():
        fn()  # compile / autotune outside the timing
        out[name] = do_bench(fn, warmup=25, rep=100, return_mode="median")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384, help="M, the number of token rows")
    ap.add_argument("--bias", action="store_true", help="linears with bias (the study's Llamas have none)")
    ap.add_argument("--out", default=None, help="write the markdown table here too (atomically)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_optical_linear.py needs a CUDA GPU")
    m = args.tokens
    cols = ["cublas_bf16", "cublas_fp32", "optical", "quantize_x", "gemm_readout", "optical_tf32"]
    lines = [
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, M = {m}, bias = {args.bias}",
        "",
        "| shape (K→N) | "
        + " | ".join(f"{c} ms" for c in cols)
        + " | cuBLAS bf16 TFLOP/s | optical TFLOP/s | optical × cuBLAS bf16 |",
        "|---" * (len(cols) + 4) + "|",
    ]
    for name, k, n in SHAPES:
        t = bench_shape(m, k, n, args.bias)
        flop = 2 * m * k * n
        lines.append(
            f"| {name} {k}→{n} | "
            + " | ".join(f"{t[c]:.4f}" for c in cols)
            + f" | {flop / t['cublas_bf16'] / 1e9:.0f} | {flop / t['optical'] / 1e9:.0f}"
            + f" | {t['optical'] / t['cublas_bf16']:.2f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        d = os.path.dirname(os.path.abspath(args.out))
        with tempfile.NamedTemporaryFile("w", dir=d, delete=False, suffix=".tmp") as f:
            f.write(text)
        os.replace(f.name, args.out)


if __name__ == "__main__":
    main()
