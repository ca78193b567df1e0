"""otlib: simulate optical-transformer hardware (Anderson et al., arXiv 2302.10360) in PyTorch models.

    import otlib
    cfg = otlib.load_config("configs/otlib/optical_transformer.toml")
    names = otlib.transform(model, cfg)        # a Hugging Face Llama, in place
    otlib.save_optical(model, "out/", cfg); model = otlib.load_optical("out/")

Layering (imports go one way): kernels (Triton) → ops (autograd ops, PyTorch reference) →
layers (OpticalLinear, range statistics, optical attention) → transform. docs/otlib.md is the guide.
"""

from importlib.metadata import PackageNotFoundError, version

from otlib.config import ConfigError, LayerConfig, LoraConfig, TransformConfig, load_config
from otlib.layers import OpticalAttentionState, OpticalLinear, RangeTracker, optical_attention_forward
from otlib.ops import quantize
from otlib.transform import load_optical, save_optical, transform

try:
    __version__ = version("optical-clm")  # otlib ships in the optical-clm distribution
except PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "ConfigError",
    "LayerConfig",
    "LoraConfig",
    "OpticalAttentionState",
    "OpticalLinear",
    "RangeTracker",
    "TransformConfig",
    "__version__",
    "load_config",
    "load_optical",
    "optical_attention_forward",
    "quantize",
    "save_optical",
    "transform",
]
