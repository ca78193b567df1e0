"""Resumable training state: atomic, newest-complete-wins checkpoints in a directory of their own.

Layout of `ckpt_dir` (never a Snakemake output, so it survives the deletion of a job's outputs):

    step00000040/            a complete checkpoint: accelerate's save_state (model incl. otlib
        model.safetensors    buffers, optimizer, registered scheduler, per-process RNG states)
        optimizer.bin ...    plus train_state.json (step = data position, log rows so far,
        train_state.json     eval before training, start loss, timers, config fingerprint)
    .tmp-step00000060/       a checkpoint being written (ignored, removed on the next start)

A checkpoint is written into `.tmp-stepN` by every process, completed with `train_state.json`
by the main process, and published with one `os.replace` (atomic), after which older ones are
deleted. So a kill at any moment leaves the previous complete checkpoint intact.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from optical_clm import atomic

STATE_FILE = "train_state.json"
_NAME = re.compile(r"^step(\d{8})$")


def _name(step: int) -> str:
    return f"step{step:08d}"


def latest(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory, or None."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    done = [p for p in ckpt_dir.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(_NAME.match(p.name).group(1)), default=None)


def save(accelerator, ckpt_dir: str | Path, step: int, state: dict[str, Any]) -> Path:
    """Collective: every process calls it. Returns the published checkpoint path."""
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir / f".tmp-{_name(step)}"
    final = ckpt_dir / _name(step)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic.write_json(tmp / STATE_FILE, {**state, "step": step})
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        for old in ckpt_dir.iterdir():
            if old != final and (_NAME.match(old.name) or old.name.startswith(".tmp-step")):
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, path: Path) -> dict[str, Any]:
    """Restore model/optimizer/scheduler/RNG from `path` (after `prepare`); return train_state."""
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())


def clear(ckpt_dir: str | Path | None) -> None:
    """Delete all checkpoints (after a run's final outputs are written)."""
    if ckpt_dir and Path(ckpt_dir).is_dir():
        for old in Path(ckpt_dir).iterdir():
            if _NAME.match(old.name) or old.name.startswith(".tmp-step"):
                shutil.rmtree(old, ignore_errors=True)
