"""LoRA adapter directories: the adapters alone (`adapter.safetensors` + `adapter_config.json`), as a
LoRA fine-tuning run leaves them in RUNDIR/adapter/ or as they may sit beside a base model's weights.

A few megabytes instead of a whole model: `save_adapters` writes them, `load_adapters` puts them
back on a base model (`checkpoint.load` does so by itself when they sit beside its weights), and
`scratchllm merge-lora` (checkpoint/convert.py) folds them into a plain model directory.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from torch import nn

from scratchllm.checkpoint.weights import read_safetensors
from scratchllm.core.files import read_json, write_atomic, write_json
from scratchllm.errors import ScratchLLMError
from scratchllm.models.lora import LoRAConfig, apply_lora, lora_config_of, lora_state_dict, set_tensors

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def save_adapters(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write adapter.safetensors and adapter_config.json into `directory` (each via a temp file)."""
    from safetensors.torch import save

    config = lora_config_of(model)
    directory = Path(directory)
    tensors = {k: v.contiguous().cpu() for k, v in lora_state_dict(model).items()}
    write_atomic(directory / ADAPTER_WEIGHTS, save(tensors, metadata={"format": "pt"}))
    write_json(directory / ADAPTER_CONFIG, dataclasses.asdict(config), ensure_ascii=True)
    return directory


def read_adapter_config(directory: str | os.PathLike[str]) -> LoRAConfig:
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise ScratchLLMError(f"{path}: no LoRA adapter config (expected {ADAPTER_CONFIG} beside {ADAPTER_WEIGHTS})")
    return LoRAConfig.from_dict(read_json(path), str(path))


def has_adapters(directory: str | os.PathLike[str]) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).is_file() and (Path(directory) / ADAPTER_WEIGHTS).is_file()


def load_adapters(model: nn.Module, directory: str | os.PathLike[str], verbose: bool = False) -> nn.Module:
    """Put the adapters saved in `directory` (by `save_adapters`) onto a base model, in place."""
    config = read_adapter_config(directory)
    path = Path(directory) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise ScratchLLMError(f"{path}: adapter weights missing")
    if getattr(model, "lora_config", None) is None:
        apply_lora(model, config.rank, config.alpha, config.targets, config.dropout, config.trainable,
                   verbose=verbose, base_model=config.base_model)
    set_tensors(model, read_safetensors(path), str(path), set(lora_state_dict(model)))
    return model
