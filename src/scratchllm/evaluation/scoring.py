"""Scoring continuations: log p(continuation | context) summed over its tokens, as lm-evaluation-harness
scores `loglikelihood` requests, for any causal language model.

Every evaluation task rests on these functions: `encode_request` splits a context and its
continuations into ids the way the harness's `hf` model does, and `score_rows` scores many (context,
continuation) rows in one right-padded forward pass with `target_logprobs`, the log-softmax at the
scored positions only, which lives with the server's log-probabilities (inference/logprobs.py) so
that `scratchllm serve`'s `echo` + `logprobs` and these scores are one computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.inference.logprobs import model_context_length, model_device, target_logprobs
from scratchllm.tokenizer import Tokenizer


@torch.no_grad()
def score_rows(model: nn.Module, rows: Sequence[tuple[Sequence[int], Sequence[int]]],
               max_length: int | None = None) -> list[dict[str, Any]]:
    """Score each (context, continuation) row, all in one batched forward pass.

    Each sequence context + continuation is left-truncated to max_length + 1 tokens (the model
    reads max_length inputs to predict as many targets), as lm-evaluation-harness does, and right-
    padded; causal attention means padding never changes the scored positions. Returns, per row:
    `logprob` (sum over the continuation's tokens), `tokens` (how many were scored), `greedy` (every
    token was the argmax) and `truncated`.
    """
    max_length = max_length or model_context_length(model)
    fulls, spans, truncated = [], [], []
    for context, continuation in rows:
        if len(context) == 0:
            raise ScratchLLMError("context: expected at least one token (use the end-of-text token for none)")
        if len(continuation) == 0:
            raise ScratchLLMError("continuation: expected at least one token, got an empty one")
        full = np.concatenate([np.asarray(context, dtype=np.int64), np.asarray(continuation, dtype=np.int64)])
        truncated.append(len(full) > max_length + 1)
        full = full[-(max_length + 1):]
        fulls.append(full)
        spans.append(min(len(continuation), len(full) - 1))
    T = max(len(f) for f in fulls) - 1
    inputs = torch.zeros(len(fulls), T, dtype=torch.long)
    targets = torch.zeros(len(fulls), T, dtype=torch.long)
    mask = torch.zeros(len(fulls), T, dtype=torch.bool)
    for b, (full, n) in enumerate(zip(fulls, spans)):
        L = len(full) - 1
        inputs[b, :L] = torch.from_numpy(full[:-1])
        targets[b, :L] = torch.from_numpy(full[1:])
        mask[b, L - n:L] = True  # the continuation's tokens are the last n targets
    device = model_device(model)
    inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
    lp, greedy = target_logprobs(model, inputs, targets, mask)  # (B, T) each
    lp, hit = lp.cpu(), (greedy | ~mask).all(dim=1).cpu()
    return [
        {"logprob": float(lp[b].sum(dtype=torch.float64)), "tokens": spans[b], "greedy": bool(hit[b]),
         "truncated": truncated[b]}
        for b in range(len(fulls))
    ]


def continuation_logprobs(model: nn.Module, context: Sequence[int], continuations: Sequence[Sequence[int]],
                          max_length: int | None = None) -> list[dict[str, Any]]:
    """Score each continuation of one context, all in one batched forward pass (`score_rows`)."""
    if len(context) == 0:
        raise ScratchLLMError("context: expected at least one token (use the end-of-text token for none)")
    return score_rows(model, [(context, c) for c in continuations], max_length)


def encode_request(tokenizer: Tokenizer, context: str, continuations: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """Context ids and continuation ids, split the way lm-evaluation-harness's `hf` model splits them.

    GPT-2's pre-tokenizer attaches whitespace to the word after it, so trailing whitespace of the
    context moves to the front of each continuation; each continuation's ids are then the ids of
    context + continuation after the context's own ids. The context starts with the tokenizer's BOS
    where it has one (Llama 3, as the harness's `tokenizer(context)` does); an empty context is the
    tokenizer's `document_start` (GPT-2: end-of-text, its "start of document").
    """
    stripped = context.rstrip()
    moved = context[len(stripped):]
    ctx = tokenizer.encode(stripped, disallowed_special=()) if stripped else []
    conts = []
    for c in continuations:
        whole = tokenizer.encode(stripped + moved + c, disallowed_special=())
        # (If a merge swallowed the whole choice into the context's last token, encode it alone.)
        conts.append(whole[len(ctx):] or tokenizer.encode(moved + c, disallowed_special=()))
    if ctx and tokenizer.bos_ids:
        ctx = list(tokenizer.bos_ids) + ctx
    return ctx or tokenizer.document_start, conts


def loglikelihood(model: nn.Module, tokenizer: Tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) in nats, tokenized as `evaluate choice` does."""
    ctx, conts = encode_request(tokenizer, context, [continuation])
    return continuation_logprobs(model, ctx, conts)[0]["logprob"]
