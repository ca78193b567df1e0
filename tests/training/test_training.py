"""One study run end to end on CPU: outputs, determinism, resume after SIGKILL and SIGTERM,
divergence, one-line errors, and pretraining into a folder that fine-tuning loads."""

from __future__ import annotations

import csv
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optical_clm import training

METRIC_KEYS = {
    "model", "model_path", "params", "mode", "lr", "steps", "tokens", "start_loss", "final_loss", "eval_loss_before",
    "eval_loss_after", "eval_ppl_before", "eval_ppl_after", "diverged", "diverged_reason", "wall_time_s",
    "tokens_per_s", "device", "num_processes", "versions", "config",
}  # fmt: skip


def read_log(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "train_log.csv") as f:
        return list(csv.DictReader(f))


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


@pytest.fixture(scope="module")
def reference_run(tiny_assets, tmp_path_factory, ft_args):
    """An uninterrupted tiny fine-tune (24 steps), reused by several tests."""
    from conftest import in_process_cli

    out = tmp_path_factory.mktemp("reference")
    start = time.time()
    with in_process_cli() as call:
        assert call("finetune", *ft_args(out, "--checkpoint-every", "5", "--eval-every", "10")) == 0
    return out, time.time() - start


def test_tiny_run_outputs_and_speed(reference_run):
    out, seconds = reference_run
    assert seconds < 30  # hidden 64, 2 layers (the command line adds ~5 s of imports)
    rows = read_log(out / "run")
    assert list(rows[0]) == list(training.LOG_COLUMNS)
    assert [int(r["step"]) for r in rows] == list(range(1, 25))
    assert [int(r["tokens"]) for r in rows] == [128 * s for s in range(1, 25)]
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(3e-3) and all(a > b for a, b in itertools.pairwise(lrs))  # linear decay
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    assert metrics["steps"] == 24 and metrics["tokens"] == 24 * 128 and not metrics["diverged"]
    assert metrics["final_loss"] == float(rows[-1]["loss"]) and metrics["start_loss"] == float(rows[0]["loss"])
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]  # it learns something
    assert [e["step"] for e in metrics["eval_history"]] == [10, 20]
    assert metrics["config"]["gradient_accumulation"] == 2 and metrics["num_processes"] == 1
    assert not list((out / "ckpt").iterdir())  # finished runs leave no checkpoint to resume from


def test_same_seed_same_log(reference_run, tmp_path, cli_main, ft_args):
    assert cli_main("finetune", *ft_args(tmp_path / "a")) == 0
    assert cli_main("finetune", *ft_args(tmp_path / "b")) == 0
    log_a = without_time(read_log(tmp_path / "a" / "run"))
    assert log_a == without_time(read_log(tmp_path / "b" / "run"))
    # and the same as the reference run, which also checkpointed and evaluated on the way
    assert log_a == without_time(read_log(reference_run[0] / "run"))
    assert cli_main("finetune", *ft_args(tmp_path / "c", "--seed", "1")) == 0
    assert read_log(tmp_path / "c" / "run")[0]["loss"] != log_a[0]["loss"]


def test_accumulation_split_gives_the_same_losses(tmp_path, cli_main, ft_args):
    assert cli_main("finetune", *ft_args(tmp_path / "a", "--per-device-batch-size", "4", "--tokens", "1024")) == 0
    assert cli_main("finetune", *ft_args(tmp_path / "b", "--per-device-batch-size", "1", "--tokens", "1024")) == 0
    a, b = read_log(tmp_path / "a" / "run"), read_log(tmp_path / "b" / "run")
    assert [float(r["loss"]) for r in a] == pytest.approx([float(r["loss"]) for r in b], rel=1e-4)


def test_token_rule_and_saved_model(tiny_assets, tmp_path, cli_main, ft_args):
    from transformers import AutoModelForCausalLM

    args = [str(a) for a in ft_args(tmp_path, "--save-model")]
    i = args.index("--tokens")
    args[i : i + 2] = ["--token-ratio", "0.01"]  # tokens = 0.01 x N_params, as the study's 0.22
    assert cli_main("finetune", *args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["tokens"] == round(0.01 * metrics["params"])
    assert metrics["steps"] == metrics["config"]["tokens"] // 128 > 0
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert saved.num_parameters() == metrics["params_with_input_embedding"]


def test_sigkill_and_sigterm_then_resume_log_each_step_once(reference_run, tmp_path, ft_args):
    from conftest import SCRIPTS

    cmd = [sys.executable, str(SCRIPTS / "finetune.py"), *map(str, ft_args(tmp_path, "--checkpoint-every", "5"))]
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    # 1. SIGKILL as soon as the first checkpoint is published
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 60
    while not list((tmp_path / "ckpt").glob("step*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "run" / "metrics.json").exists()
    # 2. restart; SIGTERM once it has resumed: a checkpoint is written, exit code 143
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    stderr = []
    for line in proc.stderr:
        stderr.append(line)
        if "resumed from" in line:
            proc.send_signal(signal.SIGTERM)
            break
    stderr += proc.stderr.read()
    assert proc.wait() == training.EXIT_PREEMPTED, "".join(stderr)
    assert "SIGTERM: stopping at step" in "".join(stderr)
    assert not (tmp_path / "run" / "metrics.json").exists()
    # 3. restart: it finishes, and its log equals the uninterrupted run's, each step once
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "resumed from" in res.stderr
    assert without_time(read_log(tmp_path / "run")) == without_time(read_log(reference_run[0] / "run"))


def test_huge_lr_diverges_as_a_result(tmp_path, cli_main, ft_args):
    assert cli_main("finetune", *ft_args(tmp_path, lr="1e3")) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["diverged"] and metrics["steps"] < 24
    assert "loss" in metrics["diverged_reason"] and len(read_log(tmp_path / "run")) == metrics["steps"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--data", "missing-dir", "error: no tokenized dataset at missing-dir (missing meta.json)"),
        ("--model", "/no/such/model", "error: --model /no/such/model: not a save_pretrained directory (no config.json)"),
        ("--per-device-batch-size", "3", "error: batch_size 4 is not a multiple of per_device_batch_size 3 x 1 processes"),
        ("--tokens", "64", "error: tokens 64 is less than one step of batch_size x block_size = 128"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(tmp_path, cli_main, ft_args, capsys, flag, value, message):
    args = [str(a) for a in ft_args(tmp_path)]
    args[args.index(flag) + 1] = value
    assert cli_main("finetune", *args) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == message


def test_bad_model_path_from_the_command_line(tmp_path, script, ft_args):
    args = [str(a) for a in ft_args(tmp_path)]
    args[args.index("--model") + 1] = str(tmp_path / "nope")
    res = script("finetune", *args)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: --model {tmp_path}/nope: not a save_pretrained directory (no config.json)"
    ]


def test_pretrain_saves_a_model_finetune_loads(tiny_assets, tmp_path, cli_main, ft_args):
    out = tmp_path / "tiny"
    code = cli_main("pretrain", "--preset", "tiny", "--num-layers", "1", "--tokenizer", tiny_assets["tokenizer"],
                    "--data", tiny_assets["data"], "--out-dir", out, "--tokens", "1280", "--lr", "1e-2",
                    "--batch-size", "4", "--block-size", "32")  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 10 and metrics["model"] == "tiny" and metrics["model_path"] == "preset:tiny"
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    args = [str(a) for a in ft_args(tmp_path / "ft", "--tokens", "256")]
    args[args.index("--model") + 1] = str(out)
    assert cli_main("finetune", *args) == 0
    ft = json.loads((tmp_path / "ft" / "run" / "metrics.json").read_text())
    assert ft["eval_loss_before"] == pytest.approx(metrics["eval_loss_after"], rel=1e-5)  # the same weights


def test_gradient_accumulation_rule():
    assert training.gradient_accumulation(16, 4, 2) == 2
    assert training.gradient_accumulation(16, 16, 1) == 1
    with pytest.raises(ValueError, match="batch_size 16 is not a multiple"):
        training.gradient_accumulation(16, 3, 2)
