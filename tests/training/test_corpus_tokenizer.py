"""Corpus collection, tokenizer training (offline) and the tokenize stage's CLI."""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest

from optical_clm import corpus, data, tokenizer


def test_stdlib_files_are_sorted_and_skip_tests():
    files = corpus.stdlib_files()
    rel = [f.relative_to(corpus.stdlib_dir()).as_posix() for f in files]
    assert rel == sorted(rel) and len(rel) > 100
    assert "argparse.py" in rel and "json/decoder.py" in rel
    assert not any(part in corpus.SKIP_DIRS for r in rel for part in r.split("/")[:-1])
    assert not any(r.split("/")[-1].startswith("_sysconfigdata_") for r in rel)


def test_corpus_is_deterministic_and_capped(tmp_path):
    meta_a = corpus.build_corpus(tmp_path / "a.txt", tmp_path / "a.json", max_mb=0.1)
    meta_b = corpus.build_corpus(tmp_path / "b.txt", tmp_path / "b.json", max_mb=0.1)
    assert meta_a["sha256"] == meta_b["sha256"]
    assert json.loads((tmp_path / "a.json").read_text()) == meta_a
    assert meta_a["python_version"] == platform.python_version()
    assert 0 < meta_a["bytes"] <= 100_000 and meta_a["n_files"] == len(corpus.read_documents(tmp_path / "a.txt"))
    first = corpus.stdlib_files()[0].read_text(encoding="utf-8")
    assert corpus.read_documents(tmp_path / "a.txt")[0] == first
    with pytest.raises(ValueError, match="--max-mb must be positive"):
        corpus.build_corpus(tmp_path / "c.txt", tmp_path / "c.json", max_mb=0)


def test_tokenizer_round_trips_offline(tiny_assets, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_assets["tokenizer"])
    assert len(tok) == 512 and tok.eos_token == tokenizer.EOS and tok.pad_token == tokenizer.PAD
    assert tok.bos_token_id == tok.eos_token_id != tok.pad_token_id
    text = "def f(x):\n    return x ** 2  # ünïcode ✓\n"
    ids = tokenizer.encode_batch(tok, [text])[0]
    assert tok.decode(ids) == text and max(ids) < 512


def test_tokenizer_training_is_deterministic(tmp_path):
    docs = ["import os\nprint(os.getcwd())\n" * 20, "x = [i for i in range(3)]\n" * 20]
    tokenizer.train_bpe(docs, 300, tmp_path / "a")
    tokenizer.train_bpe(docs, 300, tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
    with pytest.raises(ValueError, match="--vocab-size must be >= 258"):
        tokenizer.train_bpe(docs, 100, tmp_path / "c")


def test_tokenize_cli_text_file(tiny_assets, tmp_path, script):
    out = tmp_path / "tok"
    res = script("tokenize_data", "--tokenizer", tiny_assets["tokenizer"], "--text-file", tiny_assets["corpus"],
                 "--out-dir", out, "--eval-tokens", "1000", "--max-tokens", "20000", "--seed", "3")  # fmt: skip
    assert res.returncode == 0, res.stderr
    opened = data.TokenData.open(out)
    assert (len(opened.train), len(opened.eval)) == (20000, 1000)
    assert opened.meta["vocab_size"] == 512 and opened.meta["source"].startswith("text:")
    assert opened.train.max() < 512 and (np.asarray(opened.train) == opened.meta["eos_id"]).any()


def test_scripts_fail_in_one_line(tmp_path, script):
    res = script("train_tokenizer", "--corpus", tmp_path / "missing.txt", "--vocab-size", "512", "--out-dir", tmp_path)
    assert res.returncode != 0 and res.stderr.strip().splitlines() == [
        f"error: corpus file not found: {tmp_path}/missing.txt"
    ]


def test_tokenize_a_local_dataset_in_streaming_mode(tiny_assets, tmp_path, cli_main):
    """The --hf-dataset path (streaming, stop at --max-tokens) on a local JSON-lines dataset, offline."""
    rows = [{"text": f"def f{i}(x):\n    return x * {i}\n", "id": i} for i in range(400)]
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "tok"
    args = ["--tokenizer", tiny_assets["tokenizer"], "--hf-dataset", tmp_path / "ds", "--out-dir", out,
            "--eval-tokens", "300", "--max-tokens", "2000"]  # fmt: skip
    assert cli_main("tokenize_data", *args) == 0
    opened = data.TokenData.open(out)
    assert (len(opened.train), len(opened.eval)) == (2000, 300)
    assert opened.meta["source"] == f"hf:{tmp_path / 'ds'}:train"
    assert cli_main("tokenize_data", *args[:-4], "--text-column", "body") == 2  # no such column
