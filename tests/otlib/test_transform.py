"""otlib.transform, save_optical and load_optical: which modules are replaced (counted exactly), stream ids,
LoRA freezing, errors, and a save/load round trip that evaluates identically."""

import json
from pathlib import Path

import pytest
import torch
from test_llama import random_ids, tiny_llama
from torch import nn

import otlib
from otlib.config import LayerConfig, LoraConfig
from otlib.layers import STATE_ATTR, OpticalAttentionState

STUDY_TOML = Path(__file__).resolve().parents[2] / "configs" / "otlib" / "optical_transformer.toml"
PER_LAYER = ("self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # fmt: skip


@pytest.mark.parametrize("tied", [True, False])
def test_replaces_every_linear_but_lm_head_and_every_attention(tied):
    model = tiny_llama(tie_word_embeddings=tied)
    names = otlib.transform(model, otlib.TransformConfig())
    assert names == [f"model.layers.{i}.{suffix}" for i in range(2) for suffix in PER_LAYER]
    assert type(model.lm_head) is nn.Linear
    assert model.config._attn_implementation == "optical"
    linears = [m for m in model.modules() if isinstance(m, otlib.OpticalLinear)]
    states = [m for m in model.modules() if isinstance(m, OpticalAttentionState)]
    assert len(linears) == 14 and len(states) == 2
    assert all(isinstance(model.get_submodule(f"model.layers.{i}.self_attn.{STATE_ATTR}"), OpticalAttentionState)
               for i in range(2))  # fmt: skip
    streams = [m.stream for m in linears] + [s for m in states for s in m.streams]
    assert sorted(streams) == list(range(18))  # one Philox stream per optical product
    keys = model.state_dict().keys()
    assert "model.layers.0.self_attn.optical_attention.qk.bounds" in keys and "model.layers.1.mlp.up_proj.rng" in keys


def test_config_from_path_and_attention_bypass():
    model = tiny_llama()
    assert len(otlib.transform(model, STUDY_TOML)) == 16
    digital_attention = tiny_llama()
    names = otlib.transform(digital_attention, otlib.TransformConfig(attention=LayerConfig(q_bypass=True)))
    assert len(names) == 14 and not any(n.endswith("self_attn") for n in names)
    assert digital_attention.config._attn_implementation == "sdpa"


def test_lora_freezes_everything_but_the_adapters():
    model = tiny_llama()
    cfg = otlib.TransformConfig(use_lora=True, lora=LoraConfig(rank=2, alpha=4.0), fc=LayerConfig(q_bypass=True))
    otlib.transform(model, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 28 and all(n.rsplit(".", 1)[1] in ("lora_A", "lora_B") for n in trainable)
    assert not model.model.embed_tokens.weight.requires_grad and not model.model.norm.weight.requires_grad
    assert model.model.layers[0].mlp.up_proj.lora_scale == 2.0  # digital (bypass) linears still carry adapters


def test_errors():
    model = tiny_llama()
    otlib.transform(model, otlib.TransformConfig())
    with pytest.raises(ValueError, match="already optical"):
        otlib.transform(model, otlib.TransformConfig())
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(ValueError, match="q_bypass"):
        otlib.transform(mlp, otlib.TransformConfig())
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    assert otlib.transform(mlp, otlib.TransformConfig(attention=LayerConfig(q_bypass=True))) == ["0", "2"]
    assert torch.isfinite(mlp(torch.randn(3, 8))).all()


@pytest.mark.parametrize(("use_lora", "shard"), [(False, None), (True, "200KB")])
def test_save_load_round_trip_evaluates_identically(tmp_path, use_lora, shard):
    cfg = otlib.TransformConfig(use_lora=use_lora, lora=LoraConfig(rank=4), numerics="fixed")
    model = tiny_llama()
    otlib.transform(model, cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = random_ids()
    model.train()
    for _ in range(2):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    otlib.save_optical(model, tmp_path, **({"max_shard_size": shard} if shard else {}))  # config: the applied one
    assert (tmp_path / "model.safetensors.index.json").exists() == bool(shard)
    assert otlib.load_config(tmp_path / "otlib.toml") == cfg
    assert "optical" not in json.dumps(json.loads((tmp_path / "config.json").read_text()))  # plain HF config
    model.eval()
    with torch.no_grad():
        expected = model(ids).logits
    loaded = otlib.load_optical(tmp_path)
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
    saved_state = model.state_dict()
    for key, value in loaded.state_dict().items():
        if "rng" not in key:  # the counters moved on by the evaluation above
            assert torch.equal(value, saved_state[key]), key
    tracker = loaded.model.layers[1].mlp.down_proj.stats
    assert [tracker.is_set(r) for r in range(3)] == [True, True, True]  # host mirror rebuilt on load


def test_load_without_optical_state_fails_clearly(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path)  # digital checkpoint
    (tmp_path / "otlib.toml").write_text("")
    with pytest.raises(ValueError, match="lacks optical state"):
        otlib.load_optical(tmp_path)
