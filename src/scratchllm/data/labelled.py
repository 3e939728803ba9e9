"""Labelled examples: text + label files (TSV, CSV, JSONL, JSON) read with one-line errors, the UCI SMS
Spam Collection (downloaded once, checked), duplicate removal, balancing, seeded stratified splits and
label checks.

The one labelled-file reader and the one way to cut it: `finetune classify` and `evaluate fewshot` both
read their data with `load_labelled` and cut it with `split_examples` (label checks, de-duplication,
balancing, the stratified split), so the same settings give both the same test texts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from scratchllm.core.download import cache_dir, download_file
from scratchllm.core.files import json_lines, read_text, write_atomic
from scratchllm.data.duplicates import NEAR_COPY_SIMILARITY, copies_of, copy_groups, normalise_text
from scratchllm.errors import ScratchLLMError

# The UCI SMS Spam Collection (Almeida, Gomez Hidalgo and Yamakami 2011): 5,574 messages, 747 spam.
SMS_SPAM_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"


SMS_SPAM_ZIP_SHA256 = "1587ea43e58e82b14ff1f5425c88e17f8496bfcdb67a583dbff9eefaf9963ce3"


SMS_SPAM_MEMBER = "SMSSpamCollection"  # the data file inside the zip (beside a readme)


SMS_SPAM_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"  # of that member


FORMATS = ("tsv", "csv", "jsonl", "json")



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
            items = json_lines(content, path)
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
    """True unless the first row looks like data of a headerless two-column file.

    A header names a requested column. Otherwise, in a two-column file, one column holds labels: a
    few values that recur. The first row is a header when its field in that column is not one of
    them (the UCI file's "ham" is; a header's "category" is not). With too few rows to see labels
    recur, the file is taken to have no header (the UCI layout)."""
    first = [c.strip() for c in table[0][1]]
    if text_column in first or label_column in first:
        return True
    if len(first) != 2:
        return True
    rest = [row for _, row in table[1:201] if len(row) == 2]
    for c in (0, 1):
        values = [row[c].strip() for row in rest]
        distinct = set(values)
        if len(values) >= 2 and len(distinct) < len(values) and len(distinct) <= max(2, len(values) // 4):
            return first[c] not in distinct
    return False


def load_labelled(
    path: str | os.PathLike[str],
    text_column: str = "text",
    label_column: str = "label",
    format: str | None = None,
    header: bool | None = None,
) -> Examples:
    """Texts and string labels from a TSV, CSV, JSONL or JSON-list file.

    format: tsv | csv | jsonl | json, else from the suffix (or the first line).
    header: True/False for TSV/CSV, None = detect (columns given as positions "0", "1", ... mean
        no header). A headerless file's columns are named by position; a two-column one defaults
        to `label<TAB>text` (the UCI layout).
    """
    path = Path(path).expanduser()
    fmt = _format_of(path, format) if path.is_file() else (format or "tsv")
    if header is None and str(text_column).isdigit() and str(label_column).isdigit() and fmt in ("tsv", "csv"):
        header = False  # columns given by position: the file has no header row
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
    folder = cache_dir() / "sms_spam"
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
# Duplicates: a text that is in two splits is a test question seen in training
#
# The UCI collection repeats texts ("Sorry, I'll call later" 30 times) and templates (the same spam
# with other numbers): 5,574 messages, 5,086 distinct normalised texts in 4,972 groups of copies and
# near-copies (data/duplicates.py). Split as they come, copies land on both sides of a split, and test
# accuracy measures memory as well as classification.


@dataclass
class Duplicates:
    """What `dedupe` removed, by reason (each example is counted under one reason)."""

    repeated: int = 0  # later copies (the same normalised text) of a text whose group agrees on the label
    conflicting: int = 0  # every example of a group of copies whose examples carry different labels
    conflicting_texts: int = 0  # the groups among those
    held_out: int = 0  # examples that copy or nearly copy a text of a held-out set (a given validation or test file)
    near: int = 0  # later near-copies (a different normalised text, >= NEAR_COPY_SIMILARITY alike) in an agreeing group

    @property
    def removed(self) -> int:
        return self.repeated + self.conflicting + self.held_out + self.near


def dedupe(data: Examples, held_out: Sequence[Examples] = (),
           threshold: float | None = NEAR_COPY_SIMILARITY) -> tuple[Examples, Duplicates]:
    """`data` with one example per group of copies (`copy_groups`: equal normalised texts and
    near-copies), in file order, and the counts of what went.

    The first example of a group is kept. When the examples of a group carry different labels, all of
    them go: which label is right cannot be told from the file, and keeping the first would make file
    order decide. Examples that copy or nearly copy a text of a `held_out` set (a validation or test
    file given beside the training data) go first, so that no held-out text is trained on.
    """
    banned = copies_of(data.texts, [t for part in held_out for t in part.texts], threshold)
    stats = Duplicates(held_out=sum(banned))
    rest = [i for i, b in enumerate(banned) if not b]
    texts = [data.texts[i] for i in rest]
    groups = copy_groups(texts, threshold)
    labels_of: dict[int, set[str]] = {}
    for group, i in zip(groups, rest):
        labels_of.setdefault(group, set()).add(data.labels[i])
    stats.conflicting_texts = sum(len(v) > 1 for v in labels_of.values())
    keep, seen_groups, seen_keys = [], set(), set()
    for group, i, text in zip(groups, rest, texts):
        key = normalise_text(text)
        if len(labels_of[group]) > 1:
            stats.conflicting += 1
        elif key in seen_keys:
            stats.repeated += 1
        elif group in seen_groups:
            stats.near += 1
        else:
            keep.append(i)
        seen_groups.add(group)
        seen_keys.add(key)
    return data.subset(keep), stats


def overlap(train: Examples, other: Examples, threshold: float | None = NEAR_COPY_SIMILARITY) -> int:
    """How many examples of `other` copy or nearly copy a text of `train`."""
    return sum(copies_of(other.texts, train.texts, threshold))


# --------------------------------------------------------------------------------------------------
# Balancing and splitting


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


def check_labels(train: Examples, others: Sequence[Examples], names: Sequence[str] | None = None) -> list[str]:
    """The label names of `train`; raise if it has one class or another split has an unseen label.

    With `names` (labels chosen by the caller, e.g. few-shot candidates, in their order): raise unless
    they are at least two distinct non-empty labels and every label of `train` and `others` is one of
    them; return them."""
    if names is not None:
        names = [str(name).strip() for name in names]
        if len(names) < 2 or len(set(names)) != len(names) or not all(names):
            raise ScratchLLMError(f"labels {names}: expected at least two distinct non-empty labels")
        for part in (train, *others):
            for i, label in enumerate(part.labels):
                if label not in names:
                    raise ScratchLLMError(f"{part.source} example {i + 1}: label {label!r} is not one of the "
                                          f"labels {', '.join(names)}")
        return names
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


@dataclass
class Split:
    """Labelled data cut for classification (`split_examples`): the parts, the label names, and what
    went before the cut."""

    train: Examples
    val: Examples
    test: Examples
    labels: list[str]
    read: int  # examples in the data before anything was removed
    carved: int  # examples left after de-duplication and balancing, which the parts not given were cut from
    duplicates: Duplicates | None  # what `dedupe` removed; None when duplicates were kept
    repeats: int  # with duplicates kept: examples that copy or nearly copy an earlier one (else 0)
    balanced: tuple[dict[str, int], dict[str, int]] | None  # class counts before and after undersampling


def split_examples(data: Examples, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 123, *,
                   val: Examples | None = None, test: Examples | None = None, keep_duplicates: bool = False,
                   balance: bool = False, labels: Sequence[str] | None = None) -> Split:
    """Check the labels, drop duplicate texts, balance, and split `data` into train, validation and test.

    In this order, so that no text is on two sides of the cut: `check_labels` (one class, or a label of a
    given part that `data` lacks or that is not among `labels`, fails before anything is done); `dedupe`
    unless keep_duplicates (one example per group of copies and near-copies, data/duplicates.py; groups
    with conflicting labels all dropped, and no example that copies a text of a given `val` or `test`);
    `undersample` when `balance` and the
    classes differ in size; `stratified_split` by `fractions` (train, validation, test), seeded. A part
    given as `val` or `test` is used as it is and its fraction goes to the others, which keep their
    relative sizes.
    """
    given = [part for part in (val, test) if part is not None]
    names = check_labels(data, given, labels)
    read, stats, repeats, balanced = len(data), None, 0, None
    if keep_duplicates:
        repeats = len(data) - len(set(copy_groups(data.texts)))
    else:
        data, stats = dedupe(data, given)
    if balance and len(set(data.counts().values())) > 1:
        before = data.counts()
        data = undersample(data, seed)
        balanced = (before, data.counts())
    carved = [fractions[0], 0.0 if val is not None else fractions[1], 0.0 if test is not None else fractions[2]]
    total = sum(carved)
    if not total > 0:
        raise ScratchLLMError(f"split fractions {list(fractions)}: nothing left to carve the parts not given as files from")
    train, val_part, test_part = stratified_split(data, [f / total for f in carved], seed)
    train.source = f"{data.source} (train split)"
    return Split(train, val if val is not None else val_part, test if test is not None else test_part, names, read,
                 len(data), stats, repeats, balanced)


def class_weights(labels: Sequence[str], names: Sequence[str]) -> torch.Tensor:
    """Loss weights n / (K * n_k): each class contributes equally to the loss (the "balanced"
    weighting of King and Zeng 2001), the alternative to throwing examples away by undersampling."""
    counts = Counter(labels)
    n, k = len(labels), len(names)
    return torch.tensor([n / (k * counts[c]) if counts[c] else 0.0 for c in names], dtype=torch.float32)

