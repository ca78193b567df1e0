"""otlib.load_config / TransformConfig: defaults, the study's TOML, round trip, and one error per bad value
that names the file, the section and the key."""

import dataclasses
from pathlib import Path

import pytest

import otlib
from otlib.config import LayerConfig, LoraConfig, config_to_toml

STUDY_TOML = Path(__file__).resolve().parents[2] / "configs" / "otlib" / "optical_transformer.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


def test_defaults_and_study_file():
    cfg = otlib.TransformConfig()
    assert (cfg.use_lora, cfg.numerics) == (False, "fixed")
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout) == (32, 32.0, 0.0)
    for layer in (cfg.attention, cfg.fc):
        assert (layer.q_levels, layer.q_lut_min, layer.q_smooth_factor) == (256, 0.020040, 0.9)
        assert (layer.q_init_seed, layer.q_bypass, layer.q_quantiles) == (0, False, None)
    assert otlib.load_config(STUDY_TOML) == cfg  # the study file documents exactly the defaults


def test_full_file_and_round_trip(tmp_path):
    path = _write(
        tmp_path,
        'use_lora = true\nnumerics = "mase"\n[lora]\nrank = 8\nalpha = 16\ndropout = 0.1\n'
        "[attention]\nq_levels = 16\nq_quantiles = [0.01, 0.99]\n"
        "[fc]\nq_bypass = true\nq_init_seed = 7\nq_smooth_factor = 1\n",
    )
    cfg = otlib.load_config(path)
    assert cfg.use_lora and cfg.numerics == "mase"
    assert cfg.lora == LoraConfig(rank=8, alpha=16.0, dropout=0.1) and cfg.lora.scale == 2.0
    assert cfg.attention.q_levels == 16 and cfg.attention.q_quantiles == (0.01, 0.99)
    assert cfg.fc.q_bypass and cfg.fc.q_init_seed == 7 and cfg.fc.q_smooth_factor == 1.0
    assert isinstance(cfg.fc.q_smooth_factor, float) and isinstance(cfg.lora.alpha, float)
    again = tmp_path / "again.toml"
    again.write_text(config_to_toml(cfg))
    assert otlib.load_config(again) == cfg


@pytest.mark.parametrize(
    ("text", "section", "key"),
    [
        ("[fc]\nq_level = 256\n", "[fc]", "q_level"),  # unknown key (typo)
        ("[attention]\nlevels = 256\n", "[attention]", "levels"),
        ("[lora]\nranks = 4\n", "[lora]", "ranks"),
        ("use_loRA = true\n", "top level", "use_loRA"),
        ('[fc]\nq_levels = "256"\n', "[fc]", "q_levels"),  # wrong types
        ("[fc]\nq_levels = true\n", "[fc]", "q_levels"),
        ("[fc]\nq_levels = 256.0\n", "[fc]", "q_levels"),
        ("[attention]\nq_bypass = 1\n", "[attention]", "q_bypass"),
        ('[attention]\nq_lut_min = "0.02"\n', "[attention]", "q_lut_min"),
        ("use_lora = 1\n", "top level", "use_lora"),
        ("numerics = 1\n", "top level", "numerics"),
        ("[lora]\nrank = 4.5\n", "[lora]", "rank"),
        ("[fc]\nq_levels = 1\n", "[fc]", "q_levels"),  # out of range
        ("[attention]\nq_lut_min = 1.0\n", "[attention]", "q_lut_min"),
        ("[attention]\nq_lut_min = -0.01\n", "[attention]", "q_lut_min"),
        ("[fc]\nq_smooth_factor = 1.01\n", "[fc]", "q_smooth_factor"),
        ("[fc]\nq_smooth_factor = -0.1\n", "[fc]", "q_smooth_factor"),
        ("[fc]\nq_init_seed = -1\n", "[fc]", "q_init_seed"),
        ('numerics = "peer"\n', "top level", "numerics"),
        ("[lora]\nrank = 0\n", "[lora]", "rank"),
        ("[lora]\ndropout = 1.0\n", "[lora]", "dropout"),
        ("[fc]\nq_quantiles = [0.9, 0.1]\n", "[fc]", "q_quantiles"),  # bad quantiles
        ("[fc]\nq_quantiles = [0.0, 0.5]\n", "[fc]", "q_quantiles"),
        ("[fc]\nq_quantiles = [0.5, 1.0]\n", "[fc]", "q_quantiles"),
        ("[fc]\nq_quantiles = [0.5, 0.5]\n", "[fc]", "q_quantiles"),
        ("[attention]\nq_quantiles = [0.1]\n", "[attention]", "q_quantiles"),
        ('[attention]\nq_quantiles = ["a", "b"]\n', "[attention]", "q_quantiles"),
        ("[attention]\nq_quantiles = 0.1\n", "[attention]", "q_quantiles"),
    ],
)
def test_bad_value_names_file_section_key(tmp_path, text, section, key):
    path = _write(tmp_path, text)
    with pytest.raises(otlib.ConfigError) as info:
        otlib.load_config(path)
    message = str(info.value)
    assert str(path) in message and section in message and key in message, message
    assert "\n" not in message


def test_file_errors(tmp_path):
    with pytest.raises(otlib.ConfigError, match="not valid TOML"):
        otlib.load_config(_write(tmp_path, "[fc\nq_levels = 2\n"))
    with pytest.raises(otlib.ConfigError, match="not found"):
        otlib.load_config(tmp_path / "missing.toml")
    with pytest.raises(otlib.ConfigError, match=r"\[fc\] must be a table"):
        otlib.load_config(_write(tmp_path, "fc = 3\n"))
    assert issubclass(otlib.ConfigError, ValueError)


def test_in_code_construction_is_validated():
    cfg = otlib.TransformConfig(fc=LayerConfig(q_levels=16, q_quantiles=[0.1, 0.9]))
    assert cfg.fc.q_quantiles == (0.1, 0.9)
    mase = dataclasses.replace(cfg, numerics="mase")  # what the training script does for optical-mase
    assert mase.numerics == "mase" and mase.fc == cfg.fc
    with pytest.raises(otlib.ConfigError, match="numerics"):
        dataclasses.replace(cfg, numerics="digital")
    with pytest.raises(otlib.ConfigError, match="q_levels"):
        LayerConfig(q_levels=1)
    with pytest.raises(otlib.ConfigError, match="alpha"):
        LoraConfig(alpha=0)
    with pytest.raises(otlib.ConfigError, match="fc"):
        otlib.TransformConfig(fc={"q_levels": 16})
