"""Direct Preference Optimization (Rafailov et al. 2023; the book's DPO appendix), `scratchllm finetune dpo`.

A policy (an instruction-tuned model) learns to prefer the chosen response of each record over the
rejected one, relative to a frozen copy of itself: the loss is -log sigmoid(beta * (log-ratio of
chosen - log-ratio of rejected)), on response tokens only.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from scratchllm.core.device import resolve_device
from scratchllm.data.instructions import (
    encode_preference,
    load_preference_data,
    split_with_files,
)
from scratchllm.errors import ScratchLLMError
from scratchllm.models.loss import IGNORE_INDEX
from scratchllm.prompts import choose_style, stored_style
from scratchllm.recipes.config import DPOConfig
from scratchllm.recipes.instruct import (
    EpochLoader,
    apply_lora_config,
    check_counts,
    check_max_length,
    collate_instructions,
    fit_recipe,
    prepare_model,
    train_config,
)
from scratchllm.training.loop import Task
from scratchllm.training.run_dir import read_metrics


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


class PreferenceTask(Task):
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
        self.loader = EpochLoader(len(self.train), batch_size, seed)

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



def finetune_dpo(cfg: DPOConfig) -> dict[str, Any]:
    """Direct Preference Optimization (Rafailov et al. 2023) of an (instruction-tuned) model on
    {"instruction", "input", "chosen", "rejected"} records, against a frozen copy of the starting
    model; returns fit's summary with the validation metrics before and after.

    The prompt style defaults to the one stored with the model, else its chat template, else alpaca. The book's DPO
    appendix uses lr 5e-6, beta 0.1 and one or two epochs.
    """
    check_counts(epochs=cfg.epochs)
    records = load_preference_data(cfg.data)
    splits = split_with_files(records, cfg.val, cfg.test, cfg.train.seed, load_preference_data)
    train_records, val_records, test_records = splits
    net, tokenizer, stored = prepare_model(cfg, lora=False)
    style = choose_style(cfg.prompt_style, stored_style(stored), tokenizer, "alpaca")
    max_length = check_max_length(cfg.max_length, net.config.context_length)
    dev = resolve_device(cfg.train.device)
    reference = copy.deepcopy(net).to(dev)  # pi_ref: the starting policy, frozen
    if cfg.lora is not None:
        apply_lora_config(net, cfg.lora, str(cfg.model))
    encode = lambda rs: [encode_preference(tokenizer, style, r) for r in rs]  # noqa: E731
    task = PreferenceTask(reference, encode(train_records), encode(val_records), tokenizer.eot_id, cfg.beta,
                          cfg.train.batch_size, max_length, cfg.train.seed, dev)
    train_cfg = dataclasses.replace(train_config(cfg, task.steps_per_epoch), sample_every=0)
    summary, info = fit_recipe(
        net, task, tokenizer, style, cfg, splits, train_cfg,
        {"recipe": "dpo", "data": str(cfg.data), "beta": cfg.beta, "max_length": max_length, "epochs": cfg.epochs},
        f"dpo: {len(train_records)} train / {len(val_records)} val / {len(test_records)} test pairs, "
        f"beta {cfg.beta}, prompt style {style.name}",
    )
    rows = [row for row in read_metrics(Path(cfg.out) / "metrics.jsonl", None) if "val_loss" in row]
    return {**summary, **info, "eval_before": rows[0] if rows else None, "eval_after": rows[-1] if rows else None}
