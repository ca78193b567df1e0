"""OpticalLinear and RangeTracker: bypass exactness, closeness to digital, straight-through gradients, the
range EMA on hand values, exact quantiles (also above 2**24 elements), eval before training, no host sync."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import otlib
from otlib.layers import RangeTracker, exact_quantiles


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def _layer(bias: bool = True, **kw) -> tuple[nn.Linear, otlib.OpticalLinear]:
    linear = nn.Linear(96, 48, bias=bias)
    return linear, otlib.OpticalLinear.from_linear(linear, **kw)


@pytest.mark.parametrize("bias", [True, False])
def test_bypass_is_exactly_linear(bias):
    linear, layer = _layer(bias, q_bypass=True)
    x = torch.randn(3, 5, 96)
    for mode in (layer.train, layer.eval):
        mode()
        assert torch.equal(layer(x), F.linear(x, linear.weight, linear.bias))
    assert layer.rng[1] == 0 and not layer.stats.initialised.any()  # bypass touches no optical state


def test_from_linear_shares_parameters_and_state_dict_matches():
    linear, layer = _layer()
    assert layer.weight is linear.weight and layer.bias is linear.bias
    missing, unexpected = layer.load_state_dict(linear.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"rng", "stats.bounds", "stats.initialised"}
    assert layer.rng.tolist() == [0, 0, 0] and layer.stats.bounds.dtype == torch.float32
    text = repr(layer)
    assert "q_levels=256" in text and "in_features=96" in text and "stream=0" in text


@pytest.mark.parametrize("training", [True, False])
def test_optical_close_to_digital(training):
    linear, layer = _layer()
    layer.train(training)
    x = torch.randn(4, 32, 96)
    y = layer(x)
    assert y.shape == (4, 32, 48) and y.dtype == x.dtype and torch.isfinite(y).all()
    err = _rel(y, linear(x))
    assert 1e-4 < err < 0.03, err  # quantized (not digital), yet within a few percent


def test_eval_before_training_calibrates_without_storing():
    linear, layer = _layer()
    layer.eval()
    x = torch.randn(8, 96) * 3
    y = layer(x)
    assert torch.isfinite(y).all() and _rel(y, linear(x)) < 0.03
    assert not layer.stats.initialised.any() and not layer.stats.bounds.any()  # used, not stored


def test_straight_through_gradients_are_linear_gradients():
    linear, layer = _layer()
    x = torch.randn(6, 96, requires_grad=True)
    grad_out = torch.randn(6, 48)
    layer.train()
    layer(x).backward(grad_out)
    got = (x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone())
    x.grad = None
    linear.zero_grad()
    linear(x).backward(grad_out)
    for g, ref in zip(got, (x.grad, linear.weight.grad, linear.bias.grad), strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)


def test_range_ema_on_hand_values():
    tracker = RangeTracker(("a", "b"), smooth_factor=0.9)
    tracker.update(0, torch.tensor([-1.0, 2.0]))  # first batch sets
    assert tracker.bounds[0].tolist() == [-1.0, 2.0] and tracker.initialised.tolist() == [True, False]
    tracker.update(0, torch.tensor([-3.0, 4.0]))  # lo ← 0.9·lo + 0.1·min
    torch.testing.assert_close(tracker.bounds[0], torch.tensor([-1.2, 2.2]), rtol=0, atol=1e-6)
    tracker.update(0, torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(tracker.bounds[0], torch.tensor([-1.18, 2.08]), rtol=0, atol=1e-6)
    preset = RangeTracker(("p",), 0.5, preset={"p": (0.0, 1.0)})
    preset.update(0, torch.tensor([0.2, 0.6]))  # preset rows start set: EMA from [0, 1]
    torch.testing.assert_close(preset.bounds[0], torch.tensor([0.1, 0.8]))
    preset.reset()
    assert preset.bounds[0].tolist() == [0.0, 1.0]


def test_layer_ranges_follow_batches_in_training_only():
    _, layer = _layer(q_smooth_factor=0.5)
    x1 = torch.rand(10, 96) * 5 - 2  # in [-2, 3], with the extremes pinned
    x1[0, 0], x1[0, 1] = -2.0, 3.0
    x2 = torch.rand(10, 96) * 5 - 4  # in [-4, 1]
    x2[0, 0], x2[0, 1] = -4.0, 1.0
    layer.train()
    y1 = layer(x1)
    assert layer.stats.bounds[0].tolist() == [-2.0, 3.0]
    assert layer.stats.bounds[1].tolist() == list(torch.aminmax(layer.weight.detach()))
    # out range: the accumulator of the quantized operands, close to the digital product's range
    acc = x1 @ layer.weight.detach().t()
    torch.testing.assert_close(layer.stats.bounds[2], torch.stack(torch.aminmax(acc)), rtol=0.03, atol=0.03)
    assert torch.all((y1 - layer.bias).detach().abs() <= acc.abs().max() * 1.02)
    layer(x2)
    assert layer.stats.bounds[0].tolist() == [-3.0, 2.0]
    layer.eval()
    before = layer.stats.bounds.clone()
    layer(torch.randn(4, 96) * 100)
    assert torch.equal(layer.stats.bounds, before)  # eval never updates


def test_bounds_stay_fp32_and_bf16_runs():
    _, layer = _layer()
    layer.train()
    layer(torch.randn(4, 96))
    before = layer.stats.bounds.clone()
    layer.to(torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16 and layer.stats.bounds.dtype == torch.float32
    assert torch.equal(layer.stats.bounds, before)
    x = torch.randn(4, 96, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_call_counter_and_streams_give_fresh_reproducible_dither():
    linear = nn.Linear(96, 48)
    a = otlib.OpticalLinear.from_linear(linear, stream=0)
    b = otlib.OpticalLinear.from_linear(linear, stream=1)
    x = torch.randn(16, 96)
    a.train(), b.train()
    a(x), b(x)  # set identical ranges in both
    a.eval(), b.eval()
    y1, y2 = a(x), a(x)
    assert a.rng.tolist() == [0, 3, 0]
    assert not torch.equal(y1, y2)  # new call counter: new dither
    assert not torch.equal(y1, b(x))  # other stream: other dither
    a.rng[1] = 1
    assert torch.equal(a(x), y1)  # same (seed, counter, stream): same result


def test_quantiles_match_torch_quantile_on_small_tensors():
    for n, qs in ((1, (0.1, 0.9)), (2, (0.25, 0.75)), (1001, (0.001, 0.999)), (4097, (0.3, 0.7))):
        t = torch.randn(n) * 3
        torch.testing.assert_close(exact_quantiles(t, qs), torch.quantile(t, torch.tensor(qs)), rtol=1e-6, atol=1e-6)
    t = torch.randn(3, 7, 11)
    torch.testing.assert_close(
        exact_quantiles(t, (0.05, 0.95)), torch.quantile(t.flatten(), torch.tensor([0.05, 0.95]))
    )


def test_quantiles_work_above_two_to_the_24():
    """torch.quantile raises "input tensor is too large" here (the peer's defect 5)."""
    n = 2**24 + 3
    # a permutation of 0 … n − 1 (multiplicative hashing, gcd(a, n) = 1): the q-quantile is exactly q·(n − 1)
    t = ((torch.arange(n) * (2654435761 % n)) % n).double()
    got = exact_quantiles(t, (0.001, 0.999))
    expected = torch.tensor([0.001 * (n - 1), 0.999 * (n - 1)], dtype=torch.float64)
    torch.testing.assert_close(got.double(), expected, rtol=1e-7, atol=0)


def test_quantile_ranges_in_layer():
    _, layer = _layer(q_quantiles=(0.01, 0.99))
    layer.train()
    x = torch.randn(64, 96)
    layer(x)
    torch.testing.assert_close(layer.stats.bounds[0], torch.quantile(x.flatten(), torch.tensor([0.01, 0.99])))


def test_lora_adapter_goes_through_the_optical_product():
    linear = nn.Linear(96, 48)
    plain = otlib.OpticalLinear.from_linear(linear)
    lora = otlib.OpticalLinear.from_linear(linear, lora_rank=4, lora_alpha=8.0)
    assert lora.lora_A.shape == (4, 96) and lora.lora_B.shape == (48, 4) and lora.lora_scale == 2.0
    x = torch.randn(8, 96)
    plain.train(), lora.train()
    assert torch.equal(lora(x), plain(x))  # B = 0: W_eff = W exactly, same dither
    fresh = otlib.OpticalLinear.from_linear(linear, lora_rank=4, lora_alpha=8.0)
    with torch.no_grad():
        fresh.lora_B.normal_(std=0.05)
    w_eff = linear.weight + 2.0 * fresh.lora_B @ fresh.lora_A
    assert torch.equal(fresh.effective_weight(), w_eff)
    fresh.train()
    y = fresh(x)
    assert fresh.stats.bounds[1].tolist() == list(torch.aminmax(w_eff.detach()))  # the SLM holds W_eff
    assert 1e-4 < _rel(y, F.linear(x, w_eff, linear.bias)) < 0.03
    y.square().sum().backward()
    for p in (fresh.lora_A, fresh.lora_B, fresh.weight):
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    bypass = otlib.OpticalLinear.from_linear(linear, lora_rank=4, q_bypass=True)
    with torch.no_grad():
        bypass.lora_A.copy_(fresh.lora_A)
        bypass.lora_B.copy_(fresh.lora_B)
    assert torch.equal(bypass(x), F.linear(x, bypass.effective_weight(), linear.bias))  # digital LoRA baseline


@pytest.mark.parametrize("numerics", ["fixed", "mase"])
def test_forward_never_reads_device_values(monkeypatch, numerics):
    """No host sync: every Tensor → Python conversion raises during a training step (and an eval call)."""
    _, layer = _layer(numerics=numerics, lora_rank=2)
    x = torch.randn(8, 96, requires_grad=True)

    def forbidden(*args, **kwargs):
        raise AssertionError("host-device sync in forward")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    with pytest.raises(AssertionError, match="host-device sync"):
        bool(torch.tensor(1.0))  # the trap is armed
    layer.train()
    layer(x).sum().backward()
    layer(x).sum().backward()
    layer.eval()
    layer(x)
    monkeypatch.undo()
    assert torch.isfinite(x.grad).all() and layer.rng[1] == 3


def test_compiles_fullgraph():
    _, layer = _layer()
    layer.train()
    layer(torch.randn(8, 96))  # ranges set; the compiled steps below are steady-state EMA steps
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    x = torch.randn(8, 96)
    y = compiled(x)
    assert torch.isfinite(y).all() and layer.rng[1] == 2


def test_bad_arguments():
    with pytest.raises(otlib.ConfigError, match="q_levels"):
        otlib.OpticalLinear(4, 4, q_levels=1)
    with pytest.raises(ValueError, match="numerics"):
        otlib.OpticalLinear(4, 4, numerics="peer")
    with pytest.raises(ValueError, match="lora_rank"):
        otlib.OpticalLinear(4, 4, lora_rank=-1)
