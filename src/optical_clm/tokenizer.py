"""Byte-level BPE tokenizer training (`tokenizers`) and fast batch encoding.

The trained tokenizer is wrapped as a `transformers` fast tokenizer (`PreTrainedTokenizerFast`,
an alias of `TokenizersBackend` in transformers 5) and saved with `save_pretrained`, so
`AutoTokenizer.from_pretrained(dir)` loads it offline exactly like a hub model's tokenizer.
`<|endoftext|>` is BOS, EOS and UNK (GPT-2 style; byte-level BPE never needs UNK); `<|pad|>` pads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from optical_clm import atomic

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_bpe(documents: Iterable[str], vocab_size: int, out_dir: str | Path) -> None:
    """Train a ByteLevel BPE of `vocab_size` entries on `documents`; save_pretrained to `out_dir`."""
    from transformers import PreTrainedTokenizerFast

    # 256 byte symbols + 2 specials are the minimum; below that BPE cannot cover every input.
    if vocab_size < 258:
        raise ValueError(f"--vocab-size must be >= 258 (256 bytes + 2 special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=PAD)
    with atomic.atomic_dir(out_dir) as tmp:
        wrapped.save_pretrained(tmp)


def load_tokenizer(name_or_path: str):
    """AutoTokenizer for a local directory or a hub id (a hub id needs the network or the HF cache)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load tokenizer {name_or_path!r}: {first_line}") from None


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens, no attention mask.

    Goes straight to the Rust backend's `encode_batch_fast` (parallel, no offsets; ~2x the speed
    of calling the transformers tokenizer, which also builds masks); slow tokenizers fall back to
    `__call__`.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [enc.ids for enc in encode(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def tokenize_to_dataset(
    tok,
    doc_batches: Iterable[list[str]],
    out_dir: str | Path,
    *,
    eval_tokens: int,
    max_tokens: int | None,
    progress_total: int | None = None,
    **meta,
) -> dict:
    """Encode batches of documents into the tokenized format (optical_clm.data) in `out_dir`.

    Stops reading as soon as the train split holds `max_tokens`, so a streamed hub dataset is
    only read as far as needed. Returns the written meta.json content.
    """
    from tqdm.auto import tqdm

    from optical_clm import data

    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {meta.get('tokenizer')!r} has no EOS token to join documents with")
    vocab_size = len(tok)
    with (
        data.TokenWriter(
            out_dir,
            vocab_size=vocab_size,
            eos_id=tok.eos_token_id,
            eval_tokens=eval_tokens,
            max_train_tokens=max_tokens,
        ) as writer,
        tqdm(total=progress_total, unit="tok", unit_scale=True, desc="tokenize") as bar,
    ):
        for texts in doc_batches:
            before = writer.counts["eval"] + writer.counts["train"]
            for ids in encode_batch(tok, texts):
                writer.add_document(ids)
                if writer.full:
                    break
            bar.update(writer.counts["eval"] + writer.counts["train"] - before)
            if writer.full:
                break
        return writer.close(**meta)
