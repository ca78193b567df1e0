"""Loss-curve smoothing: debiased EMA (as TensorBoard and W&B), Gaussian and rolling-window means.

All three smooth per logged point (not per unit of x), exactly like TensorBoard's slider, so the
settings mean the same thing whether the curve is later drawn against steps or tokens.

- **ema** (default): s_t = w·s_{t-1} + (1-w)·x_t with s_0 = 0, reported debiased as
  s_t / (1 - w^t) (t = 1, 2, ...). Without the division the curve would start at (1-w)·x_1, far
  below the data; with it the first point equals x_1 and later points are weighted means
  Σ_i w^(t-i) x_i / Σ_i w^(t-i). `weight` w ∈ [0, 1); 0 is no smoothing.
- **gaussian**: centred weighted mean with weights exp(-d²/2σ²) over d = -⌈4σ⌉..⌈4σ⌉ points;
  at the ends only the points that exist are averaged (weights renormalised), so the curve is
  not pulled towards zero. `sigma` is in points.
- **rolling**: trailing mean of the last `window` points (fewer at the start). Causal, like EMA.

Diverged runs: everything from the first non-finite loss on is the diverged tail. Smoothing uses
only the finite prefix (a single NaN would otherwise poison every later EMA value), `loss_smooth`
is NaN on the tail so the curve stops at the last finite point, and the `diverged` column marks
the whole run. A non-finite loss in the middle of an otherwise finite log also counts: the
training loop stops at the first one, so values after it do not come from a healthy run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from optical_clm.analysis.files import AnalysisError

METHODS = ("ema", "gaussian", "rolling")
SMOOTHED_COLUMNS = ["step", "tokens", "loss", "loss_smooth", "diverged"]


@dataclass(frozen=True)
class SmoothingConfig:
    """Which smoother and its one parameter (the others are ignored)."""

    method: str = "ema"
    weight: float = 0.9  # ema: weight of the past, in [0, 1)
    sigma: float = 2.0  # gaussian: standard deviation in logged points, > 0
    window: int = 10  # rolling: number of logged points, >= 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AnalysisError(f"smoothing method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not (0.0 <= self.weight < 1.0):
            raise AnalysisError(f"EMA weight must be in [0, 1), got {self.weight!r}")
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise AnalysisError(f"Gaussian sigma must be a positive number of points, got {self.sigma!r}")
        if int(self.window) != self.window or self.window < 1:
            raise AnalysisError(f"rolling window must be an integer >= 1, got {self.window!r}")

    def describe(self) -> str:
        """Short human-readable form for captions and logs, e.g. `EMA (weight 0.9)`."""
        return {
            "ema": f"debiased EMA (weight {self.weight:g})",
            "gaussian": f"Gaussian (sigma {self.sigma:g} points)",
            "rolling": f"rolling mean ({self.window} points)",
        }[self.method]


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average of finite `values` (see the module docstring)."""
    x = np.asarray(values, dtype=np.float64)
    out = np.empty_like(x)
    s = 0.0
    for t, v in enumerate(x, start=1):
        s = weight * s + (1.0 - weight) * v
        out[t - 1] = s / (1.0 - weight**t)
    return out


def gaussian(values: np.ndarray, sigma: float) -> np.ndarray:
    """Centred Gaussian-weighted mean of finite `values`, renormalised at the ends."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    radius = math.ceil(4 * sigma)
    d = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (d / sigma) ** 2)
    # Dividing by the convolved ones gives each point the mean over only the neighbours that exist.
    num = np.convolve(x, kernel, mode="full")[radius : radius + x.size]
    den = np.convolve(np.ones_like(x), kernel, mode="full")[radius : radius + x.size]
    return num / den


def rolling(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` finite `values` (fewer at the start)."""
    return pd.Series(np.asarray(values, dtype=np.float64)).rolling(int(window), min_periods=1).mean().to_numpy()


def smooth(values: np.ndarray, config: SmoothingConfig) -> np.ndarray:
    """Apply the configured smoother to a 1-D array of finite values."""
    if config.method == "ema":
        return ema(values, config.weight)
    if config.method == "gaussian":
        return gaussian(values, config.sigma)
    return rolling(values, config.window)


def finite_prefix_length(loss: np.ndarray) -> int:
    """Number of leading finite values: the index of the first NaN/inf, or len(loss) if none."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(loss, dtype=np.float64)))
    return int(bad[0]) if bad.size else len(loss)


def smooth_curve(curve: pd.DataFrame, config: SmoothingConfig) -> pd.DataFrame:
    """`step,tokens,loss` → `step,tokens,loss,loss_smooth,diverged` (curve stops at the last finite point)."""
    loss = curve["loss"].to_numpy(dtype=np.float64)
    n = finite_prefix_length(loss)
    smoothed = np.full(loss.shape, np.nan)
    smoothed[:n] = smooth(loss[:n], config)
    out = curve[["step", "tokens", "loss"]].copy()
    out["loss_smooth"] = smoothed
    out["diverged"] = n < len(loss)
    return out.reset_index(drop=True)


def _numeric(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """Column as float; a value that is not a number (NaN/inf are numbers) is an error naming it."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna() & ~df[column].astype(str).str.strip().str.lower().isin(["nan", ""])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise AnalysisError(f"{path}: column {column!r} row {row + 1}: not a number: {df[column].iloc[row]!r}")
    return values.astype(np.float64)


def read_train_log(path: str | Path) -> pd.DataFrame:
    """Read a run's `train_log.csv` (contract: `step,tokens,loss,...`) as floats, checking columns and order."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"training log not found: {path}")
    df = pd.read_csv(path)
    missing = [c for c in ("step", "tokens", "loss") if c not in df.columns]
    if missing:
        raise AnalysisError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))})")
    out = pd.DataFrame({c: _numeric(df, c, path) for c in ("step", "tokens", "loss")})
    if out["step"].isna().any() or not out["step"].is_monotonic_increasing or out["step"].duplicated().any():
        raise AnalysisError(f"{path}: 'step' must be present and strictly increasing")
    return out


def read_smoothed_log(path: str | Path) -> pd.DataFrame:
    """Read a `train_log.smoothed.csv` written by `smooth.py`, checking its columns."""
    path = Path(path)
    df = pd.read_csv(path)
    missing = [c for c in SMOOTHED_COLUMNS if c not in df.columns]
    if missing:
        raise AnalysisError(f"{path}: missing column(s) {', '.join(missing)}; re-run smooth.py")
    out = pd.DataFrame({c: _numeric(df, c, path) for c in SMOOTHED_COLUMNS[:4]})
    out["diverged"] = df["diverged"].astype(str).str.lower().isin(["true", "1"])
    return out
