"""Trained LoRA adapters as one `.safetensors` file that other tools load.

The layout is that of diffusers' LoRA loaders (`save_lora_weights` / `load_lora_weights`):

- tensors `<component>.<module path>.lora_A.weight` and `.lora_B.weight`, component
  `transformer` or `text_encoder` (peft's key names without `base_model.model.`); no `.alpha`
  tensors, which make diffusers' loaders refuse the file;
- the header's `lora_adapter_metadata`: a JSON object of each component's peft `LoraConfig`
  (`r`, `lora_alpha`, `target_modules`, ...) under keys `<component>.<config key>`, as
  `save_lora_weights(..., transformer_lora_adapter_metadata=...)` stores it. Without it a loader
  guesses alpha = rank, and an adapter trained with another alpha loads at the wrong scale.

diffusers has no LoRA loader for PixArt, so `attach_lora_file` loads the file with peft;
pipelines with a stock loader (e.g. `SanaPipeline.load_lora_weights`) read the same file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from medart_core.errors import MedArtError

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default name, so load_lora_weights(folder) finds it
METADATA_KEY = "lora_adapter_metadata"  # diffusers' header key
COMPONENTS = ("transformer", "text_encoder")
_PEFT_PREFIX = "base_model.model."


def write_lora_file(folder: str | os.PathLike, adapters: dict[str, object]) -> Path:
    """Write folder/pytorch_lora_weights.safetensors from {component: PeftModel}, atomically."""
    from diffusers.loaders.lora_base import LoraBaseMixin
    from peft import get_peft_model_state_dict

    state, metadata = {}, {}
    for component, peft_model in adapters.items():
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS}")
        layers = {key.removeprefix(_PEFT_PREFIX): value.detach().contiguous()
                  for key, value in get_peft_model_state_dict(peft_model).items()}
        state.update(LoraBaseMixin.pack_weights(layers, component))
        config = peft_model.peft_config[peft_model.active_adapter].to_dict()
        metadata.update({f"{component}.{key}": value for key, value in config.items()})
    folder = Path(folder)
    partial = f".{LORA_FILE}.partial"
    LoraBaseMixin.write_lora_layers(state, str(folder), is_main_process=True, weight_name=partial,
                                    save_function=None, safe_serialization=True, lora_adapter_metadata=metadata)
    os.replace(folder / partial, folder / LORA_FILE)  # a crash never leaves half a file under the real name
    return folder / LORA_FILE


def read_lora_file(path: str | os.PathLike) -> dict[str, tuple[object, dict[str, torch.Tensor]]]:
    """{component: (peft LoraConfig, its tensors without the component prefix)} of a LoRA file."""
    from peft import LoraConfig
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise MedArtError(f"cannot read the LoRA file {path}: {err}") from err
    if METADATA_KEY not in header:
        raise MedArtError(f"{path} has no LoRA config in its header ({METADATA_KEY}), so its scale is unknown; "
                          "use the PEFT folders written beside it")
    metadata = json.loads(header[METADATA_KEY])
    found = {}
    for component in COMPONENTS:
        prefix = component + "."
        layers = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        if not layers:
            continue
        options = {key[len(prefix):]: value for key, value in metadata.items() if key.startswith(prefix)}
        try:
            found[component] = (LoraConfig(**options), layers)
        except (TypeError, ValueError) as err:
            raise MedArtError(f"{path}: the {component} LoRA config in its header is not one peft reads: {err}") from err
    if not found:
        raise MedArtError(f"{path} holds no {' or '.join(COMPONENTS)} LoRA tensors")
    return found


def attach_lora_file(path: str | os.PathLike, modules: dict[str, torch.nn.Module]) -> list[str]:
    """Inject the file's adapters into {component: module} in place with peft; returns the components."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    loaded = read_lora_file(path)
    for component, (config, layers) in loaded.items():
        module = modules.get(component)
        if module is None:
            raise MedArtError(f"{path} has a {component} LoRA, but this model has no {component}")
        try:
            inject_adapter_in_model(config, module)
            result = set_peft_model_state_dict(module, layers)
        except (ValueError, KeyError, RuntimeError) as err:
            raise MedArtError(f"cannot load the {component} LoRA of {path} into {type(module).__name__}: {err}") from err
        missing = [key for key in result.missing_keys if "lora_" in key]
        if result.unexpected_keys or missing:
            raise MedArtError(f"the {component} LoRA of {path} does not fit {type(module).__name__} (e.g. "
                              f"{(list(result.unexpected_keys) + missing)[0]})")
    return list(loaded)
