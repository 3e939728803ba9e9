"""LoRA: low-rank adapters that fine-tune a frozen model through a few small matrices.

Low-Rank Adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") keeps a
pretrained weight W (out x in) frozen and learns its update as a product of two thin matrices:

    h = x W^T + (alpha / r) * x A^T B^T        A: (r x in), B: (out x r), r << min(in, out)

B starts at zero, so the adapted model starts exactly as the pretrained one, and only A and B
(r * (in + out) numbers per layer) get gradients and optimizer state. After training B @ A can be
added into W ("merged"), which leaves a plain model with no extra cost at inference.

Here: `apply_lora` swaps the chosen `nn.Linear` layers of a model for `LoRALinear` and freezes
everything else; the recipes (instruction tuning, classification) then train as usual; `merge_lora`
folds the adapters into plain `nn.Linear` weights. Writing and reading adapters (alone, or inside a
LoRA run's checkpoints) is `checkpoint/adapter_dir.py` and `checkpoint/kinds.py` (kind "lora").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchllm.core.console import log
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import DEFAULT_LORA_TARGETS, LoRAConfig  # noqa: F401 (importable from here, as before)

DEFAULT_TARGETS = DEFAULT_LORA_TARGETS


class LoRALinear(nn.Linear):
    """An nn.Linear whose weight and bias are frozen, plus a trainable low-rank update:

        y = x W^T + b + (alpha / r) * dropout(x) A^T B^T      A: (r, in), B: (out, r)

    It keeps the wrapped layer's `weight` and `bias` tensors under the same names, so a model's
    state dict holds the base weights as before plus `*.lora_A` / `*.lora_B`.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)  # adopt base's tensors instead of allocating new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # (out, in)
        self.bias = base.bias  # (out,) or None
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))  # (out, r)
        # A gets nn.Linear's own default init (Kaiming-uniform), B zeros: the update starts at 0
        # and its first gradient (w.r.t. B) is non-zero, as in the paper's reference code.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in)
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., r) -> (..., out)
        return F.linear(x, self.weight, self.bias) + self.scaling * update

    def merged(self) -> nn.Linear:
        """A plain nn.Linear holding W + (alpha/r) * B @ A (the sum computed in float32)."""
        w = self.weight
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (out, in)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=w.device, dtype=w.dtype)
        with torch.no_grad():
            linear.weight.copy_((w.float() + delta).to(w.dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors count once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def apply_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 16.0,
    targets: Sequence[str] = DEFAULT_TARGETS,
    dropout: float = 0.0,
    trainable: Sequence[str] = (),
    verbose: bool = True,
    base_model: str | None = None,
) -> nn.Module:
    """Wrap every nn.Linear whose name ends with one of `targets` in a LoRALinear; freeze the rest.

    `trainable` names modules (or parameters) left trainable besides the adapters, e.g. a new
    classifier head. The model is changed in place and returned; the config is kept on it as
    `model.lora_config` so the adapters can be saved and merged later. Prints the parameter counts
    to stderr (the number that makes LoRA worth it).
    """
    config = LoRAConfig(rank=rank, alpha=alpha, targets=list(targets), dropout=dropout, trainable=list(trainable),
                        base_model=base_model)
    if getattr(model, "lora_config", None) is not None:
        raise ScratchLLMError("the model already has LoRA adapters; merge or remove them before applying new ones")
    chosen: list[str] = []
    for target in config.targets:
        hits = [n for n, m in model.named_modules() if _matches(n, target)]
        if not hits:
            raise ScratchLLMError(f"LoRA target {target!r} matches no module of the model (e.g. {', '.join(DEFAULT_TARGETS)})")
        for n in hits:
            module = model.get_submodule(n)
            if n.split(".")[-1] == "out_head" or n == "out_head":
                # GPT.loss reads out_head.weight directly (and it is tied to the token embedding).
                raise ScratchLLMError(f"LoRA target {target!r}: the LM head {n!r} cannot take an adapter")
            if not isinstance(module, nn.Linear):
                raise ScratchLLMError(f"LoRA target {target!r} matches {n!r}, a {type(module).__name__}, not an nn.Linear")
            chosen.append(n)
    model.requires_grad_(False)
    for n in dict.fromkeys(chosen):
        _set_module(model, n, LoRALinear(model.get_submodule(n), config.rank, config.alpha, config.dropout))
    _unfreeze(model, config.trainable)
    model.lora_config = config
    if verbose:
        n_train, n_total = count_parameters(model)
        log(f"LoRA r={config.rank} alpha={config.alpha:g} on {len(chosen)} layers: trainable parameters "
            f"{n_train:,} of {n_total:,} ({100 * n_train / n_total:.2f}%)")
    return model


def _unfreeze(model: nn.Module, names: Sequence[str]) -> None:
    params = dict(model.named_parameters())
    for name in names:
        hits = [p for n, p in params.items() if _matches(n, name) or n.startswith(name + ".") or ("." + name + ".") in n]
        if not hits:
            raise ScratchLLMError(f"trainable module {name!r} matches no parameter of the model")
        for p in hits:
            p.requires_grad_(True)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters (every lora_A / lora_B) and the parameters of `trainable` modules: what training changed."""
    config = lora_config_of(model)
    state = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        extra = any(_matches(n, t) or n.startswith(t + ".") or ("." + t + ".") in n for t in config.trainable)
        if n.endswith((".lora_A", ".lora_B")) or extra:
            state[n] = p.detach()
    return state


def lora_config_of(model: nn.Module) -> LoRAConfig:
    config = getattr(model, "lora_config", None)
    if config is None:
        raise ScratchLLMError("the model has no LoRA adapters (apply_lora or load_adapters first)")
    return config


def set_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: str, expected: set[str]) -> None:
    """Copy adapter tensors into the model's parameters, naming what does not fit."""
    params = dict(model.named_parameters(remove_duplicate=False))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ScratchLLMError(
            f"{source}: adapter does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    with torch.no_grad():
        for name in [n for n in params if n in tensors]:  # in the model's order: the first misfit is named
            value = tensors[name]
            if params[name].shape != value.shape:
                raise ScratchLLMError(
                    f"{source}: {name} has shape {tuple(value.shape)}, the model expects {tuple(params[name].shape)}"
                )
            params[name].copy_(value)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W += alpha/r * B @ A): a plain model again, in place.

    All parameters are left trainable (the default of a freshly loaded model)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _set_module(model, name, module.merged())
    if hasattr(model, "lora_config"):
        del model.lora_config
    model.requires_grad_(True)
    return model


def split_lora_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base tensors, lora_A / lora_B tensors) of a state dict."""
    lora = {k: v for k, v in state.items() if k.endswith((".lora_A", ".lora_B"))}
    return {k: v for k, v in state.items() if k not in lora}, lora
