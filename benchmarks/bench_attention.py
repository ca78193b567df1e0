"""Benchmark: optical attention forward + backward against PyTorch SDPA and eager attention, causal, bf16.

Run on a GPU machine from the repository root:
    PYTHONPATH=src python3 benchmarks/bench_attention.py --block 1024 --out bench_attention.md
Per head shape (the 60M and 600M Llamas' attention, head_dim 64): do_bench medians (ms) of
- SDPA flash fwd+bwd (`is_causal=True, enable_gqa=True`),
- eager fwd+bwd: transformers' `eager_attention_forward` (materialised scores: Q·Kᵀ, mask, fp32 softmax, P·V),
- optical fwd+bwd and optical fwd alone: `optical_attention_forward` in training mode (ranges updating),
plus the ratio optical / SDPA (fwd+bwd) and whether one optical fwd+bwd makes a host sync
(`torch.cuda.set_sync_debug_mode("error")`); then SDPA and optical fwd+bwd replayed from a CUDA graph (GPU time
without the host's launch overhead, which bounds the eager optical call) and their ratio. Q, K, V are [B, T, H, D] transposed to [B, H, T, D], the
layout Llama's projections hand to attention; the mask is eager attention's additive fp32 causal mask
[B, 1, T, T] (the trainer keeps fp32 master weights under bf16 autocast, so the mask is fp32).
One table, markdown, to stdout and --out.
"""

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from report import emit, graphed_ms, host_syncs, require_cuda  # benchmarks/report.py (scripts run from this folder)
from torch import Tensor, nn

# (name, batch, query heads, KV heads, head_dim)
SHAPES = [("60M", 8, 6, 2, 64), ("600M", 4, 18, 6, 64)]
OTLIB_CONFIG = Path(__file__).resolve().parents[1] / "configs/otlib/optical_transformer.toml"


def make_module(num_heads: int, num_kv_heads: int, device: torch.device) -> nn.Module:
    """Stand-in for a LlamaAttention: the optical state submodule, GQA group size, causal, training mode."""
    from otlib import load_config
    from otlib.layers import STATE_ATTR, OpticalAttentionState

    cfg = load_config(OTLIB_CONFIG)
    module = nn.Module()
    module.add_module(STATE_ATTR, OpticalAttentionState(cfg.attention, cfg.numerics, (0, 1), device=device))
    module.num_key_value_groups = num_heads // num_kv_heads  # read by eager_attention_forward
    # as LlamaAttention's: the optical attention then takes the causal path the model takes (Q·Kᵀ's read-out, the
    # softmax, P·V and the backward skip what the causal mask zeroes); without it the benchmark timed the full one
    module.is_causal = True
    return module.train()


def causal_mask(batch: int, t: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """`optical_mask`'s additive causal mask [B, 1, T, T], materialised as it is: 0 up to the diagonal, min above."""
    mask = torch.full((t, t), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask.expand(batch, 1, t, t).contiguous()


def make_sdpa(q: Tensor, k: Tensor) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Causal SDPA on the flash backend: GQA by `enable_gqa`, or K/V repeated where that fails (decided once)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def gqa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def repeated(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    try:
        with torch.no_grad():
            gqa(q, k, k)
        return gqa
    except (TypeError, RuntimeError) as exc:
        print(f"SDPA enable_gqa unavailable ({type(exc).__name__}): K/V repeated", flush=True)
        return repeated


def attention_fns(
    batch: int, heads: int, kv_heads: int, dim: int, t: int, device: torch.device
) -> tuple[dict[str, Callable[[], Tensor]], list[Tensor]]:
    """Forward callables of the three attentions on shared bf16 leaves q, k, v (all requiring grad)."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    from otlib import optical_attention_forward

    def leaf(h: int) -> Tensor:
        return torch.randn(batch, t, h, dim, device=device, dtype=torch.bfloat16, requires_grad=True)

    q, k, v = leaf(heads), leaf(kv_heads), leaf(kv_heads)
    module, mask, scaling = make_module(heads, kv_heads, device), causal_mask(batch, t, device), dim**-0.5

    def qkv() -> tuple[Tensor, Tensor, Tensor]:
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    sdpa = make_sdpa(*qkv()[:2])
    fns = {
        "sdpa": lambda: sdpa(*qkv()),
        "eager": lambda: eager_attention_forward(module, *qkv(), mask, scaling)[0],
        "optical": lambda: optical_attention_forward(module, *qkv(), mask, scaling)[0],
    }
    return fns, [q, k, v]


def fwd_bwd(fn: Callable[[], Tensor]) -> Callable[[], None]:
    """fn's forward then backward with a fixed random output gradient (drawn on the first call)."""
    grad: list[Tensor] = []

    def run() -> None:
        out = fn()
        if not grad:
            grad.append(torch.randn_like(out))
        out.backward(grad[0])

    return run


def bench_shape(batch: int, heads: int, kv_heads: int, dim: int, t: int) -> dict[str, float | str]:
    from triton.testing import do_bench

    fns, leaves = attention_fns(batch, heads, kv_heads, dim, t, torch.device("cuda"))
    runs = {f"{name}_fwd_bwd": fwd_bwd(fn) for name, fn in fns.items()}
    runs["optical_fwd"] = fns["optical"]
    out: dict[str, float | str] = {}
    for fn in runs.values():
        fn()  # compile / autotune, and the optical ranges' calibration step, outside the timing
    out["syncs"] = host_syncs(runs["optical_fwd_bwd"])
    for name, fn in runs.items():
        out[name] = do_bench(fn, warmup=25, rep=100, grad_to_none=leaves, return_mode="median")

    def grads_to_none() -> None:  # the first captured backward then allocates them in the graph's pool
        for leaf in leaves:
            leaf.grad = None

    for name in ("sdpa", "optical"):
        out[f"{name}_graphed"] = graphed_ms(runs[f"{name}_fwd_bwd"], reps=5, before_capture=grads_to_none)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", type=int, default=1024, help="T, the sequence length")
    ap.add_argument("--out", default=None, help="write the markdown table here too (atomically)")
    args = ap.parse_args(argv)
    require_cuda(__file__)
    import transformers
    import triton

    cols = ["sdpa_fwd_bwd", "eager_fwd_bwd", "optical_fwd_bwd", "optical_fwd"]
    lines = [
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
        f"transformers {transformers.__version__}, T = {args.block}, bf16, causal",
        "",
        "| heads (B × H/Hkv × D) | "
        + " | ".join(f"{c} ms" for c in cols)
        + " | optical × SDPA | host syncs | graphed: SDPA / optical fwd_bwd ms | graphed optical × SDPA |",
        "|---" * (len(cols) + 5) + "|",
    ]
    for name, batch, heads, kv_heads, dim in SHAPES:
        t = bench_shape(batch, heads, kv_heads, dim, args.block)
        lines.append(
            f"| {name} {batch}×{heads}/{kv_heads}×{dim} | "
            + " | ".join(f"{t[c]:.3f}" for c in cols)
            + f" | {t['optical_fwd_bwd'] / t['sdpa_fwd_bwd']:.2f} | {t['syncs']}"
            + f" | {t['sdpa_graphed']:.3f} / {t['optical_graphed']:.3f} | {t['optical_graphed'] / t['sdpa_graphed']:.2f} |"
        )
        print(lines[-1], flush=True)
        torch.cuda.empty_cache()
    emit(lines, args.out)


if __name__ == "__main__":
    main()
