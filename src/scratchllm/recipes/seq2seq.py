"""Training an encoder-decoder on `source<TAB>target` pairs (`scratchllm pretrain --objective seq2seq`).

The model and its decoding are models/encoder_decoder.py; here: reading and encoding pairs,
`Seq2SeqTask` (teacher-forced cross-entropy, validation loss and exact match, as a task of the
shared loop) and `pretrain_seq2seq`.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scratchllm.checkpoint.loader import read_config
from scratchllm.core.console import warn
from scratchllm.core.device import resolve_device
from scratchllm.core.files import read_text
from scratchllm.data.loaders import SequentialLoader
from scratchllm.errors import ScratchLLMError
from scratchllm.models.encoder_decoder import IGNORE_INDEX, EncoderDecoder, greedy_decode, pad_sources
from scratchllm.models.size import TRAINING_BYTES_PER_PARAMETER, check_fits
from scratchllm.recipes.config import PretrainConfig
from scratchllm.tokenizer import Tokenizer
from scratchllm.training.loop import Task, fit

OBJECTIVE = "seq2seq"


def load_pairs(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """`source<TAB>target` lines of a UTF-8 file (blank lines skipped) -> [(source, target), ...]."""
    path = Path(path)
    if not path.is_file():
        raise ScratchLLMError(f"{path}: no such pairs file (expected source<TAB>target lines)")
    text = read_text(path)
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ScratchLLMError(f"{path}:{number}: expected source<TAB>target (2 tab-separated fields), "
                                  f"got {len(fields)} field(s)")
        source, target = fields
        if not source.strip() or not target.strip():
            raise ScratchLLMError(f"{path}:{number}: empty {'source' if not source.strip() else 'target'}")
        pairs.append((source, target))
    if not pairs:
        raise ScratchLLMError(f"{path}: no source<TAB>target pairs in the file")
    return pairs


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], context_length: int,
                 what: str = "pairs") -> list[tuple[list[int], list[int]]]:
    """[(source ids, target ids + end-of-text)], cut to fit: sources to context_length tokens, targets
    to context_length (the decoder reads end-of-text + target[:-1]). Special-token text is plain text."""
    eot = tokenizer.eot_id
    sources = tokenizer.encode_batch([s for s, _ in pairs], disallowed_special=())
    targets = tokenizer.encode_batch([t for _, t in pairs], disallowed_special=())
    out, cut = [], 0
    for s, t in zip(sources, targets):
        t = t + [eot]
        cut += len(s) > context_length or len(t) > context_length
        out.append((s[:context_length], t[:context_length]))
    if cut:
        warn(f"{what}: cut {cut} of {len(out)} pairs to the context length {context_length} "
             "(a cut target loses its end-of-text)")
    return out


def collate_pairs(items: Sequence[tuple[Sequence[int], Sequence[int]]], bos_id: int, pad_id: int,
                  device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source, target + eot) pairs -> src (B, S), src_mask (B, S), tgt_in (B, T), tgt_out (B, T).

    tgt_in = [bos] + target (teacher forcing), tgt_out = target + eot, padded with -100; right
    padding needs no decoder mask, since a causal query never sees the positions after it."""
    src, src_mask = pad_sources([s for s, _ in items], pad_id, device)
    width = max(len(t) for _, t in items)
    tgt_in = torch.full((len(items), width), pad_id, dtype=torch.long)
    tgt_out = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    for row, (_, t) in enumerate(items):
        tgt_in[row, : len(t)] = torch.as_tensor([bos_id, *t[:-1]], dtype=torch.long)
        tgt_out[row, : len(t)] = torch.as_tensor(t, dtype=torch.long)
    return src, src_mask, tgt_in.to(device), tgt_out.to(device)


def split_pairs(pairs: Sequence[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded shuffle cut into (train, validation); at least one validation pair when val_fraction > 0."""
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ScratchLLMError(f"val_fraction {val_fraction!r}: expected a number in [0, 1)")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(pairs) * val_fraction)) if val_fraction > 0 else 0
    if len(pairs) - n_val < 1:
        raise ScratchLLMError(f"{len(pairs)} pair(s): too few to keep {n_val} for validation and train on the rest")
    return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]



class Seq2SeqTask(Task):
    """Translation pairs as a `scratchllm.train.fit` task: teacher-forced cross-entropy on the targets.

    Batches come from `data.SequentialLoader` (a seeded permutation per epoch, exact resume).
    Evaluation: val_loss and val_ppl over up to eval_batches validation batches, and val_exact_match,
    the share of the first `exact_match_pairs` validation pairs whose greedy output equals the target.
    """

    best_metric = "val_loss"
    higher_is_better = False

    def __init__(self, train_pairs: list[tuple[list[int], list[int]]], val_pairs: list[tuple[list[int], list[int]]],
                 batch_size: int, tokenizer: Tokenizer, seed: int = 1337, device: Any = "cpu",
                 eval_batches: int = 20, exact_match_pairs: int = 100):
        if not train_pairs:
            raise ScratchLLMError("seq2seq: the training split is empty")
        self.train_pairs, self.val_pairs = train_pairs, val_pairs
        self.batch_size, self.tokenizer, self.device = batch_size, tokenizer, torch.device(device)
        self.eot = tokenizer.eot_id
        self.eval_batches, self.exact_match_pairs = eval_batches, exact_match_pairs
        self.loader = SequentialLoader(train_pairs, batch_size, shuffle=True, seed=seed, device=self.device,
                                       collate_fn=lambda items: collate_pairs(items, self.eot, self.eot))
        self._it = iter(self.loader)
        self.save_extra = {"objective": OBJECTIVE}

    def next_batch(self):
        try:
            return next(self._it)
        except StopIteration:  # end of an epoch: the loader has moved to the next permutation
            self._it = iter(self.loader)
            return next(self._it)

    def loss(self, model: EncoderDecoder, batch) -> torch.Tensor:
        src, src_mask, tgt_in, tgt_out = batch
        return model.loss(src, tgt_in, tgt_out, src_mask)

    def batch_tokens(self, batch) -> int:
        return int((batch[3] != IGNORE_INDEX).sum())

    def evaluate(self, model: EncoderDecoder) -> dict[str, float]:
        if not self.val_pairs:
            return {}
        loss_sum, n = 0.0, 0
        limit = len(self.val_pairs) if not self.eval_batches else self.eval_batches * self.batch_size
        for start in range(0, min(limit, len(self.val_pairs)), self.batch_size):
            src, src_mask, tgt_in, tgt_out = collate_pairs(self.val_pairs[start : start + self.batch_size],
                                                           self.eot, self.eot, self.device)
            tokens = int((tgt_out != IGNORE_INDEX).sum())
            loss_sum += float(model.loss(src, tgt_in, tgt_out, src_mask)) * tokens
            n += tokens
        loss = loss_sum / n
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_exact_match": self.exact_match(model)}

    def exact_match(self, model: EncoderDecoder) -> float:
        pairs = self.val_pairs[: self.exact_match_pairs]
        if not pairs:
            return float("nan")
        return exact_match(model, pairs, self.eot, self.batch_size)

    def sample(self, model: EncoderDecoder) -> str:
        if not self.val_pairs:
            return ""
        source, target = self.val_pairs[0]
        out = greedy_decode(model, [source], self.eot, min(len(target) + 8, model.config.context_length - 1))[0]
        dec = self.tokenizer.decode
        return f"source    {dec(source)!r}\noutput    {dec(out)!r}\nreference {dec(target[:-1])!r}"

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])
        self._it = iter(self.loader)


@torch.no_grad()
def exact_match(model: EncoderDecoder, pairs: Sequence[tuple[list[int], list[int]]], eot_id: int,
                batch_size: int = 64) -> float:
    """Share of (source, target + eot) pairs whose greedy output is exactly the target."""
    was_training = model.training
    model.eval()
    hits = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        longest = max(len(t) for _, t in chunk)
        outs = greedy_decode(model, [s for s, _ in chunk], eot_id, min(longest + 4, model.config.context_length - 1))
        hits += sum(out == t[:-1] for out, (_, t) in zip(outs, chunk))
    model.train(was_training)
    return hits / len(pairs)


def pretrain_seq2seq(run: PretrainConfig, tokenizer: Tokenizer, resume: bool = False) -> dict[str, Any]:
    """Train an encoder-decoder on a `source<TAB>target` file; what `pretrain` runs for objective
    "seq2seq" once it has resolved the run's settings. run.model: a preset, config.json, dict or
    GPTConfig (vocab_size comes from the tokenizer). A seeded run.val_fraction of the pairs is held
    out for validation loss and exact match."""
    data, model, out, val_fraction, cfg = run.data, run.model, Path(run.out), run.val_fraction, run.train
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ScratchLLMError("pretrain --objective seq2seq: runs in a single process (not under torchrun)")
    if Path(data).is_dir():
        raise ScratchLLMError(f"{data}: --objective seq2seq reads a source<TAB>target text file, not a DATADIR")
    eot = tokenizer.eot_id  # targets end with it; raises when the tokenizer lacks <|endoftext|>
    model_cfg = read_config(model, vocab_size=tokenizer.vocab_size, context_length=cfg.context_length)
    device = resolve_device(cfg.device)
    # two stacks (encoder and decoder, the decoder with cross-attention): about twice a GPT's size
    check_fits(model_cfg, device, TRAINING_BYTES_PER_PARAMETER, copies=2, what="pretrain --objective seq2seq")
    pairs = load_pairs(data)
    train_text, val_text = split_pairs(pairs, val_fraction, cfg.seed)
    train = encode_pairs(tokenizer, train_text, model_cfg.context_length, "training pairs")
    val = encode_pairs(tokenizer, val_text, model_cfg.context_length, "validation pairs")
    torch.manual_seed(cfg.seed)
    net = EncoderDecoder(model_cfg)
    task = Seq2SeqTask(train, val, cfg.batch_size, tokenizer, seed=cfg.seed, device=device, eval_batches=cfg.eval_batches)
    extra = {
        "objective": OBJECTIVE,
        "data": {"path": str(Path(data).resolve()), "val_fraction": val_fraction, "pairs": len(pairs),
                 "train_pairs": len(train), "val_pairs": len(val), "end_of_text": eot},
        "tokenizer": {"vocab_size": tokenizer.vocab_size, **tokenizer.describe()},
    }
    return fit(net, task, cfg, out, resume=resume, tokenizer=tokenizer, extra_config=extra)

