"""The canonical learning-rate spelling and run paths shared by the workflow and the analysis code."""

import random

import pytest

from optical_clm import naming


@pytest.mark.parametrize(
    ("lr", "text"),
    [(1e-5, "1e-05"), (3e-4, "3e-04"), (2.5e-4, "2.5e-04"), (0.1, "1e-01"), (1e-7, "1e-07"), (5.0, "5e+00")],
)
def test_format_lr_examples(lr, text):
    assert naming.format_lr(lr) == text
    assert naming.parse_lr(text) == lr


def test_format_lr_round_trips_random_floats():
    rng = random.Random(1234)
    for _ in range(2000):
        lr = 10 ** rng.uniform(-9, 1) * rng.random()
        if lr <= 0:
            continue
        text = naming.format_lr(lr)
        assert float(text) == lr
        assert naming.parse_lr(text) == lr
        assert naming.re.fullmatch(naming.LR_RE, text), text


@pytest.mark.parametrize("bad", [0.0, -1e-4, float("nan"), float("inf")])
def test_format_lr_rejects_non_positive(bad):
    with pytest.raises(ValueError, match="learning rate"):
        naming.format_lr(bad)


@pytest.mark.parametrize("text", ["1.0e-05", "0.00001", "1e-5", "10e-06"])
def test_parse_lr_rejects_non_canonical(text):
    with pytest.raises(ValueError, match="canonical"):
        naming.parse_lr(text)


def test_run_dir_round_trip():
    path = naming.run_dir("clm-60m", "optical-mase", 3e-6)
    assert path == "results/runs/clm-60m/optical-mase/lr3e-06"
    assert naming.parse_run_dir(path + "/") == ("clm-60m", "optical-mase", 3e-6)
    assert naming.ckpt_dir("tiny", "digital", 1e-3) == "results/checkpoints/tiny/digital/lr1e-03"


def test_run_dir_rejects_unknown_mode_and_bad_path():
    with pytest.raises(ValueError, match="mode"):
        naming.run_dir("tiny", "analog", 1e-3)
    with pytest.raises(ValueError, match="not a run directory"):
        naming.parse_run_dir("results/runs/tiny/digital")


def test_figure_paths_cover_png_and_pdf():
    paths = naming.figure_paths(["a", "b"])
    assert "results/figures/loss_curves_a.png" in paths
    assert "results/figures/overview.pdf" in paths
    assert len(paths) == 2 * (2 + len(naming.FIGURES))
