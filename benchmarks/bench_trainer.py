"""Benchmark: the trainer itself (workflow/scripts/finetune.py) on a random Llama, eager micro-steps against
CUDA-graph micro-steps, digital and optical.

Run on a GPU machine from the repository root:
    PYTHONPATH=src python3 benchmarks/bench_trainer.py --model clm-60m-shape --steps 20 --out bench_trainer.md
Builds a small stdlib corpus, a 512-token BPE tokenizer and its tokenized data in a temporary directory
(offline), saves a randomly initialised model of the preset, and fine-tunes it per (mode, micro-steps):
batch 8 × block 1024, no accumulation. Reports the seconds per step from train_log.csv from step 4 on (after
the compiling and calibrating eager steps and the capture; median and range), the final loss and the held-out
loss after training.
"""

import argparse
import csv
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from report import emit, require_cuda

REPO = Path(__file__).resolve().parents[1]


def make_assets(root: Path, preset: str) -> Path:
    """Corpus → tokenizer → tokenized data in root; a random model of the preset in root/model."""
    from optical_clm import corpus, data, models, tokenizer

    corpus.build_corpus(root / "corpus.txt", root / "corpus.json", max_mb=2)
    tokenizer.train_bpe(corpus.read_documents(root / "corpus.txt"), 512, root / "tokenizer")
    tok = tokenizer.load_tokenizer(str(root / "tokenizer"))
    docs = tokenizer.encode_batch(tok, corpus.read_documents(root / "corpus.txt"))
    data.write_tokens(root / "data", docs, vocab_size=len(tok), eos_id=tok.eos_token_id, eval_tokens=16384,
                      tokenizer="tokenizer", source="bench_trainer")  # fmt: skip
    model = models.build_llama(models.resolve_shape(preset), bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root


def run(root: Path, mode: str, graphs: bool, steps: int) -> dict:
    out = root / f"{mode}-{'graphs' if graphs else 'eager'}"
    cmd = [sys.executable, str(REPO / "workflow/scripts/finetune.py"), "--model", str(root / "model"), "--mode", mode,
           "--data", str(root / "data"), "--lr", "1e-4", "--out-dir", str(out), "--tokens", str(steps * 8 * 1024),
           "--batch-size", "8", "--per-device-batch-size", "8", "--block-size", "1024"]  # fmt: skip
    done = subprocess.run([*cmd, *([] if graphs else ["--no-cuda-graphs"])], capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "train_log.csv") as f:
        t = [float(r["elapsed_s"]) for r in csv.DictReader(f)]
    per_step = [b - a for a, b in itertools.pairwise(t[2:])]  # steps 4..: after compiling, calibrating, capturing
    return {"per_step": per_step, "final": metrics["final_loss"], "eval": metrics["eval_loss_after"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="clm-60m-shape", help="a model preset (optical_clm.models)")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per run (>= 4)")
    ap.add_argument("--out", default=None, help="write the markdown table here too (atomically)")
    args = ap.parse_args(argv)
    require_cuda(__file__)
    if args.steps < 4:
        ap.error("--steps must be >= 4")
    lines = [
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}; {args.model}, 8 × 1024 tokens/step, "
        f"{args.steps} steps, seconds per step from step 4 on",
        "",
        "| mode | micro-steps | s/step median (min–max) | final loss | eval loss after |",
        "|---" * 5 + "|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = make_assets(Path(tmp), args.model)
        for mode in ("digital", "optical"):
            for graphs in (False, True):
                r = run(root, mode, graphs, args.steps)
                label = "CUDA graph" if graphs else "eager (--no-cuda-graphs)"
                if "error" in r:
                    lines.append(f"| {mode} | {label} | ERROR {r['error']} | — | — |")
                else:
                    s = r["per_step"]
                    lines.append(f"| {mode} | {label} | {statistics.median(s):.3f} ({min(s):.3f}–{max(s):.3f}) | "
                                 f"{r['final']:.4f} | {r['eval']:.4f} |")  # fmt: skip
                print(lines[-1], flush=True)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
