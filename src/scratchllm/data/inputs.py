"""The inputs of `scratchllm prepare`: the files an input names (files, directories, glob patterns), text
read in chunks cut where tokenization cannot change (so the ids of the chunks are exactly those of the
whole file), and the documents of a JSON Lines file.
"""

from __future__ import annotations

import codecs
import glob
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import regex

from scratchllm.data.tokens import undecodable_error
from scratchllm.errors import ScratchLLMError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIX = ".jsonl"


# --------------------------------------------------------------------------------------------------
# Finding inputs


def find_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files named by `inputs`: files as given, directories searched recursively for *.txt, *.md and
    *.jsonl (hidden files and folders skipped), glob patterns (`**` recurses) expanded. Sorted within
    each input, first occurrence kept. Raises if any input matches nothing."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[Path] = []
    seen: set[str] = set()
    unmatched: list[str] = []
    for spec in inputs:
        spec = str(spec)
        if glob.has_magic(spec):
            candidates = [Path(p) for p in sorted(glob.glob(spec, recursive=True))]
        else:
            candidates = [Path(spec)] if os.path.exists(spec) else []
        files: list[Path] = []
        for path in candidates:
            if path.is_dir():
                files.extend(walk_directory(path))
            elif path.is_file():
                files.append(path)
        if not files:
            unmatched.append(spec)
        for path in files:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                found.append(path)
    if unmatched or not found:
        raise ScratchLLMError(
            f"no input files matched {', '.join(map(repr, unmatched or list(map(str, inputs))))} "
            f"(expected text files, directories holding {', '.join((*TEXT_SUFFIXES, JSONL_SUFFIX))} files, or glob patterns)")
    return found


def walk_directory(directory: Path) -> list[Path]:
    """The *.txt, *.md and *.jsonl files under `directory`, sorted, hidden files and folders skipped."""
    files = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(root) / n for n in sorted(names)
                     if not n.startswith(".") and n.endswith((*TEXT_SUFFIXES, JSONL_SUFFIX)))
    return files


def is_jsonl(path: Path) -> bool:
    """A JSON Lines file (one document per line, in its `text` field), by its suffix."""
    return path.suffix == JSONL_SUFFIX


# --------------------------------------------------------------------------------------------------
# Reading text in chunks that tokenize exactly like the whole text
#
# Why a cut at "letter or digit | whitespace" keeps the ids identical to encoding the whole file:
# BPE never merges across pre-tokens, so the ids of a text are the ids of its pre-tokens in order,
# and it suffices that pre-tokenizing the two halves gives the pre-tokens of the whole. GPT-2's
# pattern  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+  has no pre-token
# with a non-space character followed by a whitespace character (whitespace appears only as one
# leading space, or in all-whitespace runs), so position p with text[p-1] a letter/digit and text[p]
# whitespace is a pre-token boundary of the whole text. Right half: matching restarts at p in both
# cases and the pattern has no look-behind or anchors, so it sees the same characters. Left half:
# the last pre-token (a letter, digit or contraction run) stops at p whether p holds whitespace or
# the end of the string, and the only look-ahead, (?!\S), is tried after whitespace, never at p.
# Cutting at arbitrary whitespace would NOT be safe: "Hello\n\nWorld" pre-tokenizes to "\n", "\n"
# (ids 198, 198), but a chunk ending in "Hello\n\n" gives the single pre-token "\n\n" (id 628),
# because at the end of the string "\s+(?!\S)" takes the whole run. The same argument holds for the
# cl100k/o200k patterns (their letter and digit runs also end before whitespace); a custom pattern
# that lets a pre-token run from a letter into whitespace would break it.

# Searched backwards (regex's (?r) flag) for the separator, then the letter/digit before it is checked:
# the separator is rare in long runs of letters, so the search stays fast there.
_CUT_NEWLINE = regex.compile(r"(?r)(?<=[\p{L}\p{Nd}])[\r\n]")
_CUT_ANY = regex.compile(r"(?r)(?<=[\p{L}\p{Nd}])[\r\n ]")


def safe_cut(text: str, start: int = 0) -> int:
    """Largest p (start < p < len(text)) where `text[:p]` and `text[p:]` tokenize to exactly the ids
    of `text`: just before a newline or space that follows a letter or digit. A newline in the second
    half is preferred so that chunks end at line ends when there are lines; 0 when there is no such
    place."""
    match = _CUT_NEWLINE.search(text, max(start + 1, len(text) // 2)) or _CUT_ANY.search(text, start + 1)
    return match.start() if match else 0


def iter_text_chunks(path: Path, chunk_bytes: int, errors: str = "strict",
                     digest: Any | None = None) -> Iterator[tuple[str, int]]:
    """Pieces of one UTF-8 text file, each cut at a `safe_cut` point of about `chunk_bytes`, as
    (text, raw bytes read since the previous piece). Bytes are decoded without newline translation
    ("\\r\\n" stays). A file with no cut point for longer than a chunk is held until the next one.
    `digest` (a hashlib object) is fed every raw byte."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    carry = ""
    searched = 0  # carry[:searched] is known to hold no cut point
    fed = 0  # bytes handed to the decoder so far
    unreported = 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            final = not raw
            if digest is not None:
                digest.update(raw)
            pending = len(decoder.getstate()[0])  # bytes of an unfinished character held back
            try:
                text = decoder.decode(raw, final)
            except UnicodeDecodeError as exc:  # exc.object = held-back bytes + raw
                raise undecodable_error(path, fed - pending + exc.start, exc.reason) from None
            fed += len(raw)
            unreported += len(raw)
            buf = carry + text if carry else text
            if final:
                if buf:
                    yield buf, unreported
                return
            if len(buf) < chunk_bytes:
                carry = buf
                continue
            cut = safe_cut(buf, searched)
            if cut == 0:  # no cut point yet (e.g. a long run without spaces): read on
                carry, searched = buf, max(0, len(buf) - 1)
                continue
            yield buf[:cut], unreported
            unreported = 0
            carry, searched = buf[cut:], 0


def iter_jsonl_documents(path: Path, errors: str = "strict", digest: Any | None = None) -> Iterator[tuple[str, int]]:
    """The `text` field of each record of a JSON Lines file, as (text, raw bytes of its line).
    Blank lines are skipped; records with an empty text give ""."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if digest is not None:
                digest.update(line)
            start, offset = offset, offset + len(line)
            if not line.strip():
                yield "", len(line)
                continue
            try:
                decoded = line.decode("utf-8", errors)
            except UnicodeDecodeError as exc:
                raise undecodable_error(path, start + exc.start, exc.reason) from None
            try:
                record = json.loads(decoded)
            except json.JSONDecodeError as exc:
                raise ScratchLLMError(f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ScratchLLMError(f"{path} line {number}: expected a JSON object with a string 'text' field")
            text = record["text"]
            if not text.isascii():
                try:  # JSON escapes can spell lone surrogates ("\ud800"), which have no UTF-8 bytes
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    if errors == "strict":
                        raise ScratchLLMError(
                            f"{path} line {number}: 'text' holds a lone surrogate U+{ord(text[exc.start]):04X}; "
                            "pass errors='replace' (--errors replace) to substitute U+FFFD") from None
                    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
            yield text, len(line)


def count_documents(files: Sequence[Path]) -> int:
    """Documents in `files`: one per text file, one per non-blank JSONL line (a cheap pre-pass)."""
    n = 0
    for path in files:
        if is_jsonl(path):
            with open(path, "rb") as f:
                n += sum(1 for line in f if line.strip())
        else:
            n += 1
    return n
