"""Directory to directory: Hugging Face checkpoints into scratchllm model directories (`import_hf`),
scratchllm models out to Hugging Face directories (`export_hf`), and LoRA adapters folded into a
plain model directory (`merge_lora_dir`). Each reads with `checkpoint.load` and writes with the one
writer (`save_model`) or, for Hugging Face, through the family's adapter (hf_families.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from scratchllm.checkpoint.adapter_dir import ADAPTER_WEIGHTS, load_adapters, read_adapter_config
from scratchllm.checkpoint.hf import GENERATION_CONFIG
from scratchllm.checkpoint.hf_families import adapter_for_model
from scratchllm.checkpoint.kinds import kind_of_config, registered
from scratchllm.checkpoint.loader import load, locate
from scratchllm.checkpoint.model_dir import (CONFIG_FILE, RESERVED_KEYS, TOKENIZER_FILE, dir_format,
                                             read_model_config, resolve_model_dir, save_model)
from scratchllm.core.files import atomic_directory, write_json
from scratchllm.errors import ScratchLLMError
from scratchllm.models.lora import merge_lora
from scratchllm.tokenizer import ENDOFTEXT, gpt2_files
from scratchllm.tokenizer.hf_files import TOKENIZER_CONFIG, TOKENIZER_JSON, byte_level_tokenizer_json


def import_hf(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    dtype: str | torch.dtype | None = None,
) -> Path:
    """Convert a Hugging Face checkpoint (a hub name such as "gpt2-medium" or "Qwen/Qwen2.5-0.5B",
    downloaded once, or a Hugging Face directory of a supported family) into a scratchllm model
    directory at `out`."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir() and not (path / CONFIG_FILE).is_file():
            raise ScratchLLMError(f"{path}: not a Hugging Face model directory (no {CONFIG_FILE})")
        if path.is_file() and path.name != CONFIG_FILE and path.suffix not in (".safetensors", ".bin"):
            raise ScratchLLMError(f"{path}: not a Hugging Face model directory (a file; expected a directory "
                                  f"holding {CONFIG_FILE} and the weights)")
        if dir_format(resolve_model_dir(path)) == "scratchllm":
            raise ScratchLLMError(f"{resolve_model_dir(path)}: already a scratchllm model directory; nothing to import")
    model, tokenizer = load(text, dtype=dtype, kind="gpt", decode=False)
    return save_model(model, out, tokenizer=None if tokenizer.spec.get("type") == "gpt2" else tokenizer,
                      extra={"imported_from": text})


def _is_hf_dir(directory: Path) -> bool:
    return dir_format(directory, strict=False) == "hf"


def export_hf(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Write a scratchllm model (directory, run directory or anything `load` takes) as a Hugging Face
    directory that `transformers.AutoModelForCausalLM.from_pretrained` loads, in the family its
    switches make it (GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM or
    ArceeForCausalLM; see `hf_families.adapter_for_model`). The directory's kind must export to "hf" (checkpoint/kinds.py: a
    LoRA directory goes with its adapters merged, a classifier as its GPT body; an encoder or an
    encoder-decoder is a one-line error).

    With GPT-2's tokenizer, vocab.json and merges.txt are added so `AutoTokenizer` loads too; a
    Hugging Face tokenizer's files (tokenizer.json, tokenizer_config.json, the chat template) are
    copied as they are, with a generation_config.json naming the ids that end an answer (the
    chat template's end-of-turn token too); a tokenizer trained here is written as a tokenizer.json
    that gives its ids (`tokenizer.hf_files.byte_level_tokenizer_json`) with a tokenizer_config.json, so
    `AutoTokenizer` loads it as well, and copied as scratchllm_tokenizer.json.
    """
    from safetensors.torch import save_file

    where, d = locate(model_dir)
    if where == "scratchllm":  # an encoder or an encoder-decoder has no family to go to
        registered(kind_of_config(read_model_config(d))).check_export("hf", d)
    model, tokenizer = load(d, kind="gpt", decode=False)
    config = model.config
    adapter = adapter_for_model(config)
    is_gpt2 = tokenizer.spec.get("type") == "gpt2"
    eos_id = tokenizer.eot_id if tokenizer.hf_files else tokenizer.special_tokens.get(ENDOFTEXT)
    bos_id = tokenizer.bos_ids[0] if tokenizer.bos_ids else None
    state = adapter.to_hf(model.state_dict(), config)
    with atomic_directory(out_dir, _is_hf_dir, "a Hugging Face model directory") as tmp:
        write_json(tmp / CONFIG_FILE, adapter.config_to_hf(config, model.tok_emb.weight.dtype, eos_id, bos_id))
        stops = sorted(i for i in tokenizer.stop_ids if i < config.vocab_size)
        if tokenizer.hf_files and stops:  # the ids that end an answer (a chat model's end-of-turn token too)
            write_json(tmp / GENERATION_CONFIG, {"bos_token_id": bos_id, "eos_token_id": stops[0] if len(stops) == 1 else stops})
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if is_gpt2:
            encoder, merges = gpt2_files()
            shutil.copyfile(encoder, tmp / "vocab.json")  # OpenAI's encoder.json is HF's vocab.json
            shutil.copyfile(merges, tmp / "merges.txt")  # and vocab.bpe its merges.txt
            write_json(tmp / "tokenizer_config.json", {
                "tokenizer_class": "GPT2Tokenizer",
                "model_max_length": config.context_length,
                "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT,
                "add_prefix_space": False,
            })
        elif tokenizer.hf_files:
            for name, blob in tokenizer.hf_files.items():
                (tmp / name).write_bytes(blob)
        elif where == "scratchllm" and (d / TOKENIZER_FILE).is_file():  # a tokenizer trained here
            ordinary = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size - len(tokenizer.special_tokens))]
            write_json(tmp / TOKENIZER_JSON, byte_level_tokenizer_json(ordinary, tokenizer.special_tokens, tokenizer.pattern))
            named = {"eos_token": ENDOFTEXT, "bos_token": ENDOFTEXT} if ENDOFTEXT in tokenizer.special_tokens else {}
            write_json(tmp / TOKENIZER_CONFIG, {"tokenizer_class": "PreTrainedTokenizerFast",
                                                "model_max_length": config.context_length,
                                                "clean_up_tokenization_spaces": False, **named})
            shutil.copyfile(d / TOKENIZER_FILE, tmp / "scratchllm_tokenizer.json")  # the original, as trained
    return Path(out_dir)


def merge_lora_dir(
    out: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    base: str | os.PathLike[str] | None = None,
    adapter: str | os.PathLike[str] | None = None,
) -> Path:
    """The function behind `scratchllm merge-lora`: write a plain model directory with the adapters folded in.

    Either `model`: a directory holding base weights + adapters (a LoRA run's checkpoint, or a model
    directory with adapter.safetensors beside its weights), or `base` + `adapter` (a directory
    written by `save_adapters`; `base` defaults to the adapter's recorded base_model).
    """
    if (model is None) == (adapter is None):
        raise ScratchLLMError("merge-lora: give --model DIR (base + adapter in one directory) or --adapter DIR [--base DIR]")
    if model is not None:
        if base is not None:
            raise ScratchLLMError("merge-lora: --base goes with --adapter, not with --model")
        net, tokenizer = load(model, kind="gpt", merge=False, decode=False)
        config = getattr(net, "lora_config", None)
        if config is None:
            raise ScratchLLMError(
                f"{model}: no LoRA adapters found (no \"lora\" in config.json, no {ADAPTER_WEIGHTS} beside the weights); "
                "a LoRA run's final/ is already merged and its adapter/ holds the adapters alone"
            )
        data = read_model_config(model) if locate(model)[0] == "scratchllm" else {}
    else:
        config = read_adapter_config(adapter)
        base = base if base is not None else config.base_model
        if base is None:
            raise ScratchLLMError(f"{adapter}: its adapter config names no base_model; pass --base DIR")
        net, tokenizer = load(base, kind="gpt", decode=False)
        load_adapters(net, adapter)
        data = {}
    info = {k: v for k, v in data.items() if k not in (*RESERVED_KEYS, "lora")}
    info["lora_merged"] = {"rank": config.rank, "alpha": config.alpha, "targets": config.targets,
                           "base_model": config.base_model}
    merge_lora(net)
    return save_model(net, out, tokenizer, extra=info)
