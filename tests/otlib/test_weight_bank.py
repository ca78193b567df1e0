"""WeightBank / WeightCodes: every weight of a model folded into its range and encoded in two launches at the start
of a training forward — the same values as each layer's own fold (minmax_fold_) and encode (operand_codes), bit for
bit: kernels interpreted on CPU, compiled on a GPU machine."""

import copy
import math
import pickle
import sys

import pytest
import torch
from helpers import assert_equal_verbose
from test_llama import VOCAB, tiny_llama
from torch import nn

pytest.importorskip("triton", reason="Triton is not installed")

import otlib
from otlib.kernels.quantize import operand_codes
from otlib.kernels.ranges import minmax_fold_
from otlib.layers import RangeTracker, WeightBank
from otlib.layers.linear import W
from otlib.ops import WeightCodes, WeightRange

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BETA = 0.9
LEVELS = 256
LUT = 0.020040


@pytest.fixture
def kernels_on(monkeypatch):
    """The Triton paths for CPU tensors too (interpreted): the layers, their range folds and the linear op."""
    if DEVICE == "cpu":
        for name in ("otlib.layers.linear", "otlib.layers.ranges", "otlib.ops.optical_linear"):
            monkeypatch.setattr(sys.modules[name], "use_kernels", lambda t, levels=2: True)


def _trackers(count: int, set_rows: list[bool]) -> list[RangeTracker]:
    trackers = [RangeTracker(("x", "w", "out"), BETA, device=DEVICE) for _ in range(count)]
    for tracker, is_set in zip(trackers, set_rows, strict=True):
        if is_set:  # a range from an earlier batch: the fold takes the EMA
            tracker.update(W, torch.tensor([-0.7, 0.4], device=DEVICE))
    return trackers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lut_min", [LUT, None])
def test_weight_codes_equal_each_weights_fold_and_encode(dtype, lut_min):
    # uneven shapes (partial row and column blocks), one weight bigger than a fold share, ranges set and unset
    shapes = [(37, 300), (64, 128), (5, 7), (96, 41)]
    weights = [(torch.randn(s, device=DEVICE) * (i + 1) + 0.1 * i).to(dtype) for i, s in enumerate(shapes)]
    set_rows = [True, False, True, False]
    banked, single = _trackers(len(shapes), set_rows), _trackers(len(shapes), set_rows)
    table = WeightCodes(
        [
            WeightRange(w, t.bounds, t.scratch, t.tickets, t.initialised, W)
            for w, t in zip(weights, banked, strict=True)
        ],
        levels=LEVELS,
        lut_min=lut_min,
        beta=BETA,
    )
    for step in range(2):  # the second step: every row set, the EMA; the first writes bf16 copies too (autocast's)
        cast_dtype = torch.bfloat16 if step == 0 else None
        table.refresh(cast_dtype)
        for i, (w, tracker) in enumerate(zip(weights, single, strict=True)):
            if cast_dtype is None or dtype == cast_dtype:
                assert table.cast(i) is None
            else:
                assert_equal_verbose(table.cast(i), w.to(cast_dtype), f"weight {i}: the bf16 copy")
            s = tracker
            minmax_fold_(w, s.bounds[W], s.scratch[W], s.tickets[W], BETA, not s.is_set(W))
            s.mark_set(W)
            codes, sums = operand_codes(w.unsqueeze(0), s.bounds, W, LEVELS - 1, lut_min=lut_min)
            got_codes, got_sums = table.codes(i)
            assert_equal_verbose(banked[i].bounds, s.bounds, f"step {step}, weight {i}: range")
            assert_equal_verbose(got_codes, codes[0], f"step {step}, weight {i}: codes")
            assert_equal_verbose(got_sums, sums[0], f"step {step}, weight {i}: sums")
            assert banked[i].scratch[W].tolist() == [math.inf, -math.inf] and not banked[i].tickets.any()
        for tracker in banked:
            tracker.mark_set(W)
        weights = [w * 1.5 for w in weights]  # an optimizer step's new weights, at the same addresses
        for t, w in zip(table.ranges, weights, strict=True):
            t.weight.copy_(w)


def test_weight_codes_refuses_mixed_dtypes():
    t = RangeTracker(("x", "w", "out"), BETA, device=DEVICE)
    ranges = [
        WeightRange(torch.randn(4, 4, device=DEVICE, dtype=dtype), t.bounds, t.scratch, t.tickets, t.initialised, W)
        for dtype in (torch.float32, torch.bfloat16)
    ]
    with pytest.raises(ValueError, match="one dtype"):
        WeightCodes(ranges, levels=LEVELS, lut_min=LUT, beta=BETA)


def _weight_encodes(monkeypatch) -> list[tuple[int, ...]]:
    """Shapes of the weights the linear op encodes itself, call by call."""
    import otlib.kernels.optical_linear as kernel_linear

    encodes: list[tuple[int, ...]] = []

    def counting(x, ranges, row, *args, **kwargs):
        if row == W:
            encodes.append(tuple(x.shape[1:]))
        return operand_codes(x, ranges, row, *args, **kwargs)

    monkeypatch.setattr(kernel_linear, "operand_codes", counting)
    return encodes


def _unbanked(model: nn.Module) -> nn.Module:
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if isinstance(module, otlib.OpticalLinear):
            module.weight_bank = None
    return copied


# interpreted, a training step takes seconds: the CPU runs the autocast case (bf16 activations, fp32 weights)
@pytest.mark.parametrize(
    "autocast", [pytest.param(False, marks=pytest.mark.skipif(DEVICE == "cpu", reason="interpreted: slow")), True]
)
def test_banked_training_equals_each_layers_own(kernels_on, monkeypatch, autocast):
    """Three training steps (out ranges calibrated, then the EMA; an optimizer step between): the same losses,
    gradients and state with the bank and without; the bank leaves no weight to the layers after the first. Under
    autocast the banked steps' backward multiplies the bank's bf16 weights, and siblings save one cast of x."""
    model = tiny_llama(hidden_size=32, intermediate_size=48, num_hidden_layers=1).to(DEVICE)
    otlib.transform(model, otlib.TransformConfig())
    separate = _unbanked(model)
    encodes = _weight_encodes(monkeypatch)
    saved: list[dict[str, tuple]] = []  # per step of the banked model: layer name → (x, weight) saved for backward
    for name, layer in model.named_modules():
        if isinstance(layer, otlib.OpticalLinear):
            layer.register_forward_hook(
                lambda _, __, out, name=name: saved[-1].update({name: out.grad_fn.saved_tensors})
            )
    ids = torch.randint(0, VOCAB, (1, 12), device=DEVICE)
    per_model = []
    for m in (model, separate):
        m.train()
        optimizer = torch.optim.AdamW(m.parameters(), lr=1e-3)
        losses, counts = [], []
        for _ in range(3):
            saved.append({})
            encodes.clear()
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
                loss = m(ids, labels=ids).loss
            loss.backward()
            losses.append(loss.detach())
            counts.append(len(encodes))
            optimizer.step()
            optimizer.zero_grad()
        per_model.append((losses, counts))
    linears = sum(isinstance(m, otlib.OpticalLinear) for m in model.modules())
    assert per_model[0][1] == [linears, 0, 0] and per_model[1][1] == [linears] * 3
    for got, want in zip(per_model[0][0], per_model[1][0], strict=True):
        assert_equal_verbose(got, want, "loss")
    for (name, got), want in zip(model.state_dict().items(), separate.state_dict().values(), strict=True):
        assert_equal_verbose(got, want, name)
    for step in saved[1:3] if autocast else []:  # the banked model's banked steps
        assert all(w.dtype == torch.bfloat16 for _, w in step.values())  # the bank's copies: no cast in the backward
        for siblings in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
            xs = [x for name, (x, _) in step.items() if name.rsplit(".", 1)[-1] in siblings]
            assert len(xs) == len(siblings) and len({x.data_ptr() for x in xs}) == 1 and xs[0].dtype == torch.bfloat16


class _Model(nn.ModuleList):
    """Layers whose forward does nothing: calling it runs the bank's pre-hook; the test then calls the layers."""

    def forward(self, _: None) -> None:
        return None


def _bank_of(count: int) -> tuple[list[otlib.OpticalLinear], nn.Module]:
    layers = _Model(
        otlib.OpticalLinear(24, 16 + 8 * i, device=DEVICE, stream=i) for i in range(count)
    )  # fmt: skip
    bank = WeightBank(list(layers))
    for layer in layers:
        layer.weight_bank = bank
    layers.register_forward_pre_hook(bank.pre_forward)
    return list(layers), layers


def test_bank_leaves_out_what_it_cannot_match(kernels_on, monkeypatch):
    """A weight modified after the refresh, a layer called twice, and a layer the last forward did not call: each
    folds and encodes its own weight (one EMA step a call, as without the bank)."""
    layers, container = _bank_of(3)
    encodes = _weight_encodes(monkeypatch)
    x = torch.randn(5, 24, device=DEVICE)

    def forward(called: list[int], after_refresh=lambda: None) -> list[tuple[int, ...]]:
        encodes.clear()
        container(None)
        after_refresh()
        for i in called:
            layers[i](x)
        return encodes[:]

    assert forward([0, 1, 1]) == [(16, 24), (24, 24), (24, 24)]  # the first forward: no bank yet
    assert forward([0, 1, 2]) == [(24, 24), (32, 24)]  # 0 was called once; 1 twice, 2 not at all before
    with torch.no_grad():
        assert forward([0, 1, 2], lambda: layers[0].weight.mul_(2.0)) == [(16, 24)]  # stale codes
    assert forward([1, 2]) == []
    assert forward([0, 1, 2]) == [(16, 24)]  # the last forward left 0 out
    for layer in layers:
        layer.eval()
    assert forward([0, 1]) == [(16, 24), (24, 24)]  # eval: no bank


def test_pickle_and_deepcopy_drop_the_tables(kernels_on):
    layers, container = _bank_of(2)
    x = torch.randn(5, 24, device=DEVICE)
    for _ in range(2):
        container(None)
        for layer in layers:
            layer(x)
    bank = layers[0].weight_bank
    assert bank._tables
    for copied in (pickle.loads(pickle.dumps(container)), copy.deepcopy(container)):
        copied_bank = copied[0].weight_bank
        assert copied_bank is copied[1].weight_bank and copied_bank is not bank
        assert copied_bank.layers == list(copied) and not copied_bank._tables and not copied_bank._issued
