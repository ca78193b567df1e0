"""The optical modes: otlib-transformed fine-tunes run, differ from digital, and resume exactly
(otlib's range statistics and RNG counters travel in the checkpoint)."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time

import pytest

from optical_clm import training

otlib = pytest.importorskip("otlib", reason="otlib (the optical library) is not importable")
if not hasattr(otlib, "transform"):
    pytest.skip("otlib.transform is not available yet", allow_module_level=True)


def losses(run_dir):
    with open(run_dir / "train_log.csv") as f:
        return [row["loss"] for row in csv.DictReader(f)]


def sigterm_after_first_checkpoint(ckpt_dir, timeout=60.0) -> threading.Thread:
    """Send this process SIGTERM once a checkpoint is published (the handler runs in the main thread)."""

    def watch():
        deadline = time.time() + timeout
        while not list(ckpt_dir.glob("step*")) and time.time() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("mode", ["optical", "optical-mase"])
def test_optical_run_resumes_exactly(tmp_path, cli_main, ft_args, capsys, mode):
    args = ft_args(tmp_path / "full", "--tokens", "1536", "--checkpoint-every", "4", mode=mode)  # 12 steps
    assert cli_main("finetune", *args) == 0
    metrics = json.loads((tmp_path / "full" / "run" / "metrics.json").read_text())
    assert metrics["mode"] == mode and metrics["steps"] == 12 and not metrics["diverged"]
    assert metrics["versions"]["otlib"] is not None

    digital = ft_args(tmp_path / "digital", "--tokens", "1536")
    assert cli_main("finetune", *digital) == 0
    assert losses(tmp_path / "full" / "run") != losses(tmp_path / "digital" / "run")  # the transform acts

    # pre-empted after its first checkpoint, then started again: the same log, each step once
    args = ft_args(tmp_path / "cut", "--tokens", "1536", "--checkpoint-every", "4", mode=mode)
    watcher = sigterm_after_first_checkpoint(tmp_path / "cut" / "ckpt")
    with pytest.raises(SystemExit) as stopped:
        cli_main("finetune", *args)
    watcher.join()
    assert stopped.value.code == training.EXIT_PREEMPTED
    capsys.readouterr()
    assert cli_main("finetune", *args) == 0
    assert "resumed from" in capsys.readouterr().err
    assert losses(tmp_path / "cut" / "run") == losses(tmp_path / "full" / "run")
