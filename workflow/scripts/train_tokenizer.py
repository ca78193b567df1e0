"""Train the study's byte-level BPE tokenizer on a corpus text file (offline).

    python workflow/scripts/train_tokenizer.py --corpus results/corpus/stdlib.txt \
        --vocab-size 8192 --out-dir results/tokenizers/stdlib-8k

The output directory is a `save_pretrained` folder: `AutoTokenizer.from_pretrained(dir)` loads it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from optical_clm import cli, corpus, tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="text file (documents joined by corpus.DOC_SEP)")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--log-file", default=None)
    args = parser.parse_args(argv)
    log = cli.setup_logging(args.log_file)
    if not Path(args.corpus).is_file():
        raise FileNotFoundError(f"corpus file not found: {args.corpus}")
    docs = corpus.read_documents(args.corpus)
    tokenizer.train_bpe(docs, args.vocab_size, args.out_dir)
    log.info("tokenizer: vocab %d from %d documents -> %s", args.vocab_size, len(docs), args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(cli.guarded(main))
