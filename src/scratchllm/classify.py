"""Classification fine-tuning: a pretrained GPT becomes a text classifier (spam or ham, and any labels).

This is the first of the two kinds of fine-tuning (Raschka, *Build a Large Language Model from
Scratch*, chapter 6; Radford et al. 2018, "Improving Language Understanding by Generative
Pre-Training", section 3.2): keep the pretrained transformer, put a small linear head on the hidden
state of one token, and train on labelled texts with cross-entropy. It sits after pretraining
(`scratchllm.train`) and checkpoints (`scratchllm.checkpoint`), and uses the same training loop.

    labelled file -> load_labelled -> balance (undersample) -> stratified split 70/10/20
    -> encode (truncate to the context) -> right-pad with <|endoftext|> -> GPT body (B, T, C)
    -> pool the LAST REAL token (B, C) -> head (B, K) -> cross-entropy

Why the last real token: in a causal model only the last position has attended to the whole text.
Padding goes on the right, so real tokens never attend to it and their hidden states do not depend
on how much padding the batch adds; the classifier reads position `length - 1`, never a pad token.

Here: data loading (TSV/CSV/JSONL, the UCI SMS Spam Collection with a checksummed download),
balancing and splitting, `Classifier` (body + head, save/load, predict), `ClassificationTask` (the
task interface of the training loop), metrics (accuracy, per-class precision/recall/F1, confusion
matrix) and `finetune_classifier`, the recipe behind `scratchllm finetune classify`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.files import read_text, write_atomic, write_json

if TYPE_CHECKING:
    from scratchllm.model import GPT
    from scratchllm.tokenizer import Tokenizer

# The UCI SMS Spam Collection (Almeida, Gomez Hidalgo and Yamakami 2011): 5,574 messages, 747 spam.
SMS_SPAM_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
SMS_SPAM_ZIP_SHA256 = "1587ea43e58e82b14ff1f5425c88e17f8496bfcdb67a583dbff9eefaf9963ce3"
SMS_SPAM_MEMBER = "SMSSpamCollection"  # the data file inside the zip (beside a readme)
SMS_SPAM_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"  # of that member

HEAD_FILE = "classifier.safetensors"  # the head's weights, beside the body's model.safetensors
METRICS_FILE = "metrics.json"
POOLINGS = ("last", "mean", "first")
TRAINABLE = ("head", "last-block", "all", "lora")
BALANCE = ("undersample", "weights", "none")
FORMATS = ("tsv", "csv", "jsonl", "json")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Labelled data: reading files


@dataclass
class Examples:
    """Texts with one label each (labels are strings; numbers in a file become their text)."""

    texts: list[str]
    labels: list[str]
    source: str = "data"  # where they came from, for error messages

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int], source: str | None = None) -> Examples:
        return Examples([self.texts[i] for i in index], [self.labels[i] for i in index], source or self.source)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.labels).items()))


def _format_of(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in FORMATS:
            raise ScratchLLMError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
        return format
    suffix = path.suffix.lower()
    by_suffix = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    # No telling suffix (the UCI file is just "SMSSpamCollection"): look at the first line.
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    if first.lstrip().startswith("{"):
        return "jsonl"
    return "tsv" if "\t" in first else "csv"


def _read_records(path: Path, fmt: str, header: bool | None, text_column: str, label_column: str):
    """(column names, rows as dicts, line number of each row) of a labelled file."""
    content = read_text(path, expected="a TSV/CSV/JSONL file")
    if not content.strip():
        raise ScratchLLMError(f"{path}: empty file (expected rows with a text and a label)")
    if fmt in ("jsonl", "json"):
        if fmt == "json":
            try:
                data = json.loads(content)
            except json.JSONDecodeError as exc:
                raise ScratchLLMError(f"{path}: not valid JSON ({exc})") from None
            if not isinstance(data, list):
                raise ScratchLLMError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
            items = [(i + 1, obj) for i, obj in enumerate(data)]
            where = "item"
        else:
            items = []
            for n, line in enumerate(content.splitlines(), 1):
                if line.strip():
                    try:
                        items.append((n, json.loads(line)))
                    except json.JSONDecodeError as exc:
                        raise ScratchLLMError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
            where = "line"
        rows, lines, columns = [], [], {}
        for n, obj in items:
            if not isinstance(obj, dict):
                raise ScratchLLMError(f"{path} {where} {n}: expected a JSON object, got {type(obj).__name__}")
            rows.append(obj)
            lines.append(n)
            columns.update(dict.fromkeys(obj))
        if not rows:
            raise ScratchLLMError(f"{path}: no rows (empty JSON list)")
        return list(columns), rows, lines, where
    # TSV without quoting (the UCI file has bare quote characters inside messages); CSV with it.
    delimiter = "\t" if fmt == "tsv" else ","
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter, quoting=quoting)
    table = []  # (line number where the row starts, fields); a quoted CSV field may span lines
    try:
        start = 1
        for row in reader:
            if any(cell.strip() for cell in row):
                table.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ScratchLLMError(f"{path} line {reader.line_num}: not valid {fmt.upper()} ({exc})") from None
    if not table:
        raise ScratchLLMError(f"{path}: empty file (expected rows with a text and a label)")
    first = table[0][1]
    if header is None:
        header = _looks_like_header(table, text_column, label_column)
    if header:
        columns = [c.strip() for c in first]
        body = table[1:]
        if not body:
            raise ScratchLLMError(f"{path}: no data rows (only a header: {', '.join(map(repr, columns))})")
    else:
        columns = [str(i) for i in range(len(first))]
        body = table
    rows, lines = [], []
    for n, row in body:
        if len(row) != len(columns):
            sep = "tab" if fmt == "tsv" else "comma"
            raise ScratchLLMError(f"{path} line {n}: {len(row)} {sep}-separated fields, expected {len(columns)}")
        rows.append(dict(zip(columns, row)))
        lines.append(n)
    return columns, rows, lines, "line"


def _looks_like_header(table, text_column: str, label_column: str) -> bool:
    """True unless the first row looks like data of a headerless two-column `label<TAB>text` file.

    A header names a requested column; a data row's first field is a label, which recurs in the
    first column of later rows (a header's column name does not)."""
    first = [c.strip() for c in table[0][1]]
    if text_column in first or label_column in first:
        return True
    if len(first) != 2:
        return True
    return not any(row[0].strip() == first[0] for _, row in table[1:201] if row)


def load_labelled(
    path: str | os.PathLike[str],
    text_column: str = "text",
    label_column: str = "label",
    format: str | None = None,
    header: bool | None = None,
) -> Examples:
    """Texts and string labels from a TSV, CSV, JSONL or JSON-list file.

    format: tsv | csv | jsonl | json, else from the suffix (or the first line).
    header: True/False for TSV/CSV, None = detect. A headerless file's columns are named by
        position ("0", "1", ...); a two-column one defaults to `label<TAB>text` (the UCI layout).
    """
    path = Path(path).expanduser()
    fmt = _format_of(path, format) if path.is_file() else (format or "tsv")
    columns, rows, lines, where = _read_records(path, fmt, header, text_column, label_column)
    if columns == ["0", "1"] and (text_column, label_column) == ("text", "label"):
        text_column, label_column = "1", "0"  # headerless label<TAB>text
    for name, what in ((text_column, "text"), (label_column, "label")):
        if name not in columns:
            hint = "" if fmt in ("jsonl", "json") else "; use --text-column/--label-column (positions 0, 1, ... if the file has no header)"
            raise ScratchLLMError(
                f"{path}: no {what} column {name!r}; columns found: {', '.join(map(repr, columns))}{hint}"
            )
    texts, labels = [], []
    for n, row in zip(lines, rows):
        if text_column not in row or label_column not in row:
            missing = text_column if text_column not in row else label_column
            raise ScratchLLMError(f"{path} {where} {n}: no field {missing!r}")
        text, label = row[text_column], row[label_column]
        if not isinstance(text, str):
            raise ScratchLLMError(f"{path} {where} {n}: text field {text_column!r} is {type(text).__name__}, expected a string")
        if isinstance(label, (dict, list)) or label is None or (isinstance(label, str) and not label.strip()):
            raise ScratchLLMError(f"{path} {where} {n}: label field {label_column!r} is empty or not a single value ({label!r})")
        texts.append(text)
        labels.append(str(label).strip() if not isinstance(label, bool) else str(label).lower())
    return Examples(texts, labels, str(path))


def load_sms_spam(
    path: str | os.PathLike[str] | None = None,
    url: str = SMS_SPAM_URL,
    zip_sha256: str = SMS_SPAM_ZIP_SHA256,
    sha256: str = SMS_SPAM_SHA256,
    progress: bool = True,
) -> Examples:
    """The UCI SMS Spam Collection: 5,574 messages labelled "ham" or "spam".

    From `path` (the extracted `label<TAB>text` file) if given; else from the cache
    ($SCRATCHLLM_CACHE or ~/.cache/scratchllm, folder sms_spam/), downloading the zip from UCI the
    first time and checking the SHA-256 of both the zip and the extracted file.
    """
    if path is not None:
        return load_labelled(path, text_column="1", label_column="0", format="tsv", header=False)
    from scratchllm.checkpoint import cache_root, download_file

    folder = cache_root() / "sms_spam"
    target = folder / SMS_SPAM_MEMBER
    if not target.is_file():
        archive = folder / "sms_spam_collection.zip"
        if not archive.is_file():
            try:
                download_file(url, archive, sha256=zip_sha256, progress=progress)
            except ScratchLLMError as exc:
                raise ScratchLLMError(f"{exc}; without network, pass the extracted file with --data") from None
        _extract_member(archive, SMS_SPAM_MEMBER, target, sha256)
    return load_labelled(target, text_column="1", label_column="0", format="tsv", header=False)


def _extract_member(archive: Path, member: str, target: Path, sha256: str) -> None:
    """Copy one member of a zip to `target` (via a temp file), checking its SHA-256 first."""
    import hashlib

    try:
        with zipfile.ZipFile(archive) as zf:
            names = {Path(n).name: n for n in zf.namelist()}
            if member not in names:
                raise ScratchLLMError(f"{archive}: no {member!r} inside (found {', '.join(sorted(names))})")
            data = zf.read(names[member])
    except zipfile.BadZipFile as exc:
        raise ScratchLLMError(f"{archive}: not a zip file ({exc})") from None
    got = hashlib.sha256(data).hexdigest()
    if got != sha256.lower():
        raise ScratchLLMError(f"{archive}: {member} has SHA-256 {got}, expected {sha256.lower()}")
    write_atomic(target, data)


# --------------------------------------------------------------------------------------------------
# Labelled data: balancing and splitting


def undersample(data: Examples, seed: int = 123) -> Examples:
    """Keep a seeded random `min(class count)` examples of every class (the book's balancing);
    the kept examples stay in file order."""
    counts = data.counts()
    n = min(counts.values())
    rng = random.Random(seed)
    keep: list[int] = []
    for label in counts:
        index = [i for i, y in enumerate(data.labels) if y == label]
        keep += rng.sample(index, n)
    return data.subset(sorted(keep), f"{data.source} (undersampled)")


def stratified_split(
    data: Examples, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 123
) -> list[Examples]:
    """Split into len(fractions) parts with every class in the same proportions (seeded).

    Each class's examples are shuffled and cut at round(n * cumulative fraction), so a class of n
    gives round(0.7 n), then the next cut, ...; each part is shuffled again so classes interleave.
    """
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ScratchLLMError(f"split fractions {list(fractions)}: expected non-negative numbers summing to 1")
    rng = random.Random(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for label in data.counts():
        index = [i for i, y in enumerate(data.labels) if y == label]
        rng.shuffle(index)
        cuts = [0]
        total = 0.0
        for f in fractions:
            total += f
            cuts.append(round(total * len(index)))
        for k in range(len(fractions)):
            parts[k] += index[cuts[k] : cuts[k + 1]]
    for part in parts:
        rng.shuffle(part)
    names = ("train", "validation", "test") if len(fractions) == 3 else [f"part {k}" for k in range(len(fractions))]
    return [data.subset(part, f"{data.source} ({name} split)") for part, name in zip(parts, names)]


def label_names(labels: Sequence[str]) -> list[str]:
    """The classes in id order: numerically sorted when every label is an integer, else alphabetical
    (so "ham" = 0 and "spam" = 1, as in the book)."""
    unique = set(labels)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def check_labels(train: Examples, others: Sequence[Examples]) -> list[str]:
    """The label names of `train`; raise if it has one class or another split has an unseen label."""
    names = label_names(train.labels)
    if len(names) < 2:
        raise ScratchLLMError(
            f"{train.source}: only one class ({names[0]!r}) in the labels; classification needs at least two"
            if names else f"{train.source}: no examples"
        )
    known = set(names)
    for split in others:
        for i, label in enumerate(split.labels):
            if label not in known:
                raise ScratchLLMError(
                    f"{split.source}: label {label!r} (example {i + 1}) does not occur in the training data "
                    f"(labels: {', '.join(names)})"
                )
    return names


def class_weights(labels: Sequence[str], names: Sequence[str]) -> torch.Tensor:
    """Loss weights n / (K * n_k): each class contributes equally to the loss (the "balanced"
    weighting of King and Zeng 2001), the alternative to throwing examples away by undersampling."""
    counts = Counter(labels)
    n, k = len(labels), len(names)
    return torch.tensor([n / (k * counts[c]) if counts[c] else 0.0 for c in names], dtype=torch.float32)


# --------------------------------------------------------------------------------------------------
# Tokens: encoding, truncation and right padding


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
        _warn(f"{what}: truncated {truncated} of {len(ids)} texts to {max_length} tokens (longest had {longest})")
    return [x[:max_length] if x else [eot] for x in ids]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to the longest with `pad_id` -> (idx (B, T), lengths (B,))."""
    width = max(map(len, seqs))
    idx = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for row, s in enumerate(seqs):
        idx[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    return idx.to(device), lengths.to(device)


# --------------------------------------------------------------------------------------------------
# The model: a GPT body and a linear head on one pooled hidden state


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
        from scratchllm.model import chunked_cross_entropy

        # position t predicts idx[t + 1] while t + 1 is a real token; padding is never a target
        real = torch.arange(1, idx.shape[1], device=idx.device)[None, :] < lengths[:, None]  # (B, T-1)
        targets = idx[:, 1:].masked_fill(~real, -100)
        lm = chunked_cross_entropy(h[:, :-1].flatten(0, 1), self.body.out_head.weight, targets.flatten())
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
            from scratchllm.lora import apply_lora

            apply_lora(self, rank=lora_rank, alpha=lora_alpha, trainable=["head"], verbose=False)
        else:
            self.requires_grad_(mode == "all")
            if mode == "last-block":
                body.blocks[-1].requires_grad_(True)
                body.final_norm.requires_grad_(True)
            self.head.requires_grad_(True)
        if body.out_head.weight is not body.tok_emb.weight:
            body.out_head.requires_grad_(False)  # an untied LM head is not used by the classifier
        return _count(self)

    # ---- files -----------------------------------------------------------------------------------

    def _own_tensors(self) -> dict[str, torch.Tensor]:
        """What a plain GPT directory cannot hold: the head, and LoRA adapters while they are unmerged."""
        own = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        own.update({n: p for n, p in self.named_parameters() if n.endswith((".lora_A", ".lora_B"))})
        return {k: v.detach().to("cpu").contiguous() for k, v in own.items()}

    def save_pretrained(self, directory: str | os.PathLike[str], tokenizer: Tokenizer | None = None,
                        extra: dict[str, Any] | None = None, add_files=None) -> Path:
        """Write a model directory: the body as a plain scratchllm GPT (LoRA adapters merged in), the
        head in classifier.safetensors, and {"task": "classification", "labels", "pooling"} in config.json.

        With LoRA, classifier.safetensors also keeps the unmerged adapters, so the training loop can
        resume them exactly (`load_weights`); `from_pretrained` reads only the head.
        """
        from safetensors.torch import save_file

        from scratchllm.checkpoint import save_pretrained

        body = self.body
        if getattr(self, "lora_config", None) is not None:
            import copy

            from scratchllm.lora import merge_lora

            body = merge_lora(copy.deepcopy(body))
        own = self._own_tensors()

        def write(tmp: Path) -> None:
            save_file(own, str(tmp / HEAD_FILE), metadata={"format": "pt"})
            if add_files is not None:
                add_files(tmp)

        info = {**(extra or {}), "task": "classification", "labels": self.labels, "pooling": self.pooling,
                "max_length": self.max_length}
        if getattr(self, "lora_config", None) is not None:
            info["lora_merged"] = {"rank": self.lora_config.rank, "alpha": self.lora_config.alpha,
                                   "targets": self.lora_config.targets}
        return save_pretrained(body, directory, tokenizer or self.tokenizer, extra=info, add_files=write)

    def load_weights(self, directory: str | os.PathLike[str]) -> None:
        """Restore, in place and exactly, the weights `save_pretrained` wrote (the training loop's resume).

        Without LoRA: body from model.safetensors, head from classifier.safetensors. With LoRA the
        frozen body is the base model already in memory, so only the head and adapters are read.
        """
        from scratchllm.checkpoint import WEIGHTS_FILE, _read_safetensors

        d = Path(directory)
        own = _read_safetensors(d / HEAD_FILE)
        params = dict(self.named_parameters())
        if getattr(self, "lora_config", None) is None:
            body = _read_safetensors(d / WEIGHTS_FILE)
            missing, unexpected = self.body.load_state_dict(body, strict=False)
            tied = {"out_head.weight"} if self.config.tie_embeddings else set()
            if unexpected or set(missing) - tied:
                raise ScratchLLMError(f"{d / WEIGHTS_FILE}: does not fit the classifier's body (missing "
                                      f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
        expected = set(self._own_tensors())
        if set(own) != expected:
            raise ScratchLLMError(f"{d / HEAD_FILE}: holds {sorted(own)[:4]}, expected {sorted(expected)[:4]}")
        with torch.no_grad():
            for name, value in own.items():
                if params[name].shape != value.shape:
                    raise ScratchLLMError(f"{d / HEAD_FILE}: {name} has shape {tuple(value.shape)}, "
                                          f"expected {tuple(params[name].shape)}")
                params[name].copy_(value)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Classifier:
        """A classifier from a directory written by `save_pretrained` (or a fine-tuning run directory:
        its final/, else best/, else newest checkpoint)."""
        from scratchllm.checkpoint import (
            _read_safetensors,
            load,
            read_model_config,
            resolve_model_dir,
        )

        d = resolve_model_dir(path)
        data = read_model_config(d)
        if data.get("task") != "classification":
            raise ScratchLLMError(
                f"{d}: not a classifier (its config.json has no \"task\": \"classification\"); "
                "make one with `scratchllm finetune classify`"
            )
        labels, pooling, max_length = data.get("labels"), data.get("pooling", "last"), data.get("max_length")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ScratchLLMError(f"{d / 'config.json'}: field 'labels' must be a list of class names")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ScratchLLMError(f"{d / 'config.json'}: field 'max_length' must be a positive integer or null")
        body, tokenizer = load(d, device=device)
        model = cls(body, labels, pooling, tokenizer, max_length)
        state = {k.removeprefix("head."): v for k, v in _read_safetensors(d / HEAD_FILE).items() if k.startswith("head.")}
        expect = {k: tuple(v.shape) for k, v in model.head.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != expect:
            raise ScratchLLMError(f"{d / HEAD_FILE}: head tensors {got} do not fit {len(labels)} labels and "
                                  f"emb_dim {body.config.emb_dim} (expected {expect})")
        model.head.load_state_dict({k: v.to(model.head.weight.dtype) for k, v in state.items()})
        return model.to(device).eval()

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


def _count(model: nn.Module) -> tuple[int, int]:
    seen: dict[int, torch.nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    return sum(p.numel() for p in seen.values() if p.requires_grad), total


# --------------------------------------------------------------------------------------------------
# Metrics


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, their macro averages and the confusion
    matrix (rows = true class, columns = predicted class)."""
    k = len(labels)
    confusion = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred):
        confusion[t][p] += 1
    n = len(y_true)
    per_class = {}
    for c, name in enumerate(labels):
        tp = confusion[c][c]
        predicted = sum(confusion[r][c] for r in range(k))
        support = sum(confusion[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    macro = {m: sum(v[m] for v in per_class.values()) / k for m in ("precision", "recall", "f1")}
    return {
        "accuracy": sum(confusion[c][c] for c in range(k)) / n if n else 0.0,
        "n": n,
        "per_class": per_class,
        "macro": macro,
        "confusion_matrix": confusion,
        "labels": list(labels),
    }


def format_metrics(m: dict[str, Any], title: str = "test") -> str:
    """A plain-text report: accuracy, a precision/recall/F1 table and the confusion matrix."""
    labels = m["labels"]
    w = max(10, *(len(x) + 2 for x in labels))
    lines = [f"{title} accuracy: {100 * m['accuracy']:.2f}% ({round(m['accuracy'] * m['n'])}/{m['n']})", ""]
    lines.append(f"{'class':<{w}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name, v in m["per_class"].items():
        lines.append(f"{name:<{w}}{v['precision']:>10.4f}{v['recall']:>10.4f}{v['f1']:>10.4f}{v['support']:>10d}")
    mac = m["macro"]
    lines.append(f"{'macro avg':<{w}}{mac['precision']:>10.4f}{mac['recall']:>10.4f}{mac['f1']:>10.4f}{m['n']:>10d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    cw = max(8, *(len(x) + 2 for x in labels))
    lines.append(" " * w + "".join(f"{x:>{cw}}" for x in labels))
    for name, row in zip(labels, m["confusion_matrix"]):
        lines.append(f"{name:<{w}}" + "".join(f"{v:>{cw}d}" for v in row))
    return "\n".join(lines)


@torch.no_grad()
def evaluate_split(model: Classifier, ids: Sequence[Sequence[int]], targets: Sequence[int],
                   batch_size: int = 32, weight: torch.Tensor | None = None) -> tuple[float, dict[str, Any]]:
    """(mean cross-entropy, classification_metrics) of `model` on encoded texts."""
    probs = model.probabilities(ids, batch_size)  # (N, K)
    y = torch.tensor(list(targets), dtype=torch.long)
    w = weight.cpu() if weight is not None else None
    loss = F.nll_loss(torch.log(probs.clamp_min(1e-12)), y, weight=w).item()
    return loss, classification_metrics(y.tolist(), probs.argmax(-1).tolist(), model.labels)


# --------------------------------------------------------------------------------------------------
# The task the training loop runs


class ClassificationTask:
    """Classification as a task of `scratchllm.train.fit`: batches of labelled texts, cross-entropy on
    the pooled logits, validation loss and accuracy.

    One epoch is one pass over the training split in a seeded order (a fresh permutation per epoch),
    so `state_dict` (epoch, position, running sums) resumes exactly. Training loss and accuracy are
    accumulated over the batches since the last evaluation (with evaluation once per epoch, they are
    the epoch's), and each evaluation appends a row to `history` for the per-epoch report and plots.
    """

    best_metric = "val_accuracy"
    higher_is_better = True

    def __init__(self, train_ids: list[list[int]], train_targets: list[int], val_ids: list[list[int]],
                 val_targets: list[int], batch_size: int, pad_id: int, device: Any = "cpu", seed: int = 123,
                 weight: torch.Tensor | None = None, eval_batch_size: int = 32, lm_weight: float = 0.0):
        if not train_ids:
            raise ScratchLLMError("classification: the training split is empty")
        self.train_ids, self.train_targets = train_ids, train_targets
        self.val_ids, self.val_targets = val_ids, val_targets
        self.batch_size, self.pad_id, self.device, self.seed = batch_size, pad_id, device, seed
        self.weight = weight.to(device) if weight is not None else None
        self.eval_batch_size = eval_batch_size
        self.lm_weight = lm_weight  # auxiliary next-token loss weight (0 = classification loss only)
        self.steps_per_epoch = math.ceil(len(train_ids) / batch_size)
        self.epoch, self.position, self.batches = 0, 0, 0  # position: batches served in this epoch
        self._order = self._permutation(0)
        self._sum_loss = self._sum_correct = self._sum_n = 0.0
        self.history: list[dict[str, float]] = []

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.train_ids)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_batch(self):
        if self.position == self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        rows = self._order[self.position * self.batch_size : (self.position + 1) * self.batch_size]
        self.position += 1
        self.batches += 1
        idx, lengths = pad_batch([self.train_ids[i] for i in rows], self.pad_id, self.device)
        targets = torch.tensor([self.train_targets[i] for i in rows], dtype=torch.long, device=self.device)
        return idx, lengths, targets

    def loss(self, model: Classifier, batch) -> torch.Tensor:
        """Cross-entropy of the pooled logits (+ lm_weight x the next-token loss of the texts)."""
        idx, lengths, targets = batch
        if self.lm_weight:
            logits, lm = model(idx, lengths, lm_loss=True)
        else:
            logits, lm = model(idx, lengths), None
        logits = logits.float()  # (B, K)
        loss = F.cross_entropy(logits, targets, weight=self.weight)
        if model.training:
            with torch.no_grad():
                n = targets.numel()
                self._sum_loss += loss.item() * n
                self._sum_correct += (logits.argmax(-1) == targets).sum().item()
                self._sum_n += n
        return loss if lm is None else loss + self.lm_weight * lm

    def batch_tokens(self, batch) -> int:
        return int(batch[1].sum())

    def evaluate(self, model: Classifier) -> dict[str, float]:
        epoch = self.batches / self.steps_per_epoch
        if self.history and self.history[-1]["epoch"] == epoch:
            return dict(self.history[-1])  # asked again at the same step (e.g. the final evaluation)
        val_loss, m = evaluate_split(model, self.val_ids, self.val_targets, self.eval_batch_size, self.weight)
        row = {"epoch": epoch, "val_loss": val_loss, "val_accuracy": m["accuracy"]}
        if self._sum_n:
            row["train_loss"] = self._sum_loss / self._sum_n
            row["train_accuracy"] = self._sum_correct / self._sum_n
        self._sum_loss = self._sum_correct = self._sum_n = 0.0
        self.history.append(row)
        return dict(row)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "batches": self.batches, "seed": self.seed,
                "sums": [self._sum_loss, self._sum_correct, self._sum_n], "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position, self.batches = state["epoch"], state["position"], state["batches"]
        self.seed = state["seed"]
        self._sum_loss, self._sum_correct, self._sum_n = state["sums"]
        self.history = [dict(r) for r in state["history"]]
        self._order = self._permutation(self.epoch)


# --------------------------------------------------------------------------------------------------
# The recipe: `scratchllm finetune classify`


@dataclass
class ClassifyConfig:
    """Everything `finetune_classifier` needs; the CLI flags map one to one onto these fields."""

    model: str = "gpt2"  # model directory, run directory or GPT-2 name to start from
    data: str | None = None  # labelled TSV/CSV/JSONL file; None or "sms-spam" = the UCI SMS Spam Collection
    out: str = "runs/classify"
    text_column: str = "text"
    label_column: str = "label"
    format: str | None = None  # tsv | csv | jsonl | json; None = from the file name
    header: bool | None = None  # TSV/CSV header row: None = detect
    val: str | None = None  # validation file (same columns); None = carved out of `data`
    test: str | None = None  # test file; None = carved out of `data`
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train/validation/test fractions of `data`
    balance: str = "undersample"  # undersample (the book) | weights (loss weighting) | none
    epochs: float = 5.0  # passes over the training split
    batch_size: int = 8
    lr: float = 5e-5
    min_lr: float | None = None  # end of the cosine decay; None = lr (constant, as in the book)
    warmup_steps: int = 0
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    trainable: str = "last-block"  # head | last-block | all | lora
    lora_rank: int = 8
    lora_alpha: float = 16.0
    pooling: str = "last"  # last | mean | first
    lm_weight: float = 0.0  # auxiliary language-modelling loss weight (Radford et al. 2018 use 0.5)
    max_length: int | None = None  # truncate texts to this many tokens (default: the model's context)
    dropout: float | None = None  # replace the model's dropout rate while fine-tuning
    seed: int = 123  # head init, batch order (and balancing and split unless split_seed is set)
    split_seed: int | None = None  # balancing and split only: vary training seeds over one test set
    device: str = "auto"
    dtype: str = "auto"
    max_time: float | None = None  # seconds; stops early, cleanly
    eval_batch_size: int = 32
    resume: bool = False
    progress: bool = True


def _prepare_splits(cfg: ClassifyConfig) -> tuple[Examples, Examples, Examples]:
    def read(path: str) -> Examples:
        return load_labelled(path, cfg.text_column, cfg.label_column, cfg.format, cfg.header)

    if cfg.data is None or cfg.data == "sms-spam":
        data = load_sms_spam(progress=cfg.progress)
    else:
        data = read(cfg.data)
    val = read(cfg.val) if cfg.val else None
    test = read(cfg.test) if cfg.test else None
    check_labels(data, [x for x in (val, test) if x is not None])  # one class, or unseen labels: fail early
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    if cfg.balance == "undersample" and len(set(data.counts().values())) > 1:
        before = data.counts()
        data = undersample(data, split_seed)
        _log(f"balance: undersampled {before} -> {data.counts()}")
    # The parts not given as files are carved from `data`, keeping their relative sizes.
    fractions = [cfg.split[0], 0.0 if val else cfg.split[1], 0.0 if test else cfg.split[2]]
    total = sum(fractions)
    train, val_part, test_part = stratified_split(data, [f / total for f in fractions], split_seed)
    train.source = f"{data.source} (train split)"
    val, test = val or val_part, test or test_part
    for name, part in (("validation", val), ("test", test)):
        if not len(part):
            raise ScratchLLMError(
                f"{data.source}: the {name} split is empty ({len(data)} examples); give more data or --{'val' if name == 'validation' else 'test'} FILE"
            )
    return train, val, test


def finetune_classifier(cfg: ClassifyConfig) -> dict[str, Any]:
    """Fine-tune a pretrained GPT as a classifier; returns (and writes to OUT/metrics.json) the report.

    Loads and balances the data, splits it, loads the model, swaps in a classification head, trains
    with `scratchllm.train.fit` (evaluating once per epoch; OUT/best/ keeps the best validation
    accuracy, OUT/final/ the last model), then reports test accuracy, per-class precision, recall and
    F1 and the confusion matrix of the final model, and plots loss and accuracy per epoch.
    """
    from scratchllm.checkpoint import load, read_model_config
    from scratchllm.train import TrainConfig, fit, resolve_device

    for name, value, choices in (("balance", cfg.balance, BALANCE), ("trainable", cfg.trainable, TRAINABLE),
                                 ("pooling", cfg.pooling, POOLINGS)):
        if value not in choices:
            raise ScratchLLMError(f"{name} {value!r}: expected one of {', '.join(choices)}")
    if not cfg.epochs > 0:
        raise ScratchLLMError(f"epochs {cfg.epochs!r}: expected a number > 0")
    if cfg.batch_size < 1:
        raise ScratchLLMError(f"batch_size {cfg.batch_size!r}: expected an integer >= 1")
    if cfg.max_length is not None and cfg.max_length < 1:
        raise ScratchLLMError(f"max_length {cfg.max_length!r}: expected an integer >= 1")
    t_start = time.perf_counter()
    out = Path(cfg.out)
    train, val, test = _prepare_splits(cfg)
    labels = check_labels(train, [val, test])
    _log(f"data: {len(train)} train {train.counts()}, {len(val)} validation {val.counts()}, "
         f"{len(test)} test {test.counts()}; labels {labels}")

    device = resolve_device(cfg.device)
    body, tokenizer = load(cfg.model, device=device)
    if cfg.dropout is not None:
        _set_dropout(body, cfg.dropout)
    if cfg.lm_weight and not getattr(body.config, "causal", True):
        raise ScratchLLMError(f"lm_weight {cfg.lm_weight}: {cfg.model} is a bidirectional encoder; it has no next-token loss")
    torch.manual_seed(cfg.seed)  # the head's initial weights (and LoRA's A matrices)
    context = body.config.context_length
    max_length = min(cfg.max_length or context, context)
    model = Classifier(body, labels, cfg.pooling, tokenizer, max_length)
    n_train, n_total = model.set_trainable(cfg.trainable, cfg.lora_rank, cfg.lora_alpha)
    _log(f"model: {cfg.model}, {len(labels)} classes, pooling {cfg.pooling}; trainable {cfg.trainable}: "
         f"{n_train:,} of {n_total:,} parameters ({100 * n_train / n_total:.2f}%)")

    index = {name: k for k, name in enumerate(labels)}
    encoded = {}
    for name, part in (("train", train), ("validation", val), ("test", test)):
        encoded[name] = (encode_texts(tokenizer, part.texts, max_length, f"{name} split"), [index[y] for y in part.labels])
    weight = class_weights(train.labels, labels) if cfg.balance == "weights" else None
    if weight is not None:
        _log(f"balance: class weights {dict(zip(labels, [round(w, 4) for w in weight.tolist()]))}")
    task = ClassificationTask(*encoded["train"], *encoded["validation"], batch_size=cfg.batch_size,
                              pad_id=tokenizer.eot_id, device=device, seed=cfg.seed, weight=weight,
                              eval_batch_size=cfg.eval_batch_size, lm_weight=cfg.lm_weight)
    spe = task.steps_per_epoch
    max_steps = max(1, round(cfg.epochs * spe))
    train_cfg = TrainConfig(
        max_steps=max_steps, max_time=cfg.max_time, batch_size=cfg.batch_size, lr=cfg.lr,
        min_lr=cfg.lr if cfg.min_lr is None else cfg.min_lr, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, eval_every=spe, eval_batches=0,
        log_every=max(1, spe // 4), save_every=spe, keep_last=1, seed=cfg.seed, device=cfg.device,
        dtype=cfg.dtype, progress=cfg.progress, context_length=max_length,
    )
    _log(f"schedule: {cfg.epochs:g} epochs x {spe} steps of {cfg.batch_size} texts = {max_steps} steps")
    extra = {"classification": {**{k: v for k, v in asdict(cfg).items() if k not in ("resume", "progress")},
                                "labels": labels, "max_length": max_length, "steps_per_epoch": spe,
                                "counts": {"train": train.counts(), "validation": val.counts(), "test": test.counts()}}}
    summary = fit(model, task, train_cfg, out, resume=cfg.resume, tokenizer=tokenizer, extra_config=extra)
    train_time = time.perf_counter() - t_start

    test_loss, test_metrics = evaluate_split(model, *encoded["test"], cfg.eval_batch_size, weight)
    # The final model is what `classify --model OUT` loads; best/ (highest validation accuracy, the
    # earliest on ties) is the early-stopping alternative, reported beside it.
    best_report = None
    if (out / "best" / HEAD_FILE).is_file():
        best = Classifier.from_pretrained(out / "best", device=device)
        info = read_model_config(out / "best").get("training", {})
        best_loss, best_metrics = evaluate_split(best, *encoded["test"], cfg.eval_batch_size, weight)
        best_report = {"epoch": info.get("epoch"), "val_accuracy": info.get("val_accuracy"),
                       "test_loss": best_loss, "test_accuracy": best_metrics["accuracy"]}
        del best
    report = {
        "model": cfg.model,
        "data": cfg.data or "sms-spam",
        "labels": labels,
        "counts": {"train": train.counts(), "validation": val.counts(), "test": test.counts()},
        "trainable": cfg.trainable,
        "trainable_parameters": n_train,
        "parameters": n_total,
        "epochs": task.history,  # per evaluation: epoch, train/val loss and accuracy
        "test_loss": test_loss,
        "test": test_metrics,
        "best": best_report,  # the best/ checkpoint's epoch, validation and test accuracy
        "steps": summary["steps"],
        "stopped": summary["stopped"],
        "time_s": round(train_time, 1),
        "run_dir": str(out),
    }
    write_json(out / METRICS_FILE, report, ensure_ascii=True)
    plots = plot_epochs(task.history, out)
    print(format_history(task.history))
    print()
    print(format_metrics(test_metrics, "test"))
    if best_report is not None and best_report["epoch"] is not None:
        print(f"(best/ is epoch {best_report['epoch']:g}: validation accuracy {100 * best_report['val_accuracy']:.2f}%, "
              f"test accuracy {100 * best_report['test_accuracy']:.2f}%)")
    _log(f"wrote {out / METRICS_FILE}" + "".join(f", {p}" for p in plots) + f"; classifier in {out / 'final'}")
    return report


def _set_dropout(model: nn.Module, rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ScratchLLMError(f"dropout {rate!r}: expected a number in [0, 1)")
    model.config.drop_rate = rate
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = rate
        if hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = rate  # CausalSelfAttention keeps its attention-dropout rate as a float


def format_history(history: list[dict[str, float]]) -> str:
    """The per-epoch table: train/validation loss and accuracy."""
    lines = [f"{'epoch':>7}{'train loss':>12}{'train acc':>11}{'val loss':>10}{'val acc':>9}"]
    for r in history:
        tl = f"{r['train_loss']:.4f}" if "train_loss" in r else "-"
        ta = f"{100 * r['train_accuracy']:.2f}%" if "train_accuracy" in r else "-"
        lines.append(f"{r['epoch']:>7.2f}{tl:>12}{ta:>11}{r['val_loss']:>10.4f}{100 * r['val_accuracy']:>8.2f}%")
    return "\n".join(lines)


def plot_epochs(history: list[dict[str, float]], out: Path) -> list[Path]:
    """OUT/classify-loss.png and OUT/classify-accuracy.png: train and validation curves per epoch
    ([] when matplotlib is missing)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        _log("note: matplotlib is not installed, so no plots (pip install matplotlib)")
        return []
    written = []
    for key, ylabel, name in (("loss", "cross-entropy loss", "classify-loss.png"),
                              ("accuracy", "accuracy", "classify-accuracy.png")):
        fig = Figure(figsize=(6, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for split, style in (("train", "o-"), ("val", "s--")):
            pts = [(r["epoch"], r[f"{split}_{key}"]) for r in history if f"{split}_{key}" in r]
            if pts:
                ax.plot(*zip(*pts), style, label="train" if split == "train" else "validation", markersize=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / name
        tmp = out / f".{name}.tmp-{os.getpid()}.png"
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------------
# `scratchllm classify`


def classify_texts(model: str | os.PathLike[str], texts: Sequence[str] | None = None,
                   input: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] | None = None,
                   device: str = "cpu", batch_size: int = 32) -> list[dict[str, Any]]:
    """Classify `texts`, or the lines of `input` (one text per line; blank lines skipped), with the
    classifier in `model`. Returns one {"text", "label", "probability"} per text; with `out`, also
    writes them as JSONL there."""
    from scratchllm.train import resolve_device

    if (texts is None) == (input is None):
        raise ScratchLLMError("classify: give the text(s) or an input file, not both or neither")
    if input is not None:
        texts = [line for line in read_text(input, expected="a text file, one text per line").splitlines() if line.strip()]
        if not texts:
            raise ScratchLLMError(f"{input}: no texts (expected one text per line)")
    classifier = Classifier.from_pretrained(model, device=resolve_device(device))
    rows = [{"text": t, "label": p.label, "probability": round(p.probability, 6)}
            for t, p in zip(texts, classifier.predict(list(texts), batch_size))]
    if out is not None:
        write_atomic(Path(out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows
