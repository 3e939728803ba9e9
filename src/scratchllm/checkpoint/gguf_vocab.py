"""A tokenizer as GGUF metadata: the `tokenizer.ggml.*` keys llama.cpp reads to encode and decode text.

llama.cpp's byte-level BPE ("gpt2" tokenizer model) needs every token as text in the byte-to-unicode
alphabet of GPT-2 (`tokenizer.ggml.tokens`), its kind (`token_type`: normal, control for special
tokens, user-defined for added tokens that are matched in text but not special, unused for padding
ids), the merges in rank order (`merges`, "left right"), and the name of the pre-tokenizer that splits
text before the merges (`pre`): llama.cpp implements a fixed set of them by name. The name is read
here from the tokenizer's own split, not guessed from a hash of its ids:

    our split                                          llama.cpp pre-tokenizer
    GPT-2's regex (GPT-2's files, tokenizers trained   "gpt-2"
    here, a tokenizer.json ByteLevel with use_regex)
    Llama 3's regex (digits in groups of three)        "llama-bpe" (whole pre-tokens looked up first)
    Qwen2's regex (single digits)                      "qwen2"
    single digits, then GPT-2's regex (SmolLM2)        "smollm"

Any other split is a one-line error: a GGUF would tokenize differently. A tokenizer.json normalizer
other than NFC is refused for the same reason; NFC is kept out of the file (llama.cpp has none), as
llama.cpp's own converter does for Qwen2, so text that is not already NFC may tokenize differently.

Also written: the BOS, EOS, end-of-turn and padding ids, whether a BOS starts every text, and the
chat template. Three sources give one tokenizer.json-shaped description (`tokenizer_description`):
a Hugging Face tokenizer's own file, GPT-2's vocabulary with OpenAI's merges, and a tokenizer
trained here through `byte_level_tokenizer_json` (whose merge list gives its lowest-id rule under
the pair ranks llama.cpp uses, as for `export-hf`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import Tokenizer
from scratchllm.tokenizer.bpe import GPT2_PATTERN
from scratchllm.tokenizer.hf_files import TOKENIZER_CONFIG, TOKENIZER_JSON, byte_level_tokenizer_json

# The regexes of today's tokenizer.json files, as published with the models (Llama 3.x; Qwen2, Qwen2.5, Qwen3).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_DIGITS_THEN_GPT2 = "single digits, then GPT-2's regex"

# our split -> (llama.cpp's pre-tokenizer name, whether llama.cpp looks a whole pre-token up before merging)
PRE_TOKENIZERS: dict[str, tuple[str, bool]] = {
    GPT2_PATTERN: ("gpt-2", False),
    LLAMA3_PATTERN: ("llama-bpe", True),
    QWEN2_PATTERN: ("qwen2", False),
    _DIGITS_THEN_GPT2: ("smollm", False),
}

# gguf.TokenType's values (the gguf package is imported where a file is written)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass(frozen=True)
class GGUFVocab:
    """What a GGUF file records of a tokenizer (the `tokenizer.ggml.*` and `tokenizer.chat_template` keys)."""

    tokens: list[str]
    """Every id's text: byte-level alphabet for ordinary tokens, the text itself for added ones."""
    types: list[int]
    """Every id's gguf.TokenType: 1 normal, 3 control (special), 4 user-defined (added, not special), 5 unused."""
    merges: list[str]
    """"left right" in rank order."""
    pre: str
    """llama.cpp's pre-tokenizer name."""
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    """The special token that ends an assistant turn in the chat template (often the EOS too)."""
    pad_id: int | None
    add_bos: bool
    """A BOS starts every text (Llama 3)."""
    chat_template: str | None


def tokenizer_description(tokenizer: Tokenizer) -> dict[str, Any]:
    """A tokenizer.json-shaped description of `tokenizer` (model.vocab, model.merges, added_tokens,
    pre_tokenizer, normalizer): a Hugging Face tokenizer's own file, else built from its vocabulary."""
    kind = tokenizer.spec.get("type")
    if tokenizer.hf_files:
        return json.loads(tokenizer.hf_files[TOKENIZER_JSON])
    specials = tokenizer.special_tokens
    ordinary = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size - len(specials))]
    # GPT-2's: OpenAI's merges, as every GPT-2 file has them (the same ids on real text)
    return byte_level_tokenizer_json(ordinary, specials, tokenizer.pattern,
                                     merges=tokenizer.merges if kind == "gpt2" else None)


def _split_of(pre_tokenizer: Any) -> str:
    """Our split (a key of PRE_TOKENIZERS) of a tokenizer.json pre_tokenizer, or a short description of it."""
    steps = pre_tokenizer.get("pretokenizers", []) if isinstance(pre_tokenizer, Mapping) and \
        pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    kinds = [step.get("type") if isinstance(step, Mapping) else None for step in steps]

    def byte_level(step: Mapping[str, Any], use_regex: bool) -> bool:
        return (step.get("type") == "ByteLevel" and bool(step.get("use_regex", True)) is use_regex
                and not step.get("add_prefix_space", False))

    if len(steps) == 1 and byte_level(steps[0], True):
        return GPT2_PATTERN
    if kinds == ["Split", "ByteLevel"] and byte_level(steps[1], False) and steps[0].get("behavior") == "Isolated" \
            and not steps[0].get("invert", False) and isinstance(steps[0].get("pattern"), Mapping):
        return steps[0]["pattern"].get("Regex", "a string split")
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level(steps[1], True):
        return _DIGITS_THEN_GPT2
    return " + ".join(str(k) for k in kinds)


def pre_tokenizer_name(description: Mapping[str, Any], where: str = "tokenizer") -> str:
    """llama.cpp's pre-tokenizer for a tokenizer.json description, or a one-line error."""
    split = _split_of(description.get("pre_tokenizer"))
    if split not in PRE_TOKENIZERS:
        known = "GPT-2's, Llama 3's or Qwen2's regex, or single digits then GPT-2's"
        raise ScratchLLMError(f"{where}: its pre-tokenizer ({split}) is none that llama.cpp implements ({known}); "
                              "a GGUF file would split text differently")
    name, whole_words = PRE_TOKENIZERS[split]
    ignore_merges = bool(description.get("model", {}).get("ignore_merges", False))
    if ignore_merges != whole_words:
        raise ScratchLLMError(f"{where}: ignore_merges is {str(ignore_merges).lower()}, but llama.cpp's {name!r} "
                              f"pre-tokenizer {'looks whole pre-tokens up first' if whole_words else 'always merges'}")
    normalizer = description.get("normalizer")
    if normalizer is not None and (not isinstance(normalizer, Mapping) or normalizer.get("type") != "NFC"):
        kind = normalizer.get("type") if isinstance(normalizer, Mapping) else normalizer
        raise ScratchLLMError(f"{where}: its normalizer {kind!r} has no llama.cpp counterpart (only NFC is left out)")
    return name


def _named_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """tokenizer_config.json's named tokens (bos_token, eos_token, pad_token, ...) -> their text."""
    blob = tokenizer.hf_files.get(TOKENIZER_CONFIG)
    config = json.loads(blob) if blob else {}
    named = {}
    for key, value in config.items():
        if key.endswith("_token") and isinstance(value, Mapping):
            value = value.get("content")
        if key.endswith("_token") and isinstance(value, str):
            named[key] = value
    return named


def gguf_vocab(tokenizer: Tokenizer, vocab_size: int, where: str = "tokenizer") -> GGUFVocab:
    """The GGUF metadata of `tokenizer` for a model of `vocab_size` ids (ids past the tokenizer's are
    unused padding); its pre-tokenizer must be one llama.cpp implements (a one-line error otherwise)."""
    if tokenizer.vocab_size > vocab_size:
        raise ScratchLLMError(f"{where}: the tokenizer has {tokenizer.vocab_size} ids but the model only {vocab_size}")
    description = tokenizer_description(tokenizer)
    pre = pre_tokenizer_name(description, where)
    model = description["model"]
    added = {entry["id"]: entry for entry in description.get("added_tokens", [])}
    by_id = {i: text for text, i in model["vocab"].items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    ids = {text: i for i, text in enumerate(tokens)}
    named = {key: ids.get(text) for key, text in _named_tokens(tokenizer).items()}
    try:
        eos = tokenizer.eot_id
    except ScratchLLMError:  # a tokenizer without an end-of-text token
        eos = named.get("eos_token")
    bos = named.get("bos_token", tokenizer.bos_ids[0] if tokenizer.bos_ids else eos)
    template = tokenizer.chat_template
    # the special token that closes an assistant turn (<|im_end|>, <|eot_id|>)
    end = template.turn_end_token() if template is not None else None
    eot = tokenizer.special_tokens.get(end) if end is not None else None
    return GGUFVocab(tokens=tokens, types=types, merges=merges, pre=pre, bos_id=bos, eos_id=eos,
                     eot_id=eot, pad_id=named.get("pad_token"), add_bos=bool(tokenizer.bos_ids),
                     chat_template=template.source if template is not None else None)


def add_vocab(writer: Any, vocab: GGUFVocab) -> None:
    """Write `vocab` into a gguf.GGUFWriter."""
    writer.add_tokenizer_model("gpt2")  # llama.cpp's byte-level BPE
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    for add, value in ((writer.add_bos_token_id, vocab.bos_id), (writer.add_eos_token_id, vocab.eos_id),
                       (writer.add_eot_token_id, vocab.eot_id), (writer.add_pad_token_id, vocab.pad_id)):
        if value is not None:
            add(value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
