"""Build the results table from finished runs (+ external logs): summary.csv and summary.md.

    python workflow/scripts/summarize.py --runs results/runs/*/*/lr* [--external logs/external/manifest.csv] \
        --out-csv results/summary.csv --out-md results/summary.md

Columns, the improvement and best-learning-rate definitions: optical_clm.analysis.summary. The
smoothing options apply to external logs and to runs without train_log.smoothed.csv; pass the
same ones as to smooth.py.
"""

from __future__ import annotations

import argparse
import logging

from optical_clm.analysis.cli import add_smoothing_args, run, smoothing_config
from optical_clm.analysis.runs import load_runs
from optical_clm.analysis.summary import build_summary, write_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR", help="run folders (metrics.json + logs)")
    parser.add_argument("--external", metavar="MANIFEST", help="manifest (CSV/YAML) of external loss logs")
    parser.add_argument("--out-csv", required=True, help="summary table, CSV")
    parser.add_argument("--out-md", required=True, help="summary table, Markdown")
    add_smoothing_args(parser)
    args = parser.parse_args(argv)

    def _main() -> None:
        config = smoothing_config(args)
        table = build_summary(load_runs(args.runs, args.external, config))
        write_summary(table, args.out_csv, args.out_md, config.describe())
        logging.info("%d runs (%d diverged) -> %s, %s", len(table), table["diverged"].sum(), args.out_csv, args.out_md)

    return run(_main, "summarize.py")


if __name__ == "__main__":
    raise SystemExit(main())
