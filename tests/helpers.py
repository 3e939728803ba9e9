"""Models the tests build: small and random (sharpened so that their output depends on the input), with
known logits (constant, or a bigram table), for the tests of generation and evaluation; and `run_cli`."""

from __future__ import annotations

import torch

from scratchllm.cli import main
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


def tiny_gpt(vocab_size: int, seed: int = 0, **overrides) -> GPT:
    """A 2-layer, 16-wide GPT with a 64-token context (unless `overrides` say otherwise), in eval mode."""
    fields = dict(vocab_size=vocab_size, context_length=64, emb_dim=16, n_layers=2, n_heads=2)
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**fields, **overrides})).eval()


def constant_logit_gpt(vocab_size: int, logits: torch.Tensor, **overrides) -> GPT:
    """A real GPT whose logits are `logits` (V,) at every position: the final LayerNorm outputs
    its bias b whatever its input (weight 0), and the untied head maps b to W b = logits."""
    model = tiny_gpt(vocab_size, tie_embeddings=False, **overrides)
    with torch.no_grad():
        model.final_norm.weight.zero_()
        model.final_norm.bias.zero_()
        model.final_norm.bias[0] = 1.0
        model.out_head.weight.zero_()
        model.out_head.weight[:, 0] = logits
    return model


class Bigram(torch.nn.Module):
    """logits[b, t] = table[idx[b, t]]: the next token depends on the current one only, so any
    off-by-one in which position scores which target changes the result."""

    def __init__(self, table: torch.Tensor, context_length: int = 32):
        super().__init__()
        self.table = torch.nn.Parameter(table)
        self.config = GPTConfig(vocab_size=table.shape[0], context_length=context_length, emb_dim=8,
                                n_layers=1, n_heads=1)

    def forward(self, idx):
        return self.table[idx]  # (B, T, V)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `scratchllm ARGV` run in this process."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def drawn_bars(ax) -> list[tuple[str, float]]:
    """The horizontal bars of a matplotlib Axes as (y tick label, width), top bar first: what a
    reader of the chart sees, read from the Figure rather than from the PNG."""
    labels = {round(y, 6): t.get_text() for y, t in zip(ax.get_yticks(), ax.get_yticklabels())}
    bars = sorted(ax.patches, key=lambda b: -(b.get_y() + b.get_height() / 2))
    return [(labels.get(round(b.get_y() + b.get_height() / 2, 6), ""), b.get_width()) for b in bars]
