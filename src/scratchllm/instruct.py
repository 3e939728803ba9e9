"""Instruction fine-tuning, preference tuning (DPO) and the evaluation of generated responses.

This sits after pretraining (or importing GPT-2) in the pipeline, following Raschka's *LLMs from
Scratch*, chapter 7, and its DPO appendix:

1. Data: Alpaca-style records {"instruction", "input", "output"} (Taori et al. 2023) or chat records
   {"messages": [{"role", "content"}, ...]}, laid out as text by a prompt style
   (`scratchllm.prompts`), tokenised into prompt + response ids.
2. Collation (`collate_instructions`): each example gets <|endoftext|> appended and is padded with
   it; targets are the inputs shifted by one; target positions after the first end-of-text are -100
   (ignored by the loss) and, with `mask_prompt`, so are the prompt's.
3. Training: `InstructionTask` and `PreferenceTask` plug these batches into the one shared loop
   (`scratchllm.train.fit`); `finetune_instruct` / `finetune_dpo` are the recipes behind
   `scratchllm finetune instruct|dpo`, optionally with LoRA adapters (`scratchllm.lora`).
4. Responses: `respond` generates an answer for each record of a test file (greedy by default).
5. Evaluation: `evaluate_responses` scores them with ROUGE-L F1 and exact match against the
   reference, and optionally with an LLM judge behind any OpenAI-compatible chat endpoint.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from scratchllm.errors import ScratchLLMError
from scratchllm.files import write_json
from scratchllm.prompts import PromptStyle, get_style

IGNORE_INDEX = -100  # targets with this id do not count in the loss (PyTorch's cross-entropy default)
ROLES = ("system", "user", "assistant")

# --------------------------------------------------------------------------------------------------
# Reading records


def read_records(path: str | os.PathLike[str]) -> list[Any]:
    """The records of a JSON list file or a JSONL file (one JSON object per line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScratchLLMError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScratchLLMError(f"{path}: cannot read ({exc})") from None
    stripped = text.strip()
    if not stripped:
        raise ScratchLLMError(f"{path}: empty file (expected a JSON list of records or JSONL)")
    if stripped.startswith("["):
        try:
            records = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ScratchLLMError(f"{path}: not valid JSON ({exc})") from None
    else:
        records = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ScratchLLMError(f"{path}: line {n} is not valid JSON ({exc})") from None
    if not isinstance(records, list):
        raise ScratchLLMError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    if not records:
        raise ScratchLLMError(f"{path}: no records")
    return records


def _check_string(record: dict, field_name: str, where: str, required: bool = True, non_empty: bool = False) -> None:
    if field_name not in record or record[field_name] is None:
        if required:
            raise ScratchLLMError(f"{where}: missing field {field_name!r}")
        return
    value = record[field_name]
    if not isinstance(value, str):
        raise ScratchLLMError(f"{where}: field {field_name!r} must be a string, got {type(value).__name__}")
    if non_empty and not value.strip():
        raise ScratchLLMError(f"{where}: field {field_name!r} is empty")


def _check_messages(record: dict, where: str, need_answer: bool) -> None:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ScratchLLMError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ScratchLLMError(
                f"{where}: field 'messages'[{j}] must be {{\"role\": system|user|assistant, \"content\": string}}, got {m!r}"
            )
    if need_answer and messages[-1]["role"] != "assistant":
        raise ScratchLLMError(f"{where}: field 'messages' must end with an assistant message (the answer to learn)")


def check_records(records: list[Any], source: str, responses: Sequence[str] = ("output",), need_answer: bool = True) -> list[dict]:
    """Raise ScratchLLMError naming the first bad record (by index) and field; return the records.

    A record is Alpaca-style (instruction, optional input, and each field of `responses`) or
    chat-style (messages, ending with the assistant answer when `need_answer`).
    """
    for i, record in enumerate(records):
        where = f"{source}: record {i}"
        if not isinstance(record, dict):
            raise ScratchLLMError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if "messages" in record:
            _check_messages(record, where, need_answer)
            continue
        _check_string(record, "instruction", where, non_empty=True)
        _check_string(record, "input", where, required=False)
        for name in responses:
            _check_string(record, name, where, required=need_answer)
    return records


def load_instruction_data(path: str | os.PathLike[str]) -> list[dict]:
    """Alpaca-style or chat records of a JSON/JSONL file, checked."""
    return check_records(read_records(path), str(path))


def load_preference_data(path: str | os.PathLike[str]) -> list[dict]:
    """{"instruction", "input", "chosen", "rejected"} records of a JSON/JSONL file, checked."""
    records = read_records(path)
    for i, record in enumerate(records):
        if isinstance(record, dict) and "messages" in record:
            raise ScratchLLMError(f"{path}: record {i}: preference records need instruction/chosen/rejected, not messages")
    return check_records(records, str(path), responses=("chosen", "rejected"))


def split_records(records: list, seed: int = 123, train: float = 0.85, test: float = 0.10) -> tuple[list, list, list]:
    """(train, val, test) after a seeded shuffle: 85% / 5% / 10% as in the book's chapter 7
    (train and test sizes rounded down, validation the rest: 935 / 55 / 110 of 1,100)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    shuffled = [records[i] for i in order]
    n_train, n_test = int(len(records) * train), int(len(records) * test)
    return shuffled[:n_train], shuffled[n_train + n_test :], shuffled[n_train : n_train + n_test]


# --------------------------------------------------------------------------------------------------
# Prompt + response -> token ids -> padded batches


def prompt_and_response(record: dict, style: PromptStyle, response: str = "output") -> tuple[str, str | None]:
    """The prompt text the model sees and the reference answer that follows it (None if absent).

    Chat records: every message but a final assistant one forms the prompt; that last message is
    the answer (only the final turn is learned).
    """
    if "messages" in record:
        messages = record["messages"]
        if messages and messages[-1]["role"] == "assistant":
            return style.format_chat(messages[:-1], add_generation_prompt=True), messages[-1]["content"]
        return style.format_chat(messages, add_generation_prompt=True), None
    return style.format_instruction(record["instruction"], record.get("input") or ""), record.get(response)


def encode_example(tokenizer, style: PromptStyle, record: dict, response: str = "output") -> tuple[list[int], int]:
    """(prompt + response ids, number of prompt ids). Prompt and response are encoded separately,
    the way `respond` encodes the prompt alone; special-token text in them stays plain text."""
    prompt, answer = prompt_and_response(record, style, response)
    prompt_ids = tokenizer.encode_ordinary(prompt)
    return prompt_ids + tokenizer.encode_ordinary(answer or ""), len(prompt_ids)


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


class _EpochLoader:
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


# --------------------------------------------------------------------------------------------------
# Supervised instruction fine-tuning as a task of the shared loop


class InstructionTask:
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
        self.loader = _EpochLoader(len(self.train), batch_size, seed)
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
        from scratchllm.generation import generate

        prompt = self.sample_prompts[0]
        return prompt + generate(model, self.tokenizer, prompt, max_new_tokens=48, temperature=0.0, stop=self.stop or None)

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])


# --------------------------------------------------------------------------------------------------
# Direct Preference Optimization


def sequence_logprobs(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's non-ignored targets: (B, T), (B, T) -> (B,)."""
    logits = model(inputs).float()  # (B, T, V)
    mask = targets != IGNORE_INDEX  # (B, T)
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    logp = picked - torch.logsumexp(logits, dim=-1)  # log softmax at the target ids
    return (logp * mask).sum(-1)  # (B,)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO loss (Rafailov et al. 2023, eq. 7) from summed response log-probs, each (B,).

    The implicit reward of a response is beta * (log pi(y|x) - log pi_ref(y|x)); the loss is
    -log sigmoid(reward_chosen - reward_rejected), averaged over the batch. Returns
    (loss, chosen rewards (B,), rejected rewards (B,)); rewards are detached, for logging.
    """
    chosen = policy_chosen - ref_chosen  # (B,)
    rejected = policy_rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, (beta * chosen).detach(), (beta * rejected).detach()


class PreferenceTask:
    """DPO on (prompt, chosen, rejected) examples against a frozen reference copy of the model.

    A batch holds the chosen and the rejected collations, each with the prompt masked so that
    only response tokens (and the end-of-text after them) count. `evaluate` reports the validation
    DPO loss, the mean reward margin, the preference accuracy (share of pairs whose chosen reward
    beats the rejected one; 0 before training, when policy == reference) and the log-prob accuracy
    (share where the policy alone gives the chosen response the higher summed log-probability).
    """

    best_metric = "val_loss"
    higher_is_better = False

    def __init__(
        self,
        reference,
        train: Sequence[tuple[tuple[list[int], int], tuple[list[int], int]]],
        val: Sequence[tuple[tuple[list[int], int], tuple[list[int], int]]],
        pad_id: int,
        beta: float = 0.1,
        batch_size: int = 8,
        max_length: int | None = None,
        seed: int = 123,
        device: str | torch.device = "cpu",
    ):
        if not train:
            raise ScratchLLMError("DPO: the training split is empty")
        if not isinstance(beta, (int, float)) or not beta > 0:
            raise ScratchLLMError(f"DPO: beta must be a number > 0, got {beta!r}")
        self.reference = reference.eval().requires_grad_(False)
        self.train, self.val = list(train), list(val)
        self.pad_id, self.beta, self.max_length = pad_id, float(beta), max_length
        self.device = torch.device(device)
        self.loader = _EpochLoader(len(self.train), batch_size, seed)

    @property
    def steps_per_epoch(self) -> int:
        return self.loader.batches_per_epoch

    def collate(self, pairs) -> dict[str, torch.Tensor]:
        chosen = collate_instructions([c for c, _ in pairs], self.pad_id, True, self.max_length, device=self.device)
        rejected = collate_instructions([r for _, r in pairs], self.pad_id, True, self.max_length, device=self.device)
        return {"chosen": chosen[0], "chosen_targets": chosen[1], "rejected": rejected[0], "rejected_targets": rejected[1]}

    def next_batch(self) -> dict[str, torch.Tensor]:
        return self.collate([self.train[i] for i in self.loader.next_indices()])

    def batch_tokens(self, batch) -> int:
        return batch["chosen"].numel() + batch["rejected"].numel()

    def _logprobs(self, model, batch) -> tuple[torch.Tensor, ...]:
        pc = sequence_logprobs(model, batch["chosen"], batch["chosen_targets"])
        pr = sequence_logprobs(model, batch["rejected"], batch["rejected_targets"])
        with torch.no_grad():
            rc = sequence_logprobs(self.reference, batch["chosen"], batch["chosen_targets"])
            rr = sequence_logprobs(self.reference, batch["rejected"], batch["rejected_targets"])
        return pc, pr, rc, rr

    def loss(self, model, batch) -> torch.Tensor:
        return dpo_loss(*self._logprobs(model, batch), beta=self.beta)[0]

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        losses, margins, chosen_r, rejected_r, logp_wins = [], [], [], [], []
        size = self.loader.batch_size
        for start in range(0, len(self.val), size):
            pairs = self.val[start : start + size]
            pc, pr, rc, rr = self._logprobs(model, self.collate(pairs))
            loss, c, r = dpo_loss(pc, pr, rc, rr, self.beta)
            losses.append(loss.item() * len(pairs))
            margins += (c - r).tolist()
            chosen_r += c.tolist()
            rejected_r += r.tolist()
            logp_wins += (pc > pr).tolist()
        model.train(was_training)
        n = len(margins)
        if not n:
            return {"val_loss": float("nan")}
        return {
            "val_loss": sum(losses) / n,
            "val_reward_margin": sum(margins) / n,
            "val_chosen_reward": sum(chosen_r) / n,
            "val_rejected_reward": sum(rejected_r) / n,
            "val_pref_accuracy": sum(m > 0 for m in margins) / n,
            "val_logp_accuracy": sum(logp_wins) / n,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])


# --------------------------------------------------------------------------------------------------
# Recipes: `scratchllm finetune instruct` and `scratchllm finetune dpo`


def _splits(records: list, val: str | None, test: str | None, seed: int, loader) -> tuple[list, list, list]:
    """(train, val, test): the book's seeded 85/5/10 split, or the given files for val / test with
    only the missing parts carved from `records`."""
    if val is None and test is None:
        return split_records(records, seed)
    val_records = loader(val) if val is not None else None
    test_records = loader(test) if test is not None else None
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    rest = [records[i] for i in order]
    n = len(records)
    if test_records is None:
        test_records, rest = rest[: int(n * 0.10)], rest[int(n * 0.10) :]
    if val_records is None:
        k = n - int(n * 0.85) - int(n * 0.10)  # the book's 5%
        val_records, rest = rest[:k], rest[k:]
    return rest, val_records, test_records


def _check_counts(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ScratchLLMError(f"{name} must be an integer >= 1, got {value!r}")


def _stored_style(data: dict[str, Any]) -> str | None:
    style = data.get("prompt_style")
    return style if isinstance(style, str) else None


def _check_max_length(max_length: int | None, context_length: int) -> int:
    if max_length is None:
        return context_length
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 2 <= max_length <= context_length:
        raise ScratchLLMError(f"max_length must be an integer in [2, {context_length}] (the model's context), got {max_length!r}")
    return max_length


def _train_config(steps_per_epoch: int, epochs: int, max_steps: int | None, batch_size: int, lr: float,
                  weight_decay: float, warmup_steps: int, seed: int, device: str, dtype: str, eval_every: int | None,
                  max_time: float | None, compile: bool) -> Any:
    """Both recipes' TrainConfig: `epochs` passes over the data unless max_steps is given."""
    from scratchllm.train import TrainConfig

    steps = max_steps or epochs * steps_per_epoch
    # The book trains with a constant learning rate: min_lr = lr makes the cosine flat.
    return TrainConfig(
        max_steps=steps, max_time=max_time, batch_size=batch_size, lr=lr, min_lr=lr, warmup_steps=warmup_steps,
        weight_decay=weight_decay, eval_every=eval_every if eval_every is not None else max(1, steps_per_epoch // 4),
        eval_batches=0, log_every=max(1, min(10, steps // 20)), save_every=steps_per_epoch, keep_last=1,
        sample_every=steps, seed=seed, device=device, dtype=dtype, compile=compile,
    )


def _finish_lora_run(out: Path, base_model: str) -> None:
    """After a LoRA run: best/ and final/ get merged plain weights (so every loader reads them) and
    out/adapter/ the adapters alone (adapter.safetensors + adapter_config.json)."""
    from scratchllm.checkpoint import save_pretrained
    from scratchllm.lora import load_model_with_adapters, merge_lora, save_adapters

    for name in ("final", "best"):
        d = out / name
        if not (d / "config.json").is_file():
            continue
        model, tokenizer, data = load_model_with_adapters(d, merge=False)
        config = getattr(model, "lora_config", None)
        if config is None:
            continue  # already merged (a resumed run that had finished)
        if name == "final":
            save_adapters(model, out / "adapter")
        info = {k: v for k, v in data.items() if k not in ("format", "version", "model", "tokenizer", "lora")}
        info["lora_merged"] = {"rank": config.rank, "alpha": config.alpha, "targets": config.targets,
                               "base_model": base_model}
        save_pretrained(merge_lora(model), d, tokenizer, extra=info)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _prepare_model(model: str, lora_rank: int | None, lora_alpha: float, lora_targets: Sequence[str],
                   lora_dropout: float):
    """(model, tokenizer, its config.json) with LoRA applied when lora_rank is set."""
    from scratchllm.lora import apply_lora, load_model_with_adapters

    net, tokenizer, data = load_model_with_adapters(model, device="cpu", merge=True)
    net.train().requires_grad_(True)
    if lora_rank:
        apply_lora(net, lora_rank, lora_alpha, list(lora_targets), lora_dropout, base_model=str(model))
    return net, tokenizer, data


def _fit_recipe(net, task, tokenizer, style: PromptStyle, model: str, out: Path, splits: tuple[list, list, list],
                cfg: Any, extra: dict[str, Any], resume: bool, description: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """What both recipes do once their task is built: record the prompt style (and the LoRA
    settings) with every saved model, write the held-out records (test.json / val.json, for
    `respond`), train on the shared loop, and after a LoRA run leave merged weights in best/ and
    final/ and the adapters in adapter/. Returns (fit's summary, parameter counts and split sizes)."""
    from scratchllm.lora import count_parameters
    from scratchllm.train import fit

    train_records, val_records, test_records = splits
    lora = getattr(net, "lora_config", None)
    task.save_extra = {"prompt_style": style.name}
    if lora is not None:
        task.save_extra["lora"] = asdict(lora)
    write_json(out / "test.json", test_records)
    write_json(out / "val.json", val_records)
    trainable, total = count_parameters(net)
    _log(f"{description}, {cfg.max_steps} steps; trainable parameters {trainable:,} of {total:,}")
    sizes = {"train": len(train_records), "val": len(val_records), "test": len(test_records)}
    extra = {**extra, "base_model": str(model), "prompt_style": style.name, "splits": sizes,
             "lora": task.save_extra.get("lora")}
    summary = fit(net, task, cfg, out, resume=resume, tokenizer=tokenizer, extra_config=extra)
    if lora is not None:
        _finish_lora_run(out, str(model))
    return summary, {"trainable_parameters": trainable, "parameters": total, "splits": sizes}


def finetune_instruct(
    model: str,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    prompt_style: str = "alpaca",
    mask_prompt: bool = False,
    lora_rank: int | None = None,
    lora_alpha: float = 16.0,
    lora_targets: Sequence[str] = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"),
    lora_dropout: float = 0.0,
    epochs: int = 2,
    batch_size: int = 8,
    lr: float = 5e-5,
    weight_decay: float = 0.1,
    warmup_steps: int = 0,
    max_length: int | None = None,
    seed: int = 123,
    val: str | os.PathLike[str] | None = None,
    test: str | os.PathLike[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    eval_every: int | None = None,
    max_steps: int | None = None,
    max_time: float | None = None,
    compile: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Supervised instruction fine-tuning (the book's ch. 7) of a model directory or GPT-2 name on the
    shared training loop; returns fit's summary plus the split sizes and parameter counts.

    The run directory gets test.json / val.json (the held-out records, for `respond`), and each saved
    model records its `prompt_style`. With `lora_rank`, only adapters train; best/ and final/ then
    hold merged weights and adapter/ the adapters alone.
    """
    from scratchllm.train import resolve_device

    _check_counts(epochs=epochs, batch_size=batch_size)
    style = get_style(prompt_style)
    records = load_instruction_data(data)
    splits = _splits(records, val, test, seed, load_instruction_data)
    train_records, val_records, test_records = splits
    net, tokenizer, _ = _prepare_model(model, lora_rank, lora_alpha, lora_targets, lora_dropout)
    max_length = _check_max_length(max_length, net.config.context_length)
    dev = resolve_device(device)
    encode = lambda rs: [encode_example(tokenizer, style, r) for r in rs]  # noqa: E731
    task = InstructionTask(
        encode(train_records), encode(val_records), tokenizer.eot_id, batch_size, mask_prompt, max_length, seed, dev,
        sample_prompts=[prompt_and_response(r, style)[0] for r in val_records[:1]], tokenizer=tokenizer,
        stop=style.stop_strings,
    )
    cfg = _train_config(task.steps_per_epoch, epochs, max_steps, batch_size, lr, weight_decay, warmup_steps, seed, device,
                        dtype, eval_every, max_time, compile)
    out = Path(out)
    summary, info = _fit_recipe(
        net, task, tokenizer, style, model, out, splits, cfg,
        {"recipe": "instruct", "data": str(data), "mask_prompt": mask_prompt, "max_length": max_length, "epochs": epochs},
        resume, f"instruct: {len(train_records)} train / {len(val_records)} val / {len(test_records)} test records, "
        f"prompt style {style.name}, mask_prompt={mask_prompt}, {task.steps_per_epoch} steps per epoch",
    )
    return {**summary, **info, "test_file": str(out / "test.json")}


def encode_preference(tokenizer, style: PromptStyle, record: dict) -> tuple[tuple[list[int], int], tuple[list[int], int]]:
    """((chosen ids, prompt length), (rejected ids, prompt length)) of a preference record."""
    return encode_example(tokenizer, style, record, "chosen"), encode_example(tokenizer, style, record, "rejected")


def finetune_dpo(
    model: str,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    beta: float = 0.1,
    prompt_style: str | None = None,
    lora_rank: int | None = None,
    lora_alpha: float = 16.0,
    lora_targets: Sequence[str] = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"),
    lora_dropout: float = 0.0,
    epochs: int = 1,
    batch_size: int = 8,
    lr: float = 5e-6,
    weight_decay: float = 0.01,
    warmup_steps: int = 0,
    max_length: int | None = None,
    seed: int = 123,
    val: str | os.PathLike[str] | None = None,
    test: str | os.PathLike[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    eval_every: int | None = None,
    max_steps: int | None = None,
    max_time: float | None = None,
    compile: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Direct Preference Optimization (Rafailov et al. 2023) of an (instruction-tuned) model on
    {"instruction", "input", "chosen", "rejected"} records, against a frozen copy of the starting
    model; returns fit's summary with the validation metrics before and after.

    The prompt style defaults to the one stored with the model (else alpaca). The book's DPO
    appendix uses lr 5e-6, beta 0.1 and one or two epochs.
    """
    from scratchllm.train import _read_metrics, resolve_device

    _check_counts(epochs=epochs, batch_size=batch_size)
    records = load_preference_data(data)
    splits = _splits(records, val, test, seed, load_preference_data)
    train_records, val_records, test_records = splits
    net, tokenizer, stored = _prepare_model(model, None, lora_alpha, lora_targets, lora_dropout)
    style = get_style(prompt_style or _stored_style(stored) or "alpaca")
    max_length = _check_max_length(max_length, net.config.context_length)
    dev = resolve_device(device)
    reference = copy.deepcopy(net).to(dev)  # pi_ref: the starting policy, frozen
    if lora_rank:
        from scratchllm.lora import apply_lora

        apply_lora(net, lora_rank, lora_alpha, list(lora_targets), lora_dropout, base_model=str(model))
    encode = lambda rs: [encode_preference(tokenizer, style, r) for r in rs]  # noqa: E731
    task = PreferenceTask(reference, encode(train_records), encode(val_records), tokenizer.eot_id, beta, batch_size,
                          max_length, seed, dev)
    cfg = _train_config(task.steps_per_epoch, epochs, max_steps, batch_size, lr, weight_decay, warmup_steps, seed, device,
                        dtype, eval_every, max_time, compile)
    cfg.sample_every = 0
    out = Path(out)
    summary, info = _fit_recipe(
        net, task, tokenizer, style, model, out, splits, cfg,
        {"recipe": "dpo", "data": str(data), "beta": beta, "max_length": max_length, "epochs": epochs},
        resume, f"dpo: {len(train_records)} train / {len(val_records)} val / {len(test_records)} test pairs, "
        f"beta {beta}, prompt style {style.name}",
    )
    rows = [row for row in _read_metrics(out / "metrics.jsonl", None) if "val_loss" in row]
    return {**summary, **info, "eval_before": rows[0] if rows else None, "eval_after": rows[-1] if rows else None}


# --------------------------------------------------------------------------------------------------
# Responses: `scratchllm respond`


def respond(
    model: Any,
    data: str | os.PathLike[str] | list[dict],
    out: str | os.PathLike[str] | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    batch_size: int = 8,
    seed: int = 123,
    prompt_style: str | None = None,
    device: str = "auto",
    dtype: str | None = None,
    limit: int | None = None,
    tokenizer=None,
    progress: bool = True,
) -> list[dict]:
    """Generate a response to each record; returns (and writes to `out`) the records with `model_response`.

    model: a model or run directory / GPT-2 name (adapters are merged in), or a loaded GPT with
    `tokenizer`. The prompt style is `prompt_style`, else the one stored with the model, else alpaca.
    Greedy by default (temperature 0); generation stops at <|endoftext|>, at the style's stop
    strings (the start of a next turn) or after max_new_tokens. Records go through in batches,
    sorted by prompt length so that little left padding is decoded.
    """
    from tqdm.auto import tqdm

    from scratchllm.generation import check_sampling, generate

    check_sampling(max_new_tokens, temperature, top_k, top_p)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScratchLLMError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    records = data if isinstance(data, list) else check_records(read_records(data), str(data), need_answer=False)
    if limit is not None:
        records = records[:limit]
    stored: dict[str, Any] = {}
    if isinstance(model, (str, os.PathLike)):
        from scratchllm.evaluate import resolve_device
        from scratchllm.lora import load_model_with_adapters

        model, tokenizer, stored = load_model_with_adapters(model, device=resolve_device(device), dtype=dtype)
    elif tokenizer is None:
        raise ScratchLLMError("respond: a model object was given without its tokenizer")
    style = get_style(prompt_style or _stored_style(stored) or "alpaca")
    prompts = [prompt_and_response(r, style)[0] for r in records]
    lengths = [len(tokenizer.encode_ordinary(p)) for p in prompts]
    order = sorted(range(len(records)), key=lambda i: lengths[i])
    answers: dict[int, str] = {}
    model.eval()
    bar = tqdm(total=len(records), desc="respond", unit="record", file=sys.stderr, disable=None if progress else True)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        texts = generate(model, tokenizer, [prompts[i] for i in chunk], max_new_tokens=max_new_tokens,
                         temperature=temperature, top_k=top_k, top_p=top_p, seed=seed + start,
                         stop=style.stop_strings or None)
        for i, text in zip(chunk, texts):
            answers[i] = text.strip()
        bar.update(len(chunk))
    bar.close()
    results = [{**record, "model_response": answers[i]} for i, record in enumerate(records)]
    if out is not None:
        write_json(out, results)
    return results


# --------------------------------------------------------------------------------------------------
# Scoring responses: ROUGE-L, exact match, LLM-as-judge


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, O(len a * len b))."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F1 (Lin 2004): with L = LCS of the lower-cased word sequences, recall = L / |ref|,
    precision = L / |candidate|, F1 = 2PR / (P + R). Two empty texts score 1, one empty text 0."""
    ref, cand = _words(reference), _words(candidate)
    if not ref and not cand:
        return 1.0
    lcs = lcs_length(ref, cand)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(reference: str, candidate: str) -> bool:
    """Same text after trimming and collapsing whitespace (case and punctuation count)."""
    return " ".join(reference.split()) == " ".join(candidate.split())


JUDGE_TEMPLATE = (
    "Given the input `{input}` and correct output `{output}`, score the model response `{response}`"
    " on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only."
)


def judge_prompt(record: dict) -> str:
    """The book's scoring prompt (ch. 7.8): the Alpaca-formatted instruction, the reference and the response."""
    if "messages" in record:
        prompt, reference = prompt_and_response(record, get_style("alpaca"))
        prompt = prompt.removesuffix("### Response:\n").rstrip()
    else:
        prompt = get_style("alpaca").format_instruction(record["instruction"], record.get("input") or "")
        prompt = prompt.removesuffix("\n\n### Response:\n")
        reference = record.get("output")
    return JUDGE_TEMPLATE.format(input=prompt, output=reference or "", response=record.get("model_response", ""))


_NUMBER = r"[-+]?\d+(?:\.\d+)?"


def parse_score(text: str | None) -> int | None:
    """The 0-100 score in a judge's answer, or None when there is none.

    Tolerates what chat models write around the number: "85", "Score: 85/100", "**72**",
    "I'd give it 90.", "8/10" (scaled to 80), "90 out of 100". A mention of the scale itself
    ("0 to 100") is skipped; the first remaining number counts. Out of [0, 100] -> None (rejected),
    since such an answer did not follow the scale.
    """
    if not isinstance(text, str):
        return None
    text = text.replace("*", "").replace("_", " ")
    text = re.sub(r"\b0\s*(?:to|-|–|and)\s*100\b", " ", text)  # "on a scale from 0 to 100"
    m = re.search(rf"({_NUMBER})\s*(?:/|out of)\s*(10|100)\b", text)
    if m:
        value = float(m.group(1)) * 100 / float(m.group(2))
    else:
        m = re.search(_NUMBER, text)
        if m is None:
            return None
        value = float(m.group(0))
    if not 0 <= value <= 100:
        return None
    return int(round(value))


def chat_endpoint(url: str) -> str:
    """{url}/v1/chat/completions, accepting a base URL with or without /v1 or the full path."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def query_judge(url: str, model: str, prompt: str, timeout: float = 120.0, api_key: str | None = None) -> str:
    """One user message to an OpenAI-compatible chat endpoint (Ollama, vLLM, `scratchllm serve`, ...);
    returns the answer's text. Greedy (temperature 0) so scores are repeatable."""
    body = json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "seed": 123,
        "stream": False,
    }).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    endpoint = chat_endpoint(url)
    request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise ScratchLLMError(f"judge {endpoint}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ScratchLLMError(f"judge {endpoint}: cannot connect ({getattr(exc, 'reason', exc)})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ScratchLLMError(f"judge {endpoint}: the answer is not JSON") from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ScratchLLMError(f"judge {endpoint}: expected choices[0].message.content in the answer, got {str(data)[:200]}") from None
    return content if isinstance(content, str) else ""


def load_responses(path: str | os.PathLike[str]) -> list[dict]:
    """Records with a `model_response` (what `respond` writes), checked."""
    records = read_records(path)
    check_records(records, str(path), need_answer=False)
    for i, record in enumerate(records):
        _check_string(record, "model_response", f"{path}: record {i}")
    return records


def _reference(record: dict) -> str | None:
    if "messages" in record:
        last = record["messages"][-1]
        return last["content"] if last["role"] == "assistant" else None
    return record.get("output")


def evaluate_responses(
    data: str | os.PathLike[str] | list[dict],
    judge_url: str | None = None,
    judge_model: str | None = None,
    out: str | os.PathLike[str] | None = None,
    timeout: float = 120.0,
    api_key: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Scores of the `model_response` of each record against its reference output.

    Always: mean ROUGE-L F1 and exact-match rate (records without a reference are skipped).
    With `judge_url` and `judge_model`: each response is scored 0-100 by the judge (`judge_prompt`,
    `parse_score`); the mean is over the parsed scores and unparsed answers are counted. The
    report (with per-record scores) is written to `out` when given.
    """
    records = load_responses(data) if not isinstance(data, list) else data
    if (judge_url is None) != (judge_model is None):
        raise ScratchLLMError("judge: give both --judge-url and --judge-model (or neither)")
    rows: list[dict[str, Any]] = []
    for record in records:
        reference = _reference(record)
        row: dict[str, Any] = {}
        if reference is not None:
            row["rouge_l"] = rouge_l(reference, record["model_response"])
            row["exact_match"] = exact_match(reference, record["model_response"])
        rows.append(row)
    scored = [r for r in rows if "rouge_l" in r]
    report: dict[str, Any] = {
        "n": len(records),
        "n_with_reference": len(scored),
        "rouge_l_f1": sum(r["rouge_l"] for r in scored) / len(scored) if scored else None,
        "exact_match": sum(r["exact_match"] for r in scored) / len(scored) if scored else None,
    }
    if judge_url is not None:
        from tqdm.auto import tqdm

        scores: list[int] = []
        for record, row in tqdm(list(zip(records, rows)), desc="judge", disable=not progress, file=sys.stderr):
            answer = query_judge(judge_url, judge_model, judge_prompt(record), timeout, api_key)
            row["judge_answer"], row["judge_score"] = answer, parse_score(answer)
            if row["judge_score"] is not None:
                scores.append(row["judge_score"])
        report["judge"] = {
            "model": judge_model,
            "url": judge_url,
            "mean_score": sum(scores) / len(scores) if scores else None,
            "n_scored": len(scores),
            "n_unparsed": len(records) - len(scores),
        }
    report["records"] = rows
    if out is not None:
        write_json(out, report)
    return report


def format_evaluation(report: dict[str, Any]) -> str:
    """The few lines `scratchllm evaluate responses` prints."""
    def pct(x):
        return "n/a" if x is None else f"{x:.4f}"

    lines = [f"responses          {report['n']} ({report['n_with_reference']} with a reference)",
             f"ROUGE-L F1         {pct(report['rouge_l_f1'])}",
             f"exact match        {pct(report['exact_match'])}"]
    judge = report.get("judge")
    if judge:
        mean = "n/a" if judge["mean_score"] is None else f"{judge['mean_score']:.2f}"
        lines.append(f"judge mean score   {mean} / 100 ({judge['model']}; {judge['n_scored']} scored, "
                     f"{judge['n_unparsed']} without a number)")
    return "\n".join(lines)
