"""A tiny Llama (LlamaConfig: hidden 64, 2 layers, 4 heads / 2 KV heads, vocab 256) made optical: bypass equals
digital exactly, optical stays within a few percent, gradients are finite everywhere, no future-token leak,
padding respected, LoRA trains only the adapters, numerics="mase" runs."""

import copy

import pytest
import torch
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM

import otlib
from otlib.config import LayerConfig, LoraConfig

VOCAB, T = 256, 16


def tiny_llama(**overrides: object) -> LlamaForCausalLM:
    sizes: dict[str, object] = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "intermediate_size": 128,
        "max_position_embeddings": 128,
    }
    return LlamaForCausalLM(LlamaConfig(**(sizes | overrides)))


def random_ids(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, T))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def _eval_both(model: LlamaForCausalLM, a: torch.Tensor, b: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of inputs a and b from the same optical state (call counters restored between the two)."""
    state = copy.deepcopy(model.state_dict())
    model.eval()
    with torch.no_grad():
        la = model(a, **kw).logits
        model.load_state_dict(state)
        lb = model(b, **kw).logits
    return la, lb


def _trained_optical(config: otlib.TransformConfig | None = None) -> LlamaForCausalLM:
    model = tiny_llama()
    otlib.transform(model, config or otlib.TransformConfig())
    model.train()
    model(random_ids(), labels=random_ids())  # one training forward sets every range
    return model


def test_bypass_is_exactly_digital():
    model = tiny_llama()
    digital = copy.deepcopy(model)
    cfg = otlib.TransformConfig(fc=LayerConfig(q_bypass=True), attention=LayerConfig(q_bypass=True))
    names = otlib.transform(model, cfg)
    assert len(names) == 7 * 2 and all(isinstance(model.get_submodule(n), otlib.OpticalLinear) for n in names)
    ids = random_ids()
    for training in (False, True):
        model.train(training), digital.train(training)
        assert torch.equal(model(ids).logits, digital(ids).logits)


def test_optical_close_to_digital_with_finite_gradients():
    model = tiny_llama()
    digital = copy.deepcopy(model)
    otlib.transform(model, otlib.TransformConfig())
    ids = random_ids()
    model.eval()
    with torch.no_grad():
        assert 1e-4 < _rel(model(ids).logits, digital(ids).logits) < 0.05  # untrained ranges: calibrated
    model.train()
    out, ref = model(ids, labels=ids), digital(ids, labels=ids)
    assert abs(out.loss.item() - ref.loss.item()) < 0.02 * ref.loss.item()
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        assert _rel(model(ids).logits, digital(ids).logits) < 0.05  # trained ranges


def test_changing_a_future_token_leaves_earlier_logits_unchanged():
    model = _trained_optical()
    ids = random_ids()
    later = ids.clone()
    later[:, 10:] = (later[:, 10:] + 7) % VOCAB
    la, lb = _eval_both(model, ids, later)
    assert torch.equal(la[:, :10], lb[:, :10])
    assert not torch.allclose(la[:, 10:], lb[:, 10:])


def test_leak_check_detects_a_function_registered_without_its_mask():
    """Control for the test above: the trap of registering only in AttentionInterface (mask = None)."""
    model = _trained_optical()
    AttentionInterface.register("optical-unmasked-test", otlib.optical_attention_forward)
    model.set_attn_implementation("optical-unmasked-test")
    ids = random_ids()
    later = ids.clone()
    later[:, 10:] = (later[:, 10:] + 7) % VOCAB
    la, lb = _eval_both(model, ids, later)
    assert not torch.allclose(la[:, :10], lb[:, :10])


def test_padding_mask_is_respected():
    model = _trained_optical()
    ids = random_ids()
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding in row 0
    other = ids.clone()
    other[0, :4] = (other[0, :4] + 11) % VOCAB  # change only the padded tokens
    la, lb = _eval_both(model, ids, other, attention_mask=mask)
    assert torch.equal(la[0, 4:], lb[0, 4:]) and torch.equal(la[1], lb[1])
    la, lb = _eval_both(model, ids, other, attention_mask=torch.ones_like(ids))  # control: unmasked, they matter
    assert not torch.allclose(la[0, 4:], lb[0, 4:])


def test_lora_trains_only_the_adapters():
    model = tiny_llama()
    otlib.transform(model, otlib.TransformConfig(use_lora=True, lora=LoraConfig(rank=4, alpha=8.0)))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 7 * 2 and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=2e-2)
    ids = random_ids()
    model.train()
    losses = []
    for _ in range(4):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name


@pytest.mark.parametrize("use_lora", [False, True])
def test_mase_numerics_run(use_lora):
    model = tiny_llama()
    otlib.transform(model, otlib.TransformConfig(numerics="mase", use_lora=use_lora))
    ids = random_ids()
    model.train()
    for _ in range(2):
        out = model(ids, labels=ids)
        out.loss.backward()
        assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_generation_with_kv_cache():
    model = _trained_optical()
    ids = random_ids()
    state = copy.deepcopy(model.state_dict())
    model.eval()
    with torch.no_grad():
        first = model(ids).logits[:, -1].argmax(-1)
        model.load_state_dict(state)
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0
        )
    assert out.shape == (2, T + 4)
    assert torch.equal(out[:, T], first)  # the prefill step is the plain forward, same dither


def test_training_steps_under_torch_compile_equal_eager():
    # The whole optical model under torch.compile (aot_eager: every otlib custom op traced through its fake kernel,
    # autograd through the compiled graphs, the range buffers mutated in place): two training steps give eager's
    # losses, gradients and optical state bit for bit (the first step calibrates the out ranges, the second uses them).
    model = tiny_llama()
    otlib.transform(model, otlib.TransformConfig())
    model.train()
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, backend="aot_eager")
    ids, labels = torch.randint(0, VOCAB, (2, 12)), torch.randint(0, VOCAB, (2, 12))  # T = 12 ≠ head_dim = 16
    for _ in range(2):
        for m in (model, twin):
            m.zero_grad(set_to_none=True)
        loss = model(ids, labels=labels).loss
        loss.backward()
        loss_compiled = compiled(ids, labels=labels).loss
        loss_compiled.backward()
        assert torch.equal(loss, loss_compiled)
        for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
            assert torch.equal(p.grad, q.grad), name
        for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
