"""Shared by the benchmark scripts: the GPU check, the atomic write of a markdown table, the host-sync check, and
the timing of CUDA-graph replays."""

import os
import tempfile
import traceback
from collections.abc import Callable


def require_cuda(script: str) -> None:
    """Stop with a one-line message when no CUDA GPU is present (`script`: the caller's __file__)."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"{os.path.basename(script)} needs a CUDA GPU")


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename (never half a file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def emit(lines: list[str], out: str | None) -> None:
    """Print the finished table and write it to `out` (atomically) when given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        write_atomic(out, text)


def short(exc: BaseException, limit: int = 100) -> str:
    """`Type: first line` of an exception, cut to `limit` characters, safe in a markdown cell."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def host_syncs(step: Callable[[], None]) -> str:
    """'none' when one step runs under set_sync_debug_mode('error'), else where the first sync happened."""
    import torch

    torch_dir = os.path.dirname(torch.__file__)
    try:
        torch.cuda.set_sync_debug_mode("error")
        step()
        return "none"
    except Exception as exc:
        if "synchroniz" not in str(exc):
            return short(exc)
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if not f.filename.startswith(torch_dir)]  # innermost caller outside torch
        sites = ours[-1:] + frames[-1:]
        where = " → ".join(dict.fromkeys(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in sites))
        return f"SYNC at {where}" if where else "SYNC"
    finally:
        torch.cuda.set_sync_debug_mode("default")


def graphed_ms(fn: Callable[[], object], reps: int = 20, before_capture: Callable[[], None] | None = None) -> float:
    """Median ms of one call of `fn`, `reps` calls captured in one CUDA graph and replayed (host time excluded).
    Three warm-up calls (compiles, allocations) run on a side stream first; then `before_capture`, if given."""
    import torch
    from triton.testing import do_bench

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    if before_capture is not None:
        before_capture()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return do_bench(graph.replay, return_mode="median") / reps
