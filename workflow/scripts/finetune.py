"""Fine-tune one base model in one mode at one learning rate: the unit run of the study.

    python workflow/scripts/finetune.py --model results/models/tiny --mode optical \
        --data results/tokenized/stdlib-8k --lr 1e-4 --block-size 256 --per-device-batch-size 8 \
        --out-dir results/runs/tiny/optical/lr1e-04 --ckpt-dir results/checkpoints/tiny/optical/lr1e-04
    # two GPUs (same effective batch 16, accumulation derived):
    accelerate launch --num_processes 2 workflow/scripts/finetune.py --model AICrossSim/clm-60m \
        --mode optical --data results/tokenized/fineweb --lr 1e-5 --per-device-batch-size 8 \
        --out-dir results/runs/clm-60m/optical/lr1e-05 --ckpt-dir results/checkpoints/clm-60m/optical/lr1e-05

Modes: digital (as loaded), optical (otlib.transform with --otlib-config), optical-mase (the same
with numerics = "mase"). Tokens default to 22 x N_params / 100 (--token-ratio 0.22). Writes
train_log.csv and metrics.json into --out-dir; resumes from --ckpt-dir; see docs/training.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from optical_clm import cli, data, modes, training


def check_model_path(path: str) -> None:
    """A path-like --model must be a save_pretrained dir (else transformers tries the hub)."""
    looks_local = Path(path).exists() or path.startswith((".", "/", "~")) or path.count("/") > 1
    if looks_local and not (Path(path).expanduser() / "config.json").is_file():
        raise FileNotFoundError(f"--model {path}: not a save_pretrained directory (no config.json)")


def load_base_model(path: str, mode: str, otlib_config: str | None):
    """The base model and its tokenizer (hub id or local save_pretrained dir), in `mode`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    replaced = modes.apply_mode(model, mode, otlib_config)
    if replaced:
        print(f"{mode}: otlib replaced {len(replaced)} modules", file=sys.stderr)
    return model, tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub id or local save_pretrained dir (with tokenizer)")
    parser.add_argument("--mode", required=True, choices=modes.MODES)
    parser.add_argument("--data", required=True, help="tokenized dataset dir")
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--otlib-config", default=None, help=f"TOML (default {modes.DEFAULT_OTLIB_CONFIG})")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--tokens", type=int, default=None, help="training tokens (default: ratio x N_params)")
    amount.add_argument("--token-ratio", type=float, default=0.22, help="tokens per parameter (22 x N / 100)")
    parser.add_argument("--save-model", action="store_true", help="save_pretrained the final model to OUT/model")
    cli.add_loop_args(parser, batch_size=16, block_size=1024)
    args = parser.parse_args(argv)
    cli.setup_logging(args.log_file)
    data.TokenData.open(args.data)  # fail fast, before any model is loaded
    check_model_path(args.model)

    cfg = training.TrainConfig(
        model=args.model_name or Path(args.model.rstrip("/")).name,
        model_path=args.model,
        data=args.data,
        out_dir=args.out_dir,
        lr=args.lr,
        mode=args.mode,
        otlib_config=args.otlib_config,
        tokens=args.tokens,
        token_ratio=args.token_ratio,
        save_model=args.save_model,
        **cli.loop_kwargs(args),
    )
    training.run(cfg, lambda: load_base_model(args.model, args.mode, args.otlib_config))
    return 0


if __name__ == "__main__":
    sys.exit(cli.guarded(main))
