"""Smoothing maths against hand-computed values, and divergence handling of the smoothed curve."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from optical_clm.analysis.files import AnalysisError
from optical_clm.analysis.smoothing import (
    SmoothingConfig,
    ema,
    finite_prefix_length,
    gaussian,
    read_train_log,
    rolling,
    smooth_curve,
)


def test_ema_matches_hand_computed_debiased_values():
    # w = 0.5, x = 1, 2, 3:  s = 0.5, 1.25, 2.125 before debiasing; divided by 1 - 0.5^t = 0.5, 0.75, 0.875.
    np.testing.assert_allclose(ema([1.0, 2.0, 3.0], 0.5), [1.0, 1.25 / 0.75, 2.125 / 0.875], rtol=1e-12)
    # Same thing as an explicit weighted mean: (1·0.25 + 2·0.5 + 3·1) / 1.75.
    assert ema([1.0, 2.0, 3.0], 0.5)[-1] == pytest.approx(4.25 / 1.75, rel=1e-12)


def test_ema_equals_tensorboard_recursion_and_pandas_on_random_data():
    rng = np.random.default_rng(1)
    x, w = rng.normal(3.5, 0.2, 257), 0.93
    s, expected = 0.0, []
    for t, v in enumerate(x, start=1):  # TensorBoard / W&B: last = last·w + (1-w)·v; debias by 1 - w^t
        s = s * w + (1 - w) * v
        expected.append(s / (1 - w**t))
    np.testing.assert_allclose(ema(x, w), expected, rtol=1e-12)
    np.testing.assert_allclose(ema(x, w), pd.Series(x).ewm(alpha=1 - w, adjust=True).mean(), rtol=1e-10)
    np.testing.assert_array_equal(ema(x, 0.0), x)  # weight 0: no smoothing


def test_gaussian_hand_value_edges_and_constant():
    # Centre of a spike of 3 in five points, sigma 1: only d = -2..2 exist, so 3 / (1 + 2e^-1/2 + 2e^-2).
    out = gaussian([0.0, 0.0, 3.0, 0.0, 0.0], 1.0)
    assert out[2] == pytest.approx(3 / (1 + 2 * math.exp(-0.5) + 2 * math.exp(-2)), rel=1e-12)
    np.testing.assert_allclose(out, out[::-1], rtol=1e-12)  # symmetric kernel
    # First point: neighbours d = 0..4 exist, spike at d = 2.
    assert out[0] == pytest.approx(3 * math.exp(-2) / sum(math.exp(-0.5 * d * d) for d in range(5)), rel=1e-12)
    rng = np.random.default_rng(2)
    c = rng.uniform(2, 5)
    np.testing.assert_allclose(gaussian(np.full(30, c), 2.5), c, rtol=1e-12)  # renormalised ends: no droop


def test_rolling_is_a_trailing_mean():
    np.testing.assert_allclose(rolling([1.0, 2.0, 3.0, 4.0], 2), [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(rolling([4.0, 8.0, 6.0], 5), [4.0, 6.0, 6.0])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_curve_stops_at_last_finite_point_and_run_is_marked(bad):
    rng = np.random.default_rng(3)
    loss = rng.normal(3.8, 0.1, 12)
    loss[7] = bad
    loss[9] = 3.0  # a finite value after the first non-finite one still belongs to the diverged tail
    curve = pd.DataFrame({"step": np.arange(1, 13.0), "tokens": np.arange(1, 13.0) * 64, "loss": loss})
    out = smooth_curve(curve, SmoothingConfig(weight=0.8))
    assert list(out.columns) == ["step", "tokens", "loss", "loss_smooth", "diverged"]
    np.testing.assert_allclose(out["loss_smooth"][:7], ema(loss[:7], 0.8), rtol=1e-12)
    assert out["loss_smooth"][7:].isna().all()
    assert out["diverged"].all()
    assert finite_prefix_length(loss) == 7


def test_finite_run_is_not_marked_and_all_nan_run_is():
    rng = np.random.default_rng(4)
    loss = rng.normal(3.5, 0.1, 20)
    curve = pd.DataFrame({"step": np.arange(1.0, 21), "tokens": np.arange(1.0, 21), "loss": loss})
    out = smooth_curve(curve, SmoothingConfig(method="gaussian", sigma=1.5))
    assert not out["diverged"].any() and out["loss_smooth"].notna().all()
    out = smooth_curve(curve.assign(loss=math.nan), SmoothingConfig())
    assert out["diverged"].all() and out["loss_smooth"].isna().all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight": 1.0}, "EMA weight"),
        ({"sigma": 0.0}, "sigma"),
        ({"window": 0}, "window"),
        ({"method": "x"}, "method"),
    ],
)
def test_bad_settings_name_the_value(kwargs, message):
    with pytest.raises(AnalysisError, match=message):
        SmoothingConfig(**kwargs)


def test_read_train_log_errors_name_file_and_value(tmp_path):
    path = tmp_path / "train_log.csv"
    path.write_text("step,loss\n1,3.0\n")
    with pytest.raises(AnalysisError, match=r"train_log.csv: missing column\(s\) tokens"):
        read_train_log(path)
    path.write_text("step,tokens,loss\n1,64,3.0\n2,128,abc\n")
    with pytest.raises(AnalysisError, match=r"'loss' row 2: not a number: 'abc'"):
        read_train_log(path)
    path.write_text("step,tokens,loss\n1,64,3.0\n2,128,nan\n3,192,inf\n")
    assert finite_prefix_length(read_train_log(path)["loss"].to_numpy()) == 1
