"""The base of the Hugging Face family adapters (`HFAdapter`): what one family needs to turn a
config.json and its tensor names into ours and back, and which of our configs it can hold. The
families are hf_gpt2.py (GPT-2) and hf_llama.py (Llama, Qwen2, Qwen3, Arcee); hf_families.py picks one.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping
from typing import Any

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


def check_hf_types(hf_config: Mapping[str, Any], types: Mapping[str, type], source: str) -> None:
    """Raise a one-line error for the first field of `types` whose value in config.json has another JSON
    type, as transformers' config classes refuse it: "false" is not false, 1 is not true, 64.0 is not
    an integer (null means the default, and an integer is also a number)."""
    for name, kind in types.items():
        value = hf_config.get(name)
        if value is None:
            continue
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if not ok or (kind is not bool and isinstance(value, bool)):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise ScratchLLMError(f"{source}: field {name!r} is {shown} ({type(value).__name__}); expected "
                                  f"{_TYPE_NAMES[kind]}")

class HFAdapter:
    """What one Hugging Face model family needs: config.json <-> GPTConfig, tensor names <-> ours,
    and which of our configs the family can hold (`mismatches`, used to pick the family on export)."""

    model_type: str = ""  # config.json's "model_type"
    family: str = ""  # for messages
    architecture: str = ""  # config.json's "architectures"
    field_types: dict[str, type] = {}  # the config.json fields this family reads, and their JSON types

    def config_from_hf(self, hf_config: Mapping[str, Any], source: str = "config.json") -> GPTConfig:
        raise NotImplementedError

    def from_hf(self, sd: Mapping[str, torch.Tensor], config: GPTConfig, source: str = "weights") -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def mismatches(self, config: GPTConfig) -> list[str]:
        """What `config` would need to change to be a model of this family (empty: it is one)."""
        raise NotImplementedError

    def config_to_hf(self, config: GPTConfig, dtype: torch.dtype = torch.float32, eos_id: int | None = None,
                     bos_id: int | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def to_hf(self, sd: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
        raise NotImplementedError



def split_for_export(sd: Mapping[str, torch.Tensor], config: GPTConfig, top: Mapping[str, str],
                     blocks: Container[str], family: str) -> tuple[dict[str, torch.Tensor], list[tuple[str, str, str, torch.Tensor]]]:
    """The first step of every family's `to_hf`: our untied head becomes `lm_head.weight` (a tied one is
    the embedding, written once), the tensors named in `top` (ours -> theirs) are renamed, and every
    block tensor comes back as (layer, module, "weight"|"bias", tensor) for the family to name; a
    tensor that is neither, or a block module outside `blocks`, is a one-line error."""
    out: dict[str, torch.Tensor] = {}
    block_tensors: list[tuple[str, str, str, torch.Tensor]] = []
    for name, tensor in sd.items():
        tensor = tensor.detach().to("cpu")
        if name == "out_head.weight":
            if not config.tie_embeddings:
                out["lm_head.weight"] = tensor.contiguous()
        elif name in top:
            out[top[name]] = tensor.contiguous()
        else:
            m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name)
            if m is None or m.group(2) not in blocks:
                raise ScratchLLMError(f"export: tensor {name!r} has no {family} counterpart")
            block_tensors.append((*m.groups(), tensor))
    return out, block_tensors


def zero_biases(out: dict[str, torch.Tensor], wanted: Mapping[str, int], dtype: torch.dtype) -> None:
    """Add a zero bias of each `wanted` name (-> its length) that `out` lacks: a family whose layer
    has a bias holds our layer without one exactly (x W^T + 0 = x W^T)."""
    for name, size in wanted.items():
        if name not in out:
            out[name] = torch.zeros(size, dtype=dtype)
