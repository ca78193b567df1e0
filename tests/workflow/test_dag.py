"""Static checks of the workflow: lint, and dry-runs of each study with the expected jobs per rule.

Dry-runs use `--forceall` so they list every job of the study whatever is already in results/.
"""

from collections import Counter

import pytest
import yaml

from .helpers import ROOT, TINY, job_counts, planned_jobs, snakemake


def expected(config_file: str, pretrained_here: bool) -> Counter:
    """Jobs per rule implied by a study config: one fine-tune and one smooth per (model, mode, lr)."""
    cfg = yaml.safe_load((ROOT / config_file).read_text())
    runs = sum(len(m["lrs"]) for m in cfg["models"].values()) * len(cfg["modes"])
    counts = Counter(tokenize=1, finetune=runs, smooth=runs, summarize=1, plot=1, all=1)
    if pretrained_here:
        counts.update(corpus=1, tokenizer=1, pretrain=len(cfg["models"]))
    return counts


def test_lint_is_clean():
    out = snakemake("--lint").stdout
    assert "Congratulations, your workflow is in a good condition!" in out


def test_default_study_jobs():
    counts = planned_jobs("--forceall")
    assert counts == expected("config.yaml", pretrained_here=True)
    assert counts["pretrain"] == 3 and counts["finetune"] == 18  # 3 sizes x 2 modes x 3 lrs


def test_reference_study_jobs():
    counts = planned_jobs("--forceall", "--configfile", "studies/aicrosssim-clm.yaml")
    assert counts == expected("studies/aicrosssim-clm.yaml", pretrained_here=False)
    assert counts["finetune"] == 42  # (3 + 4 + 4 + 3) lrs x 3 modes; hub models: no corpus/tokenizer/pretrain


def test_tiny_study_jobs():
    assert planned_jobs("--forceall", "--configfile", TINY) == expected(TINY, pretrained_here=True)


def test_slurm_profile_dry_run():
    args = ["-n", "--forceall", "--workflow-profile", "profiles/slurm", "--configfile", "studies/aicrosssim-clm.yaml"]
    out = snakemake(*args).stdout
    assert job_counts(out) == expected("studies/aicrosssim-clm.yaml", pretrained_here=False)
    # The cluster profile, not profiles/default (which would cap gpu at 1), sets the fine-tune resources.
    assert "gpu_model=h200" in out and "cpus_per_gpu=8" in out and "runtime=720" in out
    assert "Using workflow specific profile profiles/slurm" in out


def test_multi_gpu_finetune_uses_accelerate_on_a_free_port():
    target = "results/runs/clm-60m/optical/lr1e-05/metrics.json"
    args = ["-n", "-p", "--forceall", "--workflow-profile", "profiles/slurm", "--configfile"]
    out = snakemake(*args, "studies/aicrosssim-clm.yaml", "--set-resources", "finetune:gpu=2", "--", target).stdout
    assert (
        "accelerate launch --num_processes 2 --num_machines 1 --main_process_port $(python -m optical_clm.gpu_slots"
        in out
    )
    assert "--model AICrossSim/clm-60m --mode optical" in out and "--lr 1e-05 " in out
    assert "--ckpt-dir results/checkpoints/clm-60m/optical/lr1e-05" in out
    single = snakemake(*args, "studies/aicrosssim-clm.yaml", "--", target).stdout
    assert "accelerate launch" not in single and "-- python workflow/scripts/finetune.py" in single
    assert "--no-cuda-graphs" not in single  # CUDA-graph micro-steps by default (one GPU per run)
    eager = snakemake(
        *args, "studies/aicrosssim-clm.yaml", "--config", 'finetune={"cuda_graphs": "false"}', "--", target
    )
    assert "--no-cuda-graphs" in eager.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('finetune={"batch_size": "0"}', "invalid config: finetune.batch_size: 0 is less than the minimum of 1"),
        ("modes=[digital,analog]", "invalid config: modes.1: 'analog' is not one of"),
        ('smoothing={"weight": "heavy"}', "invalid config: smoothing.weight: 'heavy' is not of type 'number'"),
    ],
)
def test_invalid_config_fails_before_any_job(override, message):
    proc = snakemake("-n", "--config", override, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stdout.splitlines() if "invalid config" in line]
    assert errors == [f"Error: {errors[0].removeprefix('Error: ')}"] and message in errors[0]
    assert "Building DAG" not in proc.stdout


def test_config_values_from_the_command_line_are_coerced():
    """`--config` hands nested values over as strings; they must still validate as numbers."""
    counts = planned_jobs(
        "--forceall", "--config", 'finetune={"batch_size": "4", "tokens": "2.0e4"}', "modes=[digital]"
    )
    assert counts["finetune"] == 9
