"""`HFTokenizer`: a Hugging Face tokenizer of the byte-level BPE kind (Llama 3, Qwen2.5/3, SmolLM2, GPT-2)
as a `Tokenizer`. Its files are read and checked by hf_files.py and encoded by hf_encoders.py (backends
"python", from scratch, and "tokenizers", the library); it keeps its file's ids, and takes from the files
what they say about special tokens: the eos token (`eot_id`), the post-processor's BOS (`bos_ids`), the
chat template, and the ids that end generation (`stop_ids`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from scratchllm.core.files import write_atomic
from scratchllm.tokenizer.base import Backend, Tokenizer
from scratchllm.tokenizer.chat_template import ChatTemplate
from scratchllm.tokenizer.description import Description
from scratchllm.tokenizer.gpt2 import ENDOFTEXT
from scratchllm.tokenizer.hf_encoders import make_hf_encoder
from scratchllm.tokenizer.hf_files import (HF_TOKENIZER_FILES, TOKENIZER_JSON, HFTokenizerData, parse_hf_tokenizer,
                                           read_hf_tokenizer)


class HFTokenizer(Tokenizer, reads=("hf",)):
    """A Hugging Face tokenizer.json (with its tokenizer_config.json and chat template) as read by
    `read_hf_tokenizer`; `file`: the tokenizer.json it was read from (None: made in memory)."""

    def __init__(self, data: HFTokenizerData, backend: Backend = "auto", *, file: str | None = None) -> None:
        chosen, self._encoder = make_hf_encoder(data, backend)
        self._data = data
        super().__init__(data.special_tokens, dict(data.id_to_bytes), chosen, described_as="hf", file=file)

    # ---- building -----------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, path: str | os.PathLike[str], backend: Backend = "auto", stop_ids: Collection[int] = ()) -> HFTokenizer:
        """A Hugging Face tokenizer of the byte-level BPE kind (Llama 3, Qwen2.5/3, SmolLM2, GPT-2):
        `path` is a directory holding tokenizer.json, or that file; tokenizer_config.json (the named
        special tokens: eos_token is `eot_id`) and the chat template beside it are read too.

        backend "auto" encodes with the `tokenizers` library when it is installed, else "python",
        the from-scratch path (hf_encoders.py); both give transformers' ids. `stop_ids`: more ids that
        end generation (a model's generation_config.json eos_token_id).
        """
        data = read_hf_tokenizer(path, stop_ids)
        return cls(data, backend, file=str(Path(data.source).absolute()))

    @classmethod
    def from_file(cls, path: Path, blob: bytes, data: Any, backend: Backend = "auto") -> HFTokenizer:
        """The tokenizer.json `path`, with the files beside it."""
        return cls.from_hf(path, backend)

    @classmethod
    def _from_recorded(cls, recorded: Description, backend: Backend) -> HFTokenizer:
        assert recorded.file is not None
        return cls.from_hf(recorded.file, backend, recorded.stop_ids)

    def with_backend(self, backend: Backend) -> HFTokenizer:
        return HFTokenizer(self._data, backend, file=self._file)

    def with_special_tokens(self, *tokens: str) -> HFTokenizer:
        """See `Tokenizer.with_special_tokens`: they are added to the tokenizer.json, which a model
        directory then copies."""
        new = [t for t in dict.fromkeys(tokens) if t not in self._special]
        if not new:
            return self
        return HFTokenizer(self._data.with_special_tokens(new), self._backend)

    # ---- its files ----------------------------------------------------------------------------

    @property
    def hf_files(self) -> dict[str, bytes]:
        return {name: self._data.files[name] for name in HF_TOKENIZER_FILES if name in self._data.files}

    @property
    def files(self) -> dict[str, bytes]:
        return self.hf_files

    def to_json_bytes(self) -> bytes:
        """Its tokenizer.json, byte for byte."""
        return self._data.files[TOKENIZER_JSON]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write its files (tokenizer.json, tokenizer_config.json, the chat template) into the directory
        `path`, each atomically, and point its description at that tokenizer.json."""
        path = Path(path)
        for name, blob in self.files.items():
            write_atomic(path / name, blob, "tokenizer file")
        self._file = str((path / TOKENIZER_JSON).absolute())
        return path

    def _recorded_stop_ids(self) -> tuple[int, ...]:
        return self._data.stop_ids

    def __getstate__(self) -> dict[str, Any]:
        # Pickle the files (for spawn-started workers); the parsed tables and the encoder are rebuilt.
        return {"files": self._data.files, "source": self._data.source, "stop_ids": self._data.stop_ids,
                "backend": self._backend, "file": self._file}

    def __setstate__(self, state: dict[str, Any]) -> None:
        data = parse_hf_tokenizer(state["files"], state["source"], state["stop_ids"])
        self.__init__(data, state["backend"], file=state["file"])  # type: ignore[misc]

    # ---- what the files say about special tokens --------------------------------------------

    @property
    def eot_id(self) -> int:
        """Its eos_token (tokenizer_config.json), else its <|endoftext|> (Llama 3.1 base:
        <|end_of_text|>, Llama 3.1 Instruct: <|eot_id|>, Qwen2.5 base: <|endoftext|>, Qwen2.5
        Instruct: <|im_end|>)."""
        if "eos_token" in self._data.named_tokens:
            eos = self._data.token_id(self._data.named_tokens["eos_token"])
            assert eos is not None  # checked when the files were read
            return eos
        return super().eot_id

    @property
    def bos_ids(self) -> tuple[int, ...]:
        """The ids its post-processor puts before a text: Llama 3's (<|begin_of_text|>,); none for
        GPT-2, Qwen and SmolLM2."""
        return self._data.prefix

    def _add_special_tokens(self, ids: list[int]) -> list[int]:
        if self._data.prefix or self._data.suffix:
            return [*self._data.prefix, *ids, *self._data.suffix]
        return ids

    @functools.cached_property
    def stop_ids(self) -> frozenset[int]:  # type: ignore[override]
        """Ids that end generation: `eot_id` and the model's generation_config.json eos ids (given to
        `from_hf`). A prompt laid out by the chat template also stops at the token that closes the
        template's turns (prompts.py); the template is not run to find ids here."""
        ids = set(self._data.stop_ids)
        if "eos_token" in self._data.named_tokens or ENDOFTEXT in self._special:
            ids.add(self.eot_id)
        return frozenset(ids)

    @functools.cached_property
    def chat_template(self) -> ChatTemplate | None:  # type: ignore[override]
        """The model's chat template (tokenizer_config.json "chat_template" or chat_template.jinja),
        with the named special tokens (bos_token, eos_token, ...) as its variables and the special
        tokens a message may spell only as text; None if it has none. Nothing runs until it is used."""
        if self._data.chat_template is None:
            return None
        return ChatTemplate(self._data.chat_template, self._data.named_tokens, self._data.chat_template_origin,
                            self._all_special)

    # ---- the vocabulary and the encoder -------------------------------------------------------

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """Merges in rank order (the file's; its ids are the vocabulary's, not merge ranks)."""
        return list(self._data.merges)

    @property
    def pattern(self) -> str:
        return self._data.pattern

    def _encode_checked(self, text: str, allowed: frozenset[str]) -> list[int]:
        if not allowed or not any(token in text for token in allowed):
            return self._encoder.encode_ordinary(text)
        return self._encoder.encode(text, allowed_special=allowed, disallowed_special=())
