"""otlib.layers: modules built on `otlib.ops` — OpticalLinear (+ LoRA), range statistics, optical attention.

Importing this package registers the "optical" attention function and its mask function with
transformers (`AttentionInterface`, `AttentionMaskInterface`).
"""

from otlib.layers.attention import (
    ATTENTION_NAME,
    STATE_ATTR,
    OpticalAttentionState,
    optical_attention_forward,
    optical_mask,
    register_optical_attention,
)
from otlib.layers.linear import OpticalLinear, SharedInput, WeightBank
from otlib.layers.ranges import RangeTracker, exact_quantiles

__all__ = [
    "ATTENTION_NAME",
    "STATE_ATTR",
    "OpticalAttentionState",
    "OpticalLinear",
    "RangeTracker",
    "SharedInput",
    "WeightBank",
    "exact_quantiles",
    "optical_attention_forward",
    "optical_mask",
    "register_optical_attention",
]
