"""Backend choice: CUDA tensors run the Triton kernels, everything else the PyTorch reference.

`OTLIB_FORCE_REFERENCE=1` in the environment (read at import) or `force_reference()` makes
CUDA tensors use the reference too — for A/B tests and for debugging a kernel. Kernel modules
are imported lazily so `import otlib` works without Triton (CPU-only installs, macOS).
"""

import contextlib
import os
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

_force_reference = os.environ.get("OTLIB_FORCE_REFERENCE", "0") == "1"


# The kernels' division-free read-out is verified for levels − 1 ≤ 255; larger level counts run the reference.
MAX_KERNEL_LEVELS = 256


def use_kernels(t: Tensor, levels: int = 2) -> bool:
    """True when `t` lives on a CUDA device, `levels` ≤ MAX_KERNEL_LEVELS and the reference is not forced."""
    return t.is_cuda and levels <= MAX_KERNEL_LEVELS and not _force_reference


@contextlib.contextmanager
def force_reference(enabled: bool = True) -> Iterator[None]:
    """Context manager: run the PyTorch reference even for CUDA tensors (not thread-safe; not for torch.compile)."""
    global _force_reference
    previous, _force_reference = _force_reference, enabled
    try:
        yield
    finally:
        _force_reference = previous


def check_common(levels: int, lut_min: float | None, numerics: str) -> None:
    """One-line errors naming the bad value for the arguments every op shares."""
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")
    if lut_min is not None and not 0.0 <= lut_min < 1.0:
        raise ValueError(f"lut_min must be None or in [0, 1), got {lut_min!r}")
    if numerics not in ("fixed", "mase"):
        raise ValueError(f"numerics must be 'fixed' or 'mase', got {numerics!r}")


def check_state(ranges: Tensor, rng: Tensor) -> None:
    """ranges: fp32 [3, 2]; rng: int64 [3] — shapes and dtypes only (never the values: no host sync)."""
    if tuple(ranges.shape) != (3, 2):
        raise ValueError(f"ranges must have shape (3, 2), got {tuple(ranges.shape)}")
    if tuple(rng.shape) != (3,) or rng.dtype.is_floating_point:
        raise ValueError(f"rng must be an integer tensor of shape (3,), got {rng.dtype} {tuple(rng.shape)}")


def op_entry(
    custom_op: Callable,
    forward: Callable[..., tuple[Tensor, ...]],
    setup_context: Callable,
    backward: Callable,
) -> Callable[..., tuple[Tensor, ...]]:
    """How an op is called: under torch.compile the registered custom op (its fake kernel gives the shapes);
    in eager mode a plain autograd.Function with the same forward and backward, which skips the custom op's
    dispatch and autograd wrappers (about 1 ms of host time per layer step on an H200 host,
    benchmarks/NOTES.md). Outputs after the first (the accumulator min/max) are not differentiable."""

    class EagerFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):  # type: ignore[override]
            # forward(ctx, ...), not a separate setup_context: apply() then does not bind the arguments
            # through inspect.signature (tens of µs per call)
            output = forward(*inputs)
            setup_context(ctx, inputs, output)
            ctx.mark_non_differentiable(*output[1:])
            ctx.set_materialize_grads(False)
            return output

        @staticmethod
        def backward(ctx, *grads):  # type: ignore[override]
            return backward(ctx, *grads)

    def call(*inputs):
        return custom_op(*inputs) if torch.compiler.is_compiling() else EagerFunction.apply(*inputs)

    return call
