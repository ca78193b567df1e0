"""The tiny study (config.tiny.yaml) run for real in a temporary copy of the repository, then its caching.

One module-scoped run (every stage, about a minute on 2 cores), then checks that build on it in order:
nothing left to do; a plotting-only change reruns only the plot; a smoothing change reruns only the
analysis; training code touched but unchanged reruns nothing, changed reruns training; the report
renders; and a fine-tune killed mid-way resumes from its checkpoint with --rerun-incomplete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from optical_clm import naming

from .helpers import TINY, copy_repo, env_for, planned_jobs, snakemake

CONFIG = ("--configfile", TINY)
RUN = "results/runs/t1/digital/lr1e-03"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    start = time.perf_counter()
    snakemake("--cores", "2", *CONFIG, cwd=repo)
    print(f"tiny study: {time.perf_counter() - start:.1f} s")
    return repo


def test_every_output_log_and_benchmark_is_written(study):
    runs = [naming.run_dir(m, mode, 1e-3) for m in ("t1", "t2") for mode in ("digital", "optical")]
    for run in runs:
        log = pd.read_csv(study / run / "train_log.csv")
        assert list(log.columns[:3]) == ["step", "tokens", "loss"] and log["step"].tolist() == list(range(1, 11))
        assert json.loads((study / run / "metrics.json").read_text())["mode"] in run
        assert (study / run / "train_log.smoothed.csv").is_file()
        assert not any((study / run.replace("runs", "checkpoints")).glob("step*"))  # removed when finished
    for path in [*naming.figure_paths(["t1", "t2"]), naming.SUMMARY_CSV, naming.SUMMARY_MD]:
        assert (study / path).stat().st_size > 0, path
    assert len(pd.read_csv(study / naming.SUMMARY_CSV)) == 4
    logs = sorted(p.relative_to(study / "logs").parts[0] for p in (study / "logs").rglob("*.log"))
    assert Counter(logs) == Counter(
        corpus=1, tokenizer=1, tokenize=1, pretrain=2, finetune=4, smooth=4, summarize=1, plot=1
    )
    assert len(list((study / "logs/benchmarks").rglob("*.tsv"))) == 15


def test_second_run_has_nothing_to_do(study):
    assert "Nothing to be done" in snakemake("-n", *CONFIG, cwd=study).stdout


def test_plot_code_change_reruns_only_plot(study):
    script = study / "workflow/scripts/plot.py"
    script.write_text(script.read_text() + "\n# a reader asked for larger fonts\n")  # kept: the copy is ours
    assert planned_jobs(*CONFIG, cwd=study) == Counter(plot=1, all=1)
    train_log = study / RUN / "train_log.csv"
    before = train_log.stat().st_mtime_ns
    snakemake("--cores", "2", *CONFIG, cwd=study)
    assert train_log.stat().st_mtime_ns == before
    assert planned_jobs(*CONFIG, cwd=study) == Counter()


def test_smoothing_change_reruns_only_analysis(study):
    counts = planned_jobs(*CONFIG, "--config", 'smoothing={"weight": "0.8"}', cwd=study)
    assert counts == Counter(smooth=4, summarize=1, plot=1, all=1)
    # a setting of another smoothing method is not passed on, so it changes nothing
    assert planned_jobs(*CONFIG, "--config", 'smoothing={"sigma": "5.0"}', cwd=study) == Counter()


def test_training_code_reruns_by_content_not_mtime(study):
    module = study / "src/otlib/__init__.py"
    original = module.read_text()
    os.utime(module)  # as a `git checkout` that leaves the file as it was
    assert planned_jobs(*CONFIG, cwd=study) == Counter()
    module.write_text(original + "\n# changed\n")
    try:
        counts = planned_jobs(*CONFIG, cwd=study)
        assert counts["pretrain"] == 2 and counts["finetune"] == 4 and counts["plot"] == 1
        assert counts["corpus"] == counts["tokenize"] == 0
        # figures from the existing runs anyway (docs/workflow.md): training is not allowed, so nothing to do
        pinned = ("--allowed-rules", "smooth", "summarize", "plot", "figures", "--", "figures")
        assert planned_jobs(*CONFIG, *pinned, cwd=study) == Counter()
    finally:
        module.write_text(original)
    assert planned_jobs(*CONFIG, cwd=study) == Counter()


def test_report_renders(study):
    snakemake("--report", "results/report.html", *CONFIG, cwd=study)
    html = (study / "results/report.html").read_text(errors="replace")
    assert "lr_sensitivity.png" in html and "summary.csv" in html


def test_killed_finetune_resumes_from_checkpoint(study):
    """SIGKILL a fine-tune (and Snakemake) after its first checkpoint; --rerun-incomplete resumes it."""
    longer = ["--config", 'finetune={"tokens": "51200", "checkpoint_every": "5"}']  # 200 steps
    args = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        "1",
        *CONFIG,
        *longer,
        "-R",
        "finetune",
        "--",
        f"{RUN}/metrics.json",
    ]
    proc = subprocess.Popen(
        args, cwd=study, env=env_for(study), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    ckpt = study / RUN.replace("runs", "checkpoints")
    deadline = time.monotonic() + 300
    while not list(ckpt.glob("step*/train_state.json")):
        assert proc.poll() is None, "the fine-tune ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (study / RUN / "metrics.json").exists()

    snakemake("--unlock", *CONFIG, cwd=study)
    snakemake("--cores", "1", *CONFIG, *longer, "--rerun-incomplete", "--", f"{RUN}/metrics.json", cwd=study)
    log = (study / "logs/finetune/t1/digital/lr1e-03.log").read_text()
    assert "resumed from" in log
    steps = pd.read_csv(study / RUN / "train_log.csv")["step"].tolist()
    assert steps == list(range(1, 201))  # every step exactly once across the kill
    assert json.loads((study / RUN / "metrics.json").read_text())["steps"] == 200
