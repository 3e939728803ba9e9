"""A tokenizer's description: the small JSON object a directory records to find its tokenizer again and
to check that it is the same one (config.json's "tokenizer" in a model directory, run_config.json's in a
run directory, meta.json's in a data directory):

    {"type": "gpt2"}                                       OpenAI's GPT-2 vocabulary (built in: no file)
    {"type": "bpe", "file": F, "sha256": H}                a vocabulary trained here, saved as JSON in F
    {"type": "hf", "file": F, "sha256": H,                 a Hugging Face tokenizer.json F (its
     "stop_ids": [...]}                                    tokenizer_config.json and chat template beside it)

F is a file name inside the directory that holds the description (model directories), or a path (what
run and data directories record); H is the SHA-256 of F's bytes, so a tokenizer file that changed since
is refused rather than used with ids it did not make. "stop_ids", only when there are any, are more ids
that end generation (a model's generation_config.json eos ids). A tokenizer not saved yet is described
as {"type": "bpe" | "hf", "file": null}, which cannot be read back.

`description` here is the one writer (`Tokenizer.describe` calls it) and `check_description` the one
checker of the fields (`Tokenizer.from_description` calls it, then compares the file's SHA-256 with
`check_sha256`); `same_tokenizer` compares two descriptions (data prepared with the model's tokenizer?).
Also read, as earlier versions wrote them: {"type": "scratchllm-bpe", ...} (a trained
vocabulary inline), descriptions without "sha256" (nothing to compare) and extra keys ("vocab_size",
"mask_token" in run_config.json), which are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError

# What a directory names its tokenizer's file (a trained vocabulary, or a Hugging Face tokenizer.json).
TOKENIZER_FILE = "tokenizer.json"
GPT2 = "gpt2"
INLINE = "scratchllm-bpe"  # the "type" of a trained vocabulary's own file, accepted inline as a description
TYPES = (GPT2, "bpe", "hf")


@dataclass(frozen=True)
class Description:
    """A description whose fields have been checked: what `Tokenizer.from_description` builds from."""

    type: str  # "gpt2", "bpe", "hf", or "scratchllm-bpe" (the vocabulary is `inline`)
    file: Path | None = None  # the tokenizer file, resolved (inside `directory` when one was given)
    sha256: str | None = None  # what the file's SHA-256 must be; None: not recorded, not checked
    stop_ids: tuple[int, ...] = ()
    inline: Mapping[str, Any] | None = None


def description(type: str, file: str | os.PathLike[str] | None, sha256: str | None,
                stop_ids: Collection[int] = ()) -> dict[str, Any]:
    """The description of a tokenizer of `type` ("gpt2", "bpe" or "hf") kept in `file` (None: not saved)
    whose bytes have SHA-256 `sha256`, with `stop_ids` more ids that end generation."""
    if type not in TYPES:
        raise ValueError(f"tokenizer type {type!r}: expected one of {TYPES}")
    if type == GPT2:
        return {"type": GPT2}
    if file is None:
        return {"type": type, "file": None}
    out: dict[str, Any] = {"type": type, "file": os.fspath(file), "sha256": sha256}
    if stop_ids:
        out["stop_ids"] = list(stop_ids)
    return out


def check_description(data: Any, directory: str | os.PathLike[str] | None = None,
                      source: str | None = None) -> Description:
    """`data`'s fields checked, each fault a one-line error. `directory`: the directory that holds the
    description, whose "file" must then be a file name inside it; else "file" is a path. `source` names
    where the description was read (a config.json) in messages."""
    where = f"{source}: tokenizer" if source else "tokenizer spec"
    if not isinstance(data, Mapping):
        raise ScratchLLMError(f"{where} is {data!r}, expected an object with a 'type'")
    kind = data.get("type")
    if kind == INLINE:
        return Description(INLINE, inline=data)
    if kind not in TYPES:
        raise ScratchLLMError(f"{where} 'type' is {kind!r}, expected 'gpt2', 'bpe', 'hf' or {INLINE!r}")
    if kind == GPT2:
        return Description(GPT2)
    file = data.get("file")
    if not file:
        raise ScratchLLMError(f"{where} 'file' is {file!r}: the tokenizer was never saved, so it cannot be found again")
    if not isinstance(file, str):
        raise ScratchLLMError(f"{where} 'file' is {file!r}, expected the path of a tokenizer file")
    if directory is not None and Path(file).name != file:
        raise ScratchLLMError(f"{where} 'file' is {file!r}, expected a file name inside the directory")
    sha256 = data.get("sha256")
    if sha256 is not None and not isinstance(sha256, str):
        raise ScratchLLMError(f"{where} 'sha256' is {sha256!r}, expected the file's SHA-256 as hex")
    stop_ids = data.get("stop_ids") or []
    if not (isinstance(stop_ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in stop_ids)):
        raise ScratchLLMError(f"{where} 'stop_ids' is {stop_ids!r}, expected a list of token ids")
    path = Path(directory) / file if directory is not None else Path(file)
    return Description(kind, path, sha256 or None, tuple(stop_ids))


def check_sha256(recorded: Description, got: str, source: str | None = None) -> None:
    """Refuse a tokenizer file whose SHA-256 `got` is not the one the description records."""
    if recorded.sha256 is not None and got != recorded.sha256:
        raise ScratchLLMError(f"tokenizer file {recorded.file}: SHA-256 is {got}, expected {recorded.sha256} "
                              f"as recorded in {source or 'the spec'}")


def same_tokenizer(one: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether two descriptions may name the same tokenizer: the same type, and the same SHA-256 where
    both record one (a file's path may differ: a data directory keeps its own copy)."""
    if one.get("type") != other.get("type"):
        return False
    return not (one.get("sha256") and other.get("sha256") and one["sha256"] != other["sha256"])
