"""The optimizer and its schedule: AdamW (Loshchilov & Hutter 2019) over decayed and undecayed
parameter groups, and the learning rate of a linear warmup then cosine decay (GPT-3, Brown et al.
2020, appendix B).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.training.config import TrainConfig

def learning_rate(step: float, cfg: TrainConfig) -> float:
    """LR for optimizer step `step` (0-based): linear warmup to cfg.lr over warmup_steps, then a
    cosine decay to min_lr at max_steps (Loshchilov & Hutter 2017 without restarts; GPT-3 app. B).

    With schedule="time" the loop passes step = max_steps * elapsed / max_time instead, so that a
    run with a wall-clock budget decays fully whatever its speed (warmup is then the fraction
    warmup_steps / max_steps of the budget). That run depends on timing, so it is not reproducible.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)  # 0 -> 1
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def weight_decay_groups(model: nn.Module) -> tuple[list[str], list[str]]:
    """(decayed, not decayed) names of the trainable parameters.

    Weight decay pulls 2-D weights (linear layers, embeddings) towards zero; biases and LayerNorm
    gains are 1-D and are left alone, as in GPT-2/3 and nanoGPT. Frozen parameters are in neither.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a tied weight is listed once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(name)
    return decay, no_decay


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, weight decay on the 2-D ones only."""
    params = dict(model.named_parameters())
    decay, no_decay = weight_decay_groups(model)
    if not decay and not no_decay:
        raise ScratchLLMError("no trainable parameters: every parameter has requires_grad=False")
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": cfg.weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]
    if fused is None:
        fused = cfg.fused_adamw and device.type in ("cpu", "cuda", "mps")
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **kwargs)

