"""The three CLIs (smooth.py, summarize.py, plot.py): outputs, one-line errors, and a torch-free plot.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from optical_clm.analysis.smoothing import SMOOTHED_COLUMNS, ema

from .synthetic import write_external, write_study

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_{name}", ROOT / "workflow" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smooth_cli(study, tmp_path, capsys):
    run_dir = study[0][0]
    out = tmp_path / "train_log.smoothed.csv"
    assert _script("smooth").main(["--log", str(run_dir / "train_log.csv"), "--out", str(out), "--weight", "0.7"]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == SMOOTHED_COLUMNS
    raw = pd.read_csv(run_dir / "train_log.csv")["loss"].to_numpy()
    np.testing.assert_allclose(df["loss_smooth"], ema(raw, 0.7), rtol=1e-12)
    assert out.stat().st_mode & 0o044  # readable by others, like any file (not mkstemp's 0600)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left behind
    # Bad values: one line naming them, exit code 2, nothing written.
    assert _script("smooth").main(["--log", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"smooth.py: error: training log not found: {tmp_path / 'nope.csv'}"
    assert _script("smooth").main(["--log", str(run_dir / "train_log.csv"), "--out", str(out), "--weight", "1.5"]) == 2
    assert "EMA weight must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_summarize_then_plot_end_to_end_without_torch(tmp_path):
    run_dirs = write_study(tmp_path, scale=0.02, sizes=("clm-60m", "clm-600m"), modes=("digital", "optical"))
    manifest = write_external(tmp_path, 0.02, np.random.default_rng(3), "yaml")
    for d in run_dirs:
        assert (
            _script("smooth").main(["--log", str(d / "train_log.csv"), "--out", str(d / "train_log.smoothed.csv")]) == 0
        )
    runs = [str(d) for d in run_dirs]
    out_csv, out_md = tmp_path / "summary.csv", tmp_path / "summary.md"
    argv = ["--runs", *runs, "--external", str(manifest), "--out-csv", str(out_csv), "--out-md", str(out_md)]
    assert _script("summarize").main(argv) == 0
    table = pd.read_csv(out_csv)
    assert len(table) == 2 * 2 * 3 + 2 and "clm-1b" in set(table["model"]) and out_md.read_text().startswith("# ")
    # plot.py in a fresh interpreter: draws every figure and never imports torch or training code.
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['plot.py', '--summary', {str(out_csv)!r}, '--runs', *{runs!r}, '--external', {str(manifest)!r},"
        f" '--out-dir', {str(tmp_path / 'figs')!r}]\n"
        "try:\n    runpy.run_path('workflow/scripts/plot.py', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'otlib') or m.endswith('training')]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    stems = [
        "loss_curves_clm-1b",
        "loss_curves_clm-600m",
        "loss_curves_clm-60m",
        "lr_sensitivity",
        "overview",
        "scaling",
    ]
    assert names == sorted(f"{s}.{e}" for s in stems for e in ("pdf", "png"))


def test_plot_cli_error_names_bad_file(tmp_path, capsys):
    argv = ["--summary", str(tmp_path / "summary.csv"), "--runs", str(tmp_path), "--out-dir", str(tmp_path / "f")]
    assert _script("plot").main(argv) == 2
    assert f"plot.py: error: run folder {tmp_path}: metrics.json not found" in capsys.readouterr().err
