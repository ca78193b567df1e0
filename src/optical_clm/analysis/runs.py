"""Load finished runs for the analysis: the study's run folders and external loss logs.

A run folder (`results/runs/{model}/{mode}/lr{lr}/`, see docs/architecture.md) holds
`metrics.json` + `train_log.csv` and, once the smooth rule ran, `train_log.smoothed.csv` (used
as is; otherwise the log is smoothed here with the given settings).

External logs are runs made elsewhere (a W&B CSV export, any CSV with a step or tokens column and
a loss column). They are listed in a manifest (CSV or YAML) next to them, one entry per file:

    file, model, params, mode, lr            required
    x        name of the x column            default: first of step, Step, _step, global_step,
                                             trainer/global_step, tokens
    x_unit   `step` or `tokens`              default: `tokens` if x is named tokens, else `step`
    loss     name of the loss column         default: loss, train/loss, train_loss, or the one
                                             W&B chart column ending in ` - train/loss`
    tokens_per_step                          optional: converts steps to tokens

They are smoothed with the same settings as the study's runs. What a log does not contain (held-out
loss, throughput, tokens without `tokens_per_step`) stays NaN; nothing is invented.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from optical_clm.analysis.files import AnalysisError
from optical_clm.analysis.smoothing import (
    SmoothingConfig,
    finite_prefix_length,
    read_smoothed_log,
    read_train_log,
    smooth_curve,
)
from optical_clm.naming import MODEL_RE, MODES

# metrics.json keys the analysis reads (all are in the contract; numeric ones may be null).
METRIC_KEYS = (
    "model", "params", "mode", "lr", "steps", "tokens", "start_loss", "final_loss",
    "eval_loss_before", "eval_loss_after", "diverged", "diverged_reason", "tokens_per_s",
)  # fmt: skip
NUMERIC_KEYS = ("steps", "tokens", "start_loss", "final_loss", "eval_loss_before", "eval_loss_after", "tokens_per_s")
X_CANDIDATES = ("step", "Step", "_step", "global_step", "trainer/global_step", "tokens")
LOSS_CANDIDATES = ("loss", "train/loss", "train_loss")
MANIFEST_KEYS = ("file", "model", "params", "mode", "lr", "x", "x_unit", "loss", "tokens_per_step")


@dataclass
class Run:
    """One fine-tuning run: identity, scalar results and its (smoothed) loss curve."""

    model: str
    params: int
    mode: str
    lr: float
    source: str  # run folder or external log file, for error messages and the table
    curve: pd.DataFrame  # step, tokens, loss, loss_smooth, diverged
    metrics: dict = field(default_factory=dict)  # NUMERIC_KEYS as floats (NaN when unknown) + diverged_reason

    @property
    def key(self) -> tuple[str, str, float]:
        return (self.model, self.mode, self.lr)

    @property
    def diverged(self) -> bool:
        """Diverged if the trainer said so or the log has a non-finite loss."""
        return bool(self.metrics.get("diverged")) or bool(self.curve["diverged"].any())


def _float(value, where: str) -> float:
    """JSON number/null (or a numeric string) → float; null → NaN."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AnalysisError(f"{where}: not a number: {value!r}") from None


def _check_identity(model, params, mode, lr, where: str) -> tuple[str, int, str, float]:
    """Validate and normalise (model, params, mode, lr), naming the source and value on error."""
    model = str(model)
    if not re.fullmatch(MODEL_RE, model):
        raise AnalysisError(f"{where}: model name {model!r} must match {MODEL_RE} (it becomes a file name)")
    if mode not in MODES:
        raise AnalysisError(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    p = _float(params, f"{where}: params")
    if not (math.isfinite(p) and p > 0 and p == int(p)):
        raise AnalysisError(f"{where}: params must be a positive integer, got {params!r}")
    rate = _float(lr, f"{where}: lr")
    if not (math.isfinite(rate) and rate > 0):
        raise AnalysisError(f"{where}: lr must be a positive number, got {lr!r}")
    return model, int(p), mode, rate


def load_run_dir(run_dir: str | Path, config: SmoothingConfig) -> Run:
    """Load one study run folder (metrics.json + train_log.csv [+ train_log.smoothed.csv])."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise AnalysisError(f"run folder {run_dir}: metrics.json not found (did the run finish?)")
    try:
        raw = json.loads(metrics_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AnalysisError(f"{metrics_path}: invalid JSON: {exc}") from None
    missing = [k for k in METRIC_KEYS if k not in raw]
    if missing:
        raise AnalysisError(f"{metrics_path}: missing key(s) {', '.join(missing)}")
    model, params, mode, lr = _check_identity(raw["model"], raw["params"], raw["mode"], raw["lr"], str(metrics_path))
    metrics = {k: _float(raw[k], f"{metrics_path}: {k}") for k in NUMERIC_KEYS}
    metrics["diverged"] = bool(raw["diverged"])
    metrics["diverged_reason"] = raw["diverged_reason"] or ""
    smoothed = run_dir / "train_log.smoothed.csv"
    curve = (
        read_smoothed_log(smoothed)
        if smoothed.is_file()
        else smooth_curve(read_train_log(run_dir / "train_log.csv"), config)
    )
    return Run(model, params, mode, lr, str(run_dir), curve, metrics)


def read_manifest(path: str | Path) -> list[dict]:
    """Manifest entries (CSV with a header, or YAML: a list of mappings or `{runs: [...]}`)."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"external-log manifest not found: {path}")
    if path.suffix.lower() == ".csv":
        entries = pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
    elif path.suffix.lower() in (".yaml", ".yml"):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        entries = data.get("runs", []) if isinstance(data, dict) else data
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise AnalysisError(f"{path}: expected a list of mappings (or a mapping with key 'runs')")
    else:
        raise AnalysisError(f"{path}: manifest must be .csv, .yaml or .yml")
    for i, entry in enumerate(entries, start=1):
        unknown = sorted(set(entry) - set(MANIFEST_KEYS))
        missing = [k for k in MANIFEST_KEYS[:5] if str(entry.get(k, "")).strip() == ""]
        if unknown or missing:
            what = f"unknown key(s) {', '.join(unknown)}" if unknown else f"missing {', '.join(missing)}"
            raise AnalysisError(f"{path}: entry {i}: {what} (keys: {', '.join(MANIFEST_KEYS)})")
    return [{k: v for k, v in e.items() if str(v).strip() != ""} for e in entries]


def _pick_column(columns: list[str], given: str | None, candidates: tuple[str, ...], suffix: str, where: str) -> str:
    """The named column, else the first candidate present, else the unique column ending in `suffix`."""
    if given is not None:
        if given not in columns:
            raise AnalysisError(f"{where}: no column {given!r} (has: {', '.join(columns)})")
        return given
    for name in candidates:
        if name in columns:
            return name
    ending = [c for c in columns if c.endswith(suffix)]
    if len(ending) == 1:
        return ending[0]
    raise AnalysisError(
        f"{where}: cannot tell which column to use (has: {', '.join(columns)}); name it in the manifest"
    )


def load_external(entry: dict, manifest: Path, config: SmoothingConfig) -> Run:
    """Load one external log described by a manifest entry, smoothing it in-process."""
    path = (manifest.parent / str(entry["file"])).resolve()
    where = f"{manifest}: {entry['file']}"
    model, params, mode, lr = _check_identity(entry["model"], entry["params"], entry["mode"], entry["lr"], where)
    if not path.is_file():
        raise AnalysisError(f"{where}: file not found: {path}")
    # Read as text: W&B leaves cells empty where a metric was not logged (skip those rows), while
    # NaN/inf spelled out are real, diverged values.
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = [str(c) for c in df.columns]
    x_col = _pick_column(columns, entry.get("x"), X_CANDIDATES, "/global_step", where)
    loss_col = _pick_column(columns, entry.get("loss"), LOSS_CANDIDATES, " - train/loss", where)
    x_unit = entry.get("x_unit", "tokens" if x_col.lower() == "tokens" else "step")
    if x_unit not in ("step", "tokens"):
        raise AnalysisError(f"{where}: x_unit must be 'step' or 'tokens', got {x_unit!r}")
    df = df[df[loss_col].str.strip() != ""]
    try:
        x = df[x_col].astype(float).to_numpy()
        loss = df[loss_col].astype(float).to_numpy()
    except ValueError as exc:
        raise AnalysisError(f"{where}: non-numeric value in {x_col!r} or {loss_col!r}: {exc}") from None
    order = np.argsort(x, kind="stable")
    x, loss = x[order], loss[order]
    if len(x) == 0 or not np.isfinite(x).all() or (np.diff(x) == 0).any():
        raise AnalysisError(f"{where}: {x_col!r} must be finite and unique (one run per file), with at least one loss")
    tps = _float(entry.get("tokens_per_step"), f"{where}: tokens_per_step")
    step = x if x_unit == "step" else np.full_like(x, np.nan)
    tokens = x if x_unit == "tokens" else step * tps  # NaN when tokens_per_step is not given
    curve = smooth_curve(pd.DataFrame({"step": step, "tokens": tokens, "loss": loss}), config)
    n = finite_prefix_length(loss)
    metrics = {k: math.nan for k in NUMERIC_KEYS}
    metrics.update(
        steps=float(step[-1]),
        tokens=float(tokens[-1]),
        start_loss=float(loss[0]) if n else math.nan,
        final_loss=float(loss[-1]),
        diverged=n < len(loss),
        diverged_reason="non-finite loss in the log" if n < len(loss) else "",
    )
    return Run(model, params, mode, lr, str(path), curve, metrics)


def load_runs(run_dirs: list[str | Path], manifest: str | Path | None, config: SmoothingConfig) -> list[Run]:
    """All runs (study folders, then external logs), sorted by (params, mode, lr); duplicates are an error."""
    runs = [load_run_dir(d, config) for d in run_dirs]
    if manifest is not None:
        manifest = Path(manifest)
        runs += [load_external(e, manifest, config) for e in read_manifest(manifest)]
    if not runs:
        raise AnalysisError("no runs given (pass run folders with --runs and/or a manifest with --external)")
    seen: dict[tuple, str] = {}
    for run in runs:
        if run.key in seen:
            raise AnalysisError(f"run {run.key} appears twice: {seen[run.key]} and {run.source}")
        seen[run.key] = run.source
    params_of: dict[str, int] = {}
    for run in runs:
        if params_of.setdefault(run.model, run.params) != run.params:
            raise AnalysisError(
                f"model {run.model!r} has two parameter counts: {params_of[run.model]} and {run.params}"
            )
    return sorted(runs, key=lambda r: (r.params, r.model, MODES.index(r.mode), r.lr))
