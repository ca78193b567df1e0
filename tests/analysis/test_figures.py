"""Figures: axes, labels, scales and lines of each Figure object; every file written; byte-reproducible."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from optical_clm.analysis.figures import (
    plot_loss_curves,
    plot_lr_sensitivity,
    plot_overview,
    plot_scaling,
    render_all,
)
from optical_clm.analysis.files import AnalysisError, save_figure
from optical_clm.analysis.runs import load_runs
from optical_clm.analysis.smoothing import SmoothingConfig
from optical_clm.analysis.style import format_count, format_lr_label
from optical_clm.analysis.summary import build_summary

from .synthetic import DIVERGES, SIZES


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _diverged_markers(ax):
    return [line for line in ax.get_lines() if line.get_marker() == "x" and len(line.get_xdata())]


def test_loss_curves_one_panel_per_mode_one_line_per_lr(study):
    _, _, runs, summary = study
    mine = [r for r in runs if r.model == "clm-600m"]
    fig = plot_loss_curves(mine, summary)
    axes = _visible(fig)
    assert [ax.get_title().split("\n")[0] for ax in axes] == [
        "digital (baseline)",
        "optical",
        "optical (mase numerics)",
    ]
    assert all(ax.get_xlabel() == "training tokens" for ax in axes)
    assert axes[0].get_ylabel() == "training loss (nats/token)"
    assert "clm-600m" in fig.get_suptitle() and "604M" in fig.get_suptitle()
    for ax, mode in zip(axes, ["digital", "optical", "optical-mase"], strict=True):
        n_runs = sum(r.mode == mode for r in mine)
        n_div = sum(r.mode == mode and r.diverged for r in mine)
        assert len(ax.get_lines()) == 2 * n_runs + n_div  # raw + smoothed per lr, × where a curve stops
        assert len(_diverged_markers(ax)) == n_div == (1 if mode == DIVERGES[1] else 0)
    assert [t.get_text() for t in fig.legends[0].get_texts()][:3] == ["3e-7", "1e-6", "3e-6"]
    assert axes[1].get_title().endswith("best lr 1e-6")


def test_lr_sensitivity_log_x_and_diverged_marked_not_dropped(study):
    summary = study[3]
    fig = plot_lr_sensitivity(summary)
    axes = _visible(fig)
    assert len(axes) == len(SIZES) + 1  # the external 1B model too
    assert all(ax.get_xscale() == "log" and ax.get_xlabel() == "learning rate" for ax in axes)
    assert "nats/token" in axes[0].get_ylabel()
    titles = [ax.get_title() for ax in axes]
    assert titles[0].startswith("clm-60m") and titles[-1].startswith("clm-1b")
    ax600 = axes[titles.index("clm-600m (604M params)")]
    (cross,) = _diverged_markers(ax600)
    assert cross.get_xdata()[0] == DIVERGES[2]
    assert any(t.get_text() == "diverged" for t in ax600.texts)
    assert sum(len(_diverged_markers(ax)) for ax in axes) == 1


def test_scaling_plots_best_lr_improvement_against_params(study):
    summary = study[3]
    fig = plot_scaling(summary)
    train, held_out = _visible(fig)
    assert train.get_xscale() == held_out.get_xscale() == "log"
    assert train.get_xlabel() == "parameters (log scale)"
    assert "not logged: 1B digital" in held_out.get_xlabel()  # external logs have no held-out loss
    assert "start − final" in train.get_ylabel() and "before − after" in held_out.get_ylabel()
    mode_lines = [line for line in train.get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in mode_lines] == ["digital (baseline)", "optical", "optical (mase numerics)"]
    best = summary[(summary["mode"] == "digital") & summary["best_lr"]].sort_values("params")
    np.testing.assert_allclose(mode_lines[0].get_xdata(), best["params"])
    np.testing.assert_allclose(mode_lines[0].get_ydata(), best["improvement"])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["digital (baseline)", "optical", "optical (mase numerics)"]


def test_scaling_marks_sizes_where_every_lr_diverged(study):
    summary = study[3].copy()
    sel = (summary["model"] == "clm-400m") & (summary["mode"] == "optical")
    summary.loc[sel, "diverged"], summary.loc[sel, "best_lr"] = True, False
    fig = plot_scaling(summary)
    assert all(len(_diverged_markers(ax)) == 1 for ax in _visible(fig))
    assert "all learning rates diverged" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_overview_has_a_panel_per_size(study):
    _, _, runs, summary = study
    fig = plot_overview(runs, summary)
    axes = _visible(fig)
    assert len(axes) == len(SIZES) + 1
    assert axes[0].get_title().startswith("clm-60m (60.1M parameters)\nbest lr: digital")
    assert all(ax.get_xlabel() == "training tokens" for ax in axes)
    assert len(axes[0].get_lines()) == 2 * 3  # raw + smoothed of each mode's best run


def _png_dpi(path) -> float:
    data = path.read_bytes()
    i = data.index(b"pHYs")
    ppm = struct.unpack(">I", data[i + 4 : i + 8])[0]  # pixels per metre
    return ppm * 0.0254


def test_render_all_writes_every_file(study, tmp_path):
    _, _, runs, summary = study
    models = ["clm-60m", "clm-600m", "clm-1b"]  # a subset keeps the test fast: smallest, diverged, external
    runs = [r for r in runs if r.model in models]
    paths = render_all(runs, summary[summary["model"].isin(models)], tmp_path)
    stems = [f"loss_curves_{m}" for m in models] + ["lr_sensitivity", "scaling", "overview"]
    assert sorted(p.name for p in paths) == sorted(f"{s}.{e}" for s in stems for e in ("png", "pdf"))
    for path in paths:
        assert path.stat().st_size > 5000
        assert path.read_bytes()[:4] == (b"\x89PNG" if path.suffix == ".png" else b"%PDF")
    assert _png_dpi(tmp_path / "scaling.png") >= 150


def test_figures_are_byte_reproducible(study, tmp_path):
    summary = study[3]
    for out in ("a", "b"):
        save_figure(plot_scaling(summary), tmp_path / out, "scaling")
    for ext in ("png", "pdf"):
        assert (tmp_path / "a" / f"scaling.{ext}").read_bytes() == (tmp_path / "b" / f"scaling.{ext}").read_bytes()


def test_run_missing_from_summary_is_an_error(study, tmp_path):
    _, _, runs, summary = study
    with pytest.raises(AnalysisError, match="not in the summary table"):
        render_all(runs, summary[summary["model"] != "clm-60m"], tmp_path)


def test_curves_need_tokens_unless_plotted_against_steps(tmp_path):
    (tmp_path / "log.csv").write_text("Step,train/loss\n1,3.9\n2,3.8\n3,3.75\n4,3.7\n")
    (tmp_path / "m.yaml").write_text("- {file: log.csv, model: ext, params: 5000000, mode: digital, lr: 1.0e-4}\n")
    runs = load_runs([], tmp_path / "m.yaml", SmoothingConfig())
    summary = build_summary(runs)
    with pytest.raises(AnalysisError, match="no tokens values to plot against"):
        plot_loss_curves(runs, summary)
    fig = plot_loss_curves(runs, summary, x="step")
    assert _visible(fig)[0].get_xlabel() == "optimizer step"


def test_number_formats_for_labels():
    assert [format_lr_label(x) for x in (1e-5, 2.5e-6, 0.001, 6e-2, 1.25e-5)] == [
        "1e-5",
        "2.5e-6",
        "1e-3",
        "6e-2",
        "1.25e-5",
    ]
    assert [format_count(x) for x in (60_123_456, 1.0e9, 180_000, 13_200_000, 512)] == [
        "60.1M",
        "1B",
        "180k",
        "13.2M",
        "512",
    ]
