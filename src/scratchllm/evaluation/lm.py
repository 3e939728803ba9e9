"""Evaluation: how well a language model predicts text, and what it can do by prompting alone.

This sits after pretraining and fine-tuning in the pipeline. Every evaluation takes a model (a model
directory or name, or a loaded `GPT` with its tokenizer) and returns a JSON-able report dict;
`format_report` renders the short table the CLI prints and `write_report` saves the JSON.

- `evaluate_perplexity`: mean next-token loss, perplexity and bits per byte over a text file or the
  validation split of a prepared data directory, with a sliding window (each token scored once, with
  up to a full context of left context, as in Hugging Face's "Perplexity of fixed-length models").
  Bits per byte divide the total loss by the UTF-8 bytes of the text, so models with different
  vocabularies compare (Gao et al. 2020, "The Pile", section 4).
- `evaluate_fewshot`: classification by prompting (Brown et al. 2020, "Language Models are Few-Shot
  Learners"): K labelled examples, then the query; each candidate label is scored by its
  log-likelihood as the continuation and the most likely one is the prediction.
- `evaluate_choice`: multiple-choice tasks (HellaSwag/ARC-style JSONL) scored the way
  lm-evaluation-harness scores `loglikelihood` requests: summed log-probability of each choice given
  the context, raw (acc) and divided by the choice's length in characters (acc_norm) or tokens.

All three rest on `continuation_logprobs`, which scores several continuations of one context in a
single batched forward pass.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchllm.checkpoint.loader import load
from scratchllm.core.device import resolve_device
from scratchllm.core.files import check_overwrite, json_lines, read_text, write_json
from scratchllm.data.labelled import load_labelled, stratified_split
from scratchllm.data.tokens import load_corpus
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.metrics import classification_report
from scratchllm.models.gpt import GPT
from scratchllm.tokenizer import Tokenizer

# --------------------------------------------------------------------------------------------------
# Models, devices and reports


def model_and_tokenizer(model: Any, tokenizer: Any = None, device: str | torch.device | None = "auto",
                        dtype: str | torch.dtype | None = None):
    """(model, tokenizer) ready for scoring: `model` is a directory or name (read with
    `checkpoint.load`) or a module already built, which then needs `tokenizer` (a `Tokenizer` or a
    spec such as "gpt2" or a tok.json path)."""
    if isinstance(model, (str, os.PathLike)):
        model, loaded_tok = load(str(model), device=resolve_device(device), dtype=dtype, kind="gpt")
        tokenizer = tokenizer if tokenizer is not None else loaded_tok
    elif device is not None and str(device) != "auto":
        model = model.to(resolve_device(device))
    if tokenizer is None:
        raise ScratchLLMError("tokenizer: a model object was given without its tokenizer")
    tokenizer = Tokenizer.from_spec(tokenizer)
    model.eval()
    return model, tokenizer


def model_context_length(model: Any) -> int:
    """Longest sequence the model takes: our config's context_length, or a Hugging Face config's."""
    config = getattr(model, "config", None)
    for name in ("context_length", "n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ScratchLLMError(f"model {type(model).__name__}: its config names no context length")


def _model_name(model: Any) -> str:
    return str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def write_report(report: dict[str, Any], out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write the report as indented JSON, atomically (temp file + rename); an existing `out` is an
    error unless `overwrite` (check_overwrite before the evaluation saves its time)."""
    check_overwrite(out, overwrite, "report file")
    return write_json(out, report, "report file")


# --------------------------------------------------------------------------------------------------
# Scoring: log-probabilities of chosen target tokens


@torch.no_grad()
def target_logprobs(model: Any, inputs: torch.Tensor, targets: torch.Tensor,
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
    picked = logits.gather(1, wanted[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)  # (N,)
    logprobs = torch.zeros(inputs.shape, dtype=torch.float32, device=inputs.device)
    logprobs[mask] = picked
    greedy = torch.zeros(inputs.shape, dtype=torch.bool, device=inputs.device)
    greedy[mask] = logits.argmax(-1) == wanted
    return logprobs, greedy


@torch.no_grad()
def continuation_logprobs(model: Any, context: Sequence[int], continuations: Sequence[Sequence[int]],
                          max_length: int | None = None) -> list[dict[str, Any]]:
    """Score each continuation of one context, all in one batched forward pass.

    Each sequence context + continuation is left-truncated to max_length + 1 tokens (the model
    reads max_length inputs to predict as many targets), as lm-evaluation-harness does, and right-
    padded; causal attention means padding never changes the scored positions. Returns, per
    continuation: `logprob` (sum over its tokens), `tokens` (how many were scored), `greedy` (every
    token was the argmax) and `truncated`.
    """
    if not context:
        raise ScratchLLMError("context: expected at least one token (use the end-of-text token for none)")
    max_length = max_length or model_context_length(model)
    rows, spans, truncated = [], [], []
    for cont in continuations:
        if not cont:
            raise ScratchLLMError("continuation: expected at least one token, got an empty one")
        full = list(context) + list(cont)
        cut = len(full) > max_length + 1
        full = full[-(max_length + 1):]
        n = min(len(cont), len(full) - 1)
        rows.append(full)
        spans.append(n)
        truncated.append(cut)
    T = max(len(r) for r in rows) - 1
    device = _model_device(model)
    inputs = torch.zeros(len(rows), T, dtype=torch.long)
    targets = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for b, (full, n) in enumerate(zip(rows, spans)):
        L = len(full) - 1
        inputs[b, :L] = torch.tensor(full[:-1])
        targets[b, :L] = torch.tensor(full[1:])
        mask[b, L - n:L] = True  # the continuation's tokens are the last n targets
    inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
    lp, greedy = target_logprobs(model, inputs, targets, mask)  # (B, T) each
    lp, hit = lp.cpu(), (greedy | ~mask).all(dim=1).cpu()
    return [
        {"logprob": float(lp[b].sum(dtype=torch.float64)), "tokens": spans[b], "greedy": bool(hit[b]),
         "truncated": truncated[b]}
        for b in range(len(rows))
    ]


def loglikelihood(model: Any, tokenizer: Any, context: str, continuation: str) -> float:
    """log p(continuation | context) in nats, tokenized as `evaluate_choice` does."""
    ctx, conts = encode_request(tokenizer, context, [continuation])
    return continuation_logprobs(model, ctx, conts)[0]["logprob"]


def encode_request(tokenizer: Any, context: str, continuations: Sequence[str]) -> tuple[list[int], list[list[int]]]:
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


# --------------------------------------------------------------------------------------------------
# Perplexity and bits per byte


class _ArrayStream:
    """A token array with the `len()` / `window(start, n)` interface of the data module's streams."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def window(self, start: int, n: int) -> np.ndarray:
        return self.tokens[start:start + n]


def sliding_windows(n_tokens: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (begin, end, new) over a stream of n_tokens so that each of tokens 1..n-1 is a
    target exactly once.

    A window feeds tokens[begin:end-1] to the model and scores its last `new` targets, the tokens
    tokens[end-new:end]. Windows end `stride` targets apart and are end-aligned with a full context
    (end - begin = context_length + 1 when the stream is long enough), so every scored token has at
    least context_length - stride tokens of left context (the first window's tokens excepted).
    stride = context_length gives disjoint windows: fastest, least context.
    """
    if context_length < 1:
        raise ScratchLLMError(f"context_length {context_length}: expected at least 1")
    if not 1 <= stride <= context_length:
        raise ScratchLLMError(f"stride {stride}: expected 1..context_length ({context_length})")
    windows = []
    done = 0  # targets 1..done are scored
    while done < n_tokens - 1:
        end = min(n_tokens, (done + 1 + stride) if windows else context_length + 1)
        begin = max(0, end - context_length - 1)
        windows.append((begin, end, end - 1 - done))
        done = end - 1
    return windows


def _perplexity_stream(data: Any, tokenizer: Any) -> tuple[Any, str]:
    """The token stream to score and a word for where it came from."""
    if not isinstance(data, (str, os.PathLike)):
        return data, "stream"
    path = Path(data)
    if path.is_dir():
        corpus = load_corpus(path, tokenizer, 0.0)
        theirs, ours = corpus.meta.get("tokenizer", {}), tokenizer.spec
        if (corpus.vocab_size != tokenizer.vocab_size or theirs.get("type") != ours.get("type")
                or (theirs.get("sha256") and ours.get("sha256") and theirs["sha256"] != ours["sha256"])):
            raise ScratchLLMError(f"data directory {path}: tokenized with {theirs} ({corpus.vocab_size} ids), "
                                  f"but the model's tokenizer is {ours} ({tokenizer.vocab_size} ids)")
        if len(corpus.val) < 2:
            raise ScratchLLMError(f"data directory {path}: the validation split has {len(corpus.val)} tokens; "
                                  "prepare it with a larger --val-fraction")
        return corpus.val, "val split"
    text = read_text(path, "data file")
    ids = tokenizer.encode(text, disallowed_special=())
    if not ids:
        raise ScratchLLMError(f"data file {path}: no text to score (the file is empty)")
    # Start from the document start (BOS, else end-of-text), so every token of the file is a target
    # and the scored bytes are exactly the file's bytes.
    try:
        ids = tokenizer.document_start + ids
    except ScratchLLMError:
        pass
    return _ArrayStream(np.asarray(ids, dtype=np.int64)), "text file"


def evaluate_perplexity(model: Any, data: Any, *, tokenizer: Any = None, context_length: int | None = None,
                        stride: int | None = None, batch_size: int = 8, max_tokens: int | None = None,
                        device: str | None = "auto", dtype: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Loss (nats/token), perplexity and bits per byte of `model` on `data`.

    data: a UTF-8 text file (encoded whole, prefixed with end-of-text), a prepared data directory
    (its validation split), or any object with `len()` and `window(start, n)`.
    context_length defaults to the model's; stride to half of it. max_tokens caps the scored tokens.
    Bits per byte = total nats / scored UTF-8 bytes / ln 2 (special tokens count 0 bytes).
    """
    name = _model_name(model)
    model, tokenizer = model_and_tokenizer(model, tokenizer, device, dtype)
    limit = model_context_length(model)
    context_length = context_length or limit
    if context_length > limit:
        raise ScratchLLMError(f"context_length {context_length}: the model takes at most {limit} tokens")
    stride = stride or max(1, context_length // 2)
    if batch_size < 1:
        raise ScratchLLMError(f"batch_size {batch_size}: expected at least 1")
    if max_tokens is not None and max_tokens < 1:
        raise ScratchLLMError(f"max_tokens {max_tokens}: expected at least 1")
    stream, source = _perplexity_stream(data, tokenizer)
    n = len(stream) if max_tokens is None else min(len(stream), max_tokens + 1)
    windows = sliding_windows(n, context_length, stride)
    byte_lengths = tokenizer.token_byte_lengths()
    device_ = _model_device(model)

    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    # All windows but possibly a short stream's only one have the same length, so they batch.
    from tqdm.auto import tqdm

    bar = tqdm(total=len(windows), desc="perplexity", unit="window", disable=not progress)
    for i in range(0, len(windows), batch_size):
        batch = windows[i:i + batch_size]
        seqs = [np.asarray(stream.window(b, e - b), dtype=np.int64) for b, e, _ in batch]
        tokens = torch.from_numpy(np.stack(seqs)).to(device_)  # (B, L + 1)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, L)
        mask = torch.zeros(inputs.shape, dtype=torch.bool, device=device_)
        for row, (_, _, new) in enumerate(batch):
            mask[row, -new:] = True
        lp, _ = target_logprobs(model, inputs, targets, mask)
        total_nats -= float(lp.sum(dtype=torch.float64))
        total_tokens += int(mask.sum())
        total_bytes += int(byte_lengths[targets[mask].cpu().numpy()].sum())
        bar.update(len(batch))
    bar.close()
    loss = total_nats / total_tokens
    return {
        "task": "perplexity",
        "model": name,
        "data": str(data) if isinstance(data, (str, os.PathLike)) else None,
        "source": source,
        "context_length": context_length,
        "stride": stride,
        "windows": len(windows),
        "tokens": total_tokens,
        "bytes": total_bytes,
        "nats": total_nats,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": total_nats / total_bytes / math.log(2) if total_bytes else None,
        "bytes_per_token": total_bytes / total_tokens,
    }


# --------------------------------------------------------------------------------------------------
# Reading labelled examples (few-shot) and multiple-choice tasks


def read_choice_tasks(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Multiple-choice rows {"context": str, "choices": [str, ...], "label": int} from a JSONL file."""
    path = Path(path)
    raw = read_text(path, "data file")
    tasks = []
    for num, obj in json_lines(raw, path):
        where = f"{path} line {num}"
        if not isinstance(obj, dict):
            raise ScratchLLMError(f"{where}: expected a JSON object with context, choices, label")
        for key in ("context", "choices", "label"):
            if key not in obj:
                raise ScratchLLMError(f"{where}: missing field {key!r}")
        context, choices, label = obj["context"], obj["choices"], obj["label"]
        if not isinstance(context, str):
            raise ScratchLLMError(f"{where}: field 'context' must be a string, got {type(context).__name__}")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise ScratchLLMError(f"{where}: field 'choices' must be a list of at least 2 non-empty strings, "
                                  f"got {json.dumps(choices)[:60]}")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
            raise ScratchLLMError(f"{where}: field 'label' must be an index 0..{len(choices) - 1}, got {label!r}")
        tasks.append({"context": context, "choices": choices, "label": label})
    if not tasks:
        raise ScratchLLMError(f"data file {path}: empty, expected JSON lines with context, choices, label")
    return tasks


# --------------------------------------------------------------------------------------------------
# Few-shot classification


DEFAULT_TEMPLATE = "Message: {text}\nLabel:"
SHOT_SEPARATOR = "\n\n"


def _labelled(path: str | os.PathLike[str], text_column: str | int | None, label_column: str | int | None):
    return load_labelled(path, "text" if text_column is None else str(text_column),
                         "label" if label_column is None else str(label_column))


def format_shot(template: str, text: str, label: str | None = None) -> str:
    """One example in the prompt: the template with {text} filled, then " label" for a shot."""
    filled = template.replace("{text}", text)
    return filled if label is None else f"{filled} {label}"


def evaluate_fewshot(model: Any, data: str | os.PathLike[str], shots: int = 0, *, tokenizer: Any = None,
                     seed: int = 0, text_column: str | int | None = None, label_column: str | int | None = None,
                     labels: Sequence[str] | None = None, limit: int | None = None,
                     template: str = DEFAULT_TEMPLATE, train_fraction: float = 0.7,
                     train_data: str | os.PathLike[str] | None = None, device: str | None = "auto",
                     dtype: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Classify the test split of `data` by prompting with `shots` labelled examples.

    The file is split per class into train (train_fraction) and test, seeded; with `train_data`
    the whole of `data` is the test set and shots come from `train_data`. For each test example,
    `shots` examples are drawn without replacement from train, each rendered with `template` and
    its label, joined by a blank line, and the query (template without label) follows. Every
    candidate " label" is scored by its summed log-likelihood (one batched forward pass per
    example); the argmax is the prediction. If the prompt does not fit the context, the examples
    part is left-truncated (the query is kept) and the example counts as truncated.
    """
    if not isinstance(shots, int) or shots < 0:
        raise ScratchLLMError(f"shots {shots!r}: expected an integer >= 0")
    if "{text}" not in template:
        raise ScratchLLMError(f"template {template!r}: must contain {{text}} where the example text goes")
    if limit is not None and limit < 1:
        raise ScratchLLMError(f"limit {limit}: expected at least 1")
    examples = _labelled(data, text_column, label_column)
    rows = list(zip(examples.texts, examples.labels))
    if train_data is not None:
        train = _labelled(train_data, text_column, label_column)
        train_rows, test_rows, split = list(zip(train.texts, train.labels)), rows, "train_data"
    else:
        if not 0.0 < train_fraction < 1.0:
            raise ScratchLLMError(f"train_fraction {train_fraction}: expected a number in (0, 1)")
        train, test = stratified_split(examples, (train_fraction, 1 - train_fraction), seed)
        train_rows, test_rows = list(zip(train.texts, train.labels)), list(zip(test.texts, test.labels))
        split = f"stratified {train_fraction:g}/{1 - train_fraction:g} (seed {seed})"
    if labels is None:
        labels = sorted({label for _, label in rows} | {label for _, label in train_rows})
    labels = [str(label).strip() for label in labels]
    if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
        raise ScratchLLMError(f"labels {labels}: expected at least two distinct non-empty labels")
    for where, group in (("data", rows), ("train_data", train_rows)):
        for text, label in group:
            if label not in labels:
                raise ScratchLLMError(f"{where}: label {label!r} is not one of the labels {', '.join(labels)}")
    if shots > len(train_rows):
        raise ScratchLLMError(f"shots {shots}: the train split has only {len(train_rows)} examples")
    if not test_rows:
        raise ScratchLLMError(f"data file {data}: no test examples after the split")
    if limit is not None:
        test_rows = test_rows[:limit]

    name = _model_name(model)
    model, tokenizer = model_and_tokenizer(model, tokenizer, device, dtype)
    max_length = model_context_length(model)
    candidates = [f" {label}" for label in labels]
    cand_ids = [tokenizer.encode(c, disallowed_special=()) for c in candidates]
    longest = max(map(len, cand_ids))
    rng = random.Random(seed)

    from tqdm.auto import tqdm

    truth, predicted, records = [], [], []
    n_truncated = 0
    first: dict[str, Any] | None = None
    for i, (text, label) in enumerate(tqdm(test_rows, desc=f"{shots}-shot", disable=not progress)):
        drawn = rng.sample(train_rows, shots) if shots else []
        examples = "".join(format_shot(template, t, lab) + SHOT_SEPARATOR for t, lab in drawn)
        query = format_shot(template, text)
        # The prompt is encoded as one string (so its ids are exactly those of the reported text);
        # only when it is too long are the examples and the query encoded apart, and the examples
        # left-truncated to the room the query and the longest label leave.
        context = tokenizer.encode(examples + query, disallowed_special=())
        truncated = False
        if len(context) + longest > max_length + 1:
            shot_ids = tokenizer.encode(examples, disallowed_special=()) if examples else []
            query_ids = tokenizer.encode(query, disallowed_special=())
            room = max(0, max_length + 1 - longest - len(query_ids))
            truncated = len(shot_ids) > room or len(query_ids) + longest > max_length + 1
            context = shot_ids[max(0, len(shot_ids) - room):] if room else []
            context += query_ids  # still too long only if the query alone is: then it loses its start
        scores = continuation_logprobs(model, context, cand_ids, max_length)
        logprobs = [s["logprob"] for s in scores]
        guess = labels[int(np.argmax(logprobs))]
        n_truncated += truncated
        truth.append(label)
        predicted.append(guess)
        records.append({"index": i, "label": label, "predicted": guess,
                        "logprobs": dict(zip(labels, logprobs)), "truncated": truncated})
        if first is None:
            seen = context[-max(1, max_length + 1 - longest):]  # what the model read before the label
            first = {"text": text, "label": label, "shots": [{"text": t, "label": lab} for t, lab in drawn],
                     "prompt": examples + query if not truncated else tokenizer.decode(seen),
                     "prompt_tokens": len(seen), "truncated": truncated}
    metrics = classification_report(truth, predicted, labels)
    majority = max(labels, key=truth.count)
    return {
        "task": "fewshot",
        "model": name,
        "data": str(data),
        "shots": shots,
        "seed": seed,
        "split": split,
        "train_examples": len(train_rows),
        "labels": labels,
        "candidates": candidates,
        "template": template,
        "separator": SHOT_SEPARATOR,
        "context_length": max_length,
        "truncated": n_truncated,
        **metrics,
        "majority_label": majority,
        "majority_accuracy": truth.count(majority) / len(truth),
        "first_example": first,
        "predictions": records,
    }


# --------------------------------------------------------------------------------------------------
# Multiple choice


def evaluate_choice(model: Any, data: str | os.PathLike[str], *, tokenizer: Any = None, limit: int | None = None,
                    device: str | None = "auto", dtype: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Accuracy on multiple-choice tasks, lm-evaluation-harness style.

    For each row, every choice is scored by log p(choice | context) summed over its tokens (one
    batched forward pass per row). acc takes the argmax of the raw sums, which favours short
    choices; acc_norm divides by the choice's length in characters (lm-eval's acc_norm; Gao et al.
    2021) and acc_norm_tokens by its length in tokens.
    """
    tasks = read_choice_tasks(data)
    if limit is not None:
        if limit < 1:
            raise ScratchLLMError(f"limit {limit}: expected at least 1")
        tasks = tasks[:limit]
    name = _model_name(model)
    model, tokenizer = model_and_tokenizer(model, tokenizer, device, dtype)
    max_length = model_context_length(model)
    from tqdm.auto import tqdm

    hits = {"acc": 0, "acc_norm": 0, "acc_norm_tokens": 0}
    records, n_truncated = [], 0
    for i, task in enumerate(tqdm(tasks, desc="choice", disable=not progress)):
        ctx, conts = encode_request(tokenizer, task["context"], task["choices"])
        scores = continuation_logprobs(model, ctx, conts, max_length)
        ll = np.array([s["logprob"] for s in scores])
        chars = np.array([len(c) for c in task["choices"]])
        ntok = np.array([s["tokens"] for s in scores])
        picks = {"acc": int(np.argmax(ll)), "acc_norm": int(np.argmax(ll / chars)),
                 "acc_norm_tokens": int(np.argmax(ll / ntok))}
        for key, pick in picks.items():
            hits[key] += pick == task["label"]
        truncated = any(s["truncated"] for s in scores)
        n_truncated += truncated
        records.append({"index": i, "label": task["label"], **{f"pred_{k}": v for k, v in picks.items()},
                        "logprobs": ll.tolist(), "tokens": ntok.tolist(), "truncated": truncated})
    n = len(tasks)
    return {
        "task": "choice",
        "model": name,
        "data": str(data),
        "n": n,
        **{key: count / n for key, count in hits.items()},
        "correct": hits,
        "chance": float(np.mean([1 / len(t["choices"]) for t in tasks])),
        "truncated": n_truncated,
        "context_length": max_length,
        "predictions": records,
    }


# --------------------------------------------------------------------------------------------------
# The printed table


def format_report(report: dict[str, Any]) -> str:
    """A short aligned table of a report's headline figures (what the CLI prints)."""
    task = report.get("task")
    lines: list[tuple[str, str]] = []
    if task == "perplexity":
        lines = [("source", report["source"]), ("context / stride", f"{report['context_length']} / {report['stride']}"),
                 ("tokens", f"{report['tokens']:,}"), ("bytes", f"{report['bytes']:,}"),
                 ("loss", f"{report['loss']:.4f}"), ("perplexity", f"{report['perplexity']:.3f}"),
                 ("bits per byte", "n/a" if report["bits_per_byte"] is None else f"{report['bits_per_byte']:.4f}")]
    elif task == "fewshot":
        lines = [("shots", str(report["shots"])), ("examples", f"{report['n']:,}"),
                 ("accuracy", f"{report['accuracy']:.4f}  ({report['correct']}/{report['n']})"),
                 ("macro F1", f"{report['macro']['f1']:.4f}"),
                 ("majority baseline", f"{report['majority_accuracy']:.4f}  ({report['majority_label']})"),
                 ("truncated prompts", str(report["truncated"]))]
    elif task == "choice":
        lines = [("examples", f"{report['n']:,}"), ("acc", f"{report['acc']:.4f}"),
                 ("acc_norm (chars)", f"{report['acc_norm']:.4f}"),
                 ("acc_norm (tokens)", f"{report['acc_norm_tokens']:.4f}"), ("chance", f"{report['chance']:.4f}"),
                 ("truncated", str(report["truncated"]))]
    else:
        lines = [(k, str(v)) for k, v in report.items() if isinstance(v, (int, float, str))]
    width = max(len(k) for k, _ in lines)
    out = [f"{task}: {report.get('data') or ''}".rstrip()] + [f"  {k:<{width}}  {v}" for k, v in lines]
    if task == "fewshot":
        labels = report["labels"]
        lw = max(5, *(len(label) for label in labels))
        out.append(f"  {'label':<{lw}}  precision  recall      f1  support")
        for label in labels:
            c = report["per_class"][label]
            out.append(f"  {label:<{lw}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}")
        matrix = report["confusion_matrix"]
        cw = max(lw, *(len(str(v)) for row in matrix for v in row))
        out.append("  confusion (rows true, columns predicted)")
        out.append("  " + " " * lw + "".join(f"  {label:>{cw}}" for label in labels))
        for label, row in zip(labels, matrix):
            out.append(f"  {label:<{lw}}" + "".join(f"  {v:>{cw}}" for v in row))
    return "\n".join(out)
