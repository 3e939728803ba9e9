"""A pretrained GPT as a text classifier: the GPT body plus a linear head on one pooled hidden state.

The first of the two kinds of fine-tuning (Raschka, *Build a Large Language Model from Scratch*,
chapter 6; Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training",
section 3.2): keep the pretrained transformer, put a small linear head on the hidden state of one
token, and train on labelled texts with cross-entropy.

    texts -> encode (truncate to the context) -> right-pad with <|endoftext|> -> GPT body (B, T, C)
    -> pool the LAST REAL token (B, C) -> head (B, K) -> class logits

Why the last real token: in a causal model only the last position has attended to the whole text.
Padding goes on the right, so real tokens never attend to it and their hidden states do not depend
on how much padding the batch adds; the classifier reads position `length - 1`, never a pad token.
The recipe is `recipes/classify.py`; files are `checkpoint/kinds.py` (kind "classifier").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from scratchllm.core.console import warn
from scratchllm.errors import ScratchLLMError
from scratchllm.models.gpt import GPT
from scratchllm.models.lora import apply_lora, count_parameters
from scratchllm.tokenizer import Tokenizer

POOLINGS = ("last", "mean", "first")


TRAINABLE = ("head", "last-block", "all", "lora")



def encode_texts(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int, what: str = "texts"
) -> list[list[int]]:
    """Token ids of each text, cut to the first `max_length` tokens (with a warning counting them).

    Special-token text inside a message ("<|endoftext|>") is encoded as plain text: user data must
    not be able to inject control tokens. An empty text becomes the end-of-text token alone, so that
    every sequence has a last real token to read.
    """
    ids = tokenizer.encode_batch(list(texts), disallowed_special=())
    eot = tokenizer.eot_id
    truncated = sum(len(x) > max_length for x in ids)
    if truncated:
        longest = max(map(len, ids))
        warn(f"{what}: truncated {truncated} of {len(ids)} texts to {max_length} tokens (longest had {longest})")
    return [x[:max_length] if x else [eot] for x in ids]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to the longest with `pad_id` -> (idx (B, T), lengths (B,))."""
    width = max(map(len, seqs))
    idx = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for row, s in enumerate(seqs):
        idx[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    return idx.to(device), lengths.to(device)



@dataclass
class Prediction:
    label: str
    probability: float  # of `label`
    probabilities: dict[str, float] = field(default_factory=dict)  # of every class



class Classifier(nn.Module):
    """A GPT body plus `head = nn.Linear(emb_dim, num_classes)` on a pooled hidden state.

    pooling: "last" real token (the default for a causal model: the only position that has seen the
    whole text), "mean" over the real tokens, or "first" (for a bidirectional encoder's [CLS]-style
    token). The body's LM head is kept (it is tied to the embedding in GPT-2) but unused, so the body
    stays a complete GPT that every other tool can load.
    """

    def __init__(self, body: GPT, labels: Sequence[str], pooling: str = "last", tokenizer: Tokenizer | None = None,
                 max_length: int | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ScratchLLMError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ScratchLLMError(f"labels {list(labels)!r}: expected at least two distinct class names")
        self.body = body
        self.labels = [str(x) for x in labels]
        self.pooling = pooling
        self.tokenizer = tokenizer
        self.max_length = max_length  # tokens kept per text when predicting (as in training); None = context
        w = body.tok_emb.weight
        self.head = nn.Linear(body.config.emb_dim, len(self.labels), device=w.device, dtype=w.dtype)

    @property
    def config(self):
        return self.body.config

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def pool(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, C) of right-padded sequences with `lengths` (B,) -> (B, C)."""
        if self.pooling == "last":
            return h[torch.arange(h.shape[0], device=h.device), lengths - 1]  # (B, C)
        if self.pooling == "first":
            return h[:, 0]
        real = (torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None]).to(h.dtype)  # (B, T)
        return (h * real[..., None]).sum(1) / lengths[:, None].to(h.dtype)  # (B, C)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor | None = None, lm_loss: bool = False):
        """Right-padded ids (B, T) and their real lengths (B,) -> class logits (B, K).

        lm_loss=True also returns the next-token loss of the real tokens from the same hidden
        states, for language modelling as an auxiliary fine-tuning objective (Radford et al. 2018,
        section 3.2: it improves generalisation). A bidirectional body has no next-token loss.

        A causal body needs no attention mask: with padding on the right, a real token only ever
        attends to real tokens before it. A bidirectional encoder (config.causal False, e.g. from
        `pretrain --objective mlm`) would attend to the padding, so it gets a padding mask.
        """
        if lengths is None:
            lengths = torch.full((idx.shape[0],), idx.shape[1], dtype=torch.long, device=idx.device)
        mask = None
        if not self.config.causal and bool((lengths < idx.shape[1]).any()):
            mask = torch.arange(idx.shape[1], device=idx.device)[None, :] < lengths[:, None]  # (B, T)
        h = self.body.hidden_states(idx, attention_mask=mask)  # (B, T, C)
        logits = self.head(self.pool(h, lengths))  # (B, K)
        if not lm_loss:
            return logits
        # position t predicts idx[t + 1] while t + 1 is a real token; padding is never a target
        real = torch.arange(1, idx.shape[1], device=idx.device)[None, :] < lengths[:, None]  # (B, T-1)
        targets = idx[:, 1:].masked_fill(~real, -100)
        lm = self.body.head_loss(h[:, :-1].flatten(0, 1), targets.flatten(), impl="chunked")
        return logits, lm

    # ---- what trains ---------------------------------------------------------------------------

    def set_trainable(self, mode: str = "last-block", lora_rank: int = 8, lora_alpha: float = 16.0) -> tuple[int, int]:
        """Choose the parameters that train; returns (trainable, total) parameter counts.

        head: the new head only (a linear probe); last-block: the last transformer block, the final
        LayerNorm and the head (the book's choice: the top layers are the most task-specific);
        all: everything; lora: low-rank adapters on every block's linear layers plus the head
        (Hu et al. 2021, via scratchllm.lora).
        """
        if mode not in TRAINABLE:
            raise ScratchLLMError(f"trainable {mode!r}: expected one of {', '.join(TRAINABLE)}")
        body = self.body
        if mode == "lora":
            apply_lora(self, rank=lora_rank, alpha=lora_alpha, trainable=["head"], verbose=False)
        else:
            self.requires_grad_(mode == "all")
            if mode == "last-block":
                body.blocks[-1].requires_grad_(True)
                body.final_norm.requires_grad_(True)
            self.head.requires_grad_(True)
        if body.out_head.weight is not body.tok_emb.weight:
            body.out_head.requires_grad_(False)  # an untied LM head is not used by the classifier
        return count_parameters(self)

    # ---- what a plain GPT directory cannot hold ---------------------------------------------------

    def own_tensors(self) -> dict[str, torch.Tensor]:
        """What a plain GPT directory cannot hold: the head, and LoRA adapters while they are unmerged."""
        own = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        own.update({n: p for n, p in self.named_parameters() if n.endswith((".lora_A", ".lora_B"))})
        return {k: v.detach().to("cpu").contiguous() for k, v in own.items()}

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """The body's FLOPs per token without its LM head, plus the classifier head's (for MFU)."""
        c = self.config
        lm_head = 2 * c.emb_dim * c.vocab_size * (3 if training else 1)
        return self.body.flops_per_token(seq_len, training) - lm_head

    # ---- inference -------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, texts: Sequence[str] | str, batch_size: int = 32, max_length: int | None = None) -> list[Prediction]:
        """Label and probability of each text; texts are cut to `max_length` tokens (default: the
        length used in fine-tuning, else the context length)."""
        if self.tokenizer is None:
            raise ScratchLLMError("predict: the classifier has no tokenizer (pass one to Classifier(...))")
        if isinstance(texts, str):
            texts = [texts]
        limit = min(max_length or self.max_length or self.config.context_length, self.config.context_length)
        ids = encode_texts(self.tokenizer, texts, limit, "predict")
        probs = self.probabilities(ids, batch_size)
        out = []
        for p in probs.tolist():
            k = max(range(len(p)), key=p.__getitem__)
            out.append(Prediction(self.labels[k], p[k], dict(zip(self.labels, p))))
        return out

    @torch.no_grad()
    def probabilities(self, ids: Sequence[Sequence[int]], batch_size: int = 32) -> torch.Tensor:
        """Class probabilities (N, K) of encoded texts, batched by similar length (less padding)."""
        was_training = self.training
        self.eval()
        device = self.head.weight.device
        pad = self.tokenizer.eot_id if self.tokenizer is not None else 0
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        probs = torch.empty(len(ids), self.num_classes)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            idx, lengths = pad_batch([ids[i] for i in rows], pad, device)
            probs[rows] = torch.softmax(self(idx, lengths).float(), dim=-1).cpu()
        self.train(was_training)
        return probs

