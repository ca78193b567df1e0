"""Loading run folders and external (W&B-style) logs: fields, smoothing, divergence, clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from optical_clm.analysis.files import AnalysisError
from optical_clm.analysis.runs import load_run_dir, load_runs
from optical_clm.analysis.smoothing import SmoothingConfig, ema

from .synthetic import DIVERGES, TOKENS_PER_STEP, write_external, write_run

CFG = SmoothingConfig()


def test_run_folder_fields_and_in_process_smoothing(tmp_path):
    run_dir = write_run(tmp_path, "clm-60m", "optical", 3e-6, 0.02, np.random.default_rng(5))
    run = load_run_dir(run_dir, CFG)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run.model, run.params, run.mode, run.lr) == ("clm-60m", metrics["params"], "optical", 3e-6)
    assert run.metrics["eval_loss_before"] == metrics["eval_loss_before"] and not run.diverged
    log = pd.read_csv(run_dir / "train_log.csv")
    np.testing.assert_allclose(run.curve["loss_smooth"], ema(log["loss"].to_numpy(), 0.9), rtol=1e-12)


def test_smoothed_file_is_used_when_present(tmp_path):
    run_dir = write_run(tmp_path, "clm-60m", "digital", 1e-6, 0.02, np.random.default_rng(6))
    n = len(pd.read_csv(run_dir / "train_log.csv"))
    marker = pd.DataFrame({"step": range(1, n + 1), "tokens": 0, "loss": 3.0, "loss_smooth": 2.5, "diverged": False})
    marker.to_csv(run_dir / "train_log.smoothed.csv", index=False)
    assert (load_run_dir(run_dir, CFG).curve["loss_smooth"] == 2.5).all()


def test_diverged_run_from_nan_in_log_and_from_metrics_flag(tmp_path):
    model, mode, lr = DIVERGES
    run = load_run_dir(write_run(tmp_path, model, mode, lr, 0.02, np.random.default_rng(7)), CFG)
    assert run.diverged and run.curve["diverged"].all() and math.isnan(run.curve["loss_smooth"].iloc[-1])
    # Stopped by the trainer's loss threshold: finite log, diverged only in metrics.json.
    run_dir = write_run(tmp_path, "clm-60m", "digital", 1e-5, 0.02, np.random.default_rng(8))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "diverged": True, "diverged_reason": "loss > 3x"}))
    run = load_run_dir(run_dir, CFG)
    assert run.diverged and not run.curve["diverged"].any()


@pytest.mark.parametrize("fmt", ["csv", "yaml"])
def test_external_wandb_exports(tmp_path, fmt):
    manifest = write_external(tmp_path, 0.02, np.random.default_rng(9), fmt)
    runs = load_runs([], manifest, CFG)
    assert [(r.model, r.mode, r.lr) for r in runs] == [("clm-1b", "digital", 1e-7), ("clm-1b", "digital", 3e-7)]
    history = pd.read_csv(tmp_path / "external" / "wandb_1b_lr3e-7.csv")
    kept = history[history["train/loss"].notna()]  # rows with an empty loss cell are skipped
    run = runs[1]
    np.testing.assert_array_equal(run.curve["step"], kept["Step"])
    np.testing.assert_array_equal(run.curve["tokens"], kept["Step"] * TOKENS_PER_STEP)
    np.testing.assert_allclose(run.curve["loss_smooth"], ema(kept["train/loss"].to_numpy(), 0.9), rtol=1e-12)
    assert run.metrics["start_loss"] == kept["train/loss"].iloc[0]
    # The chart export's loss column is found by its ` - train/loss` suffix, not the __MIN/__MAX ones.
    chart = pd.read_csv(tmp_path / "external" / "wandb_1b_lr1e-7.csv")
    np.testing.assert_array_equal(runs[0].curve["loss"], chart["clm-1b-lr1e-7 - train/loss"])
    # Nothing the logs lack is invented.
    for key in ("eval_loss_before", "eval_loss_after", "tokens_per_s"):
        assert math.isnan(run.metrics[key])


def test_external_without_tokens_per_step_has_no_tokens(tmp_path):
    (tmp_path / "log.csv").write_text("_step,loss\n0,3.9\n10,3.7\n20,inf\n")
    (tmp_path / "m.csv").write_text("file,model,params,mode,lr\nlog.csv,ext-1,1000000,optical,1e-4\n")
    (run,) = load_runs([], tmp_path / "m.csv", CFG)
    assert run.curve["tokens"].isna().all() and run.diverged and run.curve["loss_smooth"].notna().sum() == 2


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("file,model,params,mode\nlog.csv,m,1000,digital\n", "entry 1: missing lr"),
        ("file,model,params,mode,lr,color\nlog.csv,m,1000,digital,1e-4,red\n", "unknown key.*color"),
        ("file,model,params,mode,lr\nlog.csv,m,1000,analog,1e-4\n", "mode must be one of.*'analog'"),
        ("file,model,params,mode,lr\nlog.csv,m,-5,digital,1e-4\n", "params must be a positive integer"),
        ("file,model,params,mode,lr\nlog.csv,m/x,1000,digital,1e-4\n", "model name 'm/x'"),
        ("file,model,params,mode,lr\nnope.csv,m,1000,digital,1e-4\n", "file not found"),
        ("file,model,params,mode,lr,loss\nlog.csv,m,1000,digital,1e-4,acc\n", "no column 'acc'"),
    ],
)
def test_bad_manifest_errors_name_the_problem(tmp_path, manifest, message):
    (tmp_path / "log.csv").write_text("Step,train/loss\n1,3.9\n2,3.8\n")
    (tmp_path / "manifest.csv").write_text(manifest)
    with pytest.raises(AnalysisError, match=message):
        load_runs([], tmp_path / "manifest.csv", CFG)


def test_bad_run_folders(tmp_path):
    with pytest.raises(AnalysisError, match=r"metrics\.json not found"):
        load_run_dir(tmp_path, CFG)
    run_dir = write_run(tmp_path, "clm-60m", "digital", 1e-6, 0.02, np.random.default_rng(10))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    del metrics["eval_loss_after"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(AnalysisError, match=r"metrics.json: missing key\(s\) eval_loss_after"):
        load_run_dir(run_dir, CFG)
    with pytest.raises(AnalysisError, match="no runs given"):
        load_runs([], None, CFG)


def test_duplicate_run_is_an_error(tmp_path):
    run_dir = write_run(tmp_path, "clm-60m", "digital", 1e-6, 0.02, np.random.default_rng(11))
    with pytest.raises(AnalysisError, match="appears twice"):
        load_runs([run_dir, run_dir], None, CFG)
