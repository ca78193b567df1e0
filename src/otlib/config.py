"""The otlib TOML file → `TransformConfig` (frozen dataclasses), validated.

One file describes how `otlib.transform` turns a model optical:

```toml
use_lora = false          # trainable low-rank adapters on the optical linears, base weights frozen
numerics = "fixed"        # "fixed" (otlib) or "mase" (reproduce the peer's defects, for ablations)

[lora]                    # only read when use_lora = true
rank = 32
alpha = 32.0
dropout = 0.0

[attention]               # the two products inside attention (Q·Kᵀ and P·V)
q_levels = 256
q_lut_min = 0.020040
q_smooth_factor = 0.9
q_init_seed = 0
q_bypass = false
# q_quantiles = [0.001, 0.999]

[fc]                      # every nn.Linear except lm_head
...                       # same keys as [attention]
```

Every value is checked twice through the same rules: while the file is read (the error names the
file, the section and the key) and in `__post_init__` (so configs built in code, or changed with
`dataclasses.replace`, are checked too). All errors are `ConfigError`, a `ValueError`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NUMERICS = ("fixed", "mase")
_MAX_SEED = 2**63  # the seed lives in an int64 device buffer


class ConfigError(ValueError):
    """An otlib config value is unknown, of the wrong type, or out of range."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, float) or _is_int(v)) and math.isfinite(v)


# key -> (type check, type name, range check, range text); one table per section, shared by
# the file reader and __post_init__.
_Rule = tuple[Any, str, Any, str]
_LAYER_RULES: dict[str, _Rule] = {
    "q_levels": (_is_int, "an integer", lambda v: v >= 2, "must be >= 2"),
    "q_lut_min": (_is_number, "a number", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "q_smooth_factor": (_is_number, "a number", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "q_init_seed": (_is_int, "an integer", lambda v: 0 <= v < _MAX_SEED, "must be in [0, 2**63)"),
    "q_bypass": (lambda v: isinstance(v, bool), "a boolean", lambda v: True, ""),
    "q_quantiles": (
        lambda v: v is None or (isinstance(v, list | tuple) and len(v) == 2 and all(_is_number(q) for q in v)),
        "a pair of numbers [a, b]",
        lambda v: v is None or 0 < v[0] < v[1] < 1,
        "must satisfy 0 < a < b < 1",
    ),
}
_LORA_RULES: dict[str, _Rule] = {
    "rank": (_is_int, "an integer", lambda v: v >= 1, "must be >= 1"),
    "alpha": (_is_number, "a number", lambda v: v > 0, "must be > 0"),
    "dropout": (_is_number, "a number", lambda v: 0 <= v < 1, "must be in [0, 1)"),
}
_TOP_RULES: dict[str, _Rule] = {
    "use_lora": (lambda v: isinstance(v, bool), "a boolean", lambda v: True, ""),
    "numerics": (lambda v: isinstance(v, str), "a string", lambda v: v in NUMERICS, f"must be one of {NUMERICS}"),
}


def _check(rules: dict[str, _Rule], key: str, value: Any, where: str) -> None:
    """Raise ConfigError naming `where` and `key` unless `value` passes the key's rules."""
    if key not in rules:
        raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(rules)})")
    is_type, type_name, in_range, range_text = rules[key]
    if not is_type(value):
        raise ConfigError(f"{where}: {key} = {value!r} must be {type_name}")
    if not in_range(value):
        raise ConfigError(f"{where}: {key} = {value!r} {range_text}")


def _check_all(obj: Any, rules: dict[str, _Rule], where: str) -> None:
    for f in dataclasses.fields(obj):
        if f.name in rules:
            _check(rules, f.name, getattr(obj, f.name), where)


def _as_floats(obj: Any, names: tuple[str, ...]) -> None:
    """TOML `1` for a float key is accepted; store it as 1.0 so configs compare and print alike."""
    for name in names:
        object.__setattr__(obj, name, float(getattr(obj, name)))


@dataclass(frozen=True)
class LayerConfig:
    """Quantization settings of one family of optical products ([attention] or [fc])."""

    q_levels: int = 256  # L: output levels of every quantizer (8 bits)
    q_lut_min: float = 0.020040  # λ: SLM's lowest non-zero relative transmission (≈ 50:1 extinction)
    q_smooth_factor: float = 0.9  # β of the range EMA: lo ← β·lo + (1 − β)·batch_min
    q_init_seed: int = 0  # Philox key of this family's stochastic read-out
    q_bypass: bool = False  # true: the exact digital layer
    q_quantiles: tuple[float, float] | None = None  # (a, b): batch a-/b-quantiles instead of min/max

    def __post_init__(self) -> None:
        _check_all(self, _LAYER_RULES, "LayerConfig")
        _as_floats(self, ("q_lut_min", "q_smooth_factor"))
        if self.q_quantiles is not None:  # TOML gives a list; keep a hashable tuple of floats
            object.__setattr__(self, "q_quantiles", tuple(float(q) for q in self.q_quantiles))


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters W_eff = W + (alpha / rank)·B·A, used when `use_lora` is true."""

    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0  # dropout on the adapter factor A (see docs/otlib.md, "LoRA")

    def __post_init__(self) -> None:
        _check_all(self, _LORA_RULES, "LoraConfig")
        _as_floats(self, ("alpha", "dropout"))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class TransformConfig:
    """Everything `otlib.transform` needs. `dataclasses.replace(cfg, numerics="mase")` works."""

    use_lora: bool = False
    numerics: str = "fixed"
    lora: LoraConfig = field(default_factory=LoraConfig)
    attention: LayerConfig = field(default_factory=LayerConfig)
    fc: LayerConfig = field(default_factory=LayerConfig)

    def __post_init__(self) -> None:
        _check_all(self, _TOP_RULES, "TransformConfig")
        for name, cls in (("lora", LoraConfig), ("attention", LayerConfig), ("fc", LayerConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"TransformConfig: {name} must be a {cls.__name__}, got {getattr(self, name)!r}")


_SECTIONS: dict[str, tuple[type, dict[str, _Rule]]] = {
    "lora": (LoraConfig, _LORA_RULES),
    "attention": (LayerConfig, _LAYER_RULES),
    "fc": (LayerConfig, _LAYER_RULES),
}


def load_config(path: str | os.PathLike[str]) -> TransformConfig:
    """Read and validate an otlib TOML file; missing keys take the documented defaults."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: otlib config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(data, source=str(path))


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> TransformConfig:
    """Build a TransformConfig from the parsed TOML structure; errors name `source`, section and key."""
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{key}] must be a table, got {value!r}")
            cls, rules = _SECTIONS[key]
            for sub_key, sub_value in value.items():
                _check(rules, sub_key, sub_value, f"{source}: section [{key}]")
            top[key] = cls(**value)
        else:
            _check(_TOP_RULES, key, value, f"{source}: top level")
            top[key] = value
    return TransformConfig(**top)


def config_to_toml(config: TransformConfig) -> str:
    """The TOML text that `load_config` reads back into an equal TransformConfig."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = [f"use_lora = {value(config.use_lora)}", f"numerics = {value(config.numerics)}"]
    for section in _SECTIONS:
        lines += ["", f"[{section}]"]
        for f in dataclasses.fields(getattr(config, section)):
            v = getattr(getattr(config, section), f.name)
            if v is not None:  # TOML has no null: an absent key means the default (None)
                lines.append(f"{f.name} = {value(v)}")
    return "\n".join(lines) + "\n"
