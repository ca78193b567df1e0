"""Argument plumbing shared by the analysis scripts (`smooth.py`, `summarize.py`, `plot.py`).

The smoothing options are the same in all three so that external logs, which only `summarize.py`
and `plot.py` see, are smoothed exactly like the study's runs. Bad input ends the script with one
line naming the bad file or value and exit code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from optical_clm.analysis.files import AnalysisError
from optical_clm.analysis.smoothing import METHODS, SmoothingConfig


def add_smoothing_args(parser: argparse.ArgumentParser) -> None:
    """`--method/--weight/--sigma/--window`, with the defaults of `SmoothingConfig`."""
    d = SmoothingConfig()
    g = parser.add_argument_group("smoothing (per logged point)")
    g.add_argument("--method", choices=METHODS, default=d.method, help=f"smoother (default {d.method})")
    g.add_argument(
        "--weight", type=float, default=d.weight, help=f"EMA weight of the past, [0, 1) (default {d.weight})"
    )
    g.add_argument("--sigma", type=float, default=d.sigma, help=f"Gaussian sigma in points (default {d.sigma})")
    g.add_argument("--window", type=int, default=d.window, help=f"rolling window in points (default {d.window})")


def smoothing_config(args: argparse.Namespace) -> SmoothingConfig:
    return SmoothingConfig(method=args.method, weight=args.weight, sigma=args.sigma, window=args.window)


def run(main: Callable[[], None], name: str) -> int:
    """Run `main()` with logging to stderr; an AnalysisError becomes one `name: error: ...` line, exit 2."""
    logging.basicConfig(level=logging.INFO, format=f"{name}: %(message)s", stream=sys.stderr)
    try:
        main()
    except AnalysisError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    return 0
