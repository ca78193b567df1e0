"""GPU only (`pytest -m gpu`): the trainer's micro-steps replayed from a CUDA graph (training.MicroStep) log
what eager micro-steps log, with evaluations and checkpoints between the replays, digital and optical."""

from __future__ import annotations

import json

import pytest
import torch
from test_training import read_log, without_time

from optical_clm import training

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("mode", ["digital", "optical"])
def test_graphed_micro_steps_log_what_eager_ones_log(tmp_path, cli_main, ft_args, monkeypatch, mode):
    captures = []
    capture = training.MicroStep._capture

    def counted_capture(self, x, y):
        capture(self, x, y)
        captures.append(self.graph is not None)  # True: captured (a failed capture continues eagerly)

    monkeypatch.setattr(training.MicroStep, "_capture", counted_capture)
    extra = ("--eval-every", "10", "--checkpoint-every", "5")
    assert cli_main("finetune", *ft_args(tmp_path / "graphed", *extra, mode=mode)) == 0
    assert captures == [True]  # captured once, after the eager steps
    assert cli_main("finetune", *ft_args(tmp_path / "eager", *extra, "--no-cuda-graphs", mode=mode)) == 0
    assert captures == [True]
    graphed, eager = (without_time(read_log(tmp_path / name / "run")) for name in ("graphed", "eager"))
    assert len(graphed) == 24
    if mode == "optical":  # no SDPA: every kernel is deterministic, so bit for bit
        assert graphed == eager
    else:  # SDPA's backward may accumulate in another order from run to run
        for g, e in zip(graphed, eager, strict=True):
            assert float(g["loss"]) == pytest.approx(float(e["loss"]), rel=1e-3)
    metrics = json.loads((tmp_path / "graphed" / "run" / "metrics.json").read_text())
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
