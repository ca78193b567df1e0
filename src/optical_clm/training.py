"""The one training loop of the study, used by pretraining and fine-tuning alike.

Reads top to bottom like nanoGPT's train.py: config → accelerate set-up → data → model →
optimizer and schedule → resume → eval → loop (lr, micro-steps, clip, step, log, divergence,
checkpoint) → eval → outputs. The scripts `pretrain.py` and `finetune.py` only build a
`TrainConfig` and a model loader and call `run`.

Rules (docs/training.md):
- effective batch `batch_size` = per-device batch × gradient accumulation × processes; the
  accumulation is derived and must divide exactly; the global batch of a step does not depend on
  that split (optical_clm.data sharding);
- steps = tokens // (batch_size × block_size), one pass (the data wraps only if it is too short);
- AdamW (weight decay on matrices and embeddings only), linear decay to zero after an optional
  linear warmup, gradient clipping, bf16 autocast on a GPU and fp32 on a CPU;
- the logged loss of a step is the mean over its micro-steps and processes (one all-reduce,
  which is also the step's one host sync);
- diverged: a non-finite loss, or a loss above `diverge_factor` × the first step's loss, ends
  the run early; that is a result (outputs written, exit code 0), not an error;
- on one GPU, each micro-step (forward, loss, backward) is replayed from a CUDA graph after the
  first steps (`MicroStep`): the same kernels without Python or launch overhead.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import platform
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from optical_clm import atomic, checkpoint
from optical_clm.data import BlockOrder, TokenData, micro_batch_samples, num_blocks, read_blocks
from optical_clm.models import count_params, save_pretrained

log = logging.getLogger("optical_clm.training")

LOG_COLUMNS = ("step", "tokens", "loss", "lr", "grad_norm", "elapsed_s")
EXIT_PREEMPTED = 143  # 128 + SIGTERM: the scheduler (SLURM requeue, Snakemake retry) reruns the job
TRACKERS = ("none", "wandb", "tensorboard", "trackio")
# Fields that change what a run computes: a checkpoint written under other values is not resumed.
_FINGERPRINT = (
    "model_path", "mode", "data", "lr", "tokens", "batch_size", "per_device_batch_size", "block_size",
    "weight_decay", "warmup_steps", "grad_clip", "seed", "otlib_config",
)  # fmt: skip


@dataclass
class TrainConfig:
    model: str  # label recorded in metrics.json (e.g. "clm-60m", "tiny")
    model_path: str  # hub id, save_pretrained dir, or "preset:NAME" for pretraining
    data: str  # tokenized dataset dir (optical_clm.data)
    out_dir: str  # train_log.csv, metrics.json (and model/ with save_model)
    lr: float
    mode: str = "digital"  # digital | optical | optical-mase
    ckpt_dir: str | None = None  # resumable state; None disables checkpointing
    otlib_config: str | None = None  # TOML of the optical modes
    tokens: int | None = None  # training tokens; None: token_ratio × N_params
    token_ratio: float = 0.22  # the reference study's 22 × N / 100
    batch_size: int = 16  # effective (global) batch in blocks
    per_device_batch_size: int | None = None  # None: batch_size / processes (no accumulation)
    block_size: int = 1024
    weight_decay: float = 0.01
    warmup_steps: int = 0
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables clipping (norm still logged)
    diverge_factor: float = 3.0
    eval_every: int = 0  # also evaluate every K steps (0: only before and after)
    eval_tokens: int | None = None  # cap on held-out tokens per evaluation (None: all)
    checkpoint_every: int = 100
    seed: int = 0
    save_model: bool = False  # save_pretrained the final model (+ tokenizer) into model_out
    model_out: str | None = None  # default: out_dir/model
    tracker: str = "none"
    cuda_graphs: bool = True  # one GPU: replay each micro-step from a CUDA graph (MicroStep)

    def validate(self) -> None:
        positive = ("lr", "batch_size", "block_size", "token_ratio", "diverge_factor", "checkpoint_every")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("tokens", "per_device_batch_size", "eval_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.warmup_steps < 0 or self.eval_every < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps, eval_every and weight_decay must be >= 0")
        if self.tracker not in TRACKERS:
            raise ValueError(f"tracker must be one of {', '.join(TRACKERS)}, got {self.tracker!r}")


def gradient_accumulation(batch_size: int, per_device: int, num_processes: int) -> int:
    """batch_size = per_device × accumulation × processes, with an integer accumulation."""
    if batch_size % (per_device * num_processes):
        raise ValueError(
            f"batch_size {batch_size} is not a multiple of per_device_batch_size {per_device} "
            f"x {num_processes} processes"
        )
    return batch_size // (per_device * num_processes)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and embeddings (dim >= 2), not norms and biases (the usual AdamW split)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy in fp32 (targets y are x shifted by one, see optical_clm.data)."""
    logits = model(input_ids=x).logits  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction=reduction)


class MicroStep:
    """Forward, loss and backward of one micro-batch (the loss scaled by 1 / accum); returns the unscaled loss.

    graphed (one GPU): the first `EAGER_STEPS` optimizer steps of a run run eagerly (the optical ranges
    calibrate on the first, every kernel compiles and autotunes), on a side stream; then the micro-step is
    captured once into a CUDA graph (PyTorch's whole-network capture) and every later micro-step copies its
    batch into the graph's input buffers and replays it. The graph adds into the gradients, so they must
    stay allocated (`zero_grad(set_to_none=False)`). Autocast's weight-cast cache is off (graphs need that;
    eager steps match). A failed capture logs a warning and the run continues eagerly.
    """

    EAGER_STEPS = 2

    def __init__(self, accelerator, model: torch.nn.Module, accum: int, graphed: bool) -> None:
        from accelerate.utils import AutocastKwargs

        self.accelerator, self.model, self.accum, self.graphed = accelerator, model, accum, graphed
        self.autocast = AutocastKwargs(cache_enabled=False) if graphed else None
        self.stream = torch.cuda.Stream() if graphed else None
        self.steps_seen = 0
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, first_micro: bool) -> torch.Tensor:
        self.steps_seen += first_micro
        if self.graph is None and self.graphed and self.steps_seen > self.EAGER_STEPS:
            self._capture(x, y)
        if self.graph is None:
            return self._on_side_stream(self._forward_backward, x, y)
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.loss

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.accelerator.autocast(self.autocast):
            loss = lm_loss(self.model, x, y)
        self.accelerator.backward(loss / self.accum)
        return loss.detach()

    def _on_side_stream(self, fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        # the eager steps before a capture run on the capture's stream: autograd's gradient-accumulation
        # nodes remember their stream, and a capture that meets one of the default stream is invalidated
        if self.stream is None:
            return fn(*args)
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            out = fn(*args)
        torch.cuda.current_stream().wait_stream(self.stream)
        return out

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x.clone(), y.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            start = time.time()
            with unpacked_rows(), torch.cuda.graph(graph, stream=self.stream):
                self.loss = self._forward_backward(self.x, self.y)
            self.graph = graph
            log.info("micro-step captured into a CUDA graph in %.1f s", time.time() - start)
        except RuntimeError as err:
            log.warning("CUDA graph capture failed, training continues eagerly: %s", str(err).splitlines()[0])
            self.graphed = False


@contextmanager
def unpacked_rows() -> Iterator[None]:
    """transformers checks the position ids for packed sequences with a host sync, which a CUDA graph capture
    forbids (it then assumes packing and builds an explicit mask). Every row of our batches is one block with
    positions 0..T-1, for which the check returns None: inside this block it returns that without looking."""
    from transformers import masking_utils

    packed_check = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = packed_check


@torch.no_grad()
def evaluate(accelerator, model, tokens, cfg: TrainConfig, per_device: int) -> float | None:
    """Mean held-out loss over the first eval blocks (split across processes); None if no block."""
    limit = len(tokens) if cfg.eval_tokens is None else min(len(tokens), cfg.eval_tokens + 1)
    n = num_blocks(limit, cfg.block_size)
    if n == 0:
        return None
    # The bare module: no DDP forward (no buffer broadcast, no collectives) on uneven shards.
    bare = accelerator.unwrap_model(model)
    mine = list(range(accelerator.process_index, n, accelerator.num_processes))
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)  # (loss sum, target count)
    bare.eval()
    with accelerator.autocast():
        for i in range(0, len(mine), per_device):
            x, y = (t.to(accelerator.device) for t in read_blocks(tokens, mine[i : i + per_device], cfg.block_size))
            total[0] += lm_loss(bare, x, y, reduction="sum").double()
            total[1] += y.numel()
    bare.train()
    total = accelerator.reduce(total, "sum")
    return (total[0] / total[1]).item()


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _ppl(loss: float | None) -> float | None:
    return _finite(math.exp(min(loss, 700.0))) if _finite(loss) is not None else None


def _versions() -> dict[str, str | None]:
    import accelerate
    import transformers

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }
    for name in ("triton", "otlib"):
        try:
            out[name] = getattr(__import__(name), "__version__", "unknown")
        except Exception:  # not installed, or broken: recorded as absent
            out[name] = None
    return out


def log_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class _StopFlag:
    """SIGTERM (a SLURM pre-emption) sets a flag; the loop checkpoints and exits at a step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def run(cfg: TrainConfig, load_model: Callable[[], tuple[torch.nn.Module, Any]]) -> dict[str, Any]:
    """Train; write train_log.csv and metrics.json into cfg.out_dir; return the metrics.

    `load_model()` returns (model, tokenizer) and is called after seeding, before `prepare`.
    Raises SystemExit(143) after checkpointing when SIGTERM arrives.
    """
    stop = _StopFlag()
    try:
        return _train(cfg, load_model, stop)
    finally:
        stop.restore()


def _train(cfg: TrainConfig, load_model: Callable[[], tuple[torch.nn.Module, Any]], stop: _StopFlag) -> dict[str, Any]:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    cfg.validate()
    run_start = time.time()

    # ---- accelerate: processes, mixed precision (bf16 autocast on GPU, fp32 on CPU), trackers
    tracker = None if cfg.tracker == "none" else cfg.tracker
    # cpu=True without a GPU: under torchrun / accelerate launch, CPU processes then join a gloo group
    # (accelerate only forms a multi-CPU group when told it runs on CPU).
    on_gpu = torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=not on_gpu, mixed_precision="bf16" if on_gpu else "no", log_with=tracker, project_dir=cfg.out_dir
    )
    nproc, main = accelerator.num_processes, accelerator.is_main_process
    per_device = cfg.per_device_batch_size or max(cfg.batch_size // nproc, 1)
    accum = gradient_accumulation(cfg.batch_size, per_device, nproc)
    set_seed(cfg.seed)  # python, numpy, torch (and CUDA) RNGs: the same init on every process

    # ---- data and model
    data = TokenData.open(cfg.data)
    model, tokenizer = load_model()
    vocab = model.get_input_embeddings().num_embeddings
    if data.meta["vocab_size"] > vocab:
        raise ValueError(f"data {cfg.data} has vocab_size {data.meta['vocab_size']} > the model's {vocab}")
    n_params = count_params(model)
    tokens = cfg.tokens or round(cfg.token_ratio * n_params)
    tokens_per_step = cfg.batch_size * cfg.block_size
    steps = tokens // tokens_per_step
    if steps < 1:
        raise ValueError(f"tokens {tokens} is less than one step of batch_size x block_size = {tokens_per_step}")
    cfg.tokens = tokens  # resolved, recorded in metrics and the checkpoint fingerprint
    order = BlockOrder(num_blocks(len(data.train), cfg.block_size), cfg.seed)
    if steps * cfg.batch_size > order.n_blocks and main:
        log.warning("run needs %d blocks, train split has %d: data wraps", steps * cfg.batch_size, order.n_blocks)

    # ---- optimizer and schedule (the scheduler stays unprepared: accelerate would step it once
    # per process; it is registered so save_state/load_state carry it)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    graphed = cfg.cuda_graphs and on_gpu and nproc == 1
    micro_step = MicroStep(accelerator, model, accum, graphed)
    resolved = {**asdict(cfg), "per_device_batch_size": per_device, "gradient_accumulation": accum,
                "num_processes": nproc, "steps": steps}  # fmt: skip
    fingerprint = {k: resolved[k] for k in (*_FINGERPRINT, "num_processes")}
    if tracker:
        # trackers' hparams accept numbers, strings and bools only
        accelerator.init_trackers("optical-clm", config={k: "" if v is None else v for k, v in resolved.items()})

    # ---- resume from the newest complete checkpoint, else evaluate the starting point
    state: dict[str, Any] = {"rows": [], "evals": [], "start_loss": None, "elapsed_s": 0.0, "train_s": 0.0}
    start_step = 0
    latest = checkpoint.latest(cfg.ckpt_dir) if cfg.ckpt_dir else None
    if latest is not None:
        saved = json.loads((latest / checkpoint.STATE_FILE).read_text())
        if saved.get("fingerprint") == fingerprint:
            state = checkpoint.load(accelerator, latest)
            start_step = state["step"]
            if main:
                log.info("resumed from %s (step %d of %d)", latest, start_step, steps)
        elif main:
            log.warning("ignoring checkpoint %s: written with a different configuration", latest)
    if start_step == 0:
        state["eval_before"] = evaluate(accelerator, model, data.eval, cfg, per_device)
    rows, evals = state["rows"], state["evals"]
    elapsed0, train_s = state["elapsed_s"], state["train_s"]  # carried over from earlier attempts
    if main:
        log.info("%s/%s lr=%g: %d params, %d steps x %d tokens, %d proc x %d batch x %d accum, eval %s",
                 cfg.model, cfg.mode, cfg.lr, n_params, steps, tokens_per_step, nproc, per_device, accum,
                 state["eval_before"])  # fmt: skip

    # ---- the loop
    diverged_reason: str | None = None
    # mininterval: the bar usually goes to a job log file; a redraw every 2 s keeps that short.
    bar = tqdm(total=steps, initial=start_step, desc=f"{cfg.model}/{cfg.mode}", disable=not main, mininterval=2.0)
    model.train()
    for step in range(start_step, steps):
        t_step = time.time()
        lr = scheduler.get_last_lr()[0]
        loss_sum = torch.zeros((), device=accelerator.device)
        for micro in range(accum):
            ids = micro_batch_samples(step, micro, process_index=accelerator.process_index, num_processes=nproc,
                                      per_device_batch=per_device, batch_size=cfg.batch_size)  # fmt: skip
            x, y = (t.to(accelerator.device) for t in read_blocks(data.train, order.blocks(ids), cfg.block_size))
            # Gradients are all-reduced only on the last micro-step (no_sync skips it before).
            sync = nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
            with sync:
                loss_sum += micro_step(x, y, first_micro=micro == 0)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=not graphed)  # a CUDA graph adds into the gradients it captured

        # One all-reduce + one host sync per step: summed (local mean loss, stop flag, grad norm).
        packed = torch.stack([loss_sum / accum, torch.tensor(float(stop.requested), device=loss_sum.device),
                              torch.as_tensor(grad_norm, dtype=loss_sum.dtype, device=loss_sum.device)])  # fmt: skip
        loss_val, stop_any, norm_val = accelerator.reduce(packed, "sum").tolist()
        loss_val, norm_val = loss_val / nproc, norm_val / nproc  # the norm is the same on every process
        train_s += time.time() - t_step
        n = step + 1
        rows.append({"step": n, "tokens": n * tokens_per_step, "loss": loss_val, "lr": lr, "grad_norm": norm_val,
                     "elapsed_s": round(time.time() - run_start + elapsed0, 3)})  # fmt: skip
        if state["start_loss"] is None:
            state["start_loss"] = loss_val
        bar.update(1)
        bar.set_postfix(loss=f"{loss_val:.4f}")
        if tracker:
            accelerator.log({"train/loss": loss_val, "train/lr": lr, "train/grad_norm": norm_val}, step=n)

        # Divergence ends the run as a result.
        if not math.isfinite(loss_val):
            diverged_reason = f"non-finite loss {loss_val} at step {n}"
        elif loss_val > cfg.diverge_factor * state["start_loss"]:
            diverged_reason = (
                f"loss {loss_val:.4g} > {cfg.diverge_factor:g} x start loss {state['start_loss']:.4g} at step {n}"
            )
        if diverged_reason:
            if main:
                log.warning("diverged: %s", diverged_reason)
            break
        if cfg.eval_every and n % cfg.eval_every == 0 and n < steps:
            evals.append({"step": n, "eval_loss": _finite(evaluate(accelerator, model, data.eval, cfg, per_device))})
        # Periodic checkpoints before the last step; on SIGTERM always (even after the last step, so the
        # rerun only has the final evaluation and the outputs left to do).
        if cfg.ckpt_dir and (stop_any or (n % cfg.checkpoint_every == 0 and n < steps)):
            state.update(elapsed_s=time.time() - run_start + elapsed0, train_s=train_s, fingerprint=fingerprint)
            path = checkpoint.save(accelerator, cfg.ckpt_dir, n, {k: v for k, v in state.items() if k != "step"})
            if main:
                log.info("checkpoint %s", path)
        if stop_any:
            if main:
                log.warning("SIGTERM: stopping at step %d%s", n, " (checkpointed)" if cfg.ckpt_dir else "")
            accelerator.end_training()
            raise SystemExit(EXIT_PREEMPTED)
    bar.close()

    # ---- final evaluation and outputs (main process; metrics.json last, it marks completion)
    eval_after = evaluate(accelerator, model, data.eval, cfg, per_device)
    done_steps = len(rows)
    metrics = {
        "model": cfg.model,
        "model_path": cfg.model_path,
        "params": n_params,
        "params_with_input_embedding": count_params(accelerator.unwrap_model(model), include_input_embedding=True),
        "mode": cfg.mode,
        "lr": cfg.lr,
        "steps": done_steps,
        "steps_planned": steps,
        "tokens": done_steps * tokens_per_step,
        "tokens_planned": steps * tokens_per_step,
        "start_loss": _finite(state["start_loss"]),
        "final_loss": _finite(rows[-1]["loss"]) if rows else None,
        "eval_loss_before": _finite(state["eval_before"]),
        "eval_loss_after": _finite(eval_after),
        "eval_ppl_before": _ppl(state["eval_before"]),
        "eval_ppl_after": _ppl(eval_after),
        "eval_history": evals,
        "diverged": diverged_reason is not None,
        "diverged_reason": diverged_reason,
        "wall_time_s": round(time.time() - run_start + elapsed0, 3),
        "train_time_s": round(train_s, 3),
        "tokens_per_s": round(done_steps * tokens_per_step / train_s, 1) if train_s > 0 else None,
        "device": torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda" else "cpu",
        "num_processes": nproc,
        "versions": _versions(),
        "config": resolved,
    }
    if main:
        out = Path(cfg.out_dir)
        if cfg.save_model:
            save_pretrained(accelerator.unwrap_model(model), tokenizer, cfg.model_out or out / "model")
        atomic.write_text(out / "train_log.csv", log_csv(rows))
        atomic.write_json(out / "metrics.json", metrics)
        checkpoint.clear(cfg.ckpt_dir)  # finished: a later rerun must start fresh, not resume
        log.info("done: %d steps, eval loss %s -> %s, %s tok/s%s", done_steps, metrics["eval_loss_before"],
                 metrics["eval_loss_after"], metrics["tokens_per_s"], " (diverged)" if metrics["diverged"] else "")  # fmt: skip
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics
