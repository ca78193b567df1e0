"""Benchmark: fused optical linear forward, and the optical layer's training forward + backward, against
cuBLAS bf16 (F.linear / nn.Linear) and the peer (mase-triton, when installed) on the study's shapes.

Run on a GPU machine from the repository root:
    PYTHONPATH=src python benchmarks/bench_optical_linear.py --tokens 16384 --out bench_linear.md
Reports `triton.testing.do_bench` medians (ms; first call, which compiles and autotunes, untimed),
TFLOP/s (2·M·K·N / time) and ratios. Forward: the whole `otlib.ops.optical_linear` call (encode both
operands + level-code GEMM with fused read-out), eager and replayed from a CUDA graph, plus its two parts.
Layer: `OpticalLinear` in training mode (range
EMA, read-out, straight-through backward) against `nn.Linear`, bf16 autocast as in training, eager and
graphed: the whole fwd+bwd captured into one CUDA graph and replayed (GPU time alone).
"""

import argparse

import torch
import torch.nn.functional as F
from report import emit, graphed_ms, require_cuda  # benchmarks/report.py (scripts run from this folder)
from torch import nn

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
LUT = 0.020040


def _bench(fn, grad_to_none=None) -> float:
    from triton.testing import do_bench

    fn()  # compile / autotune outside the timing
    return do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def _bench_graph(fn) -> float:
    """GPU time alone: the call replayed from a CUDA graph (no Python or launch overhead), median ms."""
    from triton.testing import do_bench_cudagraph

    fn()
    try:
        return do_bench_cudagraph(fn, rep=100, return_mode="median")
    except Exception as exc:  # a capture failure is a result to report, not a crash
        print(f"CUDA graph capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", flush=True)
        return float("nan")


def _bench_graphed_step(layer: nn.Module, x_in: torch.Tensor, gy: torch.Tensor) -> float:
    """A layer's training fwd+bwd captured whole into one CUDA graph (`report.graphed_ms`: five steps, the forward
    under bf16 autocast with its cache off), median ms a step: the step's GPU time alone. (`make_graphed_callables`,
    used until the nineteenth session, replays the forward and the backward as two graphs with autograd's host work
    between them; at these layers' sizes that host time dominated, and the `nn.Linear` baseline moved by up to 1.8×
    between machines, benchmarks/NOTES.md 84.) A fresh copy of the layer and input: parameters whose AccumulateGrad
    nodes the eager runs created on the default stream invalidate the capture."""
    import copy

    layer, x_in = copy.deepcopy(layer), x_in.detach().clone().requires_grad_()

    def step() -> None:
        with torch.autocast("cuda", torch.bfloat16, cache_enabled=False):
            y = layer(x_in)
        y.backward(gy)

    def grads_to_none() -> None:  # the first captured backward then allocates them in the graph's pool
        x_in.grad = None
        layer.zero_grad(set_to_none=True)

    try:
        return graphed_ms(step, reps=5, before_capture=grads_to_none)
    except Exception as exc:  # a capture failure is a result to report, not a crash
        print(f"layer graph capture failed: {type(exc).__name__}: {exc}", flush=True)
        return float("nan")


def _jit_function(kernel):
    """The JITFunction under autotune / heuristics wrappers."""
    while not hasattr(kernel, "device_caches"):
        kernel = kernel.fn
    return kernel


def mma_instructions() -> str:
    """Which tensor-core instruction the compiled level-code GEMMs use (wgmma on Hopper, else mma.sync)."""
    from otlib.kernels.optical_matmul import _optical_gemm_kernel

    kinds = set()
    try:
        for cache in _jit_function(_optical_gemm_kernel).device_caches.values():
            for compiled in cache[0].values():
                ptx = compiled.asm.get("ptx", "")
                kinds.add("wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "no MMA")
    except (AttributeError, IndexError, TypeError) as exc:
        return f"unknown ({type(exc).__name__})"
    return ", ".join(sorted(kinds))


def _peer_fns(x, w, b, layer_in):
    """The peer's fused forward and its layer's training fwd+bwd, or {} when mase-triton is not installed."""
    try:
        from mase_triton.optical_compute.functional import ot_qlinear_fn
        from mase_triton.optical_compute.layers import OpticalTransformerLinear
    except ImportError:
        return {}
    k, n = w.shape[1], w.shape[0]
    peer = OpticalTransformerLinear(k, n, bias=b is not None, device="cuda", q_quantiles=None)
    x_in, gy = layer_in

    def peer_layer():
        with torch.autocast("cuda", torch.bfloat16):
            peer(x_in).backward(gy)

    def peer_fwd():
        return ot_qlinear_fn(x, w, b, -4.0, 4.0, -0.2, 0.2, LUT, -4.0, 4.0, 256, 0)

    return {"peer_fwd": (peer_fwd, None), "peer_layer": (peer_layer, [x_in])}


def bench_shape(m: int, k: int, n: int, bias: bool) -> dict[str, float]:
    from otlib.kernels.optical_matmul import _tma_ok, chosen_config, new_minmax, optical_gemm
    from otlib.kernels.quantize import operand_codes
    from otlib.layers import OpticalLinear
    from otlib.ops import optical_linear

    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(n, k, device="cuda") / k**0.5).to(torch.bfloat16)
    b = torch.randn(n, device="cuda", dtype=torch.bfloat16) if bias else None
    ranges = torch.tensor([[-4.0, 4.0], [-0.2, 0.2], [-4.0, 4.0]], device="cuda")
    rng = torch.tensor([1, 0, 0], device="cuda")
    mm = new_minmax(x.device)
    xc, xs = operand_codes(x.unsqueeze(0), ranges, 0, 255, minmax=mm)
    wc, ws = operand_codes(w.unsqueeze(0), ranges, 1, 255, lut_min=LUT)
    x_enc = (xc.view(1, 1, m, k), xs.view(1, 1, m))
    w_enc = (wc.view(1, 1, n, k), ws.view(1, 1, n))
    # layers in training mode: fp32 master weights under bf16 autocast, as the trainer runs them
    digital = nn.Linear(k, n, bias=bias, device="cuda")
    optical = OpticalLinear.from_linear(nn.Linear(k, n, bias=bias, device="cuda"), q_lut_min=LUT)
    x_in = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    gy = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)

    def layer_step(layer):
        def step():
            with torch.autocast("cuda", torch.bfloat16):
                layer(x_in).backward(gy)

        return step

    layer_step(optical)()  # first training call calibrates the out range: time the steady state
    optical_linear(x, w, b, ranges, rng, levels=256, lut_min=LUT)  # autotunes the GEMM for this shape
    # the breakdown variants reuse its choice: one compile each, no autotuning
    tma_ok = _tma_ok(x_enc[0], w_enc[0])  # the launcher's own rule
    cfg = chosen_config(m, n, k, x.dtype, readout=True, has_bias=bias, tma_ok=tma_ok)
    print(f"{k}→{n}: GEMM config {cfg}", flush=True)
    fns = {
        "cublas_fwd": (lambda: F.linear(x, w, b), None),
        "otlib_fwd": (lambda: optical_linear(x, w, b, ranges, rng, levels=256, lut_min=LUT), None),
        "encode": (
            lambda: (
                operand_codes(x.unsqueeze(0), ranges, 0, 255, minmax=mm),
                operand_codes(w.unsqueeze(0), ranges, 1, 255, lut_min=LUT),
            ),
            None,
        ),
        "gemm": (
            lambda: optical_gemm(x_enc, w_enc, 1, b, ranges, rng, 255, mm, readout=True, out_dtype=x.dtype, config=cfg),
            None,
        ),
        "gemm_acc": (
            lambda: optical_gemm(
                x_enc, w_enc, 1, b, ranges, rng, 255, mm, readout=False, out_dtype=x.dtype, config=cfg
            ),
            None,
        ),
        "linear_layer": (layer_step(digital), [x_in, digital.weight]),
        "otlib_layer": (layer_step(optical), [x_in, optical.weight]),
        **_peer_fns(x, w, b, (x_in, gy)),
    }
    out = {name: _bench(fn, grad) for name, (fn, grad) in fns.items()}
    out["cublas_graph"] = _bench_graph(fns["cublas_fwd"][0])
    out["otlib_graph"] = _bench_graph(fns["otlib_fwd"][0])
    out["linear_layer_graph"] = _bench_graphed_step(digital, x_in, gy)
    out["otlib_layer_graph"] = _bench_graphed_step(optical, x_in, gy)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384, help="M, the number of token rows")
    ap.add_argument("--bias", action="store_true", help="linears with bias (the study's Llamas have none)")
    ap.add_argument("--shapes", default=None, help="comma-separated shape names to run (default: all)")
    ap.add_argument("--out", default=None, help="write the markdown table here too (atomically)")
    args = ap.parse_args(argv)
    require_cuda(__file__)
    import triton

    m = args.tokens
    lines = [
        f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}; "
        f"M = {m} tokens, bias = {args.bias}, bf16 activations",
        "",
        "| shape (K→N) | cuBLAS bf16 fwd ms (TFLOP/s) | otlib fwd ms (TFLOP/s) | otlib fwd throughput ÷ cuBLAS | "
        "graphed: cuBLAS / otlib fwd ms | graphed fwd throughput ÷ cuBLAS | encode ms | GEMM+read-out ms | "
        "GEMM acc only ms | peer fwd ms | nn.Linear fwd+bwd ms | OpticalLinear fwd+bwd ms | layer × nn.Linear | "
        "graphed: nn.Linear / OpticalLinear fwd+bwd ms (×) | peer layer fwd+bwd ms |",
        "|---" * 15 + "|",
    ]
    chosen = None if args.shapes is None else {s.strip() for s in args.shapes.split(",")}
    for name, k, n in SHAPES:
        if chosen is not None and name not in chosen:
            continue
        t = bench_shape(m, k, n, args.bias)
        flop = 2 * m * k * n

        def cell(key, tflops=False, t=t, flop=flop):
            if key not in t:
                return "–"
            return f"{t[key]:.4f}" + (f" ({flop / t[key] / 1e9:.0f})" if tflops else "")

        lines.append(
            f"| {name} {k}→{n} | {cell('cublas_fwd', True)} | {cell('otlib_fwd', True)} | "
            f"{t['cublas_fwd'] / t['otlib_fwd']:.2f} | {t['cublas_graph']:.4f} / {t['otlib_graph']:.4f} | "
            f"{t['cublas_graph'] / t['otlib_graph']:.2f} | {cell('encode')} | {cell('gemm')} | {cell('gemm_acc')} | "
            f"{cell('peer_fwd')} | {cell('linear_layer')} | {cell('otlib_layer')} | "
            f"{t['otlib_layer'] / t['linear_layer']:.2f} | {t['linear_layer_graph']:.4f} / "
            f"{t['otlib_layer_graph']:.4f} ({t['otlib_layer_graph'] / t['linear_layer_graph']:.2f}) | "
            f"{cell('peer_layer')} |"
        )
        print(lines[-1], flush=True)
    lines.append(f"\nLevel-code GEMM tensor-core instructions (PTX): {mma_instructions()}")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
