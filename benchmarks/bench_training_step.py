"""Benchmark: one full training step of a random Llama, digital (SDPA) against optical, eager and torch.compile.

Run on a GPU machine from the repository root:
    PYTHONPATH=src python3 benchmarks/bench_training_step.py --models 60m,200m --out bench_training_step.md
A step is what the trainer does per batch (src/optical_clm/training.py), without gradient clipping: forward
and next-token loss under bf16 autocast on fp32 master weights, backward, AdamW step (fused where available),
zero_grad. Models: the `clm-60m-shape` / `clm-200m-shape` presets (optical_clm.models), randomly initialised,
random token ids, batch × block tokens per step. Modes: digital (attn_implementation "sdpa") and optical
(`otlib.transform` with configs/otlib/optical_transformer.toml). Variants: eager, `torch.compile(model)`,
`torch.compile(model, mode="reduce-overhead")` (CUDA graphs), and graphed: the whole step (forward, loss,
backward, AdamW with `capturable=True`) captured once into one CUDA graph after the warm-up and replayed,
PyTorch's whole-network capture: the step's GPU time without host overhead or compilation.
After --warmup steps (compilation; the optical ranges calibrate on step 1, so at least 2), --steps steps are
timed by CUDA events between steps (one synchronize after the timed block): median ms/step and tokens/s,
the ratio optical / digital of the same model and variant, and host syncs of one more step under
`torch.cuda.set_sync_debug_mode("error")` (none, or where the first one happened). A configuration that
fails reports its exception in the table. One table, markdown, to stdout and --out.
"""

import argparse
import functools
import gc
import itertools
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from report import emit, host_syncs, require_cuda, short  # benchmarks/report.py (scripts run from this folder)

PRESETS = {"60m": "clm-60m-shape", "200m": "clm-200m-shape"}
MODES = ("digital", "optical")
VARIANTS = ("eager", "compiled", "cudagraphs", "graphed")
OTLIB_CONFIG = Path(__file__).resolve().parents[1] / "configs/otlib/optical_transformer.toml"


def build_model(preset: str, mode: str, device: torch.device, layers: int | None = None) -> torch.nn.Module:
    """Randomly initialised fp32 Llama of a CLM preset (seed 0), digital SDPA or optical, in training mode."""
    from optical_clm.models import build_llama, resolve_shape

    torch.manual_seed(0)
    shape = resolve_shape(PRESETS[preset], num_layers=layers)
    model = build_llama(shape, bos_token_id=None, eos_token_id=None, pad_token_id=None).to(device)
    if mode == "optical":
        import otlib

        otlib.transform(model, OTLIB_CONFIG)  # sets attn_implementation "optical"
    else:
        model.set_attn_implementation("sdpa")
    return model.train()


def make_step(model: torch.nn.Module, batch: int, block: int, variant: str, warmup: int) -> Callable[[], None]:
    """One training step on a fixed random batch: autocast forward + loss, backward, AdamW step, zero_grad.
    variant: "eager", "compiled" (`torch.compile(model)`), "cudagraphs" (`mode="reduce-overhead"`: the compiled
    forward and backward replayed from CUDA graphs) or "graphed" (`warmup` eager steps on a side stream, then
    the whole step captured into one CUDA graph; the returned step replays it)."""
    from optical_clm.training import lm_loss, param_groups

    device = next(model.parameters()).device
    graphs = variant == "cudagraphs"
    forward = (
        torch.compile(model, mode="reduce-overhead" if graphs else None)
        if variant in ("compiled", "cudagraphs")
        else model
    )
    capturable = {"capturable": True} if variant == "graphed" else {}
    try:
        optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=3e-4, fused=True, **capturable)
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=3e-4, **capturable)
    tokens = torch.randint(0, model.config.vocab_size, (batch, block + 1), device=device)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def forward_backward_update() -> None:
        # autocast's weight-cast cache must be off inside a CUDA graph capture
        with torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=variant != "graphed"):
            loss = lm_loss(forward, x, y)
        loss.backward()
        optimizer.step()

    def step() -> None:
        if graphs:  # a new iteration: the previous step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        forward_backward_update()
        optimizer.zero_grad(set_to_none=True)

    if variant != "graphed":
        return step
    return _capture(step, forward_backward_update, warmup)


def _capture(step: Callable[[], None], body: Callable[[], None], warmup: int) -> Callable[[], None]:
    """PyTorch's whole-network capture: warm-up steps on a side stream, gradients set to None, then one
    forward + backward + optimizer step captured (backward allocates the gradients in the graph's pool, and
    every replay overwrites them); transformers' packed-sequence check as the trainer captures it."""
    from optical_clm.training import unpacked_rows

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with unpacked_rows(), torch.cuda.graph(graph):
        body()
    return functools.partial(_replay, graph, body)


def _replay(graph: torch.cuda.CUDAGraph, body: Callable[[], None]) -> None:
    """Replay the captured step. `body` rides along because the graph reads and writes the memory of what it
    holds (model, optimizer state, batch): freed, that memory would go to the next allocation while the graph
    still writes into it (two graphed models in one process crashed so)."""
    graph.replay()


def time_steps(step: Callable[[], None], warmup: int, steps: int) -> list[float]:
    """ms of each of `steps` steps after `warmup` untimed ones; CUDA events between steps, no sync inside."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
    events[0].record()
    for event in events[1:]:
        step()
        event.record()
    torch.cuda.synchronize()
    return [a.elapsed_time(b) for a, b in itertools.pairwise(events)]


def run_config(preset: str, mode: str, variant: str, args: argparse.Namespace) -> dict[str, float | str]:
    """Median ms/step, tokens/s and host syncs of one configuration, or its error; frees the GPU after."""
    step = None
    try:
        model = build_model(preset, mode, torch.device("cuda"), args.layers)
        step = make_step(model, args.batch, args.block, variant, args.warmup)
        del model  # the step closure holds the model and its optimizer: dropping `step` frees both
        ms = statistics.median(time_steps(step, args.warmup, args.steps))
        return {"ms": ms, "tok_s": args.batch * args.block / ms * 1e3, "syncs": host_syncs(step)}
    except Exception as exc:
        return {"error": short(exc)}
    finally:
        del step
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()


def csv_choice(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(choices)}")
        return items

    return parse


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=csv_choice(tuple(PRESETS)), default=list(PRESETS), help="comma list")
    ap.add_argument("--modes", type=csv_choice(MODES), default=list(MODES), help="comma list")
    ap.add_argument("--variants", type=csv_choice(VARIANTS), default=list(VARIANTS), help="comma list")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step")
    ap.add_argument("--block", type=int, default=1024, help="tokens per sequence")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 2: optical ranges calibrate)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--layers", type=int, default=None, help="override the presets' layer count (quick runs)")
    ap.add_argument("--out", default=None, help="write the markdown table here too (atomically)")
    args = ap.parse_args(argv)
    if args.warmup < 2 or args.steps < 1:
        ap.error("--warmup must be >= 2 and --steps >= 1")
    require_cuda(__file__)
    import transformers
    import triton

    lines = [
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
        f"transformers {transformers.__version__}, {args.batch} × {args.block} tokens/step, bf16 autocast, "
        f"warm-up {args.warmup}, median of {args.steps}" + (f", {args.layers} layers" if args.layers else ""),
        "",
        "| model | mode | variant | ms/step | tokens/s | optical × digital | host syncs |",
        "|---" * 7 + "|",
    ]
    for preset in args.models:
        for variant in args.variants:
            digital_ms = None
            for mode in (m for m in MODES if m in args.modes):  # digital first, for the ratio
                r = run_config(preset, mode, variant, args)
                if "error" in r:
                    cells = f"ERROR {r['error']} | — | — | —"
                else:
                    digital_ms = r["ms"] if mode == "digital" else digital_ms
                    ratio = f"{r['ms'] / digital_ms:.2f}" if mode == "optical" and digital_ms else "—"
                    cells = f"{r['ms']:.1f} | {r['tok_s']:,.0f} | {ratio} | {r['syncs']}"
                lines.append(f"| {preset} | {mode} | {variant} | {cells} |")
                print(lines[-1], flush=True)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
