"""Shared fixtures: one small synthetic study (runs + W&B-style external logs), loaded once per session."""

from __future__ import annotations

import numpy as np
import pytest

from optical_clm.analysis.runs import load_runs
from optical_clm.analysis.smoothing import SmoothingConfig
from optical_clm.analysis.summary import build_summary

from .synthetic import write_external, write_study


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """(run_dirs, manifest, runs, summary) of a study with 20–160 steps per size (scale 0.02)."""
    root = tmp_path_factory.mktemp("study")
    run_dirs = write_study(root, scale=0.02, seed=0)
    manifest = write_external(root, 0.02, np.random.default_rng(1))
    runs = load_runs(run_dirs, manifest, SmoothingConfig())
    return run_dirs, manifest, runs, build_summary(runs)
