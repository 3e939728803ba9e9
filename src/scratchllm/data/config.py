"""The options of the data layer, declared once: `LabelledConfig` (a labelled file, how to read it and
how to split it: the group `finetune classify` composes) and the options of the text verbs,
`scratchllm prepare` and `scratchllm tokenizer` (which sit here rather than in tokenizer/, whose
package imports numpy and regex: `scratchllm --help` stays fast). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scratchllm.core.options import check_fields, option


@dataclass(kw_only=True)
class LabelledConfig:
    """Labelled examples: the file, its columns and format, and how it is split (data/labelled.py)."""

    data: str | None = None
    """labelled TSV/CSV/JSONL/JSON file, or sms-spam (the UCI SMS Spam Collection, downloaded once; the default)"""
    text_column: str = "text"
    """text column: header name / JSON key, or 0-based position without a header"""
    label_column: str = "label"
    """label column, as text_column (a headerless two-column file is label, text)"""
    format: Literal["tsv", "csv", "jsonl", "json"] | None = None
    """file format (default: from the file name)"""
    header: bool | None = None
    """the TSV/CSV file has a header row (default: detect)"""
    val: str | None = None
    """validation file with the same columns (default: carved out of data)"""
    test: str | None = None
    """test file (default: carved out of data)"""
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    """train, validation, test fractions of data (stratified, seeded)"""
    keep_duplicates: bool = False
    """keep repeated texts (default: one example per text, before balancing and splitting, so that no text
    is in two splits; texts are compared case-folded with numbers, codes and web addresses masked, and
    near-copies, 90% alike word for word, count as copies; copies with conflicting labels are all
    dropped, and so are training texts that copy a text of --val/--test)"""
    balance: Literal["undersample", "weights", "none"] = "undersample"
    """undersample every class to the smallest (the book), or weight the loss by inverse class frequency"""
    split_seed: int | None = None
    """seed of balancing and split only (default: the training seed), to vary training seeds over one test set"""

    def __post_init__(self) -> None:
        check_fields(self, "labelled data")


@dataclass(kw_only=True)
class PrepareConfig:
    """`scratchllm prepare`: text files into a DATADIR of token shards (data/prepare.py `prepare`)."""

    input: list[str] = option(metavar="PATH")
    """text files, directories (recursively *.txt, *.md, *.jsonl with a 'text' field) or glob patterns"""
    tokenizer: str = "gpt2"
    """'gpt2' or a tokenizer .json file"""
    out: str = option(metavar="DATADIR")
    """output directory (must not exist or be empty)"""
    val_fraction: float = 0.005
    """share of documents (or of the token stream) held out"""
    workers: int = 1
    """tokenizer processes (output is identical for any number)"""
    errors: Literal["strict", "replace"] = "strict"
    """undecodable UTF-8: stop with the file and byte offset, or substitute U+FFFD"""
    context_length: int = 1024
    """training window; the corpus needs one window of tokens, val gets one when possible"""
    shard_tokens: int = 100_000_000
    """tokens per shard file"""
    seed: int = 0
    """seed of the document split"""
    overwrite: bool = False
    """replace an existing DATADIR (only once the new one is complete)"""
    progress: bool = True
    """progress bar on stderr"""

    def __post_init__(self) -> None:
        check_fields(self, "prepare")


@dataclass(kw_only=True)
class TokenizerTrainConfig:
    """`scratchllm tokenizer train`: learn a byte-level BPE vocabulary (tokenizer.py `train_tokenizer`)."""

    input: list[str] = option(metavar="FILE")
    """UTF-8 text files (one document each)"""
    vocab_size: int
    """256 byte tokens + merges + special tokens"""
    out: str
    """tokenizer JSON file to write"""
    special_tokens: list[str] = option(default_factory=lambda: ["<|endoftext|>"], nargs="*")
    """special tokens appended to the vocabulary"""
    overwrite: bool = False
    """replace an existing --out file"""

    def __post_init__(self) -> None:
        check_fields(self, "tokenizer train")


@dataclass(kw_only=True)
class TokenizerEncodeConfig:
    """`scratchllm tokenizer encode`: the ids and pieces of a text (tokenizer.py `token_pieces`)."""

    tokenizer: str = "gpt2"
    """gpt2 or a tokenizer JSON file"""
    text: str
    """the text to encode"""
    json: bool = False
    """print [[id, piece], ...] as JSON"""

    def __post_init__(self) -> None:
        check_fields(self, "tokenizer encode")

