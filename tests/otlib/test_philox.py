"""Philox4x32-10: the torch implementation against published known answers and against Triton's
`tl.philox` (interpreted on CPU, compiled on GPU), bit for bit, including 64-bit indices and seeds."""

import pytest
import torch

from otlib.ops.philox import philox4, philox_uniform

triton = pytest.importorskip("triton", reason="Triton is not installed")
import triton.language as tl  # noqa: E402

from otlib.kernels.utils import philox_uniform as philox_uniform_jit  # noqa: E402
from otlib.kernels.utils import philox_uniform_tile  # noqa: E402

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


# Random123 known-answer vectors (kat_vectors, philox4x32 with 10 rounds): counter words, key words → 4 words
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize(("ctr", "key", "words"), KAT)
def test_known_answers(ctr, key, words):
    t = [torch.tensor(v, dtype=torch.int64) for v in (*ctr, *key)]
    assert tuple(int(w) for w in philox4(*t)) == words


@triton.jit
def _tile_kernel(out_ptr, rng_ptr, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    # the tile's first counter as a 64-bit base (offset by 2³² − 8, so the 32-bit offsets carry into the high
    # word inside the tile), the rest as 32-bit offsets: the GEMM epilogue's split
    q = N // 4
    base = tl.program_id(0).to(tl.int64) * BLOCK_M * q + tl.program_id(1) * (BLOCK_N // 4) + (2**32 - 8)
    ctr_off = tl.arange(0, BLOCK_M)[:, None] * q + tl.arange(0, BLOCK_N // 4)[None, :]
    u = philox_uniform_tile(
        tl.load(rng_ptr), base, ctr_off, tl.load(rng_ptr + 1), tl.load(rng_ptr + 2), BLOCK_M, BLOCK_N
    )
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], u, mask=mask)


@pytest.mark.parametrize(("block_m", "block_n"), [(16, 32), (32, 64)])
def test_tile_uniforms_equal_flat_index_uniforms(block_m, block_n):
    m, n = 37, 92  # n % 4 == 0, neither a multiple of the tile
    out = torch.empty(m, n, device=DEVICE)
    rng = torch.tensor([2**33 + 7, 11, 3], device=DEVICE)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _tile_kernel[grid](out, rng, m, n, BLOCK_M=block_m, BLOCK_N=block_n)
    assert torch.equal(out.view(-1), philox_uniform(m * n, 2**33 + 7, 11, 3, 4 * (2**32 - 8), DEVICE))


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
