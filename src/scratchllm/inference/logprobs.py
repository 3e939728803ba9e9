"""Log-probabilities of tokens under a causal language model, for everything that reports them: the
evaluation's scoring (evaluation/scoring.py) and the server's `logprobs` and `echo` (app.py, engine.py).

- `pick_logprobs`: log-softmax at the chosen ids and at the `top` most likely ones: the one place a
  log-probability is computed from logits.
- `target_logprobs`: log p(targets | prefix) at masked positions, one forward pass for a batch
  (lm-evaluation-harness's `loglikelihood`; the evaluation scores every task with it).
- `TokenLogprobs`: what one decoded row records: each generated token's log-probability and its top
  alternatives (`record_sampled`, called where the row is sampled), and with echo its prompt's
  (`score_prompt`).

Log-probabilities are the model's raw ones (log-softmax of its logits), not those of the distribution a
row samples from after temperature, top-k and top-p: what OpenAI's API and vLLM report, and what a
likelihood evaluation needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.models.gpt import GPT


def model_context_length(model: nn.Module) -> int:
    """Longest sequence the model takes: our config's context_length, or a Hugging Face config's."""
    config = getattr(model, "config", None)
    for name in ("context_length", "n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ScratchLLMError(f"model {type(model).__name__}: its config names no context length")


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters are (the CPU for a module without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def pick_logprobs(logits: torch.Tensor, chosen: torch.Tensor, top: int = 0,
                  limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (N, V), chosen ids (N,) -> (log p(chosen) (N,), the `top` largest log-probabilities
    (N, top) in descending order, their ids (N, top)). The softmax runs over all V ids (as the
    evaluation's scores do); the top ones are taken among ids below `limit` (a tokenizer's size, so that
    the rows of a padded head never show up)."""
    logits = logits.float()
    norm = torch.logsumexp(logits, dim=-1)  # (N,)
    picked = logits.gather(1, chosen[:, None]).squeeze(1) - norm  # (N,)
    values, ids = logits[:, :limit].topk(top, dim=-1) if top else (logits[:, :0], chosen.new_empty(len(chosen), 0))
    return picked, values - norm[:, None], ids


@torch.no_grad()
def target_logprobs(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(targets[b, t] | inputs[b, :t+1]) where mask is True, 0 elsewhere: (B, T) float32;
    and (B, T) bool, True where the target is also the model's most likely token.

    For our GPT the LM head runs only on the masked positions (a (B, T, V) logits tensor for a
    50,257-token vocabulary is the largest cost of a scoring pass); any other module is called
    as `model(inputs)` and may return logits or an object with `.logits` (Hugging Face).
    """
    if isinstance(model, GPT):
        h = model.hidden_states(inputs)  # (B, T, C)
        logits = model.logits(h[mask]).float()  # (N, V)
    else:
        out = model(inputs)
        logits = getattr(out, "logits", out)[mask].float()  # (N, V)
    wanted = targets[mask]  # (N,)
    picked, _, _ = pick_logprobs(logits, wanted)  # (N,)
    logprobs = torch.zeros(inputs.shape, dtype=torch.float32, device=inputs.device)
    logprobs[mask] = picked
    greedy = torch.zeros(inputs.shape, dtype=torch.bool, device=inputs.device)
    greedy[mask] = logits.argmax(-1) == wanted
    return logprobs, greedy


class TokenScore(NamedTuple):
    """One token of an answer with its log-probability and the `top` most likely tokens at its place,
    (id, log-probability) in descending order. A prompt's first token has neither (None): nothing
    predicts it."""

    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] | None


@dataclass(eq=False)
class TokenLogprobs:
    """The log-probabilities a row reports. top: alternatives per token (OpenAI's completions take
    0-5, chat 0-20); echo: the prompt's tokens are scored too (`score_prompt`, into `prompt`);
    generated: a TokenScore per token the row took (`record_sampled` offers it as `pending`,
    `RowState.accept` commits it when the token becomes part of the answer: a stop id does not)."""

    top: int = 0
    echo: bool = False
    prompt: list[TokenScore] | None = None
    generated: list[TokenScore] = field(default_factory=list)
    pending: TokenScore | None = None

    def commit(self, token: int) -> None:
        if self.pending is not None and self.pending.token == token:
            self.generated.append(self.pending)
        self.pending = None


def _scores(tokens: Sequence[int], picked: torch.Tensor, values: torch.Tensor, ids: torch.Tensor,
            tops: Sequence[int]) -> list[TokenScore]:
    picked, values, ids = picked.tolist(), values.tolist(), ids.tolist()
    return [TokenScore(t, p, tuple(zip(i[:k], v[:k]))) for t, p, v, i, k in zip(tokens, picked, values, ids, tops)]


def record_sampled(logits: torch.Tensor, tokens: Sequence[int], logs: Sequence[TokenLogprobs | None],
                   limit: int | None) -> None:
    """Offer each row that asks for log-probabilities (logs[b] not None) its sampled token's score,
    from the raw logits (B, V) it was sampled from."""
    rows = [b for b, log in enumerate(logs) if log is not None]
    if not rows:
        return
    index = torch.tensor(rows, device=logits.device)
    chosen = torch.tensor([tokens[b] for b in rows], device=logits.device)
    top = max(logs[b].top for b in rows)
    picked, values, ids = pick_logprobs(logits.index_select(0, index), chosen, top, limit)
    for b, score in zip(rows, _scores(chosen.tolist(), picked, values, ids, [logs[b].top for b in rows])):
        logs[b].pending = score


@torch.inference_mode()
def score_prompt(model: GPT, ids: Sequence[int], top: int, limit: int | None = None) -> list[TokenScore]:
    """Every token of a prompt (at most the context's length) scored given the ones before it, in one
    forward pass: its first token has no score (see TokenScore)."""
    weight = model.tok_emb.weight
    idx = torch.tensor([list(ids)], device=weight.device)  # (1, T)
    scored: list[TokenScore] = [TokenScore(int(ids[0]), None, None)]
    if len(ids) > 1:
        h = model.hidden_states(idx)  # (1, T, C)
        logits = model.logits(h[0, :-1])  # (T-1, V): position t predicts token t+1
        picked, values, top_ids = pick_logprobs(logits, idx[0, 1:], top, limit)
        scored += _scores(list(ids[1:]), picked, values, top_ids, [top] * (len(ids) - 1))
    return scored
