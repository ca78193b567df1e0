"""The tokenized-data format, defined once: writer, memmap reader, and block sampling.

A dataset directory (`results/tokenized/{dataset}/`) holds

    train.bin, eval.bin   flat little-endian token ids (uint16 when vocab <= 65535, else uint32);
                          documents are joined with the tokenizer's EOS id (doc0 EOS doc1 EOS ...)
    meta.json             {"format": "optical-clm-tokens/1", "dtype", "vocab_size", "eos_id",
                           "tokenizer", "source", "n_train_tokens", "n_eval_tokens", "created_by", ...}

`meta.json` is written last, so its presence marks a complete dataset.

Blocks. Training reads contiguous windows of `block_size + 1` tokens: inputs are the first
`block_size`, targets the last `block_size` (shifted by one). Block i starts at token
`i * block_size`, so consecutive windows share one token and every token after the first is a
target exactly once per epoch; there are `(n_tokens - 1) // block_size` blocks. The order of
blocks is a seeded permutation per epoch (epoch e uses seed (seed, e)), so a run that asks for
more tokens than one pass holds wraps to a fresh permutation instead of failing.

Sharding. Optimizer step t consumes global samples [t*E, (t+1)*E) with E the effective batch;
micro-step m on process p takes samples t*E + (m*P + p)*b + [0, b) (b the per-device batch, P
the processes). The global batch of a step is therefore the same for any (P, b, accumulation)
split of E, and the data position to resume from is just the number of completed steps.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optical_clm import atomic

FORMAT = "optical-clm-tokens/1"
META = "meta.json"
SPLITS = ("train", "eval")
_FLUSH_TOKENS = 1 << 20  # buffer ~1M ids in memory between writes


class DataError(ValueError):
    """A missing or malformed tokenized dataset (one-line message naming the path)."""


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    if vocab_size <= 0:
        raise DataError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


class TokenWriter:
    """Streams documents into `eval.bin` (first `eval_tokens` ids) then `train.bin`.

    The document that fills the eval split is cut at that token: its head ends eval.bin and its
    tail starts train.bin, so no token appears in both splits (a single-document text file still
    yields both splits). `max_train_tokens` (if given) truncates the train split exactly.
    Use as a context manager; `close()` renames the temporary files and writes `meta.json`.
    """

    def __init__(
        self, out_dir: str | Path, *, vocab_size: int, eos_id: int, eval_tokens: int, max_train_tokens: int | None
    ) -> None:
        if eval_tokens < 0:
            raise DataError(f"eval_tokens must be >= 0, got {eval_tokens}")
        if max_train_tokens is not None and max_train_tokens <= 0:
            raise DataError(f"max_train_tokens must be positive, got {max_train_tokens}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.vocab_size, self.eos_id = vocab_size, eos_id
        self.dtype = dtype_for_vocab(vocab_size)
        self.limits = {"eval": eval_tokens, "train": max_train_tokens}
        self.counts = {"eval": 0, "train": 0}
        self._buffers: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        self._buffered = {s: 0 for s in SPLITS}
        self._tmp = {s: self.out_dir / f".{s}.bin.tmp" for s in SPLITS}
        self._files = {s: open(self._tmp[s], "wb") for s in SPLITS}  # noqa: SIM115 (closed in close/abort)

    @property
    def full(self) -> bool:
        """True once the train split reached `max_train_tokens` (the caller can stop reading)."""
        limit = self.limits["train"]
        return limit is not None and self.counts["train"] >= limit

    def add_document(self, ids: list[int] | np.ndarray) -> None:
        doc = np.asarray(ids, dtype=np.int64)
        doc = np.concatenate([doc, np.array([self.eos_id], dtype=np.int64)])
        if doc.min() < 0 or doc.max() >= self.vocab_size:
            raise DataError(f"token id out of range [0, {self.vocab_size}): {int(doc.min())}..{int(doc.max())}")
        n_eval = min(self.limits["eval"] - self.counts["eval"], len(doc))
        self._append("eval", doc[:n_eval])
        doc = doc[n_eval:]
        if self.limits["train"] is not None:
            doc = doc[: max(self.limits["train"] - self.counts["train"], 0)]
        self._append("train", doc)

    def _append(self, split: str, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self._buffers[split].append(ids.astype(self.dtype))
        self._buffered[split] += len(ids)
        self.counts[split] += len(ids)
        if self._buffered[split] >= _FLUSH_TOKENS:
            self._flush(split)

    def _flush(self, split: str) -> None:
        for chunk in self._buffers[split]:
            self._files[split].write(chunk.tobytes())
        self._buffers[split], self._buffered[split] = [], 0

    def close(self, **meta: Any) -> dict[str, Any]:
        """Finish both splits atomically and write meta.json (extra keys from `meta`)."""
        for split in SPLITS:
            self._flush(split)
            self._files[split].close()
        if self.counts["train"] < 2:
            self.abort()
            raise DataError(f"train split of {self.out_dir} has {self.counts['train']} tokens; need at least 2")
        for split in SPLITS:
            os.replace(self._tmp[split], self.out_dir / f"{split}.bin")
        full_meta = {
            "format": FORMAT,
            "dtype": self.dtype.name,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "n_train_tokens": self.counts["train"],
            "n_eval_tokens": self.counts["eval"],
            **meta,
        }
        atomic.write_json(self.out_dir / META, full_meta)
        return full_meta

    def abort(self) -> None:
        for split in SPLITS:
            self._files[split].close()
            self._tmp[split].unlink(missing_ok=True)

    def __enter__(self) -> TokenWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_tokens(
    out_dir: str | Path,
    documents: list[list[int]],
    *,
    vocab_size: int,
    eos_id: int,
    eval_tokens: int = 0,
    max_train_tokens: int | None = None,
    **meta: Any,
) -> dict[str, Any]:
    """Write a whole list of tokenized documents (convenience over `TokenWriter`)."""
    with TokenWriter(
        out_dir, vocab_size=vocab_size, eos_id=eos_id, eval_tokens=eval_tokens, max_train_tokens=max_train_tokens
    ) as writer:
        for doc in documents:
            writer.add_document(doc)
            if writer.full:
                break
        return writer.close(**meta)


@dataclass
class TokenData:
    """A tokenized dataset opened read-only: `meta`, and `train` / `eval` as numpy memmaps."""

    path: Path
    meta: dict[str, Any]
    train: np.ndarray
    eval: np.ndarray

    @classmethod
    def open(cls, path: str | Path) -> TokenData:
        path = Path(path)
        meta_path = path / META
        if not meta_path.is_file():
            raise DataError(f"no tokenized dataset at {path} (missing {META})")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{meta_path} is not valid JSON: {err}") from None
        if meta.get("format") != FORMAT:
            raise DataError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        arrays = {}
        for split in SPLITS:
            file = path / f"{split}.bin"
            if not file.is_file():
                raise DataError(f"missing {file}")
            expected = meta[f"n_{split}_tokens"] * dtype.itemsize
            if file.stat().st_size != expected:
                raise DataError(f"{file} has {file.stat().st_size} bytes, meta.json says {expected}")
            arrays[split] = np.memmap(file, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)
        return cls(path=path, meta=meta, train=arrays["train"], eval=arrays["eval"])


def num_blocks(n_tokens: int, block_size: int) -> int:
    """Windows of block_size + 1 tokens with stride block_size (see module docstring)."""
    return max(n_tokens - 1, 0) // block_size


def read_blocks(tokens: np.ndarray, block_ids: list[int] | np.ndarray, block_size: int) -> tuple[torch.Tensor, ...]:
    """Inputs and targets, both int64 [len(block_ids), block_size], for the given block indices."""
    rows = np.stack([np.asarray(tokens[i * block_size : i * block_size + block_size + 1]) for i in block_ids])
    rows = torch.from_numpy(rows.astype(np.int64))
    return rows[:, :-1], rows[:, 1:]


@dataclass
class BlockOrder:
    """Deterministic seeded order of the train blocks; global sample s -> block index."""

    n_blocks: int
    seed: int
    _perms: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.n_blocks <= 0:
            raise DataError("the train split is shorter than one block; lower block_size or add data")

    def block(self, sample: int) -> int:
        epoch, i = divmod(sample, self.n_blocks)
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)}
        return int(self._perms[epoch][i])

    def blocks(self, samples: range) -> list[int]:
        return [self.block(s) for s in samples]


def micro_batch_samples(
    step: int, micro: int, *, process_index: int, num_processes: int, per_device_batch: int, batch_size: int
) -> range:
    """Global sample indices of one micro-batch of one process at optimizer step `step` (0-based)."""
    first = step * batch_size + (micro * num_processes + process_index) * per_device_batch
    return range(first, first + per_device_batch)
