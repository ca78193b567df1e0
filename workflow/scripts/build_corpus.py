"""Build the offline corpus: the running interpreter's standard-library sources as one text file.

    python workflow/scripts/build_corpus.py --out results/corpus/stdlib.txt \
        --meta results/corpus/stdlib.json [--max-mb 20]

The metadata JSON records the Python version, file count, bytes and the sha256 of the text, so a
study's figures can be traced to the exact corpus (see optical_clm.corpus for the file rules).
"""

from __future__ import annotations

import argparse
import sys

from optical_clm import cli, corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="corpus text file to write")
    parser.add_argument("--meta", required=True, help="metadata JSON to write")
    parser.add_argument("--max-mb", type=float, default=None, help="cap on the corpus size in MB (1e6 bytes)")
    parser.add_argument("--log-file", default=None)
    args = parser.parse_args(argv)
    log = cli.setup_logging(args.log_file)
    meta = corpus.build_corpus(args.out, args.meta, max_mb=args.max_mb)
    log.info(
        "corpus: %d files, %.1f MB, Python %s, sha256 %s",
        meta["n_files"],
        meta["bytes"] / 1e6,
        meta["python_version"],
        meta["sha256"][:12],
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.guarded(main))
