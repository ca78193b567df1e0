"""Llama size presets for pretraining, parameter counting, and saving a model with its tokenizer.

Offline-study presets (`tiny`, `small`, `base`) are small enough to pretrain on a 2-core CPU in
about a minute each. The `clm-*-shape` presets reproduce the AICrossSim CLM family
(torchtitan "aixsim" flavours: Llama-3 blocks, FFN = 1.3 x 8/3 x hidden rounded up to 128,
untied output head, RoPE theta 10000 with llama3 scaling, vocabulary 49152 of the cosmo2
tokenizer) for randomly initialised throughput runs.

Parameter count. `count_params` counts unique parameters except the input token embedding, the
torchtitan convention under which AICrossSim/clm-60m is "60M" (63.2M; 82.1M with the input
embedding). The fine-tuning token rule 22 x N / 100 uses this N.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

CLM_VOCAB = 49152


def llama3_ffn_size(hidden: int, multiplier: float = 1.3, multiple_of: int = 128) -> int:
    """Llama-3 FFN width: multiple_of * ceil(int(multiplier * int(8 * hidden / 3)) / multiple_of)."""
    width = int(multiplier * int(8 * hidden / 3))
    return multiple_of * ((width + multiple_of - 1) // multiple_of)


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int | None = None  # None: take it from the tokenizer
    llama3_rope: bool = False  # llama3 RoPE scaling (factor 8 over 8192 positions) as in AICrossSim

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
                raise ValueError(f"model shape: {name} must be positive, got {value}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")


def _clm(hidden: int, layers: int, heads: int, kv_heads: int) -> ModelShape:
    return ModelShape(hidden, layers, heads, kv_heads, llama3_ffn_size(hidden), CLM_VOCAB, llama3_rope=True)


def _small(hidden: int, layers: int, heads: int, kv_heads: int) -> ModelShape:
    return ModelShape(hidden, layers, heads, kv_heads, llama3_ffn_size(hidden, multiple_of=32))


PRESETS: dict[str, ModelShape] = {
    # offline study (head dim 16; vocabulary from the tokenizer)
    "tiny": _small(64, 2, 4, 2),
    "small": _small(96, 3, 6, 2),
    "base": _small(128, 4, 8, 4),
    # AICrossSim CLM shapes (NewComputeBench src/aixsim_models/llm/model_flavors.py)
    "clm-60m-shape": _clm(384, 22, 6, 2),
    "clm-200m-shape": _clm(768, 24, 12, 4),
    "clm-400m-shape": _clm(960, 30, 15, 5),
    "clm-600m-shape": _clm(1152, 32, 18, 6),
}


def resolve_shape(preset: str, **overrides: int | None) -> ModelShape:
    """A preset with any non-None overrides (hidden_size=..., num_layers=..., vocab_size=...)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


def build_llama(shape: ModelShape, *, bos_token_id: int | None, eos_token_id: int | None, pad_token_id: int | None):
    """A randomly initialised `LlamaForCausalLM` of `shape` (HF's default init, std 0.02)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape.vocab_size is None:
        raise ValueError("model shape has no vocab_size (pass the tokenizer's)")
    if shape.llama3_rope:
        rope = {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
        max_positions = 131072
    else:
        rope, max_positions = {"rope_type": "default", "rope_theta": 10000.0}, 4096
    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=max_positions,
        rope_parameters=rope,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=False,
    )
    return LlamaForCausalLM(config)


def count_params(model: torch.nn.Module, *, include_input_embedding: bool = False) -> int:
    """Unique parameters (tied weights once); by default without the input token embedding."""
    seen: set[int] = set()
    total = 0
    skip = set()
    if not include_input_embedding and hasattr(model, "get_input_embeddings"):
        emb = model.get_input_embeddings()
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        # A tied embedding is also the output head: it is counted (once), as torchtitan does.
        if emb is not None and (out is None or out.weight is not emb.weight):
            skip = {id(p) for p in emb.parameters()}
    for param in model.parameters():
        if id(param) in seen or id(param) in skip:
            continue
        seen.add(id(param))
        total += param.numel()
    return total


def save_pretrained(model, tokenizer, out_dir: str | Path) -> None:
    """save_pretrained model and tokenizer into `out_dir` file by file, each file atomically.

    An optical model is saved with `otlib.save_optical`, so its TOML travels with the weights and
    `otlib.load_optical(out_dir)` rebuilds it exactly.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".save-", dir=out_dir))
    try:
        if getattr(model, "otlib_config", None) is not None:
            import otlib

            otlib.save_optical(model, tmp)
        else:
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for file in tmp.iterdir():
            os.replace(file, out_dir / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
