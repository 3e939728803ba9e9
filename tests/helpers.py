"""Models the tests build: small, random, and sharpened so that their output depends on the input."""

from __future__ import annotations

import torch

from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT


def sharpened_gpt(vocab_size: int, seed: int = 0, sharpen: float = 10.0, **fields) -> GPT:
    """A random GPT (gpt-tiny unless `fields` say otherwise) in eval mode. At GPT-2's init scale an
    untrained model ignores its context (greedy repeats one token), so the weight matrices are scaled
    up: every token then depends on the whole window, and a wrong prompt layout, a stale cache entry
    or a dropped message changes the output."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=vocab_size, **fields)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(sharpen)
    return model
