"""Philox4x32-10 counter-based RNG in plain PyTorch, bit-identical to Triton's `tl.philox`.

Why: the optical read-out needs one dither value per output element that depends only on
(seed, call counter, stream id, global element index) — never on tile size, device or launch
order — so the CPU reference and the GPU kernels draw exactly the same numbers.

Contract (docs/numerics.md): element i takes output word i mod 4 of Philox at counter
c0/c1 = (i div 4) low/high 32 bits, c2 = call counter low 32 bits, c3 = stream id, with
key = (seed low 32 bits, seed high 32 bits); u = (word >> 8) · 2⁻²⁴ ∈ [0, 1), exact in fp32.
All four words are used (Random123's own usage): one Philox evaluation per four elements.

torch has no usable uint32 arithmetic, so words live in int64 tensors holding values in
[0, 2³²). A 32×32-bit product needs all 64 bits, beyond int64's range; torch's integer kernels wrap
modulo 2⁶⁴, which keeps exactly the unsigned product's bits.
"""

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers (Salmon et al., SC'11)
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_N_ROUNDS = 10
_CPU_CHUNK = 1 << 15


def _mulhilo(a: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """(high, low) 32-bit words of the 64-bit product a·m, for 0 ≤ a, m < 2³².

    The int64 product wraps modulo 2⁶⁴ (two's complement, as torch's CPU and CUDA kernels compute it),
    which keeps exactly the 64 bits of the unsigned product; the known-answer and Triton-equality
    tests pin this down.
    """
    p = a * m
    return (p >> 32) & _MASK32, p & _MASK32


def philox4(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: Tensor, k1: Tensor) -> tuple[Tensor, ...]:
    """The four output words of Philox4x32-10 for broadcastable int64 words in [0, 2³²)."""
    for _ in range(_N_ROUNDS):
        hi_b, lo_b = _mulhilo(c2, _ROUND_B)
        hi_a, lo_a = _mulhilo(c0, _ROUND_A)
        c0, c1, c2, c3 = (hi_b ^ c1).bitwise_xor_(k0), lo_b, (hi_a ^ c3).bitwise_xor_(k1), lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def _as_i64(v: int | Tensor, device: torch.device) -> Tensor:
    """A 0-d int64 tensor on `device` (device tensors stay there: no host sync)."""
    if isinstance(v, Tensor):
        return v.to(device=device, dtype=torch.int64).reshape(())
    return torch.tensor(v, dtype=torch.int64, device=device)


def philox_uniform(
    numel: int,
    seed: int | Tensor,
    counter: int | Tensor = 0,
    stream: int | Tensor = 0,
    offset: int = 0,
    device: torch.device | str = "cpu",
) -> Tensor:
    """fp32 uniforms u[i] ∈ [0, 1) for global element indices offset .. offset + numel − 1."""
    device = torch.device(device)
    s = _as_i64(seed, device)
    k0, k1 = s & _MASK32, (s >> 32) & _MASK32  # arithmetic shift + mask = high word of the uint64 view
    c2 = _as_i64(counter, device) & _MASK32
    c3 = _as_i64(stream, device) & _MASK32
    out = torch.empty(numel, dtype=torch.float32, device=device)
    # CPU: chunks small enough to stay in cache (and out of the allocator's page-faulting mmap path)
    chunk = _CPU_CHUNK if device.type == "cpu" else max(numel, 1)
    for start in range(0, numel, chunk):
        stop = min(start + chunk, numel)
        first, last = (start + offset) // 4, (stop - 1 + offset) // 4  # the counters this chunk touches
        ctr = torch.arange(first, last + 1, dtype=torch.int64, device=device)
        words = torch.stack(philox4(ctr & _MASK32, (ctr >> 32) & _MASK32, c2, c3, k0, k1), dim=1).view(-1)
        skip = (start + offset) % 4
        w = words[skip : skip + stop - start]
        torch.mul((w >> 8).to(torch.float32), 2.0**-24, out=out[start:stop])
    return out


def single_dither(seed: int | Tensor, device: torch.device | str) -> Tensor:
    """numerics="mase": ONE uniform per call from the seed alone (all counter words 0), as a 0-d tensor.

    Reproduces the peer's defect 1 (a constant offset instead of per-element dither, and a seed
    that never advances); see docs/numerics.md.
    """
    device = torch.device(device)
    s = _as_i64(seed, device)
    zero = torch.zeros((), dtype=torch.int64, device=device)
    w0 = philox4(zero, zero, zero, zero, s & _MASK32, (s >> 32) & _MASK32)[0]
    return (w0 >> 8).to(torch.float32) * 2.0**-24
