"""Model presets and parameter counting."""

from __future__ import annotations

import pytest
import torch

from optical_clm import models


def test_llama3_ffn_size_matches_aicrosssim():
    # torchtitan: 1.3 x int(8 x 384 / 3) = 1331.2 -> 1331, rounded up to 128 -> 1408
    assert models.llama3_ffn_size(384) == 1408
    assert models.llama3_ffn_size(768) == 2688


def test_clm_60m_shape_counts_as_60m():
    shape = models.PRESETS["clm-60m-shape"]
    assert (shape.hidden_size, shape.num_layers, shape.num_heads, shape.num_kv_heads) == (384, 22, 6, 2)
    assert (shape.intermediate_size, shape.vocab_size) == (1408, 49152)
    with torch.device("meta"):  # shapes only, no memory
        model = models.build_llama(shape, bos_token_id=0, eos_token_id=0, pad_token_id=None)
    assert not model.config.tie_word_embeddings
    assert models.count_params(model) == 63_226_752
    assert models.count_params(model, include_input_embedding=True) == 63_226_752 + 49152 * 384


def test_tied_embedding_is_counted_once_as_the_head():
    shape = models.resolve_shape("tiny", vocab_size=100)
    model = models.build_llama(shape, bos_token_id=0, eos_token_id=0, pad_token_id=None)
    untied = models.count_params(model)
    model.lm_head.weight = model.model.embed_tokens.weight
    assert models.count_params(model) == untied
    assert models.count_params(model, include_input_embedding=True) == untied


def test_resolve_shape_overrides_and_errors():
    shape = models.resolve_shape("tiny", vocab_size=512, num_layers=3, hidden_size=None)
    assert (shape.num_layers, shape.hidden_size, shape.vocab_size) == (3, 64, 512)
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        models.resolve_shape("huge")
    with pytest.raises(ValueError, match="not divisible by num_kv_heads 3"):
        models.resolve_shape("tiny", num_kv_heads=3)
