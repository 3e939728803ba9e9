"""Fill-mask: what a masked-language encoder predicts for the words hidden behind [MASK].

The encoder is a GPT with causal=False trained by `scratchllm pretrain --objective mlm`
(recipes/mlm.py); its tokenizer has the special token <|mask|> after the ordinary ids. Users type
[MASK] (BERT's spelling) or <|mask|>; each mask is predicted independently, as BERT does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.models.gpt import GPT
from scratchllm.tokenizer import Tokenizer

MASK_TOKEN = "<|mask|>"  # the special token, in the style of <|endoftext|>


USER_MASK = "[MASK]"  # what users type in fill-mask text (BERT's spelling); <|mask|> is accepted too



def with_mask_token(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` with <|mask|> appended after its ids (the same tokenizer if it has one already)."""
    return tokenizer.with_special_tokens(MASK_TOKEN)


def mask_token_id(tokenizer: Tokenizer, source: str = "the tokenizer") -> int:
    try:
        return tokenizer.special_tokens[MASK_TOKEN]
    except KeyError:
        raise ScratchLLMError(
            f"{source} has no {MASK_TOKEN} token (special tokens {sorted(tokenizer.special_tokens)}); "
            "train the model with `scratchllm pretrain --objective mlm`"
        ) from None



@dataclass
class Filler:
    token: str  # the predicted token's text, e.g. " cat" (GPT-2 tokens carry their leading space)
    probability: float
    text: str  # the input with this mask filled in (other masks left as [MASK])


_MASK_SPLIT = re.compile(r"(\[MASK\]|<\|mask\|>)")


def encode_with_masks(tokenizer: Tokenizer, text: str) -> tuple[list[int], list[int], list[str]]:
    """Ids of `text` with every [MASK] (or <|mask|>) as the mask id -> (ids, mask positions, text parts).

    A space just before a marker is left to the mask, since a byte-level BPE word token carries its
    leading space (" cat"), as it did in training; everything else is encoded as plain text."""
    mask_id = mask_token_id(tokenizer)
    parts = _MASK_SPLIT.split(text)  # text, marker, text, marker, ..., text
    ids: list[int] = []
    positions: list[int] = []
    for i, part in enumerate(parts):
        if i % 2:
            positions.append(len(ids))
            ids.append(mask_id)
            continue
        if i + 1 < len(parts) and part.endswith(" "):
            part = part[:-1]
        ids.extend(tokenizer.encode(part, disallowed_special=()))
    return ids, positions, parts


@torch.no_grad()
def fill_mask(model: GPT, tokenizer: Tokenizer, text: str, top_k: int = 5) -> list[list[Filler]]:
    """The `top_k` most likely tokens at each [MASK] of `text`, with their probabilities, one list per
    mask (each mask predicted independently, as BERT does). Special tokens are never offered."""
    if not isinstance(text, str) or not text.strip():
        raise ScratchLLMError("the text is empty; give a sentence with [MASK] in it")
    if not isinstance(top_k, int) or top_k < 1:
        raise ScratchLLMError(f"top_k {top_k!r}: expected an integer >= 1")
    if model.config.causal:
        raise ScratchLLMError(
            "the model is a causal decoder (config field 'causal' is true); it needs an encoder "
            "trained with `scratchllm pretrain --objective mlm`"
        )
    ids, positions, parts = encode_with_masks(tokenizer, text)
    if not positions:
        raise ScratchLLMError(f"the text has no {USER_MASK} marker: {text!r}")
    if len(ids) > model.config.context_length:
        raise ScratchLLMError(f"the text is {len(ids)} tokens, more than the model's context of "
                              f"{model.config.context_length}")
    device = model.tok_emb.weight.device
    was_training = model.training
    model.eval()
    logits = model(torch.tensor([ids], device=device))[0, positions].float()  # (M, V)
    model.train(was_training)
    logits = logits[:, : tokenizer.vocab_size]
    logits[:, sorted(tokenizer.special_tokens.values())] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    results = []
    for m, (values, indices) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
        fillers = []
        for p, token_id in zip(values, indices):
            token = tokenizer.decode([token_id])
            filled = []
            for i, part in enumerate(parts):
                if i % 2 == 0:
                    # the space left to a mask was encoded as part of it: drop it when filled
                    filled.append(part[:-1] if i + 1 == 2 * m + 1 and part.endswith(" ") else part)
                else:
                    filled.append(token if i == 2 * m + 1 else USER_MASK)
            fillers.append(Filler(token, p, "".join(filled)))
        results.append(fillers)
    return results


def format_fillers(results: list[list[Filler]]) -> str:
    lines = []
    for m, fillers in enumerate(results):
        if len(results) > 1:
            lines.append(f"{USER_MASK} {m + 1} of {len(results)}:")
        for f in fillers:
            word = f.token.strip()
            shown = word if word and word.isprintable() else repr(f.token)  # whitespace tokens as '\n'
            text = f.text.replace("\r", "\\r").replace("\n", "\\n")
            lines.append(f"{f.probability:.4f}  {shown:<16} {text}")
    return "\n".join(lines)

