"""Every kernel variant the library launches compiles for Hopper (sm_90a) on this machine, GPU or not: Triton's
front end, passes and ptxas (tests/otlib/compile_sm90.py), which the interpreted CPU tests never run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", reason="Triton is not installed")

SCRIPT = Path(__file__).with_name("compile_sm90.py")


def test_every_kernel_variant_compiles_for_sm90():
    if not (Path(triton.__file__).parent / "backends" / "nvidia").is_dir():
        pytest.skip("this Triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # jitted kernels, not interpreted
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) >= 12 and all(": ok, " in line for line in lines), run.stdout  # one line per variant
