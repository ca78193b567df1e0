"""A realistic synthetic study for the analysis tests: run folders as training writes them, plus external logs.

Shaped like the reference study: models of 60M/200M/400M/600M parameters, modes digital,
optical and optical-mase, three learning rates per size (smaller for larger models), 22 tokens
per 100 parameters at 16 × 1024 tokens per step. Loss decays from about 4 to about 3 with batch
noise. Digital fine-tuning helps more as models grow; optical helps less beyond 200M (as the
reference study found); the largest learning rate of the 600M optical model diverges to NaN.
External logs: a 1B digital model "trained elsewhere", as two W&B-style CSV exports + a manifest.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

TOKENS_PER_STEP = 16 * 1024
SIZES = {"clm-60m": 60_123_456, "clm-200m": 201_000_000, "clm-400m": 398_500_000, "clm-600m": 604_000_000}
LRS = {"clm-60m": (1e-6, 3e-6, 1e-5), "clm-200m": (1e-6, 3e-6, 1e-5), "clm-400m": (3e-7, 1e-6, 3e-6),
       "clm-600m": (3e-7, 1e-6, 3e-6)}  # fmt: skip
BEST_LR = {"clm-60m": 3e-6, "clm-200m": 3e-6, "clm-400m": 1e-6, "clm-600m": 1e-6}
GAIN = {  # loss drop at the best lr, per mode: optical peaks at 200M and degrades after
    "digital": {"clm-60m": 0.70, "clm-200m": 0.80, "clm-400m": 0.88, "clm-600m": 0.95},
    "optical": {"clm-60m": 0.45, "clm-200m": 0.55, "clm-400m": 0.35, "clm-600m": 0.20},
    "optical-mase": {"clm-60m": 0.30, "clm-200m": 0.32, "clm-400m": 0.18, "clm-600m": 0.08},
}
DIVERGES = ("clm-600m", "optical", 3e-6)


def loss_curve(rng: np.random.Generator, n: int, start: float, gain: float, noise: float = 0.06) -> np.ndarray:
    """Exponential approach from `start` to `start - gain` plus Gaussian batch noise."""
    t = np.arange(n)
    return start - gain * (1 - np.exp(-t / (n / 4))) + rng.normal(0, noise, n)


def write_run(root: Path, model: str, mode: str, lr: float, scale: float, rng: np.random.Generator) -> Path:
    """One run folder: train_log.csv + metrics.json with every field of the contract."""
    params = SIZES[model]
    steps = max(20, round(22 * params / 100 / TOKENS_PER_STEP * scale))
    start = 4.1 - 0.35 * math.log10(params / 60e6)
    gain = GAIN[mode][model] * math.exp(-0.5 * (math.log10(lr / BEST_LR[model]) / 0.45) ** 2)
    loss = loss_curve(rng, steps, start, gain)
    diverged = (model, mode, lr) == DIVERGES
    if diverged:  # blows up after 40% of the run; the trainer stops at the first NaN
        cut = int(0.4 * steps)
        loss[cut:] = loss[cut:] + np.expm1(np.arange(steps - cut) / (0.05 * steps))
        steps = cut + int(0.15 * steps)
        loss = loss[:steps]
        loss[-1] = math.nan
    step = np.arange(1, steps + 1)
    run = root / "runs" / model / mode / f"lr{lr:.0e}"
    run.mkdir(parents=True, exist_ok=True)
    elapsed = step * 0.9
    pd.DataFrame(
        {
            "step": step,
            "tokens": step * TOKENS_PER_STEP,
            "loss": loss,
            "lr": lr,
            "grad_norm": rng.uniform(0.5, 2, steps),
            "elapsed_s": elapsed,
        }
    ).to_csv(run / "train_log.csv", index=False)
    eval_before = start - 0.05
    eval_after = math.nan if diverged else eval_before - 0.8 * gain + rng.normal(0, 0.01)
    metrics = {
        "model": model, "model_path": f"AICrossSim/{model}", "params": params, "mode": mode, "lr": lr,
        "steps": int(steps), "tokens": int(steps * TOKENS_PER_STEP), "start_loss": float(loss[0]),
        "final_loss": float(loss[-1]), "eval_loss_before": eval_before, "eval_loss_after": eval_after,
        "eval_ppl_before": math.exp(eval_before), "eval_ppl_after": math.exp(eval_after),
        "diverged": diverged, "diverged_reason": f"non-finite loss at step {steps}" if diverged else None,
        "wall_time_s": float(elapsed[-1]), "tokens_per_s": TOKENS_PER_STEP / 0.9, "device": "NVIDIA H200",
        "num_processes": 1, "versions": {"python": "3.11", "torch": "2.13.0", "transformers": "5.24.0",
        "accelerate": "1.15.0", "triton": "3.7.1", "otlib": "0.1.0"},
        "config": {"lr": lr, "batch_size": 16, "block_size": 1024, "mode": mode},
    }  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return run


def write_external(root: Path, scale: float, rng: np.random.Generator, manifest_format: str = "csv") -> Path:
    """Two W&B exports of a 1B digital model: a history export (`Step`, `train/loss`, gaps) and a
    chart export (`Step`, `<run> - train/loss`, `__MIN`/`__MAX`); returns the manifest path."""
    ext = root / "external"
    ext.mkdir(parents=True, exist_ok=True)
    n = max(20, round(22 * 1.0e9 / 100 / TOKENS_PER_STEP * scale))
    a = loss_curve(rng, n, 3.3, 0.9)
    history = pd.DataFrame({"Step": np.arange(1, n + 1), "train/loss": a, "eval/loss": ""})
    history["train/loss"] = history["train/loss"].map(repr)
    history.loc[::10, "train/loss"] = ""  # W&B leaves cells empty where a metric was not logged
    history.to_csv(ext / "wandb_1b_lr3e-7.csv", index=False)
    b = loss_curve(rng, n, 3.3, 0.6)
    chart = pd.DataFrame({"Step": np.arange(1, n + 1), "clm-1b-lr1e-7 - train/loss": b,
                          "clm-1b-lr1e-7 - train/loss__MIN": b - 0.1, "clm-1b-lr1e-7 - train/loss__MAX": b + 0.1})  # fmt: skip
    chart.to_csv(ext / "wandb_1b_lr1e-7.csv", index=False)
    entries = [
        {"file": "wandb_1b_lr3e-7.csv", "model": "clm-1b", "params": 1_000_000_000, "mode": "digital", "lr": 3e-7,
         "tokens_per_step": TOKENS_PER_STEP},
        {"file": "wandb_1b_lr1e-7.csv", "model": "clm-1b", "params": 1_000_000_000, "mode": "digital", "lr": 1e-7,
         "tokens_per_step": TOKENS_PER_STEP},
    ]  # fmt: skip
    if manifest_format == "csv":
        path = ext / "manifest.csv"
        pd.DataFrame(entries).to_csv(path, index=False)
    else:
        import yaml

        path = ext / "manifest.yaml"
        path.write_text(yaml.safe_dump({"runs": entries}))
    return path


def write_study(root: Path, scale: float = 0.05, seed: int = 0, sizes: tuple[str, ...] = tuple(SIZES),
                modes: tuple[str, ...] = ("digital", "optical", "optical-mase")) -> list[Path]:  # fmt: skip
    """All run folders of the synthetic study under `root/runs`; `scale` shrinks the step counts."""
    rng = np.random.default_rng(seed)
    return [write_run(root, m, mode, lr, scale, rng) for m in sizes for mode in modes for lr in LRS[m]]
