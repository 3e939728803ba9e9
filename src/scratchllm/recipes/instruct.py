"""Instruction fine-tuning (`scratchllm finetune instruct`; Raschka's *LLMs from Scratch*, chapter 7).

    records (data/instructions.py) -> prompt style (prompts.py) -> prompt + response ids
    -> collate_instructions: <|endoftext|> appended, padded; targets shifted by one, -100 after the
       first end-of-text (and over the prompt with mask_prompt)
    -> InstructionTask on the shared loop (full weights or LoRA adapters)

The pieces both tuning recipes share (an epoch loader, the model preparation, the run's tail:
held-out records, LoRA merging) are here too; DPO is dpo.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scratchllm.checkpoint.adapter_dir import save_adapters
from scratchllm.checkpoint.loader import load, locate
from scratchllm.checkpoint.model_dir import RESERVED_KEYS, read_model_config, save_model
from scratchllm.core.console import log
from scratchllm.core.device import resolve_device
from scratchllm.core.files import write_json
from scratchllm.data.instructions import (encode_example, load_instruction_data, prompt_and_response,
                                          split_with_files)
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.generation import generate
from scratchllm.models.config import LoRAConfig
from scratchllm.models.lora import apply_lora, count_parameters, merge_lora
from scratchllm.models.loss import IGNORE_INDEX
from scratchllm.prompts import PromptStyle, choose_style, stored_style
from scratchllm.recipes.config import FinetuneConfig, InstructConfig
from scratchllm.training.config import TrainConfig
from scratchllm.training.loop import Task, fit

def collate_instructions(
    examples: Sequence[tuple[Sequence[int], int]],
    pad_id: int,
    mask_prompt: bool = False,
    max_length: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (B, T), from (ids, prompt_length) examples (the book's `custom_collate_fn`).

    Each example gets one end-of-text (`pad_id`) appended, which the model must learn to predict,
    and is right-padded with it to the longest example + 1; inputs drop the last position and
    targets the first. Targets after that first end-of-text are `ignore_index`; with `mask_prompt`
    the targets that predict prompt tokens are too, so only the response is learned. `max_length`
    truncates both to that many positions.
    """
    if not examples:
        raise ScratchLLMError("collate_instructions: empty batch")
    width = max(len(ids) for ids, _ in examples) + 1
    inputs, targets = [], []
    for ids, n_prompt in examples:
        padded = list(ids) + [pad_id] * (width - len(ids))  # at least one end-of-text
        x = torch.tensor(padded[:-1], dtype=torch.long)  # (T,)
        y = torch.tensor(padded[1:], dtype=torch.long)  # (T,) next tokens
        y[len(ids) :] = ignore_index  # keep the first end-of-text target (index len(ids) - 1), drop padding
        if mask_prompt:
            y[: max(n_prompt - 1, 0)] = ignore_index  # target i predicts token i + 1: prompt tokens 1..P-1
        if max_length is not None:
            x, y = x[:max_length], y[:max_length]
        inputs.append(x)
        targets.append(y)
    return torch.stack(inputs).to(device), torch.stack(targets).to(device)  # (B, T) each


def _token_weighted_loss(model, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    n = int((targets != IGNORE_INDEX).sum())
    return (model.loss(inputs, targets).item() * n if n else 0.0), n


class EpochLoader:
    """Example indices in seeded shuffled order, epoch after epoch, batch by batch (drop_last as the
    book's DataLoader, unless there are fewer examples than one batch). Its position is its state."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.batches_per_epoch = max(1, n // self.batch_size)
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def next_indices(self) -> list[int]:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        start = self.position * self.batch_size
        self.position += 1
        return self._order[start : start + self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
        self._order = self._permutation()


class InstructionTask(Task):
    """Next-token loss on prompt + response batches; `evaluate` gives the validation loss.

    Implements the task protocol of `scratchllm.train.fit` (next_batch, loss, batch_tokens,
    evaluate, state_dict, load_state_dict, sample).
    """

    best_metric = "val_loss"
    higher_is_better = False

    def __init__(
        self,
        train: Sequence[tuple[list[int], int]],
        val: Sequence[tuple[list[int], int]],
        pad_id: int,
        batch_size: int = 8,
        mask_prompt: bool = False,
        max_length: int | None = None,
        seed: int = 123,
        device: str | torch.device = "cpu",
        sample_prompts: Sequence[str] = (),
        tokenizer=None,
        stop: Sequence[str] = (),
    ):
        if not train:
            raise ScratchLLMError("instruction fine-tuning: the training split is empty")
        self.train, self.val = list(train), list(val)
        self.pad_id, self.mask_prompt, self.max_length = pad_id, mask_prompt, max_length
        self.device = torch.device(device)
        self.loader = EpochLoader(len(self.train), batch_size, seed)
        self.sample_prompts, self.tokenizer, self.stop = list(sample_prompts), tokenizer, list(stop)

    @property
    def steps_per_epoch(self) -> int:
        return self.loader.batches_per_epoch

    def collate(self, examples) -> tuple[torch.Tensor, torch.Tensor]:
        return collate_instructions(examples, self.pad_id, self.mask_prompt, self.max_length, device=self.device)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.collate([self.train[i] for i in self.loader.next_indices()])

    def loss(self, model, batch) -> torch.Tensor:
        inputs, targets = batch
        return model.loss(inputs, targets)

    def batch_tokens(self, batch) -> int:
        return batch[0].numel()

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """Mean loss over every target token of the validation split (NaN when it is empty)."""
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        size = self.loader.batch_size
        for start in range(0, len(self.val), size):
            loss, n = _token_weighted_loss(model, *self.collate(self.val[start : start + size]))
            total, count = total + loss, count + n
        model.train(was_training)
        return {"val_loss": total / count if count else float("nan")}

    def sample(self, model) -> str:
        if not self.sample_prompts or self.tokenizer is None:
            return ""
        prompt = self.sample_prompts[0]
        return prompt + generate(model, self.tokenizer, prompt, max_new_tokens=48, temperature=0.0, stop=self.stop or None)

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])



# --------------------------------------------------------------------------------------------------
# What both tuning recipes share


def check_counts(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ScratchLLMError(f"{name} must be an integer >= 1, got {value!r}")


def check_max_length(max_length: int | None, context_length: int) -> int:
    if max_length is None:
        return context_length
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 2 <= max_length <= context_length:
        raise ScratchLLMError(f"max_length must be an integer in [2, {context_length}] (the model's context), got {max_length!r}")
    return max_length


def train_config(cfg: FinetuneConfig, steps_per_epoch: int) -> TrainConfig:
    """Both recipes' TrainConfig: cfg.train with what it leaves to the data filled in (`epochs` passes
    unless max_steps is given, four validations per epoch), a checkpoint per epoch and a sample at the end."""
    # The book trains with a constant learning rate: min_lr = lr makes the cosine flat.
    train = cfg.train.derive(max_steps=cfg.epochs * steps_per_epoch, eval_every=max(1, steps_per_epoch // 4),
                             min_lr=cfg.train.lr)
    steps = train.max_steps
    return dataclasses.replace(train, eval_batches=0, log_every=max(1, min(10, steps // 20)),
                               save_every=steps_per_epoch, keep_last=1, sample_every=steps)


def finish_lora_run(out: Path, base_model: str) -> None:
    """After a LoRA run: best/ and final/ get merged plain weights (so every loader reads them) and
    out/adapter/ the adapters alone (adapter.safetensors + adapter_config.json)."""
    for name in ("final", "best"):
        d = out / name
        if not (d / "config.json").is_file():
            continue
        model, tokenizer = load(d, kind="gpt", merge=False, decode=False)
        data = read_model_config(d)
        config = getattr(model, "lora_config", None)
        if config is None:
            continue  # already merged (a resumed run that had finished)
        if name == "final":
            save_adapters(model, out / "adapter")
        info = {k: v for k, v in data.items() if k not in (*RESERVED_KEYS, "lora")}
        info["lora_merged"] = {"rank": config.rank, "alpha": config.alpha, "targets": config.targets,
                               "base_model": base_model}
        save_model(merge_lora(model), d, tokenizer, extra=info)


def prepare_model(cfg: FinetuneConfig, lora: bool = True):
    """(model, tokenizer, its config.json) of cfg.model, with LoRA applied when cfg.lora is set
    (and `lora`: DPO applies it after copying the reference)."""
    net, tokenizer = load(cfg.model, device="cpu", kind="gpt", decode=False)
    data = read_model_config(cfg.model) if locate(cfg.model)[0] == "scratchllm" else {}
    net.train().requires_grad_(True)
    if lora and cfg.lora is not None:
        apply_lora_config(net, cfg.lora, str(cfg.model))
    return net, tokenizer, data


def apply_lora_config(net, lora: LoRAConfig, base_model: str):
    """Adapters on `net` as the LoRA option group says (cfg.lora of a tuning recipe)."""
    return apply_lora(net, lora.rank, lora.alpha, list(lora.targets), lora.dropout, base_model=base_model)


def fit_recipe(net, task, tokenizer, style: PromptStyle, cfg: FinetuneConfig, splits: tuple[list, list, list],
               train_cfg: TrainConfig, extra: dict[str, Any], description: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """What both recipes do once their task is built: record the prompt style (and the LoRA
    settings) with every saved model, write the held-out records (test.json / val.json, for
    `respond`), train on the shared loop, and after a LoRA run leave merged weights in best/ and
    final/ and the adapters in adapter/. Returns (fit's summary, parameter counts and split sizes)."""
    train_records, val_records, test_records = splits
    model, out = str(cfg.model), Path(cfg.out)
    lora = getattr(net, "lora_config", None)
    task.save_extra = {"prompt_style": style.name}
    write_json(out / "test.json", test_records)
    write_json(out / "val.json", val_records)
    trainable, total = count_parameters(net)
    log(f"{description}, {train_cfg.max_steps} steps; trainable parameters {trainable:,} of {total:,}")
    sizes = {"train": len(train_records), "val": len(val_records), "test": len(test_records)}
    extra = {**extra, "base_model": model, "prompt_style": style.name, "splits": sizes,
             "lora": dataclasses.asdict(lora) if lora is not None else None}
    summary = fit(net, task, train_cfg, out, resume=cfg.resume, tokenizer=tokenizer, extra_config=extra)
    if lora is not None:
        finish_lora_run(out, model)
    return summary, {"trainable_parameters": trainable, "parameters": total, "splits": sizes}



# --------------------------------------------------------------------------------------------------
# The recipe


def finetune_instruct(cfg: InstructConfig) -> dict[str, Any]:
    """Supervised instruction fine-tuning (the book's ch. 7) of a model directory or hub name on the
    shared training loop; returns fit's summary plus the split sizes and parameter counts.

    The run directory gets test.json / val.json (the held-out records, for `respond`), and each saved
    model records its `prompt_style` (default: the base model's stored one, else its chat template, else
    alpaca). With `lora_rank`, only adapters train; best/ and final/ then
    hold merged weights and adapter/ the adapters alone.
    """
    check_counts(epochs=cfg.epochs)
    records = load_instruction_data(cfg.data)
    splits = split_with_files(records, cfg.val, cfg.test, cfg.train.seed, load_instruction_data)
    train_records, val_records, test_records = splits
    net, tokenizer, stored = prepare_model(cfg)
    style = choose_style(cfg.prompt_style, stored_style(stored), tokenizer, "alpaca")
    max_length = check_max_length(cfg.max_length, net.config.context_length)
    encode = lambda rs: [encode_example(tokenizer, style, r) for r in rs]  # noqa: E731
    task = InstructionTask(
        encode(train_records), encode(val_records), tokenizer.eot_id, cfg.train.batch_size, cfg.mask_prompt, max_length,
        cfg.train.seed, resolve_device(cfg.train.device), sample_prompts=[prompt_and_response(r, style)[0] for r in val_records[:1]],
        tokenizer=tokenizer, stop=style.stop_strings,
    )
    out = Path(cfg.out)
    summary, info = fit_recipe(
        net, task, tokenizer, style, cfg, splits, train_config(cfg, task.steps_per_epoch),
        {"recipe": "instruct", "data": str(cfg.data), "mask_prompt": cfg.mask_prompt, "max_length": max_length,
         "epochs": cfg.epochs},
        f"instruct: {len(train_records)} train / {len(val_records)} val / {len(test_records)} test records, "
        f"prompt style {style.name}, mask_prompt={cfg.mask_prompt}, {task.steps_per_epoch} steps per epoch",
    )
    return {**summary, **info, "test_file": str(out / "test.json")}
