"""Range statistics under torch.distributed (2 CPU processes, gloo): every rank ends with the same ranges —
the min of the ranks' minima and the max of their maxima (quantiles: the mean) — before and after the EMA."""

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import otlib

WORLD = 2


def _worker(rank: int, tmp: str) -> None:
    # A forked child must not enter the parent's OpenMP pool (libgomp is not fork-safe): one thread.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(1234)  # same weights on every rank, as DDP guarantees
        layer = otlib.OpticalLinear(32, 16, q_smooth_factor=0.5)
        quantile = otlib.OpticalLinear(32, 16, q_quantiles=(0.1, 0.9))
        layer.train(), quantile.train()
        torch.manual_seed(rank)  # different data per rank
        batches = [torch.randn(8, 32) * (rank + 1) for _ in range(2)]
        for x in batches:
            layer(x)
            quantile(x)
        torch.save(
            {"bounds": layer.stats.bounds, "quantile": quantile.stats.bounds, "batches": batches},
            Path(tmp) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ranks_keep_identical_ranges(tmp_path):
    # fork: the children inherit the imported modules (spawn would re-import transformers in each, ~10 s)
    context = mp.start_processes(_worker, args=(str(tmp_path),), nprocs=WORLD, join=False, start_method="fork")
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("distributed range workers did not finish within 120 s")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert torch.equal(results[0]["bounds"], results[1]["bounds"])
    assert torch.equal(results[0]["quantile"], results[1]["quantile"])
    # x row by hand: global min/max of each step, then lo ← ½·lo + ½·batch_lo
    steps = [torch.cat([r["batches"][i] for r in results]) for i in range(2)]
    first = torch.stack(torch.aminmax(steps[0]))
    expected = 0.5 * first + 0.5 * torch.stack(torch.aminmax(steps[1]))
    torch.testing.assert_close(results[0]["bounds"][0], expected)
    # quantiles: the mean over ranks of each rank's quantiles, then the EMA with β = 0.9
    q = torch.tensor([0.1, 0.9])
    per_step = [torch.stack([torch.quantile(r["batches"][i].flatten(), q) for r in results]).mean(0) for i in range(2)]
    torch.testing.assert_close(results[0]["quantile"][0], 0.9 * per_step[0] + 0.1 * per_step[1])
