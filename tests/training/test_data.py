"""The tokenized-data format: round trip, dtype choice, eval split, block order and sharding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optical_clm import data


def random_docs(rng, n_docs, vocab, max_len=50):
    return [rng.integers(1, vocab, size=rng.integers(1, max_len)).tolist() for _ in range(n_docs)]


@pytest.mark.parametrize(
    ("vocab", "dtype"), [(512, "uint16"), (65535, "uint16"), (65536, "uint32"), (100_000, "uint32")]
)
def test_round_trip(tmp_path, vocab, dtype):
    rng = np.random.default_rng(vocab)
    docs = random_docs(rng, 40, vocab)
    meta = data.write_tokens(tmp_path, docs, vocab_size=vocab, eos_id=0, eval_tokens=100, tokenizer="t", source="s")
    assert meta["dtype"] == dtype
    opened = data.TokenData.open(tmp_path)
    joined = np.concatenate([np.array([*d, 0]) for d in docs])
    # eval first, then train: together exactly the documents joined with EOS
    assert np.array_equal(np.concatenate([opened.eval, opened.train]), joined)
    assert len(opened.eval) == 100 == opened.meta["n_eval_tokens"]
    assert opened.meta["format"] == data.FORMAT
    assert (tmp_path / "train.bin").stat().st_size == len(opened.train) * np.dtype(dtype).itemsize
    assert not list(tmp_path.glob(".*.tmp"))


def test_max_train_tokens_truncates_exactly(tmp_path):
    docs = random_docs(np.random.default_rng(1), 100, 300)
    meta = data.write_tokens(tmp_path, docs, vocab_size=300, eos_id=0, eval_tokens=7, max_train_tokens=123)
    assert (meta["n_train_tokens"], meta["n_eval_tokens"]) == (123, 7)


def test_out_of_range_token_is_rejected(tmp_path):
    with pytest.raises(data.DataError, match="out of range"):
        data.write_tokens(tmp_path, [[1, 2, 600]], vocab_size=512, eos_id=0)
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob(".*.tmp"))


def test_open_errors_name_the_path(tmp_path):
    with pytest.raises(data.DataError, match=r"missing meta\.json"):
        data.TokenData.open(tmp_path / "nope")
    data.write_tokens(tmp_path, [[1, 2, 3, 4]], vocab_size=10, eos_id=0)
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "n_train_tokens": 99}))
    with pytest.raises(data.DataError, match=r"train\.bin has 10 bytes"):
        data.TokenData.open(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "format": "other/1"}))
    with pytest.raises(data.DataError, match="format 'other/1'"):
        data.TokenData.open(tmp_path)


def test_blocks_are_shifted_windows():
    tokens = np.arange(1, 42, dtype=np.uint16)  # 41 tokens -> (41 - 1) // 8 = 5 blocks
    assert data.num_blocks(len(tokens), 8) == 5
    x, y = data.read_blocks(tokens, [0, 4], 8)
    assert x.tolist()[1] == list(range(33, 41)) and y.tolist()[1] == list(range(34, 42))
    assert (y[:, :-1] == x[:, 1:]).all()


def test_block_order_is_a_seeded_permutation_per_epoch():
    order = data.BlockOrder(n_blocks=37, seed=5)
    first = order.blocks(range(37))
    assert sorted(first) == list(range(37)) and first != list(range(37))
    assert first == data.BlockOrder(37, 5).blocks(range(37))
    assert first != data.BlockOrder(37, 6).blocks(range(37))
    second = order.blocks(range(37, 74))  # wraps to a fresh permutation
    assert sorted(second) == list(range(37)) and second != first


@pytest.mark.parametrize(("nproc", "per_device"), [(1, 8), (1, 2), (2, 4), (2, 1), (4, 2)])
def test_global_batch_of_a_step_is_independent_of_the_split(nproc, per_device):
    batch = 8
    accum = batch // (nproc * per_device)
    for step in (0, 3):
        got = sorted(
            s
            for p in range(nproc)
            for m in range(accum)
            for s in data.micro_batch_samples(
                step, m, process_index=p, num_processes=nproc, per_device_batch=per_device, batch_size=batch
            )
        )
        assert got == list(range(step * batch, (step + 1) * batch))
