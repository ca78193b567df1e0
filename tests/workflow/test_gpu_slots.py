"""The file-lock GPU picker: concurrent jobs get disjoint devices; it is a no-op without GPUs."""

import os
import subprocess
import sys

import pytest

from optical_clm import gpu_slots


def test_concurrent_acquires_get_disjoint_devices(tmp_path):
    first = gpu_slots.try_acquire(2, 4, str(tmp_path))
    second = gpu_slots.try_acquire(2, 4, str(tmp_path))
    assert first is not None and second is not None
    assert first[0] == [0, 1] and second[0] == [2, 3]
    assert gpu_slots.try_acquire(1, 4, str(tmp_path)) is None  # all four held
    for fd in first[1]:
        os.close(fd)  # closing the fd (process exit) frees the device
    third = gpu_slots.try_acquire(1, 4, str(tmp_path))
    assert third is not None and third[0] == [0]


def test_partial_acquire_gives_back_what_it_took(tmp_path):
    held = gpu_slots.try_acquire(1, 2, str(tmp_path))
    assert held is not None
    assert gpu_slots.try_acquire(2, 2, str(tmp_path)) is None
    assert gpu_slots.try_acquire(1, 2, str(tmp_path))[0] == [1]  # device 1 was released again


def test_asking_for_more_gpus_than_exist_fails(tmp_path):
    with pytest.raises(SystemExit, match="--gpus 3 requested but this machine has 2"):
        gpu_slots.acquire(3, 2, str(tmp_path))


def test_no_gpu_runs_the_command_unchanged(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = str(tmp_path)  # no nvidia-smi on PATH: no GPU
    cmd = [sys.executable, "-m", "optical_clm.gpu_slots", "--gpus", "1", "--lock-dir", str(tmp_path), "--"]
    code = "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"
    out = subprocess.run([*cmd, sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "unset"


def test_fake_gpus_get_locked_and_exported(tmp_path):
    smi = tmp_path / "nvidia-smi"  # a stand-in that lists two GPUs
    smi.write_text("#!/bin/sh\necho 'GPU 0: H200 (UUID: a)'\necho 'GPU 1: H200 (UUID: b)'\n")
    smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{tmp_path}:{env['PATH']}"
    held = gpu_slots.try_acquire(1, 2, str(tmp_path / "locks"))  # another job holds GPU 0
    assert held is not None
    cmd = [sys.executable, "-m", "optical_clm.gpu_slots", "--gpus", "1", "--lock-dir", str(tmp_path / "locks"), "--"]
    code = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"
    out = subprocess.run([*cmd, sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_free_port_is_bindable():
    port = gpu_slots.free_port()
    assert 1024 <= port < 65536
