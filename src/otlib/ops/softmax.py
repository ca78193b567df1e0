"""Attention's scaled, masked softmax P = softmax(S · scaling + mask) in fp32, returned in `dtype`.

CUDA tensors run one Triton pass per row forward and one backward (otlib.kernels.softmax: no fp32 T × S
intermediates, P recomputed in the backward from S); everything else, and anything the kernel does not
cover (a non-fp32 mask, rows longer than MAX_COLUMNS, torch.compile, which fuses the torch ops itself), runs
the torch ops of the reference.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from ._dispatch import use_kernels
from .ranges import RangeFold, minmax_fold


def scaled_masked_softmax_reference(scores: Tensor, mask: Tensor | None, scaling: float, dtype: torch.dtype) -> Tensor:
    """The torch ops: S · scaling in S's dtype, + mask (type promotion), softmax in fp32, cast to `dtype`."""
    scores = scores * scaling
    if mask is not None:
        scores = scores + mask
    return F.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)


class _ScaledMaskedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        scores: Tensor,
        mask: Tensor | None,
        scaling: float,
        dtype: torch.dtype,
        fold: RangeFold | None,
        causal_rows: Tensor | None,
        unread_above: bool,
    ) -> Tensor:
        from otlib.kernels.softmax import new_row_pairs, softmax_fwd

        # the rows' max and sum (8 bytes a row): the backward forms the same P without reducing each row twice
        norms = new_row_pairs(scores) if _saved_norms() else None
        ctx.save_for_backward(scores, mask, causal_rows, norms)
        ctx.scaling = scaling
        ctx.unread_above = unread_above
        p, row_stats = softmax_fwd(
            scores, mask, scaling, dtype, row_stats=fold is not None, causal_rows=causal_rows, norms=norms
        )
        if fold is not None:
            minmax_fold(row_stats, fold)  # the rows' (min, max) hold P's min and max
        return p

    @staticmethod
    def backward(ctx, grad_p: Tensor) -> tuple[Tensor, None, None, None, None, None, None]:
        from otlib.kernels.softmax import softmax_bwd

        scores, mask, causal_rows, norms = ctx.saved_tensors
        grad_s = softmax_bwd(grad_p.contiguous(), scores, mask, ctx.scaling, causal_rows, ctx.unread_above, norms)
        return grad_s, None, None, None, None, None, None


def _saved_norms() -> bool:
    """Whether the forward saves each row's max and sum for the backward (benchmarks/ab_training_step.py's switch)."""
    return True


def fused_softmax(
    scores: Tensor,
    mask: Tensor | None,
    scaling: float,
    dtype: torch.dtype,
    fold: RangeFold | None = None,
    causal_rows: Tensor | None = None,
    unread_above: bool = False,
) -> Tensor:
    """The kernels' autograd Function (any device the kernels run on: CUDA, or the interpreter in tests)."""
    return _ScaledMaskedSoftmax.apply(scores.contiguous(), mask, scaling, dtype, fold, causal_rows, unread_above)


def fused_softmax_applies(like: Tensor, n_columns: int, mask: Tensor | None) -> bool:
    """Whether `scaled_masked_softmax` of 4-D scores on `like`'s device with rows of `n_columns` and this mask runs
    the Triton kernels (which, given causal_rows, read a causal row only up to its diagonal) rather than the torch
    ops (which read every score)."""
    if not use_kernels(like) or torch.compiler.is_compiling():
        return False
    from otlib.kernels.softmax import MAX_COLUMNS  # Triton is imported only when kernels run

    plain_mask = mask is None or (mask.dtype == torch.float32 and not mask.requires_grad)
    return n_columns <= MAX_COLUMNS and plain_mask


def scaled_masked_softmax(
    scores: Tensor,
    mask: Tensor | None,
    scaling: float,
    dtype: torch.dtype,
    fold: RangeFold | None = None,
    causal_rows: Tensor | None = None,
    unread_above: bool = False,
) -> Tensor:
    """softmax(scores · scaling + mask, fp32) in `dtype`; scores [B, H, T, S], mask additive [B or 1, 1 or H, T, S].

    With `fold`, P's min/max (as returned) are folded into that range row: by the softmax kernel's row
    statistics when the fused kernel runs, else by one pass over P.
    causal_rows (bool [B, T]; attention under a causal mask): the caller's promise that the mask is finfo.min (or
    −inf) above the causal diagonal (column > t + S − T) in every row but these, its fully masked ones. The fused
    kernel then reads the other rows only up to the diagonal: the same values (P is exactly 0 above it).
    unread_above (with causal_rows): where the kernels run, the scores' gradient is left unwritten past the columns
    they read (for Q·Kᵀ's backward under optical_matmul's zero_above=False, which reads it only there).
    """
    if causal_rows is not None and (
        scores.dim() != 4
        or causal_rows.dtype != torch.bool
        or causal_rows.dim() != 2
        or causal_rows.shape[0] not in (1, scores.shape[0])
        or causal_rows.shape[1] != scores.shape[2]
    ):
        raise ValueError(
            f"scaled_masked_softmax: causal_rows must be bool [B or 1, T] for scores [B, H, T, S] = "
            f"{tuple(scores.shape)}, got {causal_rows.dtype} {tuple(causal_rows.shape)}"
        )
    if scores.dim() == 4 and fused_softmax_applies(scores, scores.shape[-1], mask):
        return fused_softmax(scores, mask, scaling, dtype, fold, causal_rows, unread_above and causal_rows is not None)
    p = scaled_masked_softmax_reference(scores, mask, scaling, dtype)
    if fold is not None:
        minmax_fold(p, fold)
    return p
