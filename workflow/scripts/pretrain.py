"""Pretrain a small Llama from scratch (digital) for the offline study, and save it like a hub model.

    python workflow/scripts/pretrain.py --preset tiny --tokenizer results/tokenizers/stdlib-8k \
        --data results/tokenized/stdlib-8k --out-dir results/models/tiny --tokens 2000000 --lr 3e-3 \
        --batch-size 16 --per-device-batch-size 16 --block-size 256

Same training loop as fine-tuning (optical_clm.training). --out-dir receives the save_pretrained
model with its tokenizer (so finetune.py --model OUT_DIR loads it), plus train_log.csv and
metrics.json (written last).
"""

from __future__ import annotations

import argparse
import sys

from optical_clm import cli, models, tokenizer, training


def build_model(args):
    tok = tokenizer.load_tokenizer(args.tokenizer)
    shape = models.resolve_shape(
        args.preset,
        vocab_size=len(tok),
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        num_kv_heads=args.num_kv_heads,
        intermediate_size=args.intermediate_size,
    )
    ids = {f"{k}_token_id": getattr(tok, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    return models.build_llama(shape, **ids), tok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True, choices=list(models.PRESETS))
    for flag in ("--hidden-size", "--num-layers", "--num-heads", "--num-kv-heads", "--intermediate-size"):
        parser.add_argument(flag, type=int, default=None, help="override the preset")
    parser.add_argument("--tokenizer", required=True, help="save_pretrained tokenizer dir (sets the vocabulary)")
    parser.add_argument("--data", required=True, help="tokenized dataset dir")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    cli.add_loop_args(parser, batch_size=16, block_size=256)
    args = parser.parse_args(argv)
    cli.setup_logging(args.log_file)

    cfg = training.TrainConfig(
        model=args.model_name or args.preset,
        model_path=f"preset:{args.preset}",
        data=args.data,
        out_dir=args.out_dir,
        lr=args.lr,
        tokens=args.tokens,
        save_model=True,
        model_out=args.out_dir,
        **cli.loop_kwargs(args),
    )
    training.run(cfg, lambda: build_model(args))
    return 0


if __name__ == "__main__":
    sys.exit(cli.guarded(main))
