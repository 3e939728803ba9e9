"""How to train: `TrainConfig` (every option of the loop, declared once: the CLI's flags are generated
from its fields, and each training verb composes it with its own defaults) and run files (TOML, JSON or
YAML). Torch-free, so `scratchllm --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from scratchllm.core.options import check_fields, device_field, resolve
from scratchllm.errors import ScratchLLMError

# The precision of training: "auto" is bf16 autocast on CUDA when supported, float32 elsewhere.
AutocastDtype = Literal["auto", "float32", "bfloat16"]

# The fields a recipe may leave None for `derive` to fill from its data or model.
DERIVED = ("max_steps", "lr", "eval_every")


@dataclass
class TrainConfig:
    """Everything about *how* to train (the model's shape lives in GPTConfig, the data in the task).
    Each field is a `scratchllm pretrain` flag (--max-steps, ...) and a key of a run file; the
    fine-tuning verbs offer some of them with defaults of their own. max_steps, lr and eval_every
    may be None in a recipe's config: the recipe derives them (`derive`) before `fit`."""

    # how long
    max_steps: int | None = 1000
    """optimizer steps"""
    max_time: float | None = None
    """seconds of wall time (all resumes together); stops early, cleanly, with a checkpoint"""
    # batch: tokens per optimizer step = batch_size * context_length * grad_accum * world_size
    batch_size: int = 8
    """sequences per micro-batch, per process"""
    context_length: int | None = None
    """tokens per sequence (default: the model's context_length)"""
    grad_accum: int = 1
    """micro-batches summed into one optimizer step"""
    tokens_per_step: int | None = None
    """derive grad_accum from the tokens per optimizer step (printed at start)"""
    # optimizer and schedule
    lr: float | None = 6e-4
    """peak learning rate, reached after warmup"""
    min_lr: float | None = 6e-5
    """floor of the cosine decay, reached at max_steps (none: no decay, lr after warmup)"""
    warmup_steps: int = 100
    """linear warmup steps"""
    weight_decay: float = 0.1
    """AdamW weight decay, on 2-D weights only (matrices, embeddings), not biases or norms"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.95
    """AdamW beta2"""
    grad_clip: float = 1.0
    """max global gradient norm (0: no clipping)"""
    fused_adamw: bool = True
    """torch's fused AdamW kernel where the device has one (~5x faster on CPU)"""
    schedule: Literal["steps", "time"] = "steps"
    """steps: warmup + cosine over max_steps; time: over max_time, so a wall-clock budget always ends decayed"""
    optimizer: Literal["adamw", "muon"] = "adamw"
    """adamw; or muon: Muon for the matrices inside the blocks (at muon_lr), AdamW (at lr) for the rest"""
    muon_lr: float = 0.02
    """Muon's peak learning rate (follows the same warmup and decay as lr)"""
    muon_momentum: float = 0.95
    """Muon's Nesterov momentum"""
    # evaluation, logging, samples, checkpoints (every N optimizer steps; 0 = only at the end)
    eval_every: int | None = 200
    """evaluate every N steps (0: only at the end)"""
    eval_batches: int = 20
    """validation batches per evaluation (0: the whole split)"""
    patience: int = 0
    """early stopping: stop after this many evaluations in a row without a better validation metric, and
    give final/ the best evaluation's weights (RUNDIR/best/); 0: train to max_steps, final/ is the last"""
    log_every: int = 10
    """log every N steps"""
    save_every: int = 500
    """checkpoint every N steps (0: only at the end)"""
    keep_last: int = 2
    """step checkpoints kept (best/ and final/ are kept besides)"""
    sample_every: int = 0
    """print a text sample at step 0, every N steps and at the end (0: never)"""
    sample_prompt: str = "\n"
    """prompt of the samples"""
    sample_tokens: int = 64
    """tokens per sample"""
    # execution
    seed: int = 1337
    """random seed (initial weights, batches, dropout)"""
    device: str = device_field()
    dtype: AutocastDtype = "auto"
    """auto: bf16 autocast on CUDA when supported, else float32; bfloat16: autocast, also on CPU"""
    compile: bool = False
    """torch.compile the loss computation"""
    fsdp: bool = False
    """shard parameters, gradients and optimizer state (FSDP2) under torchrun"""
    progress: bool = True
    """tqdm progress bar on stderr (shown only when stderr is a terminal)"""

    def __post_init__(self) -> None:
        check_fields(self, "train config")
        positive = ("max_steps", "batch_size", "grad_accum", "log_every", "sample_tokens")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ScratchLLMError(f"train config field {name!r} must be >= 1, got {getattr(self, name)!r}")
        non_negative = ("warmup_steps", "eval_every", "eval_batches", "patience", "save_every", "sample_every",
                        "weight_decay", "grad_clip", "min_lr")
        for name in non_negative:
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ScratchLLMError(f"train config field {name!r} must be >= 0, got {getattr(self, name)!r}")
        if self.keep_last < 1:
            raise ScratchLLMError(f"train config field 'keep_last' must be >= 1, got {self.keep_last!r}")
        if self.lr is not None and not self.lr > 0:
            raise ScratchLLMError(f"train config field 'lr' must be > 0, got {self.lr!r}")
        if self.lr is not None and self.min_lr is not None and self.min_lr > self.lr:
            raise ScratchLLMError(f"train config: min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ScratchLLMError(f"train config field {name!r} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("context_length", "tokens_per_step", "max_time"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ScratchLLMError(f"train config field {name!r} must be > 0 (or unset), got {value!r}")
        if self.patience and self.eval_every == 0:
            raise ScratchLLMError("train config: patience counts evaluations; it needs eval_every > 0")
        if self.patience and self.fsdp:
            raise ScratchLLMError("train config: patience puts best/'s weights back, which FSDP runs cannot yet; use DDP")
        if self.schedule == "time" and self.max_time is None:
            raise ScratchLLMError("train config: schedule 'time' needs max_time (the budget the schedule spans)")
        if not self.muon_lr > 0:
            raise ScratchLLMError(f"train config field 'muon_lr' must be > 0, got {self.muon_lr!r}")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ScratchLLMError(f"train config field 'muon_momentum' must be in [0, 1), got {self.muon_momentum!r}")
        if self.optimizer == "muon" and self.fsdp:
            raise ScratchLLMError("train config: optimizer 'muon' does not work with fsdp (Muon orthogonalises whole "
                                  "matrices, which FSDP shards across processes); use DDP (no fsdp) or optimizer adamw")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "train config") -> TrainConfig:
        return resolve(cls, [(source, data)], what="train config", where=source)[0]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
        """Read run.toml / run.yaml / run.json (a flat mapping of fields); `overrides` (e.g. CLI flags) win."""
        return resolve(cls, [(str(path), read_run_file(path)), ("overrides", overrides)], what="train config",
                       where=str(path))[0]

    def derive(self, **values: Any) -> TrainConfig:
        """A copy whose None fields among `values` take those values: what a recipe works out from
        its data or model (max_steps from epochs, lr from the model's width) unless it was given."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if getattr(self, k) is None})

    def check_derived(self) -> None:
        """`fit` needs every derived field set."""
        for name in DERIVED:
            if getattr(self, name) is None:
                raise ScratchLLMError(f"train config field {name!r} is not set (a recipe derives it; set it to train "
                                      "with `fit` directly)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_run_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A run file as a dict: TOML (tomllib), JSON, or YAML (only if PyYAML is installed)."""
    path = Path(path)
    if not path.is_file():
        raise ScratchLLMError(f"{path}: no such run config file")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ScratchLLMError(f"{path}: reading TOML needs Python >= 3.11 (tomllib); use JSON") from None
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ScratchLLMError(
                    f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write the file as TOML or JSON"
                ) from None
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(str(exc)) from None
        else:
            raise ScratchLLMError(f"{path}: unknown run file type {suffix!r}; expected .toml, .json, .yaml or .yml")
    except ScratchLLMError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # TOML and JSON errors are ValueErrors
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScratchLLMError(f"{path}: cannot parse ({first})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScratchLLMError(f"{path}: expected a mapping of settings at the top level")
    return data


def derive_grad_accum(cfg: TrainConfig, context_length: int, world_size: int) -> tuple[int, str]:
    """Micro-batches per optimizer step, and the formula that produced it (printed at start)."""
    b, t, w = cfg.batch_size, context_length, world_size
    if cfg.tokens_per_step is None:
        accum = cfg.grad_accum
        return accum, f"tokens_per_step = batch_size * context_length * grad_accum * world_size = {b} * {t} * {accum} * {w} = {b * t * accum * w:,}"
    per_micro = b * t * w
    if cfg.tokens_per_step % per_micro:
        raise ScratchLLMError(
            f"tokens_per_step={cfg.tokens_per_step} is not a multiple of batch_size * context_length * world_size "
            f"= {b} * {t} * {w} = {per_micro}"
        )
    accum = cfg.tokens_per_step // per_micro
    if cfg.grad_accum not in (1, accum):
        raise ScratchLLMError(
            f"grad_accum={cfg.grad_accum} contradicts tokens_per_step={cfg.tokens_per_step} (which gives {accum}); set one of them"
        )
    return accum, f"grad_accum = tokens_per_step / (batch_size * context_length * world_size) = {cfg.tokens_per_step} / ({b} * {t} * {w}) = {accum}"

