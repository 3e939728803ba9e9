"""Loading a model, whatever the source: `load` is the one entry point every stage uses.

A source is a scratchllm model directory of any kind, a training run directory (its final/, else
best/, else newest checkpoints/step-N/), a Hugging Face directory or a hub name (downloaded once).
`load_tokenizer`, `resolve_tokenizer` and `read_config` answer the same question for a tokenizer
and for a model config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.checkpoint.adapter_dir import has_adapters, load_adapters
from scratchllm.checkpoint.hf import hf_tokenizer, hub_dir, load_hf
from scratchllm.checkpoint.hf_families import config_from_hf
from scratchllm.checkpoint.kinds import kind_of_config, loadable_kinds, registered
from scratchllm.checkpoint.model_dir import (CONFIG_FILE, build_model, dir_format, read_model_config, read_tokenizer,
                                             resolve_model_dir)
from scratchllm.core.files import read_json
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import PRESETS, GPTConfig
from scratchllm.models.gpt import GPT
from scratchllm.models.lora import merge_lora
from scratchllm.tokenizer import Tokenizer


def locate(path_or_name: str | os.PathLike[str]) -> tuple[str, Path]:
    """(format, directory) for anything `load` accepts, the format "scratchllm" or "hf"; downloads a hub
    name once."""
    text = os.fspath(path_or_name)
    p = Path(text).expanduser()
    if p.exists():
        d = resolve_model_dir(p)
        fmt = dir_format(d)
        assert fmt is not None
        return fmt, d
    return "hf", hub_dir(text)


def load_tokenizer(path_or_name: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer recorded with a model (GPT-2's for Hugging Face GPT-2 directories and names)."""
    fmt, d = locate(path_or_name)
    return hf_tokenizer(d) if fmt == "hf" else read_tokenizer(d)


def resolve_tokenizer(spec: Any) -> Tokenizer:
    """A Tokenizer from "gpt2", a tokenizer .json file, a model or run directory (its tokenizer), a
    spec dict or a Tokenizer (None means GPT-2's)."""
    if spec is None:
        return Tokenizer.gpt2()
    if isinstance(spec, (str, os.PathLike)) and Path(spec).is_dir():
        return load_tokenizer(spec)
    if isinstance(spec, (str, os.PathLike)) and str(spec) != "gpt2" and not Path(spec).is_file():
        raise ScratchLLMError(f"tokenizer {str(spec)!r}: expected 'gpt2', a tokenizer.json file or a model directory")
    return Tokenizer.from_spec(spec)


def load(
    path_or_name: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    kind: str | None = None,
    merge: bool = True,
) -> tuple[nn.Module, Tokenizer]:
    """(model in eval mode, tokenizer) from a scratchllm model directory of any kind, a training run
    directory, a Hugging Face directory or a hub name (downloaded once), on `device` ("auto": CUDA,
    else MPS, else the CPU). `dtype` casts the weights.

    kind: what the caller needs. None gives the directory's own kind: a GPT (`gpt`, `encoder`, and
    `lora` with its adapters merged unless merge=False), a Classifier or an EncoderDecoder. "gpt"
    gives a GPT from anything that holds one (a classifier directory's body); "encoder",
    "classifier" and "seq2seq" give that kind or a one-line error saying how to make one. LoRA
    adapter files beside a model's weights (adapter.safetensors) are applied too.
    """
    asked = loadable_kinds()
    if kind is not None and kind not in asked:
        raise ScratchLLMError(f"load: kind {kind!r}; expected one of {', '.join(asked)} or None")
    fmt, d = locate(path_or_name)
    if fmt == "hf":  # a causal decoder: whatever a gpt directory loads as
        if kind is not None and kind not in registered("gpt").load_as:
            wanted = registered(kind)
            raise ScratchLLMError(f"{d}: a Hugging Face causal language model, not {wanted.what}; {wanted.how_to_make}")
        model = load_hf(d, device, dtype)
        return model, load_tokenizer(d)
    data = read_model_config(d)
    found = registered(kind_of_config(data))
    if kind is not None and kind not in found.load_as:
        wanted = registered(kind)
        raise ScratchLLMError(f"{d}: {found.what}, not {wanted.what}; {wanted.how_to_make}")
    model = build_model(d, data, found.name, device, dtype, merge)
    if kind is not None:
        model = found.load_as[kind](model)  # e.g. a classifier's body when a GPT is asked for
    if isinstance(model, GPT) and found.adapter_files:
        if has_adapters(d):
            load_adapters(model, d)
            if merge:
                merge_lora(model)
    return model, load_tokenizer(d)


def read_config(spec: str | os.PathLike[str] | Mapping[str, Any] | GPTConfig, **overrides: Any) -> GPTConfig:
    """A GPTConfig from a preset name, a config.json (ours, nested under "model", or a flat one), a
    model or run directory, a {"preset": NAME, field: value, ...} table, a dict of fields, or a
    GPTConfig; `overrides` replace fields (e.g. vocab_size from the tokenizer; None leaves a field)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(spec, GPTConfig):
        return GPTConfig.from_dict({**spec.to_dict(), **overrides})
    if isinstance(spec, Mapping):
        if "preset" in spec:  # a run file's [model] table: a preset and the fields it changes
            rest = {k: v for k, v in spec.items() if k != "preset"}
            return GPTConfig.from_preset(str(spec["preset"]), **{**rest, **overrides})
        return GPTConfig.from_dict({**spec, **overrides})
    text = os.fspath(spec)
    if text in PRESETS:
        return GPTConfig.from_preset(text, **overrides)
    path = Path(text).expanduser()
    if path.is_dir():
        path = resolve_model_dir(path) / CONFIG_FILE
    if not path.is_file():
        raise ScratchLLMError(f"{text!r} is neither a model preset ({', '.join(PRESETS)}) nor a config.json file")
    data = read_json(path)
    if "model_type" in data:  # a Hugging Face config.json
        return GPTConfig.from_dict({**config_from_hf(data, str(path)).to_dict(), **overrides}, source=str(path))
    if isinstance(data.get("model"), dict):
        data = data["model"]  # a scratchllm model directory's config.json nests the model config
    return GPTConfig.from_dict({**data, **overrides}, source=str(path))
