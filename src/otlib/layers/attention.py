"""Optical attention for Hugging Face Llama models, through transformers' AttentionInterface.

Per head (grouped-query attention: each K/V head serves num_heads / num_kv_heads query heads):

    S = Q_stoch(Q_det(Q) · LUT(Q_det(Kᵀ)); qk range)
    P = softmax(S · scaling + mask) in fp32, stored in the product's dtype, then dropout
    O = Q_stoch(Q_det(P) · LUT(Q_det(V)); av range)

Both products are `otlib.ops.optical_matmul` calls. The per-layer state (range statistics of
query, key, qk, attn (= P, starting at [0, 1]), value, av, and one call counter per product)
is an `OpticalAttentionState` that `otlib.transform` attaches to each `LlamaAttention` as the
submodule `optical_attention`, so it moves with the model and is part of its state dict.

The function is registered as "optical" in `AttentionInterface`, and its mask function
(`optical_mask`: eager attention's mask, built without a host sync) under the same name in
`AttentionMaskInterface`: a function registered only in the first receives `attention_mask=None`
(no causal mask, future tokens leak); with the second, it receives the additive float mask
[B, 1, T, S] of eager attention (causal + padding).

Range of Q·Kᵀ ("qk"): observed on the UNSCALED product, every training step (the range is
applied to the unscaled product). `numerics = "mase"` reproduces the peer's defect 4 for
ablations: the range is measured once, on the first batch, from the SCALED digital logits,
applied to the unscaled product and frozen, which clamps logits to about `scaling` of their range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.models.llama.modeling_llama import repeat_kv

from otlib import ops
from otlib.config import NUMERICS, LayerConfig
from otlib.layers.ranges import RangeTracker
from otlib.ops._dispatch import use_kernels
from otlib.ops.softmax import fused_softmax_applies

ATTENTION_NAME = "optical"  # the attn_implementation name of optical attention
STATE_ATTR = "optical_attention"  # submodule name of the per-layer state on each attention module
A, B, OUT = 0, 1, 2  # rows of the ranges tensors (ops contract: a operand, b operand (SLM), out)


class OpticalAttentionState(nn.Module):
    """Range statistics and RNG counters of the two optical products of one attention layer.

    Buffers: `qk.bounds` fp32 [3, 2] (query, key, qk), `av.bounds` fp32 [3, 2] (attn, value, av),
    their `initialised` flags, and `rng_qk`, `rng_av` int64 [3] = (seed, call counter, stream).
    """

    def __init__(
        self,
        config: LayerConfig,
        numerics: str,
        streams: tuple[int, int],
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if numerics not in NUMERICS:
            raise ValueError(f"OpticalAttentionState: numerics = {numerics!r} must be one of {NUMERICS}")
        self.layer_config = config
        self.numerics = numerics
        self.streams = streams
        beta, quantiles = config.q_smooth_factor, config.q_quantiles
        self.qk = RangeTracker(("query", "key", "qk"), beta, quantiles, device=device)
        # P = softmax(...) lies in [0, 1]: its range starts there and then follows the EMA
        self.av = RangeTracker(("attn", "value", "av"), beta, quantiles, preset={"attn": (0.0, 1.0)}, device=device)
        self.register_buffer("rng_qk", torch.zeros(3, dtype=torch.int64, device=device))
        self.register_buffer("rng_av", torch.zeros(3, dtype=torch.int64, device=device))
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Ranges unset (P back to [0, 1]) and call counters 0."""
        self.qk.reset()
        self.av.reset()
        for rng, stream in ((self.rng_qk, self.streams[0]), (self.rng_av, self.streams[1])):
            rng[0].fill_(self.layer_config.q_init_seed)
            rng[1].fill_(0)
            rng[2].fill_(stream)

    def extra_repr(self) -> str:
        cfg = self.layer_config
        return (
            f"q_levels={cfg.q_levels}, q_lut_min={cfg.q_lut_min}, numerics={self.numerics}, "
            f"seed={cfg.q_init_seed}, streams={self.streams}"
        )


def _qk_range_mase(query: Tensor, key_states: Tensor, scaling: float) -> Tensor:
    """The peer's qk range: min/max of the SCALED digital logits (defect 4, numerics = "mase")."""
    with torch.no_grad():
        lo, hi = torch.aminmax(torch.matmul(query, key_states.transpose(-1, -2)))
    return torch.stack([lo, hi]).float() * scaling  # scaling > 0 keeps the order


def _fully_masked_rows(mask: Tensor, batch: int) -> Tensor:
    """bool [batch, T]: the query rows of an additive mask [B or 1, 1, T, S] that mask every key (their softmax is
    uniform, so a causal product is not 0 above the diagonal there). One reduction per mask: every layer of a
    forward gets the same mask tensor, so the result is kept on it (with its version, against in-place edits)."""
    cached = getattr(mask, "_otlib_full_rows", None)
    if cached is None or cached[0] != mask._version:
        rows = mask[:, 0].amax(-1).le(torch.finfo(mask.dtype).min)  # −inf masks too
        cached = (mask._version, rows)
        mask._otlib_full_rows = cached
    return cached[1].expand(batch, -1)


def _causal_rows(query: Tensor, mask: Tensor | None, causal: bool) -> Tensor | None:
    """The fully masked rows of a causal mask of one head dim on the kernels' eager path, where the softmax and the
    products' backward use them (ops.scaled_masked_softmax's and ops.optical_matmul's causal_rows)."""
    if (
        not causal
        or mask is None
        or mask.dim() != 4
        or mask.shape[1] != 1
        or mask.shape[0] not in (1, query.shape[0])
        or mask.shape[2] != query.shape[2]
        or not use_kernels(query)
        or torch.compiler.is_compiling()
    ):
        return None
    return _fully_masked_rows(mask, query.shape[0])


def optical_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    """AttentionInterface function. query [B, H, T, D], key/value [B, Hkv, S, D], mask [B, 1, T, S] additive.

    Returns (attn_output [B, T, H, D], attn_weights P [B, H, T, S]), as eager attention does.
    """
    state = getattr(module, STATE_ATTR, None)
    if not isinstance(state, OpticalAttentionState):
        raise RuntimeError(
            f"{type(module).__name__} has no optical state: call otlib.transform(model, config) before "
            f"using attn_implementation={ATTENTION_NAME!r}"
        )
    cfg, training, mase = state.layer_config, module.training, state.numerics == "mase"
    # The ops group heads themselves (query head h uses K/V head h // (H / Hkv)): no repeat_kv copy.
    key_t = key.transpose(-1, -2)  # [B, Hkv, D, S]: the SLM operand of Q·Kᵀ
    # each product's call counter advances on the device (fresh dither per call), in its operands' range fold

    # --- S = Q_stoch(Q_det(Q)·LUT(Q_det(Kᵀ)); qk range) -----------------------------------------------
    qk_ranges = state.qk.observe({A: query, B: key}, training, counter=state.rng_qk[1:2])
    calibrate_qk = not state.qk.is_set(OUT)
    if mase and calibrate_qk:  # set once from scaled logits, then frozen
        stats = _qk_range_mase(query, repeat_kv(key, query.shape[1] // key.shape[1]), scaling)
        if training:
            state.qk.update(OUT, stats)  # qk_ranges is the buffer in training: it now holds the row
        else:
            qk_ranges = qk_ranges.clone()
            qk_ranges[OUT] = stats
        calibrate_qk = False
    # A causal module's mask discards every score above the diagonal (finfo.min added, P exactly 0 there or,
    # in a fully masked row, uniform either way): the product skips their read-out (benchmarks/NOTES.md 29).
    is_causal = kwargs.get("is_causal")
    causal = attention_mask is not None and bool(
        getattr(module, "is_causal", False) if is_causal is None else is_causal
    )
    # Under the causal mask, P and S's gradient are 0 above the diagonal except in fully masked rows: the softmax
    # reads only up to it and the products' backward skips those tiles (benchmarks/NOTES.md 36, 38)
    causal_rows = _causal_rows(query, attention_mask, causal)
    # the softmax's kernels read causal rows of S and of P's gradient only up to the diagonal: the products may
    # leave the zero tiles past that unwritten (optical_matmul's zero_above=False; benchmarks/NOTES.md 63, 64)
    unread_skipped = causal_rows is not None and fused_softmax_applies(query, key.shape[-2], attention_mask)
    scores, s_min, s_max = ops.optical_matmul(
        query,
        key_t,
        qk_ranges,
        state.rng_qk,
        levels=cfg.q_levels,
        lut_min=cfg.q_lut_min,
        numerics=state.numerics,
        calibrate_out=calibrate_qk,
        causal=causal,
        causal_rows=causal_rows,
        zero_above=not (unread_skipped and _skip_unread_scores()),  # and dS read only where the softmax writes it
    )
    if training and not mase:  # the unscaled accumulator, every step
        state.qk.update_pair(OUT, s_min, s_max)

    # --- P = softmax(S·scaling + mask) in fp32, dropout (one Triton pass per row on CUDA) ---------------
    # P is stored in the dtype the P·V product reads it in: eager attention's query dtype, or under autocast
    # the autocast dtype (torch.matmul's rule). In an fp32 model RoPE makes the query fp32, and an fp32 P would
    # only be written, observed and then cast to bf16 by the product (and its gradient cast back): four T × S
    # passes per layer. Same values; the attn range observes the operand the product quantizes.
    p_dtype = ops.autocast_dtype(query)
    # Without dropout, the softmax folds P's range into the attn row itself (its kernel's row statistics: no
    # pass over P); with dropout, the range is observed after it.
    fold_p = state.av.fold_target(A, scores) if training and not (dropout > 0.0) else None
    probs = ops.scaled_masked_softmax(
        scores,
        attention_mask,
        scaling,
        p_dtype,
        fold=fold_p,
        causal_rows=causal_rows,
        unread_above=unread_skipped and _skip_unread_scores() and _skip_unread_ds(),
    )
    probs = F.dropout(probs, p=dropout, training=training)

    # --- O = Q_stoch(Q_det(P)·LUT(Q_det(V)); av range) --------------------------------------------------
    if fold_p is not None:
        state.av.mark_set(A)
        av_ranges = state.av.observe({B: value}, training, counter=state.rng_av[1:2])
    else:
        av_ranges = state.av.observe({A: probs, B: value}, training, counter=state.rng_av[1:2])
    out, o_min, o_max = ops.optical_matmul(
        probs,
        value,
        av_ranges,
        state.rng_av,
        levels=cfg.q_levels,
        lut_min=cfg.q_lut_min,
        numerics=state.numerics,
        calibrate_out=not state.av.is_set(OUT),
        causal_rows=causal_rows,
        heads_last=_heads_last(),  # out.transpose(1, 2) below is then contiguous: no copy
        zero_above=not (unread_skipped and _skip_unread_grads()),
    )
    if training:
        state.av.update_pair(OUT, o_min, o_max)
    return out.transpose(1, 2).contiguous(), probs


def _skip_unread_scores() -> bool:
    """Whether Q·Kᵀ skips storing the scores the softmax does not read (benchmarks/ab_training_step.py's switch)."""
    return True


def _skip_unread_grads() -> bool:
    """Whether P·V's backward skips forming P's gradient where the softmax does not read it (ab_training_step's
    switch)."""
    return True


def _skip_unread_ds() -> bool:
    """Whether the softmax's backward leaves dS unwritten where Q·Kᵀ's backward does not read it (ab_training_step's
    switch)."""
    return True


def _heads_last() -> bool:
    """Whether P·V writes its output in [B, T, H, D] memory (a switch for benchmarks/ab_training_step.py)."""
    return True


def optical_mask(*, dtype: torch.dtype = torch.float32, **kwargs: object) -> Tensor | None:
    """Mask function of optical attention: eager attention's additive float mask [B, 1, T, S] (0 or dtype min).

    Same values as `transformers.masking_utils.eager_mask`, built from `sdpa_mask`'s boolean mask by a device
    fill: eager_mask of transformers 5.17 copies a Python scalar to the GPU, a host sync in every forward.
    """
    kwargs["allow_is_causal_skip"] = False  # always a full mask: the function adds it to the logits
    mask = sdpa_mask(**kwargs)
    if mask is None:  # only a bidirectional mask without padding is skipped
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


def register_optical_attention() -> None:
    """Register the attention function and its mask function under `ATTENTION_NAME` (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, optical_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, optical_mask)


register_optical_attention()
