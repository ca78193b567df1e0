"""Session-scoped tiny fixtures for the training tests: a corpus of a few stdlib files, a BPE
tokenizer (vocab 512), the tokenized dataset, and a randomly initialised tiny Llama saved like a
hub model. Built once (about 2 s), so every test stays fast and offline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optical_clm import cli, corpus, data, models, tokenizer

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "workflow" / "scripts"
VOCAB = 512
BLOCK = 32


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assets")
    # ~250 kB of stdlib text: a deterministic prefix of the full corpus
    corpus.build_corpus(root / "corpus.txt", root / "corpus.json", max_mb=0.25)
    tokenizer.train_bpe(corpus.read_documents(root / "corpus.txt"), VOCAB, root / "tokenizer")
    tok = tokenizer.load_tokenizer(str(root / "tokenizer"))
    docs = tokenizer.encode_batch(tok, corpus.read_documents(root / "corpus.txt"))
    data.write_tokens(root / "data", docs, vocab_size=len(tok), eos_id=tok.eos_token_id, eval_tokens=4 * BLOCK * 8,
                      tokenizer="tokenizer", source="test")  # fmt: skip
    shape = models.resolve_shape("tiny", vocab_size=len(tok))
    model = models.build_llama(shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)  # fmt: skip
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return {"root": root, "corpus": root / "corpus.txt", "tokenizer": root / "tokenizer", "data": root / "data",
            "model": root / "model"}  # fmt: skip


def run_script(name: str, *args: str | Path, timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    """Run workflow/scripts/NAME.py in a fresh interpreter (1 torch thread: CI runs tests in parallel with other work; offline)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPTS / f"{name}.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, **popen)


def finetune_args(assets: dict[str, Path], out: Path, *extra: str, lr: str = "3e-3", mode: str = "digital") -> list:
    """A tiny fine-tune: 24 steps of 4 blocks x 32 tokens."""
    return ["--model", assets["model"], "--mode", mode, "--data", assets["data"], "--lr", lr,
            "--out-dir", out / "run", "--ckpt-dir", out / "ckpt", "--tokens", str(24 * 4 * BLOCK),
            "--batch-size", "4", "--per-device-batch-size", "2", "--block-size", str(BLOCK), *extra]  # fmt: skip


@pytest.fixture(scope="session")
def script():
    """`script(name, *args)` runs a workflow script in a subprocess (see run_script)."""
    return run_script


def load_script(name: str):
    """Import workflow/scripts/NAME.py as a module (its `main(argv)` is the command line)."""
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def in_process_cli():
    """`call(name, *args)`: a workflow script's main() in this process -> its exit code.

    Same code path as the command line (cli.guarded included) without the interpreter start and
    imports, which cost several seconds per subprocess on a 2-core machine. One torch thread, as in
    the subprocess runs (OMP_NUM_THREADS=1), so logs compare bit for bit.
    """
    modules: dict = {}

    def call(name: str, *args) -> int:
        if name not in modules:
            modules[name] = load_script(name)
        return cli.guarded(modules[name].main, [str(a) for a in args])

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.chdir(REPO)
        torch.set_num_threads(1)
        try:
            yield call
        finally:
            torch.set_num_threads(threads)


@pytest.fixture
def cli_main():
    with in_process_cli() as call:
        yield call


@pytest.fixture(scope="session")
def ft_args(tiny_assets):
    """`ft_args(out_dir, *extra, lr=..., mode=...)`: the CLI arguments of a tiny fine-tune."""
    return lambda out, *extra, **kw: finetune_args(tiny_assets, out, *extra, **kw)
