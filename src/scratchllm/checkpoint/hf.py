"""Hugging Face directories: reading a checkpoint directory (safetensors or PyTorch weights, sharded
too) into our GPT and tokenizer, and downloading hub names into scratchllm's cache.

A hub name (GPT-2's "gpt2", "gpt2-medium", ..., or any OWNER/NAME such as
"HuggingFaceTB/SmolLM2-135M-Instruct") is downloaded once into scratchllm's cache with size and
SHA-256 checks: config.json, the weights (sharded too) and the tokenizer files. What each model
family's config.json and tensor names mean is hf_families.py's business.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from scratchllm.checkpoint.hf_families import adapter_for, config_from_hf
from scratchllm.checkpoint.model_dir import CONFIG_FILE
from scratchllm.checkpoint.weights import gpt_from_state_dict, read_safetensors
from scratchllm.core.download import cache_dir, download_file
from scratchllm.core.files import read_json, write_json
from scratchllm.errors import ScratchLLMError
from scratchllm.models.gpt import GPT
from scratchllm.tokenizer import Tokenizer
from scratchllm.tokenizer.hf_files import TOKENIZER_JSON

# OpenAI's four GPT-2 releases, as named on the Hugging Face hub (Radford et al. 2019, table 2).
GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
_GPT2_ALIASES = {"gpt2-small": "gpt2", **{f"openai-community/{n}": n for n in GPT2_NAMES}}
HF_URL = "https://huggingface.co/{name}/resolve/main/{file}"
GPT2_FILES = ("config.json", "model.safetensors")
HUB_INDEX = "model.safetensors.index.json"  # a sharded checkpoint's map: tensor name -> shard file
GENERATION_CONFIG = "generation_config.json"  # generation defaults; its eos_token_id lists the ids that end an answer
# What else a model brings when it exists: its tokenizer, chat template and generation settings.
HUB_OPTIONAL_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                      GENERATION_CONFIG)
HUB_MANIFEST = "scratchllm_download.json"  # written when every file of a hub download is in place


# --------------------------------------------------------------------------------------------------
# Reading Hugging Face directories


def read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch pickle of tensors. weights_only=True: unpickling may not run arbitrary code."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScratchLLMError(f"{path}: cannot read PyTorch weights ({reason})") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ScratchLLMError(f"{path}: expected a dict of tensors (a state dict)")
    return data


def index_shards(index: Path) -> list[str]:
    """The shard files a sharded checkpoint's .index.json names (file names beside it), sorted."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ScratchLLMError(f"{index}: field 'weight_map' must be an object of tensor name -> shard file")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if Path(shard).name != shard or shard.startswith("."):
            raise ScratchLLMError(f"{index}: shard {shard!r} is not a file name in {index.parent}")
    return shards


def read_hf_dir(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """(config.json, state dict, weights path) of a Hugging Face directory: model.safetensors, else
    pytorch_model.bin (each possibly sharded with an .index.json)."""
    d = Path(directory)
    config = read_json(d / CONFIG_FILE)
    for file, reader in (("model.safetensors", read_safetensors), ("pytorch_model.bin", read_torch_bin)):
        if (d / file).is_file():
            return config, reader(d / file), d / file
        index = d / f"{file}.index.json"
        if index.is_file():
            state: dict[str, torch.Tensor] = {}
            for shard in index_shards(index):
                state.update(reader(d / shard))
            return config, state, index
    raise ScratchLLMError(f"{d}: no model.safetensors or pytorch_model.bin (Hugging Face weights)")


def load_hf(directory: str | os.PathLike[str], device: str | torch.device = "cpu",
            dtype: str | torch.dtype | None = None) -> GPT:
    """The GPT of a Hugging Face directory of a supported family, in eval mode."""
    d = Path(directory)
    hf_config, hf_state, weights = read_hf_dir(d)
    adapter = adapter_for(hf_config, str(d / CONFIG_FILE))
    config = adapter.config_from_hf(hf_config, str(d / CONFIG_FILE))
    state = adapter.from_hf(hf_state, config, str(weights))
    return gpt_from_state_dict(config, state, str(weights), str(d / CONFIG_FILE), device, dtype)


def hf_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer of a Hugging Face directory: its tokenizer.json (with tokenizer_config.json and the
    chat template beside it; generation_config.json's eos_token_id also end generation), else GPT-2's
    (a GPT-2 directory may hold only config.json and the weights; vocab.json + merges.txt are GPT-2's)."""
    d = Path(directory)
    if not (d / TOKENIZER_JSON).is_file():
        return Tokenizer.gpt2()
    stop_ids: list[int] = []
    if (d / GENERATION_CONFIG).is_file():
        eos = read_json(d / GENERATION_CONFIG).get("eos_token_id")
        stop_ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in stop_ids):
            raise ScratchLLMError(f"{d / GENERATION_CONFIG}: eos_token_id is {eos!r}; expected an id or a list of ids")
    return Tokenizer.from_hf(d, stop_ids=stop_ids)


# --------------------------------------------------------------------------------------------------
# Hub names, downloaded once


def gpt2_name(name: str) -> str | None:
    name = _GPT2_ALIASES.get(name, name)
    return name if name in GPT2_NAMES else None


def hub_name(name: str) -> str | None:
    """The hub repository a name stands for: "gpt2" for GPT-2's names and aliases ("gpt2-small",
    "openai-community/gpt2", ...), the name itself for any other OWNER/NAME, else None."""
    gpt2 = gpt2_name(name)
    if gpt2 is not None:
        return gpt2
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name) and ".." not in name:
        return name
    return None


def hub_dir(name: str, progress: bool = True) -> Path:
    """The Hugging Face directory of a hub name, downloaded into `cache_dir()/hf/` ($SCRATCHLLM_CACHE,
    else ~/.cache/scratchllm) the first time and read from there afterwards.

    GPT-2's names fetch config.json and model.safetensors into hf/gpt2 (-medium, ...). Any other
    OWNER/NAME fetches into hf/OWNER--NAME: config.json, the weights (model.safetensors, or
    model.safetensors.index.json and the shards it names) and whichever of HUB_OPTIONAL_FILES (the
    tokenizer, its chat template, the generation settings) the repository has; a config.json of a
    family or setting we do not model stops it before the weights are fetched. Each file is checked
    (SHA-256 and size for the weights, size for small files) and moved into place whole, so an
    interrupted download resumes file by file; HUB_MANIFEST, written last, says the directory is
    complete, and from then on nothing is asked of the network.
    """
    repo = hub_name(name)
    if repo is None:
        if os.sep in name or name.startswith((".", "~")):
            raise ScratchLLMError(f"{Path(name).expanduser()}: no such directory")
        raise ScratchLLMError(f"{name!r}: no such directory, and not a hub name (a GPT-2 name, one of "
                              f"{', '.join(GPT2_NAMES)}, or OWNER/NAME such as HuggingFaceTB/SmolLM2-135M)")
    if repo in GPT2_NAMES:
        return _gpt2_dir(repo, progress)
    directory = cache_dir() / "hf" / repo.replace("/", "--")
    if (directory / HUB_MANIFEST).is_file():
        return directory
    hint = (f"if the hub refuses (no network; a gated or private model, such as meta-llama's), fetch it with "
            f"`hf download {repo} --local-dir DIR` (after `hf auth login` and accepting its licence) and pass DIR")

    def fetch(file: str, optional: bool = False) -> bool:
        """Download `file` unless it is already there; False if optional and the hub has none."""
        if (directory / file).is_file():
            return True
        try:
            return download_file(HF_URL.format(name=repo, file=file), directory / file, progress=progress,
                                 missing_ok=optional) is not None
        except ScratchLLMError as exc:
            raise ScratchLLMError(f"{name!r}: no such directory, and fetching it from the Hugging Face hub "
                                  f"failed: {exc}; {hint}") from None

    fetch(CONFIG_FILE)
    # a model we cannot run stops here, before its weights are fetched
    config_from_hf(read_json(directory / CONFIG_FILE), str(directory / CONFIG_FILE))
    if not fetch("model.safetensors", optional=True):
        if not fetch(HUB_INDEX, optional=True):
            raise ScratchLLMError(f"{repo}: the hub has neither model.safetensors nor {HUB_INDEX} "
                                  "(only safetensors weights are downloaded)")
        for shard in index_shards(directory / HUB_INDEX):
            fetch(shard)
    present = [file for file in HUB_OPTIONAL_FILES if fetch(file, optional=True)]
    write_json(directory / HUB_MANIFEST, {"repo": repo, "optional_files": present,
                                          "missing": [f for f in HUB_OPTIONAL_FILES if f not in present]})
    return directory


def _gpt2_dir(name: str, progress: bool) -> Path:
    """OpenAI's GPT-2 release `name`: config.json and model.safetensors in hf/NAME (the tokenizer is built in)."""
    directory = cache_dir() / "hf" / name
    for file in GPT2_FILES:
        if not (directory / file).is_file():
            url = HF_URL.format(name=name, file=file)
            try:
                download_file(url, directory / file, progress=progress)
            except ScratchLLMError as exc:
                raise ScratchLLMError(
                    f"{exc}; without network, put {', '.join(GPT2_FILES)} of {name} in {directory} "
                    "or pass a local Hugging Face directory"
                ) from None
    return directory
