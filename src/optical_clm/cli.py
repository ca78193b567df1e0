"""Shared plumbing of the workflow scripts: logging set-up and one-line errors.

Bad input (a missing file, a wrong value) must end a script with one clear line on stderr and a
non-zero exit, not a traceback; `guarded(main)` does that for the error types the study code
raises on bad input, and lets everything else (real bugs) raise normally.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_BAD_INPUT = 2


def setup_logging(log_file: str | Path | None = None) -> logging.Logger:
    """Log INFO to stderr and, if given, to `log_file` (parents created)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", handlers=handlers, force=True
    )
    # accelerate logs every file of every checkpoint at INFO; keep the run log readable.
    for noisy in ("accelerate", "accelerate.checkpointing", "accelerate.accelerator"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger("optical_clm")


def guarded(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run `main(argv)`; a ValueError/OSError (bad input) becomes `error: <message>` and exit 2."""
    try:
        return main(argv) or 0
    except (ValueError, OSError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


def add_loop_args(parser, *, batch_size: int, block_size: int) -> None:
    """The training-loop flags shared by pretrain.py and finetune.py (see TrainConfig)."""
    parser.add_argument("--batch-size", type=int, default=batch_size, help="effective batch in blocks")
    parser.add_argument("--per-device-batch-size", type=int, default=None, help="default: batch / processes")
    parser.add_argument("--block-size", type=int, default=block_size)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm; <= 0 disables clipping")
    parser.add_argument("--diverge-factor", type=float, default=3.0, help="diverged if loss > F x first loss")
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every K steps")
    parser.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens per eval (default all)")
    parser.add_argument("--ckpt-dir", default=None, help="resumable checkpoints (not a workflow output)")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracker", default="none", choices=["none", "wandb", "tensorboard", "trackio"])
    parser.add_argument("--model-name", default=None, help="label in metrics.json (default: from --model)")
    parser.add_argument("--log-file", default=None)
    parser.add_argument(
        "--no-cuda-graphs", dest="cuda_graphs", action="store_false", help="eager micro-steps on one GPU too"
    )


def loop_kwargs(args) -> dict:
    """TrainConfig keyword arguments from the parsed `add_loop_args` flags."""
    keys = ("batch_size", "per_device_batch_size", "block_size", "weight_decay", "warmup_steps", "grad_clip",
            "diverge_factor", "eval_every", "eval_tokens", "ckpt_dir", "checkpoint_every", "seed", "tracker",
            "cuda_graphs")  # fmt: skip
    return {k: getattr(args, k) for k in keys}
