"""The study's modes: how a loaded model becomes the digital, optical or optical-mase variant.

- `digital`: the model unchanged (the standard fine-tuning baseline).
- `optical`: `otlib.transform(model, config)` with the study's TOML.
- `optical-mase`: the same config with `numerics = "mase"` (the peer library's numerics,
  defects included), via `dataclasses.replace` on the frozen config.

otlib is imported lazily so the digital path never depends on it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

MODES = ("digital", "optical", "optical-mase")
DEFAULT_OTLIB_CONFIG = "configs/otlib/optical_transformer.toml"


def resolve_otlib_config(path: str | None) -> Path:
    """The TOML path as given, else the study default (relative to the cwd, then the repo root)."""
    candidates = (
        [Path(path)] if path else [Path(DEFAULT_OTLIB_CONFIG), Path(__file__).parents[2] / DEFAULT_OTLIB_CONFIG]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"otlib config not found: {candidates[0]}")


def apply_mode(model: torch.nn.Module, mode: str, otlib_config: str | None = None) -> list[str]:
    """Transform `model` in place for `mode`; returns the names of the replaced modules."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "digital":
        return []
    import otlib

    config = otlib.load_config(resolve_otlib_config(otlib_config))
    if mode == "optical-mase":
        config = dataclasses.replace(config, numerics="mase")
    replaced = otlib.transform(model, config)
    if not replaced:
        raise ValueError(f"otlib.transform replaced no module of the model (config {otlib_config})")
    return replaced
