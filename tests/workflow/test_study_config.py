"""Config coercion (strings from `--config`/PyYAML become numbers) and one-line validation errors."""

from pathlib import Path

import pytest
import yaml

from optical_clm.study_config import StudyConfigError, check, coerce

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


@pytest.fixture
def config():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["modes"] = ["digital"]  # no otlib TOML needed
    return cfg


def test_strings_from_the_command_line_are_coerced(config):
    config["models"]["tiny"]["lrs"] = ["1e-4", "3e-4"]  # `--config` and PyYAML's 1e-4 give strings
    config["finetune"] = {"batch_size": "16", "tokens": "2.0e5", "save_model": "true", "eval_every": "null"}
    out = check(config, SCHEMA)
    assert out["models"]["tiny"]["lrs"] == [1e-4, 3e-4]
    assert out["finetune"]["batch_size"] == 16 and isinstance(out["finetune"]["batch_size"], int)
    assert out["finetune"]["tokens"] == 200000 and isinstance(out["finetune"]["tokens"], int)
    assert out["finetune"]["save_model"] is True
    assert out["finetune"]["eval_every"] is None
    assert out["finetune"]["grad_clip"] == 1.0  # default filled in
    assert out["smoothing"]["method"] == "ema"


def test_coerce_leaves_non_numeric_strings_alone():
    schema = {"type": "object", "properties": {"x": {"type": "number"}, "n": {"type": "integer"}}}
    assert coerce({"x": "abc", "n": "2.5"}, schema) == {"x": "abc", "n": 2.5}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("finetune.batch_size", -3, "invalid config: finetune.batch_size: -3 is less than the minimum of 1"),
        ("modes", ["digital", "analog"], "invalid config: modes.1: 'analog' is not one of"),
        ("smoothing.method", "median", "invalid config: smoothing.method: 'median' is not one of"),
        ("finetune.lr", 1e-3, "invalid config: finetune: Additional properties are not allowed ('lr' was unexpected)"),
        ("models.tiny.lrs", [1e-3, 1.0e-3], "invalid config: models.tiny.lrs: [0.001, 0.001] has non-unique"),
        ("models.tiny.lrs", ["fast"], "invalid config: models.tiny.lrs.0: 'fast' is not of type 'number'"),
        ("models.bad/name", {"hub": "x/y", "lrs": [1e-5]}, "invalid config: models: 'bad/name' does not match"),
        ("models.tiny.hub", "org/tiny", "invalid config: models.tiny: give exactly one of hub"),
        ("tokenizer.hub", "org/tok", "invalid config: tokenizer: give exactly one of vocab_size"),
    ],
)
def test_bad_value_is_one_line_naming_the_key(config, key, value, message):
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    with pytest.raises(StudyConfigError) as err:
        check(config, SCHEMA)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_optical_mode_needs_the_otlib_toml(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config["modes"] = ["digital", "optical"]
    config["otlib_config"] = "missing.toml"
    with pytest.raises(StudyConfigError, match=r"otlib_config: file not found: 'missing\.toml'"):
        check(config, SCHEMA)
    (tmp_path / "missing.toml").write_text("")
    assert check(config, SCHEMA)["modes"] == ["digital", "optical"]


def test_hub_study_needs_a_dataset(config):
    config["data"] = {"name": "web", "source": "hub"}
    config["tokenizer"] = {"hub": "org/model"}
    config["models"] = {"m": {"hub": "org/model", "lrs": [1e-5]}}
    with pytest.raises(StudyConfigError, match=r"data\.hf_dataset: required"):
        check(config, SCHEMA)
