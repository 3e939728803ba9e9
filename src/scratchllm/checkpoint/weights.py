"""Weights on disk and into a model: the safetensors reader and writer, the check that names the first
tensor a model does not expect, lacks or shapes differently, and a GPT built from a state dict.

Every kind of model directory (checkpoint/kinds.py) and every Hugging Face directory (checkpoint/hf.py)
goes through these, so a corrupt file or a config that does not match its weights is the same one-line
error whatever wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.core.device import parse_dtype, resolve_device
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT, sinusoidal_table
from scratchllm.models.size import parameter_count

WEIGHTS_FILE = "model.safetensors"  # a model directory's weights, under our parameter names


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, truncated or corrupt file is one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ScratchLLMError(f"{path}: not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        # A truncated file fails with "incomplete metadata" or a wrong-size tensor, a random one
        # with a header error: either way the file is not a whole safetensors file.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScratchLLMError(f"{path}: corrupt or truncated safetensors file ({reason})") from None


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write tensors (moved to the CPU, made contiguous) as one safetensors file."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def _natural_order(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def check_tensors(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], weights: str,
                  config_source: str) -> None:
    """Raise naming the first tensor of `state` that the model does not expect, lacks or shapes differently."""
    for name, shape in expected.items():
        if name not in state:
            raise ScratchLLMError(f"{weights}: missing tensor {name!r} of shape {shape} that {config_source} expects "
                                  "(the config does not match the weights)")
        got = tuple(state[name].shape)
        if got != shape:
            raise ScratchLLMError(f"{weights}: tensor {name!r} has shape {got} but {config_source} expects {shape} "
                                  "(the config does not match the weights)")
    for name in sorted(state, key=_natural_order):  # deterministic: blocks.2 before blocks.10
        if name not in expected:
            raise ScratchLLMError(f"{weights}: unexpected tensor {name!r} of shape {tuple(state[name].shape)} for the "
                                  f"model in {config_source} (the config does not match the weights)")
        if not state[name].is_floating_point():
            raise ScratchLLMError(f"{weights}: tensor {name!r} has dtype {state[name].dtype}, expected floating point")


def expected_shapes(model: nn.Module, skip: set[str] = frozenset()) -> dict[str, tuple[int, ...]]:
    """{state-dict name: shape} of `model`, less the names in `skip` (tensors stored once under another name)."""
    return {name: tuple(t.shape) for name, t in model.state_dict().items() if name not in skip}


def gpt_tied(model: GPT) -> set[str]:
    """A GPT's state-dict names that alias another tensor and are stored once: a tied LM head."""
    return {"out_head.weight"} if model.config.tie_embeddings else set()


def gpt_state(model: GPT) -> dict[str, torch.Tensor]:
    """A GPT's tensors, a tied LM head once (safetensors refuses tensors that share memory)."""
    state = dict(model.state_dict())
    if model.config.tie_embeddings:
        if model.out_head.weight is not model.tok_emb.weight:
            raise ScratchLLMError("save_model: config.tie_embeddings is True but out_head.weight is not tok_emb.weight")
        del state["out_head.weight"]
    return state


def copy_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path, tied: set[str],
              partial: bool = False) -> None:
    """Copy `state` into `model`'s tensors in place (no dtype change), checked first; `tied` names are
    not stored; `partial`: `state` holds only some of the model's tensors (a classifier's head)."""
    expected = expected_shapes(model, tied)
    if partial:
        expected = {k: v for k, v in expected.items() if k in state}
    check_tensors(state, expected, str(path), "the model being trained")
    with torch.no_grad():
        params = model.state_dict()
        for name, value in state.items():
            params[name].copy_(value)


def place(model: nn.Module, device: str | torch.device, dtype: str | torch.dtype | None) -> nn.Module:
    """`model` cast to `dtype` (None keeps it), moved to `device` ("auto" resolves), in eval mode."""
    dtype, device = parse_dtype(dtype), resolve_device(device)
    try:
        if dtype is not None:
            model.to(dtype=dtype)
        model.to(device=device)
    except (RuntimeError, AssertionError) as exc:
        raise ScratchLLMError(f"device {str(device)!r}: cannot move the model there ({exc})") from None
    return model.eval()


def gpt_from_state_dict(
    config: GPTConfig,
    state_dict: dict[str, torch.Tensor],
    weights: str = "weights",
    config_source: str = "config",
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> GPT:
    """A GPT in eval mode holding exactly `state_dict`'s tensors (checked against `config` first)."""
    held = sum(t.numel() for t in state_dict.values())
    described = parameter_count(config)
    if described > 2 * held + 1_000_000:  # even the empty (meta) model of a hostile config takes minutes
        raise ScratchLLMError(f"{config_source}: describes a model of {described:,} parameters, but {weights} holds "
                              f"{held:,} numbers; the config does not belong to these weights")
    with torch.device("meta"):  # shapes only: no memory, no random init
        model = GPT(config)
    check_tensors(state_dict, expected_shapes(model, gpt_tied(model)), weights, config_source)
    # assign=True adopts the loaded tensors instead of copying into freshly initialised ones.
    model.load_state_dict(state_dict, strict=False, assign=True)
    if config.tie_embeddings:
        model.out_head.weight = model.tok_emb.weight
    if config.position == "sinusoidal":  # the fixed table is not saved (a non-persistent buffer): computed again
        model.register_buffer("pos_table", sinusoidal_table(config.context_length, config.emb_dim), persistent=False)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a model change added a tensor that is not saved; better loud than silently empty
        raise RuntimeError(f"tensors not restored from the checkpoint: {left}")
    return place(model, device, dtype)
