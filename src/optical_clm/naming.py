"""Canonical names and paths of the study's results, shared by the Snakemake rules and Python code.

A run is identified by (model, mode, learning rate) and lives in `results/runs/{model}/{mode}/lr{lr}/`.
The learning rate appears in paths as text, so it needs exactly one spelling: `format_lr` writes the
shortest scientific notation that round-trips (`1e-05`, `3e-04`, `2.5e-04`) and `parse_lr` reads it
back with `float()`. Every path template of the workflow is defined here once; `common.smk` fills them
with Snakemake wildcards and the analysis code with values.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

MODES = ("digital", "optical", "optical-mase")

# Wildcard constraints (regular expressions) used by the workflow and by `parse_run_dir`.
MODEL_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
MODE_RE = "|".join(re.escape(m) for m in MODES)
LR_RE = r"[0-9](?:\.[0-9]+)?e[-+][0-9]{2,3}"
DATASET_RE = MODEL_RE

# Path templates; `{model}`, `{mode}`, `{lr}`, `{dataset}` are filled by Snakemake or `str.format`.
CORPUS_TXT = "results/corpus/{dataset}.txt"
CORPUS_META = "results/corpus/{dataset}.json"
TOKENIZER_DIR = "results/tokenizer/{dataset}"
TOKENIZED_DIR = "results/tokenized/{dataset}"
BASE_MODEL_DIR = "results/models/{model}"
RUN_KEY = "{model}/{mode}/lr{lr}"  # one run's identity as a relative path (also its log file names)
RUN_DIR = f"results/runs/{RUN_KEY}"
TRAIN_LOG = RUN_DIR + "/train_log.csv"
METRICS = RUN_DIR + "/metrics.json"
SMOOTHED_LOG = RUN_DIR + "/train_log.smoothed.csv"
CKPT_DIR = f"results/checkpoints/{RUN_KEY}"
PRETRAIN_CKPT_DIR = "results/checkpoints/{model}/pretrain"  # "pretrain" is not a mode: no clash
SUMMARY_CSV = "results/summary.csv"
SUMMARY_MD = "results/summary.md"
FIGURE_DIR = "results/figures"
FIGURES = ("lr_sensitivity", "scaling", "overview")  # plus loss_curves_{model} per model
FIGURE_EXTS = ("png", "pdf")
LOG = "logs/{rule}/{key}.log"  # every job's log; `key` is e.g. RUN_KEY, "{model}" or "{dataset}"
BENCHMARK = "logs/benchmarks/{rule}/{key}.tsv"  # Snakemake's per-job time and memory record

_RUN_DIR_RE = re.compile(rf"(?:^|/)runs/(?P<model>{MODEL_RE})/(?P<mode>{MODE_RE})/lr(?P<lr>{LR_RE})/?$")


def format_lr(lr: float) -> str:
    """The canonical spelling of a learning rate in paths: shortest round-tripping scientific form.

    `format_lr(1e-5) == "1e-05"`, `format_lr(3e-4) == "3e-04"`, `format_lr(2.5e-4) == "2.5e-04"`;
    `parse_lr(format_lr(x)) == x` exactly for every positive finite float.
    """
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"learning rate must be a positive finite number, got {lr!r}")
    for digits in range(17):  # 17 significant digits always round-trip a double
        text = f"{lr:.{digits}e}"
        if float(text) == lr:
            return text
    raise AssertionError(f"unreachable: {lr!r} did not round-trip")  # pragma: no cover


def parse_lr(text: str) -> float:
    """Inverse of `format_lr`; rejects any spelling that is not the canonical one."""
    value = float(text)
    if format_lr(value) != text:
        raise ValueError(f"learning rate {text!r} is not in canonical form (expected {format_lr(value)!r})")
    return value


def run_dir(model: str, mode: str, lr: float) -> str:
    """`results/runs/{model}/{mode}/lr{lr}` for one run, with the canonical lr spelling."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return RUN_DIR.format(model=model, mode=mode, lr=format_lr(lr))


def ckpt_dir(model: str, mode: str, lr: float) -> str:
    """`results/checkpoints/{model}/{mode}/lr{lr}`: resumable state, deliberately not a Snakemake output."""
    return CKPT_DIR.format(model=model, mode=mode, lr=format_lr(lr))


def parse_run_dir(path: str | Path) -> tuple[str, str, float]:
    """(model, mode, lr) from a path ending in `runs/{model}/{mode}/lr{lr}`."""
    match = _RUN_DIR_RE.search(Path(path).as_posix().rstrip("/"))
    if match is None:
        raise ValueError(f"not a run directory (…/runs/MODEL/MODE/lrLR): {str(path)!r}")
    return match["model"], match["mode"], parse_lr(match["lr"])


def figure_paths(models: list[str], out_dir: str = FIGURE_DIR) -> list[str]:
    """Every figure file `plot.py` writes for these models (PNG and PDF of each)."""
    stems = [f"loss_curves_{m}" for m in models] + list(FIGURES)
    return [f"{out_dir}/{stem}.{ext}" for stem in stems for ext in FIGURE_EXTS]
