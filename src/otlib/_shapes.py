"""Shape arithmetic shared by the ops and the kernels (imports neither Triton nor any otlib layer)."""

import itertools
from collections.abc import Sequence

import torch


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    """torch.broadcast_shapes, in plain Python for plain int sizes: torch's goes through its symbolic-shape checks,
    48 µs of host time a call on a 2-core CPU (every eager product calls it twice); symbolic sizes (torch.compile) take torch's."""
    if not all(type(size) is int for shape in shapes for size in shape):
        return tuple(torch.broadcast_shapes(*shapes))
    out = []
    for sizes in itertools.zip_longest(*(reversed(shape) for shape in shapes), fillvalue=1):
        kept = set(sizes) - {1}
        if len(kept) > 1:
            raise RuntimeError(f"shapes {[tuple(shape) for shape in shapes]} do not broadcast")
        out.append(kept.pop() if kept else 1)
    return tuple(reversed(out))
