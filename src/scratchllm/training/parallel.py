"""Where the model trains: one process, DistributedDataParallel, or FSDP2 under `torchrun`; and
`torch.compile`. The loop calls the model only through `Parallel`, so it reads the same in all cases.

Every use of the model goes through one `nn.Module.forward` (`_TaskModule`): that is where DDP hangs
its gradient hooks and FSDP its parameter all-gathers, while tasks call methods such as
`model.loss(...)`, not `model(...)`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from scratchllm.core.device import DistInfo, join_single_process_group
from scratchllm.errors import ScratchLLMError
from scratchllm.models.classifier import Classifier
from scratchllm.models.decode_kernels import plain_linears
from scratchllm.models.encoder_decoder import EncoderDecoder
from scratchllm.models.gpt import GPT
from scratchllm.models.quantize import quantization
from scratchllm.training.config import TrainConfig


class _TaskModule(nn.Module):
    """Routes a task's call `fn(model, *args)` through `forward`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(self.model, *args)


class Parallel:
    """The model placed for training: `raw` is the plain model (its parameters, what the optimizer
    updates), `runner` the module that runs a step (DDP- or FSDP-wrapped), compiled when asked."""

    def __init__(self, raw: nn.Module, cfg: TrainConfig, env: DistInfo, device: torch.device):
        if (quantized := quantization(raw)) is not None:
            raise ScratchLLMError(f"train: the model is quantized ({quantized}) for decoding; its weights cannot "
                                  "train: load it without quantize")
        plain_linears(raw)  # `load` gave it decode kernels; DDP, FSDP and compile expect plain row-major Linears
        self.raw, self.env, self.fsdp = raw, env, cfg.fsdp
        wrapper = _TaskModule(raw)
        self.runner: nn.Module = wrapper
        self.shadow: nn.Module | None = None  # FSDP: a full copy on rank 0 that checkpoints are written from
        if cfg.fsdp:
            self.runner, self.shadow = _shard(raw, wrapper, env, device)
        elif env.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.runner = DDP(wrapper, device_ids=[device.index] if device.type == "cuda" else None)
        self._train = torch.compile(self.runner) if cfg.compile else self.runner

    def train_call(self, fn: Callable, *args):
        """fn(model, *args) for a training micro-batch (compiled when cfg.compile)."""
        return self._train(fn, *args)

    def call(self, fn: Callable):
        """fn(model) for evaluation and samples; under FSDP through the root's forward (all-gathers)."""
        return self.runner(fn) if self.fsdp else fn(self.raw)

    def no_sync(self, last_micro_batch: bool):
        """DDP all-reduces gradients in backward; skip that on all but the last micro-batch."""
        if last_micro_batch or not isinstance(self.runner, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.runner.no_sync()

    def clip_grad_norm(self, max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_([p for p in self.raw.parameters() if p.requires_grad], max_norm)
        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)  # FSDP: a sharded norm

    def full_model(self) -> nn.Module:
        """The model with full weights, to write a model directory (a collective call under FSDP)."""
        if not self.fsdp:
            return self.raw
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.runner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.shadow is not None:
            self.shadow.load_state_dict({k.removeprefix("model."): v for k, v in sd.items()}, strict=False)
        return self.shadow

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's full state dict (gathered from the shards under FSDP)."""
        if not self.fsdp:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.runner, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.runner, optimizer, state, options=StateDictOptions(full_state_dict=True))


def _shard(raw: nn.Module, wrapper: nn.Module, env: DistInfo, device: torch.device) -> tuple[nn.Module, nn.Module | None]:
    """FSDP2: shard every transformer block, then the root (embeddings, final norm, head).

    Returns (sharded root, full-precision copy on rank 0 for writing checkpoints). Each block's
    parameters are all-gathered just before its forward and freed after (ZeRO-3, Rajbhandari et al.
    2020); gradients are reduce-scattered so each process keeps the optimizer state of its shard.
    A single process (plain `scratchllm pretrain --fsdp`, or torchrun --nproc_per_node=1) becomes a
    group of one and runs the same code, so a configuration can be checked on one GPU first.
    """
    if env.world_size == 1:
        join_single_process_group(device)
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch 2.4 and 2.5 kept it here
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError:
            raise ScratchLLMError(f"fsdp: this PyTorch ({torch.__version__}) has no FSDP2 fully_shard; needs torch >= 2.4") from None
    shadow = copy.deepcopy(raw).to("cpu") if env.is_main else None
    for block in transformer_blocks(raw):
        fully_shard(block)
    fully_shard(wrapper)
    return wrapper, shadow


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of any model kind, the unit FSDP shards: a GPT's, a classifier body's, both stacks
    of an encoder-decoder."""
    if isinstance(model, Classifier):
        return list(model.body.blocks)
    if isinstance(model, EncoderDecoder):
        return [*model.encoder.blocks, *model.decoder.blocks]
    if isinstance(model, GPT):
        return list(model.blocks)
    return []
