"""Philox4x32-10: the torch implementation against published known answers and against Triton's
`tl.philox` (interpreted on CPU, compiled on GPU), bit for bit, including 64-bit indices and seeds."""

import pytest
import torch

from otlib.ops.philox import philox_uniform, philox_word0

triton = pytest.importorskip("triton", reason="Triton is not installed")
import triton.language as tl  # noqa: E402

from otlib.kernels.utils import philox_uniform as philox_uniform_jit  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _uniform_kernel(out_ptr, rng_ptr, n, offset, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    u = philox_uniform_jit(tl.load(rng_ptr), offs + offset, tl.load(rng_ptr + 1), tl.load(rng_ptr + 2))
    tl.store(out_ptr + offs, u, mask=offs < n)


def _kernel_uniform(n: int, seed: int, counter: int, stream: int, offset: int, block: int) -> torch.Tensor:
    out = torch.empty(n, device=DEVICE)
    rng = torch.tensor([seed, counter, stream], device=DEVICE)
    _uniform_kernel[(triton.cdiv(n, block),)](out, rng, n, offset, BLOCK=block)
    return out


# Random123 known-answer vectors (kat_vectors, philox4x32 with 10 rounds): counter words, key words → word 0
KAT = [
    ((0, 0, 0, 0), (0, 0), 0x6627E8D5),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, 0x408F276D),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), 0xD16CFE09),
]


@pytest.mark.parametrize(("ctr", "key", "word0"), KAT)
def test_known_answers(ctr, key, word0):
    t = [torch.tensor(v, dtype=torch.int64) for v in (*ctr, *key)]
    assert int(philox_word0(*t)) == word0


@pytest.mark.parametrize(
    ("seed", "counter", "stream", "offset"),
    [(0, 0, 0, 0), (1234, 7, 3, 17), (2**40 + 99, 2**32 + 5, 12, 2**33 - 1000), (-5, 1, 0, 0)],
)
def test_torch_matches_triton_bitwise(seed, counter, stream, offset):
    n = 70001
    ref = philox_uniform(n, seed, counter, stream, offset, DEVICE)
    got = _kernel_uniform(n, seed, counter, stream, offset, block=65536 if DEVICE == "cpu" else 1024)
    assert torch.equal(got, ref), f"{int((got != ref).sum())} of {n} uniforms differ"


def test_independent_of_block_size():
    a = _kernel_uniform(5000, 42, 3, 1, 10, block=4096)
    b = _kernel_uniform(5000, 42, 3, 1, 10, block=1024)
    assert torch.equal(a, b)


def test_uniform_moments_and_range():
    u = philox_uniform(200_000, 7, 1, 2)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005
    assert abs(u.var().item() - 1 / 12) < 0.002
    # every value is a multiple of 2^-24 (exact in fp32)
    assert torch.equal(u * 2**24, torch.floor(u * 2**24))


def test_tensor_arguments_equal_ints():
    s, c, st = torch.tensor(99), torch.tensor(4), torch.tensor(2)
    assert torch.equal(philox_uniform(1000, s, c, st, 5), philox_uniform(1000, 99, 4, 2, 5))
