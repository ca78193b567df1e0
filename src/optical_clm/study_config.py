"""Type coercion and validation of a study config against the workflow's JSON schema.

Snakemake hands the Snakefile a config whose types depend on how it was given: `--config` turns
nested and list values into strings (`lrs=[1e-4]` gives `['1e-4']`) and PyYAML reads `1e-4` in a file
as a string too. `coerce` walks the config alongside the schema and converts only where the schema
asks for a number, integer, boolean or null, so a validation error is about a wrong value, not a
wrong spelling. It also fills in the schema's `default`s. `check` then validates and raises
`StudyConfigError` with one line that names the key (`finetune.batch_size: -3 is less than ...`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

_INT_RE = re.compile(r"[+-]?\d+")
_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}
_NULL = {"null", "none", "~", ""}


class StudyConfigError(ValueError):
    """A config value is invalid; the message is one line naming the key."""


def _coerce_scalar(value: Any, kind: str) -> Any:
    """Convert `value` to the JSON type `kind` if it is an unambiguous spelling of one; else return it."""
    if kind == "number" and isinstance(value, str):
        try:
            return float(value) if not _INT_RE.fullmatch(value.strip()) else int(value)
        except ValueError:
            return value
    if kind == "integer":
        if isinstance(value, str):
            text = value.strip().replace("_", "")
            if _INT_RE.fullmatch(text):
                return int(text)
            try:
                value = float(text)  # `1e6` or `2.0e5` spelled as a float
            except ValueError:
                return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        return value
    if kind == "boolean" and isinstance(value, str):
        low = value.strip().lower()
        return True if low in _TRUE else False if low in _FALSE else value
    if kind == "null" and isinstance(value, str) and value.strip().lower() in _NULL:
        return None
    return value


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Merge a local `$ref` ("#/$defs/name") into the schema that uses it (sibling keys win)."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    target: Any = root
    for part in ref[2:].split("/"):
        target = target[part]
    return {**_resolve(target, root), **{k: v for k, v in schema.items() if k != "$ref"}}


def coerce(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """Return `value` with scalars converted to the types `schema` declares and defaults filled in."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if "array" in kinds and isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce(item, schema["items"], root) for item in value]
    if "object" in kinds and isinstance(value, dict):
        props: dict[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            out[key] = coerce(item, sub, root) if sub is not None else item
        for key, sub in props.items():
            sub = _resolve(sub, root)
            if key not in out and "default" in sub:
                out[key] = coerce(sub["default"], sub, root)
        return out
    # A scalar: try the declared kinds in a fixed order so "null" wins over "string" for "null".
    for kind in ("null", "boolean", "integer", "number"):
        if kind in kinds:
            converted = _coerce_scalar(value, kind)
            if converted is not value:
                return converted
    return value


def _key_path(path: Any) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


def _check_choices(config: dict[str, Any]) -> None:
    """Rules across keys that JSON Schema would only report as "not valid under any of the given schemas"."""

    def fail(key: str, message: str) -> None:
        raise StudyConfigError(f"invalid config: {key}: {message}")

    if ("vocab_size" in config["tokenizer"]) == ("hub" in config["tokenizer"]):
        fail("tokenizer", "give exactly one of vocab_size (a BPE trained here) or hub (a model's tokenizer id)")
    for name, spec in config["models"].items():
        if ("hub" in spec) == ("pretrain" in spec):
            fail(f"models.{name}", "give exactly one of hub (a Hugging Face model id) or pretrain (trained here)")
        if "pretrain" in spec and "vocab_size" not in config["tokenizer"]:
            fail(
                f"models.{name}.pretrain",
                "a model pretrained here needs a tokenizer trained here (tokenizer.vocab_size)",
            )
    data = config["data"]
    if data["source"] == "hub" and not data["hf_dataset"]:
        fail("data.hf_dataset", "required when data.source is 'hub'")
    if data["source"] == "stdlib" and "vocab_size" not in config["tokenizer"]:
        fail("tokenizer", "data.source 'stdlib' needs a tokenizer trained on it (tokenizer.vocab_size)")
    if any(mode != "digital" for mode in config["modes"]) and not Path(config["otlib_config"]).is_file():
        fail("otlib_config", f"file not found: {config['otlib_config']!r}")


def check(config: dict[str, Any], schema_path: str | Path) -> dict[str, Any]:
    """Coerce, fill defaults and validate `config`; return the result or raise one-line `StudyConfigError`.

    Relative paths in the config (`otlib_config`) are checked against the working directory.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    config = coerce(config, schema)
    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        raise StudyConfigError(f"invalid config: {_key_path(error.absolute_path)}: {error.message}")
    _check_choices(config)
    return config
