"""The results table: one row per run, the best learning rate per (model, mode), CSV and Markdown.

Definitions (also printed under the Markdown table):
- `final_loss_smooth`: the last finite value of the smoothed training loss, so one noisy last
  batch does not decide a comparison.
- `start_loss_mean`: the mean raw training loss of the first k = min(10, ⌈steps/4⌉) steps — about the
  EMA's effective window (1/(1 − 0.9) = 10 points), so the start level is as robust to one hard batch
  as the smoothed final level is (`start_loss`, the first step alone, is kept in the table).
- `improvement` = `start_loss_mean` − `final_loss_smooth` (training loss);
  `eval_improvement` = `eval_loss_before` − `eval_loss_after` (held-out loss). Both are empty for
  diverged runs, which have no final loss to compare.
- `best_lr`: per (model, mode), the run with the lowest `final_loss_smooth` among runs that did
  not diverge; a tie goes to the smaller learning rate (the safer choice). If every learning
  rate diverged there is no best run for that (model, mode).
Rows are sorted by parameter count, mode (digital, optical, optical-mase) and learning rate.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from optical_clm.analysis.files import AnalysisError, write_csv, write_text
from optical_clm.analysis.runs import Run
from optical_clm.analysis.style import format_count, format_lr_label
from optical_clm.naming import MODES

COLUMNS = [
    "model", "params", "mode", "lr", "steps", "tokens", "start_loss", "start_loss_mean", "final_loss", "final_loss_smooth",
    "eval_loss_before", "eval_loss_after", "improvement", "eval_improvement", "diverged", "diverged_reason",
    "best_lr", "tokens_per_s", "source",
]  # fmt: skip


def last_finite(values: np.ndarray) -> float:
    """The last finite entry of `values`, or NaN if there is none."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else math.nan


def start_level(values: np.ndarray) -> float:
    """Mean of the first k = min(10, ceil(n/4)) finite losses (the module docstring says why)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return math.nan
    k = min(10, math.ceil(values.size / 4))
    return float(finite[:k].mean())


def mark_best_lr(table: pd.DataFrame) -> pd.Series:
    """Boolean column: the best learning rate of each (model, mode), per the module docstring."""
    best = pd.Series(False, index=table.index)
    ok = table[~table["diverged"] & np.isfinite(table["final_loss_smooth"])]
    for _, group in ok.groupby(["model", "mode"], sort=True):
        # lexsort: last key is primary -> lowest loss first, then smallest lr.
        order = np.lexsort((group["lr"].to_numpy(), group["final_loss_smooth"].to_numpy()))
        best[group.index[order[0]]] = True
    return best


def build_summary(runs: list[Run]) -> pd.DataFrame:
    """One row per run with the columns in `COLUMNS`, sorted by (params, mode, lr)."""
    rows = []
    for run in runs:
        m = run.metrics
        final_smooth = last_finite(run.curve["loss_smooth"].to_numpy())
        start_mean = start_level(run.curve["loss"].to_numpy())
        diverged = run.diverged
        rows.append(
            {
                "model": run.model,
                "params": run.params,
                "mode": run.mode,
                "lr": run.lr,
                "steps": m["steps"],
                "tokens": m["tokens"],
                "start_loss": m["start_loss"],
                "start_loss_mean": start_mean,
                "final_loss": m["final_loss"],
                "final_loss_smooth": final_smooth,
                "eval_loss_before": m["eval_loss_before"],
                "eval_loss_after": m["eval_loss_after"],
                "improvement": math.nan if diverged else start_mean - final_smooth,
                "eval_improvement": math.nan if diverged else m["eval_loss_before"] - m["eval_loss_after"],
                "diverged": diverged,
                "diverged_reason": m["diverged_reason"] or ("non-finite loss in the log" if diverged else ""),
                "tokens_per_s": m["tokens_per_s"],
                "source": run.source,
            }
        )
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "best_lr"])
    table["best_lr"] = mark_best_lr(table)
    table["_mode"] = table["mode"].map(MODES.index)
    table = table.sort_values(["params", "model", "_mode", "lr"], kind="stable").drop(columns="_mode")
    return table[COLUMNS].reset_index(drop=True)


def read_summary(path: str | Path) -> pd.DataFrame:
    """Read `summary.csv` back with its types (booleans, NaN for empty cells), checking the columns."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"summary table not found: {path} (run summarize.py first)")
    table = pd.read_csv(path, keep_default_na=True)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise AnalysisError(f"{path}: missing column(s) {', '.join(missing)}; re-run summarize.py")
    for col in ("diverged", "best_lr"):
        table[col] = table[col].astype(str).str.lower().isin(["true", "1"])
    table["diverged_reason"] = table["diverged_reason"].fillna("").astype(str)
    table["model"] = table["model"].astype(str)
    return table


def _cell(value, kind: str) -> str:
    """Format one Markdown cell; NaN is an empty cell (unknown, e.g. an external log without eval)."""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if kind == "loss":
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    if kind == "delta":
        return f"{value:+.4f}"
    if kind == "count":
        return format_count(value)
    if kind == "lr":
        return format_lr_label(value)
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "bool":
        return "yes" if value else ""
    return str(value)


MD_COLUMNS = [  # (column, header, kind)
    ("model", "model", "str"), ("params", "params", "count"), ("mode", "mode", "str"), ("lr", "lr", "lr"),
    ("steps", "steps", "int"), ("tokens", "tokens", "count"), ("start_loss_mean", "start loss (first steps)", "loss"),
    ("final_loss_smooth", "final loss (smoothed)", "loss"), ("improvement", "Δ train", "delta"),
    ("eval_loss_before", "eval before", "loss"), ("eval_loss_after", "eval after", "loss"),
    ("eval_improvement", "Δ eval", "delta"), ("diverged", "diverged", "bool"), ("best_lr", "best lr", "bool"),
    ("tokens_per_s", "tokens/s", "int"),
]  # fmt: skip


def to_markdown(table: pd.DataFrame, smoothing: str) -> str:
    """The table as a Markdown document with a title and the definitions a reader needs."""
    lines = [
        "# Fine-tuning results",
        "",
        "One row per run. Losses are mean cross-entropy in nats/token. Δ train = start loss (mean of the "
        f"first min(10, steps/4) steps) − final smoothed training loss ({smoothing}); Δ eval = held-out loss before − after fine-tuning "
        "(positive = better; empty for diverged runs). **best lr**: lowest final smoothed training loss "
        "among the non-diverged runs of a (model, mode); ties go to the smaller lr. Empty cells are values "
        "the log does not contain (e.g. external logs without held-out loss).",
        "",
        "| " + " | ".join(h for _, h, _ in MD_COLUMNS) + " |",
        "|" + "|".join("---" if k in ("str", "bool") else "---:" for _, _, k in MD_COLUMNS) + "|",
    ]
    for _, row in table.iterrows():
        cells = [_cell(row[c], k) for c, _, k in MD_COLUMNS]
        if row["best_lr"]:
            cells[3] = f"**{cells[3]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(table: pd.DataFrame, out_csv: str | Path, out_md: str | Path, smoothing: str) -> None:
    """Write `summary.csv` and `summary.md` atomically."""
    write_csv(table, out_csv)
    write_text(out_md, to_markdown(table, smoothing))
