"""The results table: contents, best-learning-rate rule, divergence, sorting, CSV/Markdown round trip."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from optical_clm.analysis.files import AnalysisError
from optical_clm.analysis.summary import COLUMNS, mark_best_lr, read_summary, start_level, to_markdown, write_summary
from optical_clm.naming import MODES

from .synthetic import BEST_LR, DIVERGES, SIZES


def _table(rows):
    return pd.DataFrame(rows, columns=["model", "mode", "lr", "final_loss_smooth", "diverged"])


def test_best_lr_is_lowest_final_loss_among_non_diverged():
    rng = np.random.default_rng(12)
    base = rng.uniform(3.0, 3.5)
    table = _table(
        [
            ("m", "digital", 1e-6, base + 0.2, False),
            ("m", "digital", 3e-6, base, False),
            ("m", "digital", 1e-5, base - 0.5, True),  # lowest loss, but diverged: never the best
            ("m", "optical", 1e-6, base + 0.1, False),  # tie with 3e-6: the smaller lr wins
            ("m", "optical", 3e-6, base + 0.1, False),
            ("m", "optical-mase", 1e-6, base, True),  # all diverged: no best
            ("m", "optical-mase", 3e-6, math.nan, True),
        ]
    )
    assert mark_best_lr(table).tolist() == [False, True, False, True, False, False, False]


def test_start_level_averages_the_first_steps():
    assert start_level(np.array([4.0, 2.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0])) == 3.0  # k = ceil(8/4) = 2
    assert start_level(np.array([float("nan"), 5.0])) == 5.0
    assert start_level(np.arange(100.0)) == 4.5  # k capped at 10


def test_summary_contents(study):
    _, _, runs, table = study
    assert list(table.columns) == COLUMNS and len(table) == len(runs) == 4 * 3 * 3 + 2
    # Sorted by params, then mode in contract order, then lr.
    keys = list(zip(table["params"], table["mode"].map(MODES.index), table["lr"], strict=True))
    assert keys == sorted(keys)
    for run in runs:
        row = table[(table["model"] == run.model) & (table["mode"] == run.mode) & (table["lr"] == run.lr)].iloc[0]
        final = run.curve["loss_smooth"].dropna().iloc[-1]
        assert row["final_loss_smooth"] == final and row["params"] == run.params
        if not row["diverged"]:
            loss = run.curve["loss"].to_numpy()
            start = loss[: min(10, -(-len(loss) // 4))].mean()  # the first steps' mean, as documented
            assert row["start_loss_mean"] == pytest.approx(start, abs=1e-12)
            assert row["improvement"] == pytest.approx(start - final, abs=1e-12)
            before, after = run.metrics["eval_loss_before"], run.metrics["eval_loss_after"]
            assert np.isclose(row["eval_improvement"], before - after, equal_nan=True)
    # One best lr per (model, mode); the synthetic optimum is recovered where it is clear.
    assert (table.groupby(["model", "mode"])["best_lr"].sum() == 1).all()
    for model in SIZES:
        best = table[(table["model"] == model) & (table["mode"] == "digital") & table["best_lr"]]
        assert best["lr"].tolist() == [BEST_LR[model]]


def test_diverged_run_is_marked_and_has_no_improvement(study):
    table = study[3]
    model, mode, lr = DIVERGES
    row = table[(table["model"] == model) & (table["mode"] == mode) & (table["lr"] == lr)].iloc[0]
    assert row["diverged"] and not row["best_lr"] and row["diverged_reason"].startswith("non-finite loss")
    assert math.isnan(row["improvement"]) and math.isnan(row["eval_improvement"])
    assert table["diverged"].sum() == 1


def test_external_rows_have_nan_for_what_they_lack(study):
    table = study[3]
    ext = table[table["model"] == "clm-1b"]
    assert len(ext) == 2 and ext["eval_loss_before"].isna().all() and ext["tokens_per_s"].isna().all()
    assert ext["improvement"].notna().all() and ext["best_lr"].sum() == 1


def test_csv_and_markdown_round_trip(study, tmp_path):
    table = study[3]
    write_summary(table, tmp_path / "summary.csv", tmp_path / "summary.md", "EMA")
    back = read_summary(tmp_path / "summary.csv")
    pd.testing.assert_frame_equal(back[COLUMNS], table, check_dtype=False)
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# Fine-tuning results") and "| model | params | mode | lr |" in md
    assert md.count("\n| clm-") == len(table) and "**3e-6**" in md
    assert to_markdown(table, "EMA") == md


def test_read_summary_errors(tmp_path):
    with pytest.raises(AnalysisError, match=r"run summarize\.py first"):
        read_summary(tmp_path / "missing.csv")
    (tmp_path / "s.csv").write_text("model,lr\nm,1e-5\n")
    with pytest.raises(AnalysisError, match="missing column"):
        read_summary(tmp_path / "s.csv")
