"""Tokenize a corpus into the study's token format (train.bin / eval.bin / meta.json).

    # offline: the stdlib corpus with the locally trained tokenizer
    python workflow/scripts/tokenize_data.py --tokenizer results/tokenizers/stdlib-8k \
        --text-file results/corpus/stdlib.txt --out-dir results/tokenized/stdlib-8k --eval-tokens 65536
    # reference study: a hub dataset, streamed, with the models' tokenizer (needs the network)
    python workflow/scripts/tokenize_data.py --tokenizer AICrossSim/clm-60m \
        --hf-dataset Cheng98/fineweb-edu-1.25B --max-tokens 200000000 --out-dir results/tokenized/fineweb

Documents are shuffled with --seed before the held-out split is taken (text file: the document
order; hub dataset: a streaming shuffle buffer), so the eval split is a random sample of documents.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from optical_clm import cli, corpus, tokenizer

BATCH_DOCS = 512  # documents per encode_batch call: big batches keep the Rust thread pool busy
SHUFFLE_BUFFER = 10_000


def text_file_batches(path: str, seed: int) -> Iterator[list[str]]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    docs = corpus.read_documents(path)
    order = np.random.default_rng(seed).permutation(len(docs))
    for start in range(0, len(docs), BATCH_DOCS):
        yield [docs[i] for i in order[start : start + BATCH_DOCS]]


def hf_batches(name: str, config: str | None, split: str, column: str, seed: int) -> Iterator[list[str]]:
    from datasets import load_dataset

    stream = load_dataset(name, config, split=split, streaming=True).shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
    for batch in stream.iter(batch_size=BATCH_DOCS):
        if column not in batch:
            raise ValueError(f"--text-column {column!r} not in dataset {name!r} (columns: {sorted(batch)})")
        yield batch[column]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="save_pretrained dir or hub id")
    parser.add_argument("--out-dir", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text-file", help="corpus text file (documents joined by corpus.DOC_SEP)")
    source.add_argument("--hf-dataset", help="hub dataset name, read in streaming mode")
    parser.add_argument("--hf-config", default=None)
    parser.add_argument("--hf-split", default="train")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--max-tokens", type=int, default=None, help="stop when the train split has N tokens")
    parser.add_argument("--eval-tokens", type=int, default=65536, help="held-out tokens (eval.bin)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-file", default=None)
    args = parser.parse_args(argv)
    log = cli.setup_logging(args.log_file)

    tok = tokenizer.load_tokenizer(args.tokenizer)
    if args.text_file:
        batches, source_desc = text_file_batches(args.text_file, args.seed), f"text:{args.text_file}"
    else:
        batches = hf_batches(args.hf_dataset, args.hf_config, args.hf_split, args.text_column, args.seed)
        source_desc = f"hf:{args.hf_dataset}" + (f"/{args.hf_config}" if args.hf_config else "") + f":{args.hf_split}"
    total = None if args.max_tokens is None else args.max_tokens + args.eval_tokens
    meta = tokenizer.tokenize_to_dataset(
        tok,
        batches,
        args.out_dir,
        eval_tokens=args.eval_tokens,
        max_tokens=args.max_tokens,
        progress_total=total,
        tokenizer=args.tokenizer,
        source=source_desc,
        seed=args.seed,
        created_by="workflow/scripts/tokenize_data.py",
    )
    log.info(
        "tokenized: %d train + %d eval tokens (%s) -> %s",
        meta["n_train_tokens"],
        meta["n_eval_tokens"],
        meta["dtype"],
        args.out_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.guarded(main))
