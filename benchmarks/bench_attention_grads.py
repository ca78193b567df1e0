"""Benchmark: the attention products' straight-through gradients, torch's bmm path against the strided GEMMs.

Run on a GPU machine from the repository root:
    PYTHONPATH=src python3 benchmarks/bench_attention_grads.py --out attention_grads.md
Per head shape (the 60M, 200M and 600M Llamas, head_dim 64, T = --block) and product (Q·Kᵀ: a = query,
b = keyᵀ, grad_c = dS; P·V: a = P, b = value, grad_c = dO), `do_bench_cudagraph` medians in µs of
- torch: what `optical_matmul`'s backward ran before the strided GEMMs (benchmarks/NOTES.md 35): the GQA
  reshapes of the head-transposed operands (copies), two bmm, and the copy the projections' backward then makes
  of the [B, H, T, D] gradients;
- strided: `grouped_matmul_grads` (otlib/kernels/grad_matmul.py), no copies;
- causal: the same with `causal_rows` (no fully masked row: every tile above the diagonal skipped).
All bf16, operands in the layout Llama's projections hand to attention ([B, T, H, D] transposed), plus the largest
difference of the strided gradients from torch's, relative to torch's largest magnitude. One table, markdown, to
stdout and --out.
"""

import argparse
from collections.abc import Callable

import torch
from report import emit, require_cuda  # benchmarks/report.py (scripts run from this folder)

# name → (batch, query heads, KV heads, head_dim)
SHAPES = {"60M": (8, 6, 2, 64), "200M": (8, 12, 4, 64), "600M": (4, 18, 6, 64)}


def torch_grads(a: torch.Tensor, b: torch.Tensor, grad_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The former GQA backward: stack each K/V head's query heads along the rows (copies of strided views)."""
    hkv = b.shape[1]
    grad_g = grad_c.reshape(grad_c.shape[0], hkv, -1, grad_c.shape[-1])
    a_g = a.reshape(a.shape[0], hkv, -1, a.shape[-1])
    return (grad_g @ b.transpose(-1, -2)).view(a.shape), a_g.transpose(-1, -2) @ grad_g


def to_projection(g: torch.Tensor) -> torch.Tensor:
    """The layout the projections' backward reads, [B, T, H·D] of a [B, H, T, D] gradient (copies unless the
    gradient is already a transposed [B, T, H, D])."""
    return g.transpose(1, 2).reshape(g.shape[0], g.shape[2], -1)


def products(batch: int, heads: int, kv_heads: int, dim: int, t: int) -> dict[str, tuple]:
    """name → (a, b, grad_c, causal_c, [(gradient index, as [B, H, T, D] for the projections)])."""

    def heads_last(h: int, rows: int = t) -> torch.Tensor:  # [B, H, T, D] view of [B, T, H, D]
        return torch.randn(batch, rows, h, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)

    scores = torch.randn(batch, heads, t, t, device="cuda", dtype=torch.bfloat16)
    probs = torch.rand(batch, heads, t, t, device="cuda", dtype=torch.bfloat16)
    return {
        # grad_a = dQ and grad_b = dKᵀ reach q_proj and k_proj
        "Q·Kᵀ": (heads_last(heads), heads_last(kv_heads).transpose(-1, -2), scores, True, [(0, False), (1, True)]),
        # grad_b = dV reaches v_proj
        "P·V": (probs, heads_last(kv_heads), heads_last(heads), False, [(1, False)]),
    }


def time_product(a, b, grad_c, causal_c: bool, to_proj: list) -> list[float]:
    """µs of the torch path, strided, strided + causal skip, and the strided gradients' largest difference."""
    from triton.testing import do_bench_cudagraph

    from otlib.kernels.grad_matmul import grouped_matmul_grads

    rows = torch.zeros(a.shape[0], a.shape[2], dtype=torch.bool, device="cuda")

    def torch_path() -> None:
        grads = torch_grads(a, b, grad_c)
        for i, transposed in to_proj:
            to_projection(grads[i].transpose(-1, -2) if transposed else grads[i])

    runs: list[Callable[[], object]] = [
        torch_path,
        lambda: grouped_matmul_grads(a, b, grad_c, True, True),
        lambda: grouped_matmul_grads(a, b, grad_c, True, True, causal_rows=rows, causal_c=causal_c),
    ]
    for run in runs:
        run()  # autotune outside the timing and the graph capture
    times = [do_bench_cudagraph(run) * 1e3 for run in runs]
    ref, got = torch_grads(a, b, grad_c), grouped_matmul_grads(a, b, grad_c, True, True)
    diff = max(
        ((g.float() - r.float()).abs().max() / r.float().abs().max()).item() for g, r in zip(got, ref, strict=True)
    )
    return [*times, diff]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", type=int, default=1024, help="T, the sequence length")
    ap.add_argument("--out", default=None, help="write the markdown table here too (atomically)")
    args = ap.parse_args(argv)
    require_cuda(__file__)
    import triton

    torch.manual_seed(0)
    lines = [
        f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}; attention "
        f"backward GEMMs, bf16, T = {args.block}, µs per call (median of do_bench_cudagraph)",
        "",
        "| shape (B × H/Hkv × D) | product | torch (copies + bmm) | strided | strided + causal skip | "
        "causal ÷ torch | max rel diff (strided vs torch) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (batch, heads, kv_heads, dim) in SHAPES.items():
        for product, (a, b, grad_c, causal_c, to_proj) in products(batch, heads, kv_heads, dim, args.block).items():
            t_torch, t_strided, t_causal, diff = time_product(a, b, grad_c, causal_c, to_proj)
            lines.append(
                f"| {name} {batch}×{heads}/{kv_heads}×{dim} | {product} | {t_torch:.1f} | {t_strided:.1f} | "
                f"{t_causal:.1f} | {t_causal / t_torch:.2f} | {diff:.1e} |"
            )
            print(lines[-1], flush=True)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
