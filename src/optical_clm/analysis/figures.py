"""The study's figures, drawn from the runs' loss curves and the summary table (matplotlib only).

1. `loss_curves_{model}`: one panel per mode, one line per learning rate (smoothed; raw faint
   behind), x = training tokens.
2. `lr_sensitivity`: final smoothed training loss against learning rate (log x), one panel per
   model size, one line per mode; diverged runs are × at the panel's top edge, not dropped.
3. `scaling` (the headline): at each size's best learning rate, the improvement from
   fine-tuning (training loss start − final; held-out loss before − after) against parameter
   count (log x), one line per mode.
4. `overview`: one page, one panel per model size, each mode's best-learning-rate curve.

Every function returns a `matplotlib.figure.Figure` built without pyplot (no global state, no
GUI backend); `render_all` saves PNG + PDF. Styles come from `style.py`.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from optical_clm.analysis.files import AnalysisError, save_figure
from optical_clm.analysis.runs import Run
from optical_clm.analysis.style import (
    DIVERGED_MARKER,
    MODE_STYLE,
    RC,
    count_formatter,
    format_count,
    format_lr_label,
    lr_formatter,
    lr_styles,
)
from optical_clm.naming import MODES

X_LABEL = {"tokens": "training tokens", "step": "optimizer step"}
LOSS_LABEL = "training loss (nats/token)"
N_MARKERS = 7  # markers per curve: enough to identify a line in greyscale, few enough not to hide it


def _xy(run: Run, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, raw loss with non-finite → NaN, smoothed loss) of a run's curve."""
    xs = run.curve[x].to_numpy(dtype=float)
    if not np.isfinite(xs).any():
        raise AnalysisError(
            f"{run.source}: no {x} values to plot against (give tokens_per_step, or plot with --x step)"
        )
    raw = run.curve["loss"].to_numpy(dtype=float)
    return xs, np.where(np.isfinite(raw), raw, np.nan), run.curve["loss_smooth"].to_numpy(dtype=float)


def _curve_ylim(runs: list[Run]) -> tuple[float, float]:
    """Y range: from the lowest raw loss (1st percentile, so the faint noise stays in view) up to the start of
    the highest smoothed curve; a diverging run's climb is clipped at the top (its end is marked there)."""
    smooth = [r.curve["loss_smooth"].to_numpy(dtype=float) for r in runs]
    finite = [s[np.isfinite(s)] for s in smooth if np.isfinite(s).any()]
    if not finite:
        return 0.0, 1.0
    raw = np.concatenate([r.curve["loss"].to_numpy(dtype=float) for r in runs])
    raw = raw[np.isfinite(raw)]
    lo = min(min(float(s.min()) for s in finite), float(np.percentile(raw, 1)))
    hi = max(float(s[0]) for s in finite)  # the start of the highest curve
    pad = max(hi - lo, 0.05) * 0.08
    return lo - pad, hi + pad


def _draw_curve(ax, run: Run, x: str, style: dict, label: str, linewidth: float, offset: int) -> None:
    """Raw loss faint behind, smoothed on top, a × where a diverged run's curve stops."""
    xs, raw, smooth = _xy(run, x)
    # Rasterized: thousands of noisy raw points would make the PDF large and slow to open.
    ax.plot(xs, raw, color=style["color"], alpha=0.16, linewidth=0.6, zorder=1, rasterized=True)
    every = max(1, len(xs) // N_MARKERS)
    ax.plot(xs, smooth, color=style["color"], linestyle=style["linestyle"], marker=style["marker"], markersize=5.5,
            markeredgecolor="white", markeredgewidth=0.7,
            markevery=(min(offset * every // 3, len(xs) - 1), every), linewidth=linewidth, label=label, zorder=3)  # fmt: skip
    if run.diverged:
        ok = np.flatnonzero(np.isfinite(smooth))
        top = ax.get_ylim()[1]
        end = ok[-1] if ok.size else 0  # NaN from the first step on: mark the start, at the top edge
        if np.isfinite(xs[end]):
            y_end = min(smooth[end], top) if ok.size else top
            ax.plot(xs[end], y_end, DIVERGED_MARKER, color=style["color"], markersize=8,
                    markeredgewidth=2, clip_on=False, zorder=4)  # fmt: skip
            ax.annotate("diverged", (xs[end], y_end), textcoords="offset points", xytext=(6, -10),
                        fontsize=7, color="0.2", annotation_clip=False)  # fmt: skip


def _setup_curve_axes(ax, x: str, ylim: tuple[float, float]) -> None:
    ax.set_ylim(*ylim)
    ax.set_xlabel(X_LABEL[x])
    if x == "tokens":
        ax.xaxis.set_major_formatter(count_formatter())


def _best_lrs(summary: pd.DataFrame, model: str, mode: str) -> list[float]:
    rows = summary[(summary["model"] == model) & (summary["mode"] == mode) & summary["best_lr"]]
    return rows["lr"].tolist()


def plot_loss_curves(runs: list[Run], summary: pd.DataFrame, x: str = "tokens") -> Figure:
    """Figure 1 for one model: panels per mode, a line per learning rate, the best one thicker."""
    model, params = runs[0].model, runs[0].params
    modes = [m for m in MODES if any(r.mode == m for r in runs)]
    lrs = lr_styles([r.lr for r in runs])
    with mpl.rc_context(RC):
        fig = Figure(figsize=(max(3.2 * len(modes), 4.8), 3.9), layout="constrained")
        axes = fig.subplots(1, len(modes), sharex=True, sharey=True, squeeze=False)[0]
        ylim = _curve_ylim(runs)
        for ax, mode in zip(axes, modes, strict=True):
            _setup_curve_axes(ax, x, ylim)
            best = _best_lrs(summary, model, mode)
            for i, run in enumerate(r for r in runs if r.mode == mode):
                style = {**lrs[run.lr], "linestyle": MODE_STYLE[mode]["linestyle"]}
                _draw_curve(ax, run, x, style, format_lr_label(run.lr), 2.0 if run.lr in best else 1.0, i)
            status = f"best lr {format_lr_label(best[0])}" if best else "all learning rates diverged"
            ax.set_title(f"{MODE_STYLE[mode]['label']}\n{status}")
        axes[0].set_ylabel(LOSS_LABEL)
        handles = [
            Line2D([], [], color=s["color"], marker=s["marker"], label=format_lr_label(lr)) for lr, s in lrs.items()
        ]
        handles += [
            Line2D([], [], color="0.5", alpha=0.35, linewidth=0.8, label="raw (unsmoothed)"),
            Line2D([], [], color="0.2", linewidth=2.0, label="best lr (thick)"),
        ]
        if any(r.diverged for r in runs):
            handles.append(Line2D([], [], color="0.2", marker=DIVERGED_MARKER, linestyle="none", markersize=7,
                                  markeredgewidth=2, label="diverged (curve stops)"))  # fmt: skip
        # Below the panels: a legend at the right would collide with the title of a one-panel figure.
        ncols = len(handles) if len(modes) > 1 else 3
        fig.legend(handles=handles, title="learning rate", loc="outside lower center", ncols=ncols)
        fig.suptitle(f"{model} ({format_count(params)} parameters): fine-tuning loss, smoothed")
    return fig


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _model_order(summary: pd.DataFrame) -> list[tuple[str, int]]:
    """(model, params) in increasing size."""
    pairs = summary[["model", "params"]].drop_duplicates().sort_values(["params", "model"])
    return list(pairs.itertuples(index=False, name=None))


def _lr_axis(ax, lrs: np.ndarray) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(mpl.ticker.FixedLocator(sorted(set(lrs))))
    ax.xaxis.set_minor_locator(mpl.ticker.NullLocator())
    ax.xaxis.set_major_formatter(lr_formatter())
    if len(set(lrs)) > 4:  # dense grids: slanted labels so neighbours don't run into each other
        ax.tick_params(axis="x", labelrotation=35)
    lo, hi = float(np.min(lrs)), float(np.max(lrs))
    span = max(math.log10(hi / lo), 0.5) * 0.12
    ax.set_xlim(lo / 10**span, hi * 10**span)


def plot_lr_sensitivity(summary: pd.DataFrame) -> Figure:
    """Figure 2: final smoothed loss vs learning rate per size; diverged runs × at the top edge."""
    models = _model_order(summary)
    rows, cols = _grid(len(models), 4 if len(models) <= 4 else 3)
    with mpl.rc_context(RC):
        fig = Figure(figsize=(2.4 * cols + 0.6, 2.7 * rows + 0.9), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes[len(models) :]:
            ax.set_visible(False)
        for ax, (model, params) in zip(axes, models, strict=False):
            sub = summary[summary["model"] == model]
            ok = sub[~sub["diverged"] & np.isfinite(sub["final_loss_smooth"])]
            lo, hi = (ok["final_loss_smooth"].min(), ok["final_loss_smooth"].max()) if len(ok) else (0.0, 1.0)
            r = max(hi - lo, 0.05)
            ax.set_ylim(lo - 0.1 * r, hi + 0.45 * r)  # headroom for the diverged row
            _lr_axis(ax, sub["lr"].to_numpy())
            for k, mode in enumerate(m for m in MODES if (sub["mode"] == m).any()):
                st = MODE_STYLE[mode]
                rows_m = sub[sub["mode"] == mode].sort_values("lr")
                # NaN where diverged breaks the line instead of joining across a diverged rate.
                y = rows_m["final_loss_smooth"].where(~rows_m["diverged"])
                ax.plot(rows_m["lr"], y, color=st["color"], linestyle=st["linestyle"], marker=st["marker"])
                best = rows_m[rows_m["best_lr"]]
                ax.plot(best["lr"], best["final_loss_smooth"], "o", markersize=11, markerfacecolor="none",
                        markeredgecolor=st["color"], markeredgewidth=1.3)  # fmt: skip
                div = rows_m[rows_m["diverged"]]
                if div.empty:  # an empty unclipped line has an infinite extent and breaks the layout
                    continue
                # × in axes coordinates near the top, one row per mode so coincident ones stay visible.
                ax.plot(div["lr"], np.full(len(div), 0.95 - 0.07 * k), DIVERGED_MARKER, color=st["color"],
                        transform=ax.get_xaxis_transform(), markersize=7, markeredgewidth=2, clip_on=False)  # fmt: skip
                for lr in div["lr"]:
                    ax.annotate("diverged", (lr, 0.95 - 0.07 * k), xycoords=ax.get_xaxis_transform(), xytext=(-7, 0),
                                textcoords="offset points", ha="right", va="center", fontsize=7, color=st["color"])  # fmt: skip
            ax.set_title(f"{model} ({format_count(params)} params)")
            ax.set_xlabel("learning rate")
        for ax in axes[::cols]:
            ax.set_ylabel("final training loss,\nsmoothed (nats/token)")
        handles = [
            Line2D([], [], color=s["color"], linestyle=s["linestyle"], marker=s["marker"], label=s["label"])
            for m, s in MODE_STYLE.items()
            if (summary["mode"] == m).any()
        ]
        handles += [
            Line2D([], [], color="0.2", marker="o", markersize=11, markerfacecolor="none", linestyle="none",
                   label="best lr"),
            Line2D([], [], color="0.2", marker=DIVERGED_MARKER, markersize=7, markeredgewidth=2, linestyle="none",
                   label="diverged (drawn at top edge)"),
        ]  # fmt: skip
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5))
        fig.suptitle("Learning-rate sensitivity: final smoothed training loss per learning rate")
    return fig


def plot_scaling(summary: pd.DataFrame) -> Figure:
    """Figure 3 (headline): improvement at the best lr vs parameter count, one line per mode."""
    models = _model_order(summary)
    params = np.array([p for _, p in models], dtype=float)
    modes = [m for m in MODES if (summary["mode"] == m).any()]
    panels = (
        ("improvement", "training loss: start − final\n(nats/token, higher is better)", "Training loss"),
        ("eval_improvement", "held-out loss: before − after\n(nats/token, higher is better)", "Held-out loss"),
    )
    any_all_diverged = False
    with mpl.rc_context(RC):
        fig = Figure(figsize=(7.4, 3.7), layout="constrained")
        axes = fig.subplots(1, 2, sharex=True)
        for ax, (column, ylabel, title) in zip(axes, panels, strict=True):
            ax.axhline(0.0, color="0.3", linewidth=0.8, zorder=1)
            not_logged = []
            for k, mode in enumerate(modes):
                st = MODE_STYLE[mode]
                best = summary[(summary["mode"] == mode) & summary["best_lr"]].set_index("model")
                y = np.array([best[column].get(m, np.nan) for m, _ in models], dtype=float)
                ax.plot(params, y, color=st["color"], linestyle=st["linestyle"], marker=st["marker"], markersize=6,
                        label=st["label"], zorder=3)  # fmt: skip
                for (model, p), value in zip(models, y, strict=True):
                    has_runs = ((summary["model"] == model) & (summary["mode"] == mode)).any()
                    if not has_runs or np.isfinite(value):
                        continue
                    if model in best.index:  # a best run without this value, e.g. an external log without eval
                        not_logged.append(f"{format_count(p)} {mode}")
                    else:  # every lr diverged: × on the bottom edge, one row per mode
                        any_all_diverged = True
                        ax.plot(p, 0.04 + 0.06 * k, DIVERGED_MARKER, color=st["color"], markersize=7,
                                markeredgewidth=2, transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(mpl.ticker.FixedLocator(params))
            ax.xaxis.set_minor_locator(mpl.ticker.NullLocator())
            ax.xaxis.set_major_formatter(count_formatter())
            ax.set_xlim(params.min() / 1.3, params.max() * 1.3)
            # What is missing goes under the axis, where it can never cover data.
            note = f"\n(not logged: {', '.join(not_logged)})" if not_logged else ""
            ax.set_xlabel(f"parameters (log scale){note}")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
        handles, _ = axes[0].get_legend_handles_labels()
        if any_all_diverged:
            handles.append(Line2D([], [], color="0.2", marker=DIVERGED_MARKER, linestyle="none", markeredgewidth=2,
                                  label="all learning rates diverged"))  # fmt: skip
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
        fig.suptitle("Improvement from fine-tuning vs model size, at each size's best learning rate")
    return fig


def plot_overview(runs: list[Run], summary: pd.DataFrame, x: str = "tokens") -> Figure:
    """Figure 4: one page, a panel per model size with each mode's best-lr curve."""
    models = _model_order(summary)
    modes = [m for m in MODES if any(r.mode == m for r in runs)]
    rows, cols = _grid(len(models), 2)
    with mpl.rc_context(RC):
        fig = Figure(figsize=(7.4, 2.8 * rows + 0.9), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes[len(models) :]:
            ax.set_visible(False)
        for ax, (model, params) in zip(axes, models, strict=False):
            mine = [r for r in runs if r.model == model]
            shown = [r for r in mine if r.lr in _best_lrs(summary, model, r.mode)]
            _setup_curve_axes(ax, x, _curve_ylim(shown or mine))
            notes = []
            for mode in (m for m in modes if any(r.mode == m for r in mine)):
                run = next((r for r in shown if r.mode == mode), None)
                short = mode.replace("optical-mase", "mase")
                notes.append(f"{short} {format_lr_label(run.lr)}" if run else f"{short}: all diverged")
                if run is not None:
                    _draw_curve(ax, run, x, MODE_STYLE[mode], MODE_STYLE[mode]["label"], 1.5, MODES.index(mode))
            # The best lrs go in the title rather than a legend inside the panel, which would cover curves.
            ax.set_title(f"{model} ({format_count(params)} parameters)\nbest lr: {', '.join(notes)}")
        for ax in axes[::cols]:
            ax.set_ylabel(LOSS_LABEL)
        handles = [Line2D([], [], color=MODE_STYLE[m]["color"], linestyle=MODE_STYLE[m]["linestyle"],
                          marker=MODE_STYLE[m]["marker"], label=MODE_STYLE[m]["label"]) for m in modes]  # fmt: skip
        handles.append(Line2D([], [], color="0.5", alpha=0.35, linewidth=0.8, label="raw (unsmoothed)"))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
        fig.suptitle("Fine-tuning loss at the best learning rate of each mode, per model size (smoothed)")
    return fig


def render_all(runs: list[Run], summary: pd.DataFrame, out_dir: str | Path, x: str = "tokens") -> list[Path]:
    """Draw and save every figure (PNG + PDF); returns the written paths."""
    known = set(zip(summary["model"], summary["mode"], summary["lr"], strict=True))
    for run in runs:
        if run.key not in known:
            raise AnalysisError(
                f"run {run.source} ({run.model}, {run.mode}, lr {run.lr:g}) is not in the summary table; re-run summarize.py"
            )
    paths: list[Path] = []
    for model, _ in _model_order(summary):
        mine = [r for r in runs if r.model == model]
        if mine:
            paths += save_figure(plot_loss_curves(mine, summary, x), out_dir, f"loss_curves_{model}")
    paths += save_figure(plot_lr_sensitivity(summary), out_dir, "lr_sensitivity")
    paths += save_figure(plot_scaling(summary), out_dir, "scaling")
    paths += save_figure(plot_overview(runs, summary, x), out_dir, "overview")
    return paths
