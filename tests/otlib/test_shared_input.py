"""SharedInput: sibling OpticalLinears reading one tensor (q/k/v, gate/up) observe and encode it once — the same
values as separate layers (training steps, range state, gradients), on the reference path and on the Triton path
(interpreted on CPU); other inputs, modified inputs and repeated calls never share."""

import copy
import pickle
import sys

import pytest
import torch
from test_llama import VOCAB, tiny_llama
from torch import nn

import otlib
from otlib.layers import RangeTracker, SharedInput
from otlib.layers.linear import W, X


def _linked(count: int = 3, **kw) -> list[otlib.OpticalLinear]:
    layers = [otlib.OpticalLinear.from_linear(nn.Linear(41, 34 + 3 * i), stream=i, **kw) for i in range(count)]
    share = SharedInput(count)
    for layer in layers:
        layer.shared_input = share
    return layers


def _unlinked(layers: list[otlib.OpticalLinear]) -> list[otlib.OpticalLinear]:
    copies = copy.deepcopy(layers)
    for layer in copies:
        layer.shared_input = None
    return copies


def _record_observed_rows(monkeypatch) -> list[list[int]]:
    """The operand rows each OpticalLinear's tracker observes, call by call."""
    calls: list[list[int]] = []
    observe = RangeTracker.observe

    def recording(self, operands, training, counter=None, copy_from=None):
        if self.names == ("x", "w", "out"):
            calls.append(sorted(operands))
        return observe(self, operands, training, counter, copy_from)

    monkeypatch.setattr(RangeTracker, "observe", recording)
    return calls


def _steps(layers: list[otlib.OpticalLinear], xs: list[torch.Tensor]) -> list[torch.Tensor]:
    outs = []
    for x in xs:
        x = x.clone().requires_grad_()
        ys = [layer(x) for layer in layers]
        sum(y.square().sum() for y in ys).backward()
        outs += [*ys, x.grad]
    return outs


def _assert_same_state(a: list[nn.Module], b: list[nn.Module]) -> None:
    for la, lb in zip(a, b, strict=True):
        for (name, ta), tb in zip(la.state_dict().items(), lb.state_dict().values(), strict=True):
            assert torch.equal(ta, tb), name
        for pa, pb in zip(la.parameters(), lb.parameters(), strict=True):
            assert torch.equal(pa.grad, pb.grad)


def test_transform_links_qkv_and_gate_up(monkeypatch):
    model = tiny_llama()
    otlib.transform(model, otlib.TransformConfig())
    calls = _record_observed_rows(monkeypatch)
    model.train()
    model(torch.randint(0, VOCAB, (2, 16)))
    # per block: q, o, gate and down observe their input; k, v and up reuse q's and gate's
    assert calls == [[X, W], [W], [W], [X, W], [X, W], [W], [X, W]] * 2
    for block in model.model.layers:
        attn, mlp = block.self_attn, block.mlp
        assert attn.q_proj.shared_input is attn.k_proj.shared_input is attn.v_proj.shared_input is not None
        assert mlp.gate_proj.shared_input is mlp.up_proj.shared_input is not None
        assert attn.q_proj.shared_input is not mlp.up_proj.shared_input
        assert attn.o_proj.shared_input is None and mlp.down_proj.shared_input is None
    assert (
        model.model.layers[0].self_attn.q_proj.shared_input is not model.model.layers[1].self_attn.q_proj.shared_input
    )


@pytest.mark.parametrize("autocast", [False, True])
def test_shared_training_steps_equal_separate_ones(autocast):
    torch.manual_seed(0)
    model = tiny_llama()
    otlib.transform(model, otlib.TransformConfig())
    separate = copy.deepcopy(model)
    for module in separate.modules():
        if isinstance(module, otlib.OpticalLinear):
            module.shared_input = None
    ids = torch.randint(0, VOCAB, (2, 16))
    for m in (model, separate):
        m.train()
        for _ in range(2):  # the first step calibrates the out ranges, the second runs the EMA
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                m(ids, labels=ids).loss.backward()
    _assert_same_state([model], [separate])


def test_siblings_observe_only_their_weights(monkeypatch):
    layers = _linked()
    calls = _record_observed_rows(monkeypatch)
    x = torch.randn(9, 41)
    for layer in layers:
        layer(x)
    assert calls == [[X, W], [W], [W]]
    assert all(torch.equal(layer.stats.bounds[X], layers[0].stats.bounds[X]) for layer in layers)
    assert all(layer.stats.is_set(X) for layer in layers)


def test_other_modified_or_repeated_inputs_do_not_share(monkeypatch):
    layers = _linked()
    calls = _record_observed_rows(monkeypatch)
    x = torch.randn(9, 41)
    layers[0](x)
    layers[1](x.clone())  # another tensor with the same values: leads
    layers[0](x)
    x.mul_(2.0)  # modified in place since layer 0 saw it: layer 2 leads
    layers[2](x)
    layers[0](x)  # follows layer 2
    layers[0](x)  # has used this input: leads again
    layers[1](x)  # follows
    assert calls == [[X, W]] * 4 + [[W], [X, W], [W]]


def test_eval_and_inference_mode_do_not_share(monkeypatch):
    layers = _linked()
    x = torch.randn(9, 41)
    for layer in layers:
        layer(x)  # training: every range set
    calls = _record_observed_rows(monkeypatch)
    with torch.inference_mode():  # training mode, but inference tensors have no version counter
        x_inference = torch.randn(9, 41)
        for layer in layers:
            layer(x_inference)
    for layer in layers:
        layer.eval()
        layer(x)
    assert calls == [[X, W]] * 6


@pytest.mark.parametrize(("numerics", "autocast"), [("fixed", False), ("mase", False), ("fixed", True)])
def test_kernel_path_encodes_a_shared_input_once(monkeypatch, numerics, autocast):
    """Under autocast the leader's encode also casts x (one launch): the siblings multiply that cast, not their own."""
    pytest.importorskip("triton", reason="Triton is not installed")
    if torch.cuda.is_available():  # compiled Triton refuses CPU tensors; test_gpu_model.py covers the GPU
        pytest.skip("CPU tensors through the Triton kernels: interpreter only")
    import otlib.kernels.optical_linear as kernel_linear
    import otlib.kernels.quantize as quantize

    # the Triton path (interpreted) for CPU tensors; the range folds stay on their torch path
    monkeypatch.setattr(sys.modules["otlib.ops.optical_linear"], "use_kernels", lambda t, levels=2: True)
    encodes: list[tuple[int, ...]] = []
    casting: list[bool] = []  # whether each encode also cast its operand
    operand_codes = quantize.operand_codes

    def counting(x, *args, **kwargs):
        encodes.append(tuple(x.shape))
        casting.append(kwargs.get("cast") is not None)
        return operand_codes(x, *args, **kwargs)

    monkeypatch.setattr(quantize, "operand_codes", counting)
    monkeypatch.setattr(kernel_linear, "operand_codes", counting)
    layers = _linked(numerics=numerics)
    separate = _unlinked(layers)
    xs = [torch.randn(9, 41), torch.randn(9, 41) * 3]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        shared_outs = _steps(layers, xs)
        shared_encodes, encodes[:] = encodes[:], []
        separate_outs = _steps(separate, xs)
    for got, want in zip(shared_outs, separate_outs, strict=True):
        assert torch.equal(got, want)
    _assert_same_state(layers, separate)
    weights = [(1, 34 + 3 * i, 41) for i in range(3)]
    assert shared_encodes == [(1, 9, 41), *weights] * 2  # x once, then each weight
    assert casting[:4] == [autocast, False, False, False]  # the shared x cast in its encode
    assert encodes == [shape for _ in range(2) for w in weights for shape in ((1, 9, 41), w)]


def test_pickle_and_deepcopy_drop_the_cached_input():
    layers = _linked()
    layers[0](torch.randn(9, 41))  # the share now holds the input
    for copied in (pickle.loads(pickle.dumps(layers)), copy.deepcopy(layers)):
        share = copied[0].shared_input
        assert all(layer.shared_input is share for layer in copied) and share is not layers[0].shared_input
        assert share._entry is None
