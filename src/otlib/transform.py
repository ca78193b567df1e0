"""Make a Hugging Face causal LM optical in place, and save / reload optical models.

`transform(model, config)` replaces, on the model instance (no global patching):
- every `nn.Linear` except the LM head with an `OpticalLinear` sharing its weight and bias, and
- the attention of every `LlamaAttention` with optical attention: an `OpticalAttentionState`
  submodule is attached and the model's attention implementation is set to "optical".
Each optical product gets its own Philox stream id, in module order, so no two products of a
model draw the same dither. Linears that read one tensor (`SHARED_INPUTS`: q/k/v, gate/up) are
linked by a `SharedInput`: their input is observed and encoded once (the same values). A `WeightBank` folds
and encodes every weight at the start of each training forward of the model (the same values). With
`use_lora = true` the optical linears get adapters and only the adapters stay trainable (base
weights, embeddings, norms and the LM head are frozen).

Ranges, counters and adapters are buffers/parameters, so `state_dict()` and `save_pretrained`
carry them; `save_optical` adds the otlib TOML next to the weights and `load_optical` rebuilds
the model (base weights through `from_pretrained`, then `transform`, then the optical state).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaAttention
from transformers.utils import logging as hf_logging

from otlib.config import TransformConfig, config_to_toml, load_config
from otlib.layers import ATTENTION_NAME, STATE_ATTR, OpticalAttentionState, OpticalLinear, SharedInput, WeightBank

CONFIG_FILE = "otlib.toml"  # the TransformConfig saved next to the weights
# sibling linears that read the same tensor in Llama-family blocks (attention's q/k/v, the MLP's gate/up); the
# layers check at run time that the input is the same tensor, so a model that names others so only shares nothing
SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _is_optical(model: nn.Module) -> bool:
    return any(isinstance(m, OpticalLinear | OpticalAttentionState) for m in model.modules())


def transform(model: nn.Module, config: TransformConfig | str | os.PathLike[str]) -> list[str]:
    """Make `model` optical in place; returns the names of the replaced linears and attentions.

    `config`: a TransformConfig or the path of an otlib TOML file. `[fc].q_bypass = true` keeps
    the linears digital (still OpticalLinear, so LoRA adapters work: a digital-LoRA baseline);
    `[attention].q_bypass = true` leaves attention as it is (not listed in the result).
    """
    if not isinstance(config, TransformConfig):
        config = load_config(config)
    if _is_optical(model):
        raise ValueError(f"{type(model).__name__} is already optical: transform it once")
    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    fc_kwargs: dict[str, object] = {**dataclasses.asdict(config.fc), "numerics": config.numerics}
    if config.use_lora:
        lora = config.lora
        fc_kwargs |= {"lora_rank": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout}

    replaced: list[str] = []
    stream = 0  # Philox stream id: one per optical product, in module order
    for name, module in list(model.named_modules()):
        if isinstance(module, LlamaAttention) and not config.attention.q_bypass:
            device = module.o_proj.weight.device
            state = OpticalAttentionState(config.attention, config.numerics, (stream, stream + 1), device=device)
            module.add_module(STATE_ATTR, state)
            stream += 2
            replaced.append(name)
        elif isinstance(module, nn.Linear) and module is not head and name.rpartition(".")[2] != "lm_head":
            parent_name, _, child = name.rpartition(".")
            setattr(
                model.get_submodule(parent_name), child, OpticalLinear.from_linear(module, stream=stream, **fc_kwargs)
            )
            stream += 1
            replaced.append(name)

    _link_shared_inputs(model)
    _link_weight_bank(model)
    if not config.attention.q_bypass:
        if not any(isinstance(m, OpticalAttentionState) for m in model.modules()):
            raise ValueError(
                f"{type(model).__name__} has no LlamaAttention to make optical; set [attention] q_bypass = true"
            )
        model.set_attn_implementation(ATTENTION_NAME)

    if config.use_lora:
        for param in model.parameters():
            param.requires_grad_(False)
        for module in model.modules():
            if isinstance(module, OpticalLinear) and module.lora_A is not None:
                module.lora_A.requires_grad_(True)
                module.lora_B.requires_grad_(True)
    model.otlib_config = config  # what save_optical writes next to the weights
    return replaced


def _link_shared_inputs(model: nn.Module) -> None:
    """A SharedInput for each SHARED_INPUTS group of OpticalLinear children of one module with the same input
    width and quantizer settings."""
    for parent in model.modules():
        for names in SHARED_INPUTS:
            layers = [getattr(parent, name, None) for name in names]
            if not all(isinstance(layer, OpticalLinear) for layer in layers):
                continue
            if len({(layer.in_features, layer.layer_config, layer.numerics) for layer in layers}) == 1:
                share = SharedInput(len(layers))
                for layer in layers:
                    layer.shared_input = share


def _link_weight_bank(model: nn.Module) -> None:
    """One WeightBank of the model's OpticalLinears, refreshed by a forward pre-hook of the model."""
    layers = [m for m in model.modules() if isinstance(m, OpticalLinear)]
    if not layers:
        return
    bank = WeightBank(layers)
    for layer in layers:
        layer.weight_bank = bank
    model.register_forward_pre_hook(bank.pre_forward)


def save_optical(
    model: PreTrainedModel, directory: str | os.PathLike[str], config: TransformConfig | None = None, **save_kwargs
) -> None:
    """`model.save_pretrained(directory)` (weights + optical state) and the otlib TOML as `otlib.toml`.

    `config` defaults to the one `transform` applied to `model`.
    """
    config = config or getattr(model, "otlib_config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} is not optical (otlib.transform it first) and no config was given")
    directory = Path(directory)
    model.save_pretrained(directory, **save_kwargs)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".otlib-", suffix=".toml")
    with os.fdopen(fd, "w") as fh:
        fh.write(config_to_toml(config))
    os.replace(tmp, directory / CONFIG_FILE)


def _read_tensors(directory: Path, keys: set[str]) -> dict:
    """The tensors named `keys` from the safetensors file(s) of a save_pretrained directory."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    else:
        weight_map = {key: "model.safetensors" for key in keys}
    missing = sorted(keys - set(weight_map))
    found: dict = {}
    for file in sorted({weight_map[k] for k in keys if k in weight_map}):
        with safe_open(directory / file, framework="pt") as fh:
            present = set(fh.keys())
            found |= {k: fh.get_tensor(k) for k in keys if weight_map.get(k) == file and k in present}
    missing += sorted(keys - set(found) - set(missing))
    if missing:
        raise ValueError(
            f"{directory}: checkpoint lacks optical state {missing[:3]} (not saved by otlib.save_optical?)"
        )
    return found


def load_optical(directory: str | os.PathLike[str], **from_pretrained_kwargs) -> PreTrainedModel:
    """Reload a model saved by `save_optical`; it evaluates exactly as the saved one did.

    Base weights load through `AutoModelForCausalLM.from_pretrained(directory, **kwargs)` (dtype,
    device_map, ... as usual), then `transform` with the saved TOML, then the optical state
    (ranges, counters, adapters) from the same files.
    """
    directory = Path(directory)
    config = load_config(directory / CONFIG_FILE)
    # The optical state is "unexpected" for the digital architecture: silence that report, check it below.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            directory, output_loading_info=True, **from_pretrained_kwargs
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ValueError(f"{directory}: base weights missing or mismatched: {sorted(info['missing_keys'])[:3]}")
    base_keys = set(model.state_dict())
    transform(model, config)
    optical_keys = set(model.state_dict()) - base_keys
    result = model.load_state_dict(_read_tensors(directory, optical_keys), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{directory}: unexpected optical state {result.unexpected_keys[:3]}")
    return model
