"""Loading a model, whatever the source: `load` is the one entry point every stage uses.

A source is a scratchllm model directory of any kind, a training run directory (its final/, else
best/, else newest checkpoints/step-N/), a Hugging Face directory or a hub name (downloaded once).
`load_tokenizer`, `resolve_tokenizer` and `read_config` answer the same question for a tokenizer
and for a model config. `for_decoding` readies a model for fast decoding (what `load` returns).
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
                                             resolve_model_dir, run_dir_choice)
from scratchllm.core.console import log
from scratchllm.core.device import parse_dtype, resolve_device, weight_dtype
from scratchllm.core.files import read_json
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import PRESETS, GPTConfig
from scratchllm.models.decode_kernels import optimize_for_decoding
from scratchllm.models.gpt import GPT
from scratchllm.models.lora import merge_lora
from scratchllm.models.quantize import check_quantize, quantize_int8
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
    quantize: str | None = None,
    decode: bool = True,
) -> tuple[nn.Module, Tokenizer]:
    """(model in eval mode, tokenizer) from a scratchllm model directory of any kind, a training run
    directory, a Hugging Face directory or a hub name (downloaded once), on `device` ("auto": CUDA,
    else MPS, else the CPU). `dtype` casts the weights. A run directory gives its final/; one that has
    none gives best/, else its newest step checkpoint, and says which on stderr (`run_dir_choice`).

    kind: what the caller needs. None gives the directory's own kind: a GPT (`gpt`, `encoder`, and
    `lora` with its adapters merged unless merge=False), a Classifier or an EncoderDecoder. "gpt"
    gives a GPT from anything that holds one (a classifier directory's body); "encoder",
    "classifier" and "seq2seq" give that kind or a one-line error saying how to make one. LoRA
    adapter files beside a model's weights (adapter.safetensors) are applied too.

    Ready to decode fast (`for_decoding`): on a CPU the Linear layers get the matrix-vector kernel
    measured fastest for their dtype (models/decode_kernels.py), bfloat16 weights become float32
    with a one-line note where the CPU has no native bf16, and quantize="int8" stores a GPT's
    Linear weights as int8 with a scale per output channel (models/quantize.py; CPU only).
    decode=False returns the model as stored (the dtype as asked, plain Linear layers), for callers
    that convert, merge, export or train it rather than decode with it.
    """
    asked = loadable_kinds()
    if kind is not None and kind not in asked:
        raise ScratchLLMError(f"load: kind {kind!r}; expected one of {', '.join(asked)} or None")
    check_quantize(quantize)
    if quantize is not None and not decode:
        raise ScratchLLMError(f"load: quantize {quantize!r} is for decoding; it needs decode=True")
    place = resolve_device(device)
    if quantize is not None and place.type != "cpu":
        raise ScratchLLMError(f"load: quantize {quantize!r} on device {str(place)!r}; int8 decoding runs on the CPU "
                              "(on a GPU use dtype bfloat16)")
    dtype = parse_dtype(dtype)
    if decode:  # before the weights are cast: bf16 only where the CPU has it
        dtype = weight_dtype(dtype, place)
    fmt, d = locate(path_or_name)
    if fmt == "hf":  # a causal decoder: whatever a gpt directory loads as
        if kind is not None and kind not in registered("gpt").load_as:
            wanted = registered(kind)
            raise ScratchLLMError(f"{d}: a Hugging Face causal language model, not {wanted.what}; {wanted.how_to_make}")
        model = load_hf(d, place, dtype)
        return (for_decoding(model, quantize, str(d)) if decode else model), load_tokenizer(d)
    choice = run_dir_choice(path_or_name)  # a run directory without final/: say which model it gives, and why
    if choice is not None:
        log(choice)
    data = read_model_config(d)
    found = registered(kind_of_config(data))
    if kind is not None and kind not in found.load_as:
        wanted = registered(kind)
        raise ScratchLLMError(f"{d}: {found.what}, not {wanted.what}; {wanted.how_to_make}")
    model = build_model(d, data, found.name, place, dtype, merge)
    if kind is not None:
        model = found.load_as[kind](model)  # e.g. a classifier's body when a GPT is asked for
    if isinstance(model, GPT) and found.adapter_files:
        if has_adapters(d):
            load_adapters(model, d)
            if merge:
                merge_lora(model)
    return (for_decoding(model, quantize, str(d)) if decode else model), load_tokenizer(d)


def for_decoding(model: nn.Module, quantize: str | None = None, what: str = "the model") -> nn.Module:
    """`model` made ready to decode fast, in place (what `load` does to every model it returns).

    On a CPU: weights stored in bfloat16 become float32 where the CPU has no native bf16 (a one-line
    note says so); quantize="int8" turns a GPT's Linear layers into int8 ones (a model of another kind,
    or one off the CPU, is a one-line error naming `what`); then every Linear layer gets the decode
    kernel measured fastest for its dtype (`optimize_for_decoding`). Models on a GPU are returned as
    they are (their decode steps replay CUDA graphs instead: inference/static_decode.py)."""
    check_quantize(quantize)
    weights = [p for p in model.parameters() if p.is_floating_point()]
    device = weights[0].device if weights else torch.device("cpu")
    if quantize is not None:
        if not isinstance(model, GPT):
            raise ScratchLLMError(f"{what}: quantize {quantize!r} is for decoders (a GPT), not a {type(model).__name__}")
        if device.type != "cpu":
            raise ScratchLLMError(f"{what}: quantize {quantize!r} on device {str(device)!r}; int8 decoding runs on the "
                                  "CPU (on a GPU use dtype bfloat16)")
    if device.type != "cpu":
        return model
    stored = weights[0].dtype if weights else None
    if stored == torch.bfloat16 and weight_dtype(stored, device) != stored:
        model.float()
    if quantize == "int8":
        quantize_int8(model, what)
    return optimize_for_decoding(model)


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
