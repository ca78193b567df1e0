"""Test-wide set-up.

TRITON_INTERPRET must be set before any `@triton.jit` kernel module is imported, so it is
decided here, at collection time: without a CUDA GPU, Triton kernels run in the interpreter
on CPU tensors; on a GPU machine they compile for the device.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
