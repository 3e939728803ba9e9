"""The one training loop: pretraining now, classification / instruction / preference tuning on top.

Where it sits: tokenizer -> data -> model -> **train** -> checkpoints -> generation and evaluation.
`fit(model, task, cfg, out_dir)` runs AdamW (Loshchilov & Hutter 2019) with linear warmup and
cosine decay (GPT-3, Brown et al. 2020, appendix B), gradient accumulation and clipping, optional
bf16 autocast, periodic evaluation / text samples / checkpoints, exact resume, and DDP or FSDP
under `torchrun`. *What* is learned belongs to the `task` (see `Task`): it hands out micro-batches,
turns a batch into a scalar loss and evaluates the model. `PretrainTask` is next-token prediction
on a token stream; fine-tuning recipes bring their own task and reuse this loop unchanged.

A run directory (what `scratchllm.checkpoint.load(RUNDIR)` resolves: final/, else best/, else the
newest checkpoints/step-N/):

    RUNDIR/run_config.json                 resolved model + train config and derived values
    RUNDIR/metrics.jsonl                   one JSON object per log or eval step
    RUNDIR/loss.png                        train and validation loss against tokens seen
    RUNDIR/samples.txt                     text samples, when sample_every > 0
    RUNDIR/checkpoints/step-0000500/       model directory + trainer.pt (optimizer, step, RNG, data)
    RUNDIR/best/                           model directory of the best validation metric
    RUNDIR/final/                          model directory when training finished
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.files import write_json

# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Everything about *how* to train (the model's shape lives in GPTConfig, the data in the task)."""

    # how long
    max_steps: int = 1000  # optimizer steps
    max_time: float | None = None  # seconds of wall time (all resumes together); stops early, cleanly
    # batch: tokens per optimizer step = batch_size * context_length * grad_accum * world_size
    batch_size: int = 8  # sequences per micro-batch, per process
    context_length: int | None = None  # tokens per sequence; None = the model's context_length
    grad_accum: int = 1  # micro-batches summed into one optimizer step
    tokens_per_step: int | None = None  # if set, grad_accum is derived from it (and printed)
    # optimizer and schedule
    lr: float = 6e-4  # peak learning rate, reached after warmup
    min_lr: float = 6e-5  # floor of the cosine decay, reached at max_steps
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on 2-D weights only (matrices, embeddings), not biases or norms
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    fused_adamw: bool = True  # torch's fused AdamW kernel where the device has one (~5x faster on CPU)
    schedule: str = "steps"  # "steps": warmup + cosine over max_steps; "time": over max_time (see learning_rate)
    # evaluation, logging, samples, checkpoints (every N optimizer steps; 0 = only at the end)
    eval_every: int = 200
    eval_batches: int = 20  # validation batches per evaluation (None-like 0 = the whole split)
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2  # step checkpoints kept (best/ and final/ are kept besides)
    sample_every: int = 0  # 0 = no samples; else at step 0, every N steps and at the end
    sample_prompt: str = "\n"
    sample_tokens: int = 64
    # execution
    seed: int = 1337
    device: str = "auto"  # auto -> cuda, mps, cpu
    dtype: str = "auto"  # auto: bf16 autocast on CUDA when supported, else float32; bfloat16; float32
    compile: bool = False  # torch.compile the loss computation
    fsdp: bool = False  # shard parameters, gradients and optimizer state (FSDP2) under torchrun
    progress: bool = True  # tqdm bar on stderr (shown only when stderr is a terminal)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f"train config field {f.name!r}", getattr(self, f.name), f.type)
        positive = ("max_steps", "batch_size", "grad_accum", "log_every", "sample_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ScratchLLMError(f"train config field {name!r} must be >= 1, got {getattr(self, name)!r}")
        non_negative = ("warmup_steps", "eval_every", "eval_batches", "save_every", "sample_every",
                        "weight_decay", "grad_clip", "min_lr")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ScratchLLMError(f"train config field {name!r} must be >= 0, got {getattr(self, name)!r}")
        if self.keep_last < 1:
            raise ScratchLLMError(f"train config field 'keep_last' must be >= 1, got {self.keep_last!r}")
        if not self.lr > 0:
            raise ScratchLLMError(f"train config field 'lr' must be > 0, got {self.lr!r}")
        if self.min_lr > self.lr:
            raise ScratchLLMError(f"train config: min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ScratchLLMError(f"train config field {name!r} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("context_length", "tokens_per_step", "max_time"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ScratchLLMError(f"train config field {name!r} must be > 0 (or unset), got {value!r}")
        if self.schedule not in ("steps", "time"):
            raise ScratchLLMError(f"train config field 'schedule' must be steps or time, got {self.schedule!r}")
        if self.schedule == "time" and self.max_time is None:
            raise ScratchLLMError("train config: schedule 'time' needs max_time (the budget the schedule spans)")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ScratchLLMError(f"train config field 'dtype' must be auto, float32 or bfloat16, got {self.dtype!r}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ScratchLLMError(f"train config field 'device' must be auto, cpu, mps or cuda[:N], got {self.device!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "train config") -> TrainConfig:
        if not isinstance(data, dict):
            raise ScratchLLMError(f"{source}: expected a mapping of train config fields, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ScratchLLMError(
                f"{source}: unknown train config key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(known)}"
            )
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
        """Read run.toml / run.yaml / run.json (a flat mapping of fields); `overrides` (e.g. CLI flags) win."""
        return cls.from_dict({**read_run_file(path), **overrides}, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(what: str, value: Any, annotation: str) -> None:
    """Check a value against a dataclass field annotation such as 'int', 'float | None' or 'str'."""
    allowed = [a.strip() for a in str(annotation).split("|")]
    if value is None and "None" in allowed:
        return
    ok = (
        ("bool" in allowed and isinstance(value, bool))
        or ("int" in allowed and isinstance(value, int) and not isinstance(value, bool))
        or ("float" in allowed and isinstance(value, (int, float)) and not isinstance(value, bool))
        or ("str" in allowed and isinstance(value, str))
    )
    if not ok:
        raise ScratchLLMError(f"{what} must be {annotation}, got {value!r}")


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


# --------------------------------------------------------------------------------------------------
# Optimizer and learning-rate schedule


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


# --------------------------------------------------------------------------------------------------
# Devices, precision, processes


@dataclass
class DistInfo:
    """Where this process sits among the `torchrun` processes (all zeros/ones when alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" -> cuda (this process's GPU under torchrun), else mps, else cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ScratchLLMError(f"device {name!r}: CUDA is not available in this PyTorch build / machine")
        return torch.device(name) if ":" in name else torch.device("cuda", local_rank)
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ScratchLLMError("device 'mps': Apple MPS is not available here")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32.

    bf16 keeps float32's exponent range, so unlike fp16 it needs no loss scaling (Kalamkar et al.
    2019); autocast runs matmuls in bf16 and keeps weights, softmax and the loss in float32.
    """
    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def init_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
    import torch.distributed as dist

    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
    device = resolve_device(device_name, info.local_rank)
    if device.type == "mps":
        raise ScratchLLMError("device 'mps': multi-process training is not supported on MPS")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


# --------------------------------------------------------------------------------------------------
# Peak FLOP/s for MFU (model FLOPs utilisation, PaLM appendix B)

# Dense bf16 tensor-core FLOP/s from the vendors' datasheets (no sparsity), matched against
# torch.cuda.get_device_name(); the first matching entry wins, so specific names come first.
GPU_PEAK_BF16 = [
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("GH200", 989e12), ("H200", 989e12), ("H100", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12),
    ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12),
]
_MEASURED_PEAK: dict[tuple[str, str, int], float] = {}


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 0.3) -> float:
    """Best FLOP/s of square matmuls on `device` over about `seconds` (cached per device and dtype).

    Used as the MFU denominator where no datasheet figure applies (every CPU): a CPU's real peak
    depends on its cores, vector units and clock, so a fixed number would be wrong almost everywhere.
    On a CPU the rate is also taken per second of this process's CPU time (times the threads), which
    other processes on a shared machine do not shrink the way they shrink wall-clock time.
    """
    key = (str(device), str(dtype), torch.get_num_threads())
    if key in _MEASURED_PEAK:
        return _MEASURED_PEAK[key]
    n = 1024 if device.type == "cpu" else 4096
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):  # warm-up: thread pools, kernel selection
        a @ b
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t, cpu = time.perf_counter(), time.process_time()
        for _ in range(3):
            a @ b
        sync()
        flops = 3 * 2 * n**3
        best = max(best, flops / (time.perf_counter() - t))
        if device.type == "cpu":
            best = max(best, flops / max(time.process_time() - cpu, 1e-9) * torch.get_num_threads())
    _MEASURED_PEAK[key] = best
    return best


def peak_flops(device: torch.device, amp_dtype: torch.dtype | None) -> tuple[float, str]:
    """(peak FLOP/s of one device for this precision, where the figure comes from)."""
    if device.type == "cuda" and amp_dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_BF16:
            if key in name:
                return value, f"{name} bf16 datasheet"
    dtype = amp_dtype or torch.float32
    value = measure_matmul_peak(device, dtype)
    return value, f"measured {str(dtype).replace('torch.', '')} matmul on {device.type}"


# --------------------------------------------------------------------------------------------------
# Tasks: what the loop trains


class Task(Protocol):
    """What `fit` needs from a training task (pretraining, classification, instruction, DPO...).

    next_batch()            the next micro-batch, already on the training device
    loss(model, batch)      scalar mean loss (a tensor with grad)
    batch_tokens(batch)     tokens in the batch that count towards the loss (for throughput)
    evaluate(model)         {"val_loss": ..., ...}; called under no_grad with the model in eval mode
    state_dict()            what exact resume needs (the data loader position) ...
    load_state_dict(state)  ... and restores

    Optional attributes: `sample(model) -> str`; `best_metric` (default "val_loss") and
    `higher_is_better` (default False) choose RUNDIR/best/; `save_extra` (dict) is added to every
    saved model directory's config.json (e.g. {"prompt_style": "alpaca"}).

    The model is a GPT, or a module wrapping one that writes and reads itself: see `save_model`
    (its `save_pretrained(directory, tokenizer=, extra=, add_files=)`) and `_load_weights` (its
    `load_weights(directory)`, exact and in place, used on resume).
    """

    def next_batch(self) -> Any: ...
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...
    def batch_tokens(self, batch: Any) -> int: ...
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class PretrainTask:
    """Next-token prediction on random windows of a token stream (the pretraining objective).

    Each process draws its own share of every global batch (rank / world_size); validation loss is
    averaged over up to `eval_batches` fixed batches, also split across processes. Reported too:
    perplexity exp(loss) and bits per byte = loss / ln 2 / bytes_per_token, which compares models
    with different tokenizers.
    """

    best_metric = "val_loss"
    higher_is_better = False

    def __init__(self, data, batch_size: int, context_length: int, seed: int = 1337, rank: int = 0,
                 world_size: int = 1, device: str | torch.device = "cpu", eval_batches: int = 20,
                 tokenizer=None, sample_prompt: str = "\n", sample_tokens: int = 64):
        from scratchllm.data import RandomWindowLoader

        self.data, self.batch_size, self.context_length = data, batch_size, context_length
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.eval_batches, self.tokenizer = eval_batches, tokenizer
        self.sample_prompt, self.sample_tokens, self.seed = sample_prompt, sample_tokens, seed
        if len(data.train) < context_length + 1:
            raise ScratchLLMError(
                f"training split has {len(data.train)} tokens, fewer than context_length + 1 = {context_length + 1}"
            )
        self.loader = RandomWindowLoader(data.train, batch_size, context_length, seed, rank=rank,
                                         world_size=world_size, device=self.device)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loader.next_batch()  # x, y: (B, T) on device

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        return model.loss(x, y)  # chunked linear + cross-entropy: no (B, T, V) logits

    def batch_tokens(self, batch) -> int:
        return batch[1].numel()

    def evaluate(self, model) -> dict[str, float]:
        from scratchllm.data import eval_batches

        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # summed loss, tokens
        max_batches = self.eval_batches or None
        for i, (x, y) in enumerate(eval_batches(self.data.val, self.batch_size, self.context_length, max_batches)):
            if i % self.world_size != self.rank:
                continue
            x, y = x.to(self.device), y.to(self.device)
            total[0] += model.loss(x, y).double() * y.numel()
            total[1] += y.numel()
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        if total[1] == 0:
            return {}  # validation split shorter than one window
        loss = (total[0] / total[1]).item()
        metrics = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
        bpt = getattr(self.data, "bytes_per_token", None)
        if bpt:
            metrics["val_bpb"] = loss / math.log(2) / bpt
        return metrics

    def sample(self, model) -> str:
        if self.tokenizer is None:
            return ""
        from scratchllm.generation import generate

        return self.sample_prompt + generate(model, self.tokenizer, self.sample_prompt, max_new_tokens=self.sample_tokens,
                                             temperature=0.8, top_k=50, seed=self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])


class _TaskModule(nn.Module):
    """Routes every use of the model through `forward`, where DDP hangs its gradient hooks and FSDP
    its parameter all-gathers; tasks call methods such as `model.loss(...)`, not `model(...)`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(self.model, *args)


# --------------------------------------------------------------------------------------------------
# Run directory: checkpoints, metrics, plot


TRAINER_FILE = "trainer.pt"
_STEP_DIR = re.compile(r"step-(\d+)")


def checkpoint_dirs(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete step checkpoints (those holding trainer.pt), oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_DIR.fullmatch(d.name)
            if m and (d / TRAINER_FILE).is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def _read_metrics(path: Path, up_to_step: int | None) -> list[dict[str, Any]]:
    """metrics.jsonl lines with step <= up_to_step (a line cut by a crash is dropped)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and (up_to_step is None or row.get("step", 0) <= up_to_step):
                rows.append(row)
    return rows


_PLOT_NOTE_SHOWN = False


def plot_losses(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Train and validation loss against tokens seen, as a PNG (None when matplotlib is missing)."""
    global _PLOT_NOTE_SHOWN
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        if not _PLOT_NOTE_SHOWN:
            print("note: matplotlib is not installed, so no loss plot (pip install matplotlib)", file=sys.stderr)
            _PLOT_NOTE_SHOWN = True
        return None
    path = Path(path)
    train = [(r["tokens"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    ax = fig.add_subplot()
    if train:
        ax.plot([t for t, _ in train], [v for _, v in train], label="train", linewidth=1)
    if val:
        ax.plot([t for t, _ in val], [v for _, v in val], "o-", label="validation", markersize=3)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path


def _rng_state(device: torch.device) -> dict[str, Any]:
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    if "mps" in state and device.type == "mps":
        torch.mps.set_rng_state(state["mps"])


def save_model(model: nn.Module, directory: Path, tokenizer=None, extra=None, add_files=None) -> Path:
    """Write a model directory with `checkpoint.save_pretrained`, or, for a model that wraps a GPT
    (e.g. `classify.Classifier`: a GPT body plus a head), with its own
    `save_pretrained(directory, tokenizer=, extra=, add_files=)`, which adds its files to the directory."""
    from scratchllm.checkpoint import save_pretrained
    from scratchllm.model import GPT

    if not isinstance(model, GPT) and hasattr(model, "save_pretrained"):
        return model.save_pretrained(directory, tokenizer=tokenizer, extra=extra, add_files=add_files)
    return save_pretrained(model, directory, tokenizer=tokenizer, extra=extra, add_files=add_files)


def _load_weights(model: nn.Module, model_dir: Path) -> None:
    """Copy a saved model directory's weights into `model` in place (exactly; no dtype changes).
    A model that wraps a GPT and saves itself (see `save_model`) reads them with its `load_weights(dir)`."""
    from safetensors.torch import load_file

    if hasattr(model, "load_weights"):
        model.load_weights(model_dir)
        return
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise ScratchLLMError(f"{model_dir}: no model.safetensors to resume from")
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"out_head.weight"} if getattr(getattr(model, "config", None), "tie_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ScratchLLMError(
            f"{weights}: does not fit the model being trained (missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)})"
        )


# --------------------------------------------------------------------------------------------------
# The loop


class _Stop:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint after the current step and returns.
    A second signal interrupts at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _fmt_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def fit(model: nn.Module, task: Task, cfg: TrainConfig, out_dir: str | os.PathLike[str], resume: bool = False,
        tokenizer=None, extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `model` on `task` as `cfg` says, writing the run directory `out_dir`. Returns a summary.

    resume=True continues from the newest checkpoint in out_dir (a fresh start when there is none):
    model, optimizer, step, RNG states and the task's data position are restored, and metrics.jsonl
    lines after that step are dropped, so the losses continue exactly as an uninterrupted run's.
    SIGINT/SIGTERM save a checkpoint after the current step; the summary then has "stopped" set to
    the signal's name and "exit_code" 130 / 143. A NaN or infinite loss raises ScratchLLMError naming
    the step; the checkpoints written before it stay. extra_config is saved in run_config.json.
    """
    cfg = TrainConfig.from_dict(cfg.to_dict()) if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg)
    env, device = init_distributed(cfg.device)
    amp_dtype = resolve_dtype(cfg.dtype, device)
    out = Path(out_dir)
    main = env.is_main
    raw = model
    existing = checkpoint_dirs(out)
    if existing and not resume:
        raise ScratchLLMError(
            f"{out}: already holds checkpoints (up to step {existing[-1][0]}); resume it (--resume) or choose another output directory"
        )
    latest = existing[-1][1] if (resume and existing) else None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
        # temporary directories left by a crash during a save (see checkpoint.atomic_directory)
        for stale in [*(out / "checkpoints").glob(".step-*"), *out.glob(".best.*"), *out.glob(".final.*")]:
            shutil.rmtree(stale, ignore_errors=True)

    model_cfg = getattr(raw, "config", None)
    seq_len = cfg.context_length or getattr(model_cfg, "context_length", None) or getattr(task, "context_length", None)
    if seq_len is None:
        raise ScratchLLMError("train config: context_length is not set and the model has no config.context_length")
    accum, accum_formula = derive_grad_accum(cfg, seq_len, env.world_size)

    # ---- model placement: weights first (resume), then DDP / FSDP, then compile
    raw.to(device)
    state: dict[str, Any] | None = None
    if latest is not None:
        state = torch.load(latest / TRAINER_FILE, map_location="cpu", weights_only=True)
        if state.get("world_size", 1) != env.world_size:
            raise ScratchLLMError(
                f"{latest}: written by {state.get('world_size')} process(es); resume with the same number (now {env.world_size})"
            )
        _load_weights(raw, latest)
    if not resume or latest is None:
        torch.manual_seed(cfg.seed + env.rank)  # dropout masks differ across processes, as they should
        random.seed(cfg.seed + env.rank)
    wrapper = _TaskModule(raw)
    runner: nn.Module = wrapper
    shadow = None  # FSDP: a full copy on rank 0 that checkpoints are written from
    if cfg.fsdp:
        runner, shadow = _shard(raw, wrapper, env, device)
    elif env.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        runner = DDP(wrapper, device_ids=[device.index] if device.type == "cuda" else None)
    train_runner = torch.compile(runner) if cfg.compile else runner
    optimizer = make_optimizer(raw, cfg, device, fused=False if cfg.fsdp else None)

    def on_model(fn):
        """Run fn(model) for evaluation/sampling; under FSDP through the root's forward (all-gathers)."""
        return runner(fn) if cfg.fsdp else fn(raw)

    # ---- state that checkpoints carry
    step, tokens, elapsed_before = 0, 0, 0.0
    best = None
    if state is not None:
        if cfg.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(runner, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state["optimizer"])
        step, tokens, best = state["step"], state["tokens"], state["best"]
        elapsed_before = state.get("elapsed_s", 0.0)
        task.load_state_dict(state["ranks"][env.rank]["task"])
    best_name = getattr(task, "best_metric", "val_loss")
    higher = bool(getattr(task, "higher_is_better", False))

    metrics_path = out / "metrics.jsonl"
    rows: list[dict[str, Any]] = []
    if main:
        rows = _read_metrics(metrics_path, step if state is not None else -1)
        tmp = metrics_path.with_name(f".{metrics_path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, metrics_path)

    # ---- the resolved configuration, printed and saved
    n_params = sum(p.numel() for p in raw.parameters())
    n_trainable = sum(p.numel() for p in raw.parameters() if p.requires_grad)
    flops_fn = getattr(raw, "flops_per_token", None)
    flops_per_token = float(flops_fn(seq_len)) if callable(flops_fn) else None
    peak, peak_source = peak_flops(device, amp_dtype)
    peak_total = peak * env.world_size
    decay, no_decay = weight_decay_groups(raw)
    derived = {
        "parameters": n_params,
        "trainable_parameters": n_trainable,
        "context_length": seq_len,
        "grad_accum": accum,
        "tokens_per_step": cfg.batch_size * seq_len * accum * env.world_size,
        "tokens_per_step_formula": accum_formula,
        "flops_per_token": flops_per_token,
        "flops_per_token_formula": "3 * (2 * matmul weights + 4 * n_layers * context_length * emb_dim)",
        "world_size": env.world_size,
        "device": str(device),
        "autocast_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
        "peak_flops": peak_total,
        "peak_flops_source": peak_source + (f" x {env.world_size} processes" if env.world_size > 1 else ""),
        "weight_decay_tensors": len(decay),
        "no_weight_decay_tensors": len(no_decay),
    }
    run_config = {
        "model": model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else None,
        "train": cfg.to_dict(),
        "derived": derived,
        **(extra_config or {}),
    }
    if state is not None:
        run_config["resumed_from_step"] = step
    if main:
        write_json(out / "run_config.json", run_config, default=str, ensure_ascii=True)
        _print_config(out, run_config, resumed_at=step if state is not None else None)

    # ---- helpers that use the loop's state

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    def quiet_rng():
        """Evaluation and samples must not move the training RNG: toggling them keeps the losses."""
        return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])

    def evaluate() -> dict[str, float]:
        raw.eval()
        with torch.no_grad(), autocast(), quiet_rng():
            result = on_model(task.evaluate)
        raw.train()
        return result

    def full_model() -> nn.Module:
        """The model with full weights, for save_pretrained (collective under FSDP)."""
        if shadow is None and not cfg.fsdp:
            return raw
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        sd = get_model_state_dict(runner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if shadow is not None:
            shadow.load_state_dict({k.removeprefix("model."): v for k, v in sd.items()}, strict=False)
        return shadow

    save_extra = dict(getattr(task, "save_extra", None) or {})

    def save_model_dir(target: Path, model_to_save: nn.Module, info: dict[str, Any]) -> None:
        save_model(model_to_save, target, tokenizer=tokenizer, extra={**save_extra, "training": info})

    def save_checkpoint(at_step: int, elapsed: float) -> Path | None:
        import torch.distributed as dist

        mine = {"task": task.state_dict(), "rng": _rng_state(device)}
        ranks = [mine]
        if env.world_size > 1:
            ranks = [None] * env.world_size
            dist.all_gather_object(ranks, mine)
        if cfg.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            optim_state = get_optimizer_state_dict(runner, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            optim_state = optimizer.state_dict()
        model_to_save = full_model()
        target = None
        if main:
            trainer = {
                "format": 1, "step": at_step, "tokens": tokens, "best": best, "elapsed_s": elapsed,
                "world_size": env.world_size, "optimizer": optim_state, "ranks": ranks, "train_config": cfg.to_dict(),
            }
            target = out / "checkpoints" / f"step-{at_step:07d}"
            info = {"step": at_step, "tokens": tokens}
            # The model directory and trainer.pt appear together: both are written into the temporary
            # directory that atomic_directory renames into place, so a crash leaves the old ones.
            save_model(model_to_save, target, tokenizer=tokenizer, extra={**save_extra, "training": info},
                       add_files=lambda tmp: torch.save(trainer, tmp / TRAINER_FILE))
            for _, old in checkpoint_dirs(out)[: -cfg.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        if env.world_size > 1:
            dist.barrier()
        return target

    def write_row(row: dict[str, Any]) -> None:
        rows.append(row)
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def show(message: str) -> None:
        if main:
            tqdm.write(message, file=sys.stderr)

    def do_sample(at_step: int) -> None:
        if not hasattr(task, "sample"):
            return
        raw.eval()
        with torch.no_grad(), autocast(), quiet_rng():
            text = on_model(task.sample)
        raw.train()
        if main and text:
            show(f"--- sample at step {at_step} ---\n{text}\n---")
            with open(out / "samples.txt", "a", encoding="utf-8") as f:
                f.write(f"--- step {at_step} ---\n{text}\n\n")

    def do_eval(at_step: int) -> dict[str, float]:
        nonlocal best
        result = evaluate()
        improved = best_name in result and (
            best is None or (result[best_name] > best if higher else result[best_name] < best)
        )
        if improved:
            best = result[best_name]
        if improved and at_step > 0:
            model_to_save = full_model()
            if main:
                save_model_dir(out / "best", model_to_save, {"step": at_step, "tokens": tokens, **result})
        if main and result:
            shown = " | ".join(f"{k} {v:.4f}" for k, v in result.items())
            show(f"step {at_step:>6} | {shown}{' (best)' if improved else ''}")
        return result

    # ---- training
    from tqdm.auto import tqdm

    raw.train()
    if state is not None:  # last, so that nothing above (model init, loaders) moves the restored RNG
        _set_rng_state(state["ranks"][env.rank]["rng"], device)
    start_step = step
    t_start = time.perf_counter()
    train_time = 0.0
    last = {"time": 0.0, "tokens": tokens}
    stopped = "max_steps"
    last_loss = None
    last_eval: dict[str, float] = {}
    saved_at = evaluated_at = -1
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=None if (cfg.progress and main) else True)
    try:
        with _Stop() as stop:
            if state is None and cfg.eval_every > 0:
                last_eval = do_eval(0)
                evaluated_at = 0
                if main and last_eval:
                    write_row({"step": 0, "tokens": 0, **last_eval})
            if state is None and cfg.sample_every > 0:
                do_sample(0)
            t_start = time.perf_counter()  # max_time and the time schedule count training, not the step-0 look
            while step < cfg.max_steps:
                t0 = time.perf_counter()
                if cfg.schedule == "time":
                    spent = (elapsed_before + time.perf_counter() - t_start) / cfg.max_time
                    lr = learning_rate(min(1.0, spent) * cfg.max_steps, cfg)
                else:
                    lr = learning_rate(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = torch.zeros((), device=device)
                step_tokens = 0
                for micro in range(accum):
                    batch = task.next_batch()
                    step_tokens += int(task.batch_tokens(batch))
                    # DDP all-reduces gradients in backward; skip that on all but the last micro-batch.
                    sync = micro == accum - 1 or not hasattr(runner, "no_sync")
                    with (contextlib.nullcontext() if sync else runner.no_sync()):
                        with autocast():
                            loss = train_runner(task.loss, batch)
                        (loss / accum).backward()
                    loss_sum += loss.detach().float()
                # One all-reduce carries the loss for logging, the tokens, and the votes to stop (a
                # signal, the time budget), so that every process stops after the same step.
                time_up = cfg.max_time is not None and elapsed_before + time.perf_counter() - t_start >= cfg.max_time
                summary = torch.tensor([0.0, step_tokens, 1.0 if stop.signum else 0.0, float(time_up)],
                                       dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
                summary[0] = loss_sum / accum
                if env.world_size > 1:
                    import torch.distributed as dist

                    dist.all_reduce(summary)
                    summary[0] /= env.world_size
                loss_value, step_tokens, stop_votes, time_votes = summary.tolist()
                if not math.isfinite(loss_value):
                    good = checkpoint_dirs(out)
                    where = f"the last good checkpoint is {good[-1][1]}" if good else "no checkpoint was written"
                    raise ScratchLLMError(
                        f"loss is {loss_value} at step {step + 1}; stopping ({where}); try a lower lr (now {lr:.3g}) or more warmup"
                    )
                grad_norm = None
                if cfg.grad_clip > 0:
                    norm = torch.nn.utils.clip_grad_norm_([p for p in raw.parameters() if p.requires_grad], cfg.grad_clip)
                    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens += int(step_tokens)
                last_loss = loss_value
                train_time += time.perf_counter() - t0
                bar.update(1)
                do_log = step % cfg.log_every == 0 or step == 1 or step == cfg.max_steps
                do_evaluate = cfg.eval_every > 0 and step % cfg.eval_every == 0
                if do_log or do_evaluate:
                    dt = train_time - last["time"]
                    tps = (tokens - last["tokens"]) / dt if dt > 0 else 0.0
                    last.update(time=train_time, tokens=tokens)
                    row = {
                        "step": step, "loss": loss_value, "lr": lr, "tokens": tokens, "tokens_per_s": round(tps, 1),
                        "mfu": round(flops_per_token * tps / peak_total, 5) if flops_per_token else None,
                        "grad_norm": grad_norm, "elapsed_s": round(elapsed_before + time.perf_counter() - t_start, 3),
                    }
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
                    if do_log and main:
                        mfu = f" | mfu {row['mfu']:.1%}" if row["mfu"] is not None else ""
                        show(f"step {step:>6}/{cfg.max_steps} | loss {loss_value:.4f} | lr {lr:.2e} | "
                             f"{tps:,.0f} tok/s{mfu} | {_fmt_count(tokens)} tokens")
                    if do_evaluate:
                        last_eval = do_eval(step)
                        evaluated_at = step
                        row.update(last_eval)
                        if main:
                            plot_losses(rows + [row], out / "loss.png")
                    if main:
                        write_row(row)
                if cfg.sample_every > 0 and step % cfg.sample_every == 0:
                    do_sample(step)
                if cfg.save_every > 0 and step % cfg.save_every == 0:
                    save_checkpoint(step, elapsed_before + time.perf_counter() - t_start)
                    saved_at = step
                if stop_votes > 0:
                    stopped = signal.Signals(stop.signum).name if stop.signum else "SIGTERM"
                    break
                if time_votes > 0 and step < cfg.max_steps:
                    stopped = "max_time"
                    break
            bar.close()
            elapsed = elapsed_before + time.perf_counter() - t_start
            finished = stopped in ("max_steps", "max_time")
            if finished and evaluated_at != step:
                last_eval = do_eval(step)
                if main and last_eval:
                    write_row({"step": step, "tokens": tokens, **last_eval})
            if main and rows:
                plot_losses(rows, out / "loss.png")
            if saved_at != step and (step > start_step or state is None):
                save_checkpoint(step, elapsed)
            if finished:
                model_to_save = full_model()
                if main:
                    save_model_dir(out / "final", model_to_save, {"step": step, "tokens": tokens, **last_eval})
                if cfg.sample_every > 0 and step % cfg.sample_every != 0:
                    do_sample(step)
    finally:
        bar.close()

    summary_out = {
        "run_dir": str(out),
        "rank": env.rank,
        "steps": step,
        "tokens": tokens,
        "loss": last_loss,
        "eval": last_eval,
        "best_metric": best_name,
        "best": best,
        "stopped": stopped,
        "exit_code": 128 + int(getattr(signal, stopped)) if stopped.startswith("SIG") else 0,
        "train_time_s": round(train_time, 3),
        "tokens_per_s": round((tokens - (state or {}).get("tokens", 0)) / train_time, 1) if train_time > 0 else None,
    }
    if main:
        verb = "stopped by " + stopped if stopped.startswith("SIG") else "finished"
        show(f"{verb} at step {step}: {_fmt_count(tokens)} tokens in {train_time:.1f} s of training; "
             f"run directory {out}" + (f" (resume with --resume {out})" if stopped.startswith("SIG") else ""))
    return summary_out


def _shard(raw: nn.Module, wrapper: nn.Module, env: DistInfo, device: torch.device):
    """FSDP2: shard every transformer block, then the root (embeddings, final norm, head).

    Returns (sharded root, full-precision copy on rank 0 for writing checkpoints). Each block's
    parameters are all-gathered just before its forward and freed after (ZeRO-3, Rajbhandari et al.
    2020); gradients are reduce-scattered so each process keeps the optimizer state of its shard.
    """
    if env.world_size < 2:
        raise ScratchLLMError("fsdp: needs several processes; launch with torchrun --nproc_per_node=N (N >= 2)")
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError:
            raise ScratchLLMError(f"fsdp: this PyTorch ({torch.__version__}) has no FSDP2 fully_shard; needs torch >= 2.4") from None
    import copy

    shadow = copy.deepcopy(raw).to("cpu") if env.is_main else None
    for block in getattr(raw, "blocks", []):
        fully_shard(block)
    fully_shard(wrapper)
    return wrapper, shadow


def _print_config(out: Path, run_config: dict[str, Any], resumed_at: int | None) -> None:
    d = run_config["derived"]
    lines = [f"run directory {out}" + (f" (resuming at step {resumed_at})" if resumed_at is not None else "")]
    if run_config.get("model"):
        lines.append("model   " + " ".join(f"{k}={v}" for k, v in run_config["model"].items()))
    lines.append("train   " + " ".join(f"{k}={v!r}" for k, v in run_config["train"].items()))
    lines.append(f"derived parameters {d['parameters']:,} (trainable {d['trainable_parameters']:,})")
    lines.append(f"        {d['tokens_per_step_formula']}")
    if d["flops_per_token"]:
        lines.append(f"        FLOPs/token = {d['flops_per_token_formula']} = {d['flops_per_token']:,.0f} "
                     f"(= {d['flops_per_token'] * d['tokens_per_step']:.3g} per step)")
    lines.append(f"        device {d['device']} x {d['world_size']}, autocast {d['autocast_dtype'] or 'off (float32)'}, "
                 f"peak {d['peak_flops'] / 1e9:,.0f} GFLOP/s ({d['peak_flops_source']})")
    print("\n".join(lines), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Pretraining from files, and the demo


def _resolve_tokenizer(spec):
    from scratchllm.tokenizer import Tokenizer

    if spec is None or isinstance(spec, Tokenizer):
        return spec or Tokenizer.gpt2()
    if str(spec) == "gpt2":
        return Tokenizer.gpt2()
    path = Path(spec)
    if path.is_dir():  # a model directory: its recorded tokenizer
        from scratchllm.checkpoint import load_tokenizer

        return load_tokenizer(path)
    if not path.is_file():
        raise ScratchLLMError(f"tokenizer {str(spec)!r}: expected 'gpt2', a tokenizer.json file or a model directory")
    return Tokenizer.load(path)


def _resolve_model_config(model, vocab_size: int, context_length: int | None):
    from scratchllm.config import GPTConfig, load_config

    overrides: dict[str, Any] = {"vocab_size": vocab_size}
    if context_length:
        overrides["context_length"] = context_length
    if isinstance(model, GPTConfig):
        return GPTConfig.from_dict({**model.to_dict(), **overrides})
    if isinstance(model, dict) and "preset" in model:  # a run file's [model] table: preset + changes
        rest = {k: v for k, v in model.items() if k != "preset"}
        return load_config(model["preset"], **{**rest, **overrides})
    return load_config(model, **overrides)


def pretrain(data: str | os.PathLike[str] | None = None, model: Any = None, out: str | os.PathLike[str] | None = None,
             tokenizer: Any = "gpt2", resume: bool | str = False, config_file: str | os.PathLike[str] | None = None,
             val_fraction: float = 0.1, objective: str | None = None, **train_flags: Any) -> dict[str, Any]:
    """Pretrain a GPT on a text file or prepared data directory; returns fit's summary.

    model: a preset name, a config.json path, a GPTConfig or a dict (vocab_size always comes from the
    tokenizer; train context_length, if set, replaces the model's). config_file: run.toml / .yaml /
    .json holding train config fields and optionally data, model, tokenizer, out; keyword arguments
    win over the file. resume=True (or a run directory) continues the newest checkpoint of `out`;
    settings not given again are taken from that run's run_config.json, the tokenizer from its
    checkpoint. objective: "lm" (next token, the default), "mlm" (a BERT-style encoder,
    `scratchllm.mlm.pretrain_mlm`) or "seq2seq" (an encoder-decoder on source<TAB>target pairs,
    `scratchllm.seq2seq.pretrain_seq2seq`); a resumed run keeps its own.
    """
    from scratchllm.data import load_corpus
    from scratchllm.model import GPT

    if isinstance(resume, (str, os.PathLike)):
        out = out or resume
        resume = True
    settings: dict[str, Any] = {}
    if config_file is not None:
        settings = read_run_file(config_file)
    data = data if data is not None else settings.pop("data", None)
    model = model if model is not None else settings.pop("model", None)
    out = out if out is not None else settings.pop("out", None)
    file_tokenizer = settings.pop("tokenizer", None)
    val_fraction = settings.pop("val_fraction", val_fraction)
    file_objective = settings.pop("objective", None)
    if out is None:
        raise ScratchLLMError("pretrain: an output run directory is required (--out RUNDIR)")
    out = Path(out)
    previous: dict[str, Any] = {}
    latest = checkpoint_dirs(out)[-1][1] if resume and checkpoint_dirs(out) else None
    if resume and (out / "run_config.json").is_file():
        previous = json.loads((out / "run_config.json").read_text(encoding="utf-8"))
    train_settings = {**previous.get("train", {}), **settings,
                      **{k: v for k, v in train_flags.items() if v is not None}}
    cfg = TrainConfig.from_dict(train_settings, source=str(config_file) if config_file else "pretrain")
    if latest is not None:
        from scratchllm.checkpoint import load_tokenizer

        tok = load_tokenizer(latest)  # ids must mean what they meant when the run started
    else:
        tok = _resolve_tokenizer(file_tokenizer if tokenizer == "gpt2" and file_tokenizer else tokenizer)
    if data is None:
        data = previous.get("data", {}).get("path")
    if model is None:
        model = previous.get("model")
    if data is None:
        raise ScratchLLMError("pretrain: training data is required (--data FILE.txt or DATADIR)")
    if model is None:
        raise ScratchLLMError("pretrain: a model is required (--model PRESET or config.json)")
    objective = objective or file_objective or previous.get("objective") or "lm"
    if objective == "mlm":
        from scratchllm.mlm import pretrain_mlm

        return pretrain_mlm(data, model, out, tok, cfg, resume=resume, val_fraction=val_fraction)
    if objective == "seq2seq":
        from scratchllm.seq2seq import pretrain_seq2seq

        return pretrain_seq2seq(data, model, out, tok, cfg, resume=resume, val_fraction=val_fraction)
    if objective != "lm":
        raise ScratchLLMError(f"pretrain: objective {objective!r}: expected lm, mlm or seq2seq")
    model_cfg = _resolve_model_config(model, tok.vocab_size, cfg.context_length)
    env, device = init_distributed(cfg.device)
    corpus = load_corpus(data, tok, val_fraction=val_fraction)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process (DDP also broadcasts them)
    net = GPT(model_cfg)
    task = PretrainTask(corpus, cfg.batch_size, model_cfg.context_length, seed=cfg.seed, rank=env.rank,
                        world_size=env.world_size, device=device, eval_batches=cfg.eval_batches, tokenizer=tok,
                        sample_prompt=cfg.sample_prompt, sample_tokens=cfg.sample_tokens)
    meta = dict(getattr(corpus, "meta", {}) or {})
    extra = {
        "data": {"path": str(Path(data).resolve()), "val_fraction": val_fraction, **meta,
                 "bytes_per_token": getattr(corpus, "bytes_per_token", None)},
        "tokenizer": {"vocab_size": tok.vocab_size, **{k: v for k, v in tok.spec.items() if k != "merges"}},
    }
    finished = False
    try:
        summary = fit(net, task, cfg, out, resume=resume, tokenizer=tok, extra_config=extra)
        finished = True
        return summary
    finally:
        if env.world_size > 1:
            import gc

            import torch.distributed as dist

            if dist.is_initialized():
                # Free the DDP/FSDP wrappers (their communication hooks hold the process group) before
                # destroying it: a group left to interpreter shutdown can abort the process there.
                del net, task
                gc.collect()
                if finished:
                    dist.barrier()  # only on success: after a failure the other ranks may be gone
                dist.destroy_process_group()


def demo_text() -> str:
    """The embedded demo corpus: the documentation topics that ship with Python (~465 kB)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def demo(out: str | os.PathLike[str] = "runs/demo", data: str | os.PathLike[str] | None = None, minutes: float = 3.0,
         device: str = "auto", vocab_size: int = 4096, n_layers: int = 4, emb_dim: int = 256, n_heads: int = 4,
         context_length: int = 128, batch_size: int = 16, lr: float = 2e-3, dtype: str = "auto",
         overwrite: bool = False, max_steps: int | None = None, prompt: str = "The") -> dict[str, Any]:
    """The whole pipeline on a built-in corpus, in a few minutes on a laptop CPU.

    Trains a byte-level BPE tokenizer on Python's own documentation (or `data`), keeps 90/10 for
    training/validation, pretrains a small GPT for `minutes` (or max_steps), prints the loss falling,
    samples before and after, and leaves a run directory that `scratchllm generate --model OUT` loads.
    """
    from scratchllm.config import GPTConfig
    from scratchllm.data import load_corpus
    from scratchllm.model import GPT
    from scratchllm.tokenizer import Tokenizer

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ScratchLLMError(f"{out}: already exists; pass --overwrite to replace it or choose another --out")
        if not (out / "run_config.json").is_file():
            raise ScratchLLMError(f"{out}: not a scratchllm run directory (no run_config.json); refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        text, source = demo_text(), "pydoc_data.topics (Python's documentation)"
    else:
        try:
            text, source = Path(data).read_text(encoding="utf-8"), str(data)
        except (OSError, UnicodeDecodeError) as exc:
            raise ScratchLLMError(f"{data}: cannot read as UTF-8 text ({exc})") from None
    corpus_path = out / "corpus.txt"  # kept so that --resume and the run record name the exact text
    corpus_path.write_text(text, encoding="utf-8")
    t = time.perf_counter()
    tok = Tokenizer.train([text], vocab_size)
    tok.save(out / "tokenizer.json")
    print(f"demo: trained a {tok.vocab_size:,}-token byte-level BPE tokenizer on {len(text.encode()):,} bytes of "
          f"{source} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    corpus = load_corpus(corpus_path, tok, val_fraction=0.1)
    print(f"demo: {len(corpus.train):,} training and {len(corpus.val):,} validation tokens "
          f"({corpus.bytes_per_token:.2f} bytes/token)", file=sys.stderr)
    dev = resolve_device(device)
    model_cfg = GPTConfig(vocab_size=tok.vocab_size, context_length=context_length, emb_dim=emb_dim,
                          n_layers=n_layers, n_heads=n_heads, drop_rate=0.1)
    probe = TrainConfig(batch_size=batch_size, device=device, dtype=dtype)
    schedule, expected = "steps", max_steps
    if max_steps is None:
        # A time budget: the learning-rate schedule follows the clock (schedule="time"), so it decays
        # fully even when the machine is busier than when we measured; the step estimate only spaces
        # the evaluations, and three times it caps a machine that turns out faster.
        step_s = _time_steps(GPT(model_cfg), corpus, probe, dev, context_length)
        expected = max(20, int(minutes * 60 * 0.85 / step_s))  # ~15% goes to evaluation and samples
        schedule, max_steps = "time", 3 * expected
        print(f"demo: {step_s * 1000:.0f} ms per step here -> about {expected} steps in {minutes:g} minute(s)",
              file=sys.stderr)
    cfg = TrainConfig(
        max_steps=max_steps, max_time=minutes * 60, schedule=schedule, batch_size=batch_size, lr=lr, min_lr=lr / 10,
        warmup_steps=min(100, max_steps // 10), eval_every=max(1, expected // 8), eval_batches=8,
        log_every=max(1, expected // 40), save_every=max(1, expected // 2), keep_last=1,
        sample_every=max_steps, sample_prompt=prompt, sample_tokens=80, device=device, dtype=dtype,
    )
    torch.manual_seed(cfg.seed)
    net = GPT(model_cfg)
    task = PretrainTask(corpus, cfg.batch_size, context_length, seed=cfg.seed, device=dev,
                        eval_batches=cfg.eval_batches, tokenizer=tok, sample_prompt=prompt, sample_tokens=80)
    extra = {"data": {"path": str(corpus_path.resolve()), "source": source, "val_fraction": 0.1,
                      **dict(getattr(corpus, "meta", {}) or {}), "bytes_per_token": corpus.bytes_per_token},
             "tokenizer": {"vocab_size": tok.vocab_size, "file": str((out / "tokenizer.json").resolve())}}
    summary = fit(net, task, cfg, out, tokenizer=tok, extra_config=extra)
    samples = (out / "samples.txt").read_text(encoding="utf-8") if (out / "samples.txt").is_file() else ""
    print(f"\ndemo: samples before and after training (prompt {prompt!r}):\n{samples}", file=sys.stderr)
    if (out / "loss.png").is_file():
        print(f"demo: loss curve {out / 'loss.png'}", file=sys.stderr)
    print(f"demo: try  scratchllm generate --model {out} --prompt {prompt!r}", file=sys.stderr)
    return summary


def _time_steps(model: nn.Module, corpus, cfg: TrainConfig, device: torch.device, context_length: int, n: int = 4) -> float:
    """Seconds per training step of `model` here: the fastest of n after one warm-up step (a busy
    machine slows some steps down; the fastest is the least disturbed)."""
    from scratchllm.data import RandomWindowLoader

    model.to(device).train()
    loader = RandomWindowLoader(corpus.train, cfg.batch_size, context_length, 0, device=device)
    optimizer = make_optimizer(model, cfg, device)
    amp = resolve_dtype(cfg.dtype, device)
    times = []
    for i in range(n + 1):
        t = time.perf_counter()
        x, y = loader.next_batch()
        with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            loss = model.loss(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    return min(times)
