"""Smooth one run's training loss: train_log.csv → train_log.smoothed.csv (the `smooth` rule).

    python workflow/scripts/smooth.py --log results/runs/M/digital/lr1e-05/train_log.csv \
        --out results/runs/M/digital/lr1e-05/train_log.smoothed.csv [--method ema --weight 0.9]

Writes `step,tokens,loss,loss_smooth,diverged`; the curve stops at the last finite loss and
`diverged` marks a run whose log has a NaN/inf loss. Methods: see optical_clm.analysis.smoothing.
"""

from __future__ import annotations

import argparse
import logging

from optical_clm.analysis.cli import add_smoothing_args, run, smoothing_config
from optical_clm.analysis.files import write_csv
from optical_clm.analysis.smoothing import read_train_log, smooth_curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", required=True, help="train_log.csv of one run")
    parser.add_argument("--out", required=True, help="where to write train_log.smoothed.csv")
    add_smoothing_args(parser)
    args = parser.parse_args(argv)

    def _main() -> None:
        config = smoothing_config(args)
        curve = smooth_curve(read_train_log(args.log), config)
        write_csv(curve, args.out)
        state = "diverged" if curve["diverged"].any() else "finite"
        logging.info("%s: %d points, %s, %s -> %s", args.log, len(curve), state, config.describe(), args.out)

    return run(_main, "smooth.py")


if __name__ == "__main__":
    raise SystemExit(main())
