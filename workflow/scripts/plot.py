"""Draw the study's figures from run logs and the summary table; no training code, no torch.

    python workflow/scripts/plot.py --summary results/summary.csv --runs results/runs/*/*/lr* \
        [--external logs/external/manifest.csv] --out-dir results/figures

Writes loss_curves_{model}, lr_sensitivity, scaling and overview, each as .png and .pdf
(see optical_clm.analysis.figures). The smoothing options apply to external logs and to runs
without train_log.smoothed.csv; pass the same ones as to smooth.py.
"""

from __future__ import annotations

import argparse
import logging

from optical_clm.analysis.cli import add_smoothing_args, run, smoothing_config
from optical_clm.analysis.figures import render_all
from optical_clm.analysis.runs import load_runs
from optical_clm.analysis.summary import read_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--summary", required=True, help="summary.csv written by summarize.py")
    parser.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR", help="run folders (metrics.json + logs)")
    parser.add_argument("--external", metavar="MANIFEST", help="manifest (CSV/YAML) of external loss logs")
    parser.add_argument("--out-dir", required=True, help="folder for the figures")
    parser.add_argument(
        "--x", choices=("tokens", "step"), default="tokens", help="x axis of loss curves (default tokens)"
    )
    add_smoothing_args(parser)
    args = parser.parse_args(argv)

    def _main() -> None:
        runs = load_runs(args.runs, args.external, smoothing_config(args))
        paths = render_all(runs, read_summary(args.summary), args.out_dir, args.x)
        logging.info("%d figure files -> %s", len(paths), args.out_dir)

    return run(_main, "plot.py")


if __name__ == "__main__":
    raise SystemExit(main())
