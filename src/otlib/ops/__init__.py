"""otlib.ops: the functional optical numerics (quantizer, optical linear, optical matmul), and attention's
scaled, masked softmax.

CUDA tensors run Triton kernels (otlib.kernels); CPU tensors run the plain-PyTorch reference,
which is also the oracle the kernels are tested against. See docs/numerics.md for the math.
"""

from ._dispatch import force_reference
from .optical_linear import autocast_dtype, autocast_input, encode_input, optical_linear
from .optical_matmul import optical_matmul
from .philox import philox_uniform
from .quantize import quantize
from .reference import optical_linear_ref, optical_matmul_ref, quant_params, quantize_core
from .softmax import scaled_masked_softmax, scaled_masked_softmax_reference
from .weight_codes import WeightCodes, WeightRange

__all__ = [
    "WeightCodes",
    "WeightRange",
    "autocast_dtype",
    "autocast_input",
    "encode_input",
    "force_reference",
    "optical_linear",
    "optical_linear_ref",
    "optical_matmul",
    "optical_matmul_ref",
    "philox_uniform",
    "quant_params",
    "quantize",
    "quantize_core",
    "scaled_masked_softmax",
    "scaled_masked_softmax_reference",
]
