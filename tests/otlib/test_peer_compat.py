"""Deterministic otlib.ops.quantize against the peer's CPU quantizer (mase-triton 0.0.7).

The peer computes hi − lo, the 1e-8 guard and λ·hi in Python floats (fp64) and rounds them to fp32;
otlib forms the same scalars in fp64 from the fp32 range, so for fp32-representable lo/hi the two
agree bit for bit, LUT floor included. Stochastic mode is not compared: the peer draws torch.rand
after torch.manual_seed, otlib per-element Philox (docs/numerics.md).
"""

import pytest
import torch
from helpers import assert_equal_verbose

from otlib.ops import quantize

fake = pytest.importorskip(
    "mase_triton.optical_compute.core.optical_transformer.fake",
    reason="mase-triton (the peer) is not installed: pip install mase-triton==0.0.7",
)


@pytest.mark.parametrize("levels", [256, 16])
@pytest.mark.parametrize("lut_min", [None, 0.020040])
@pytest.mark.parametrize(("lo", "hi"), [(-2.5, 3.75), (-0.8372, 1.2519), (0.1, 7.3)])
def test_deterministic_matches_peer(levels, lut_min, lo, hi):
    lo, hi = float(torch.tensor(lo)), float(torch.tensor(hi))  # the fp32 values a range buffer holds
    x = torch.randn(4099) * 3
    peer, _ = fake._quantize_forward_fn_fake(x, 0, levels, lo, hi, lut_min, "det")
    assert_equal_verbose(quantize(x, lo, hi, levels, lut_min=lut_min), peer)
    assert_equal_verbose(quantize(x, torch.tensor(lo), torch.tensor(hi), levels, lut_min=lut_min), peer)
