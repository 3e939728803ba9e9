"""Hugging Face tokenizer files of the byte-level BPE kind (GPT-2, Llama 3, Qwen2/2.5/3, SmolLM2): reading
and checking them, and writing one for a vocabulary trained here.

`read_hf_tokenizer` reads tokenizer.json, with tokenizer_config.json, special_tokens_map.json and
chat_template.jinja beside it, into an `HFTokenizerData`. `parse_hf_tokenizer` checks the files with one
reader per section of tokenizer.json ("added_tokens", "model" (its vocabulary and its merges),
"normalizer", "pre_tokenizer", "post_processor", "decoder") and per companion file (the named special
tokens, the chat template); each reader takes the section's raw JSON and says what is wrong with it in
one line naming the file and the field. hf_pipeline.py has what each step does. Anything outside the
byte-level BPE kind (a Unigram model, a Metaspace pre-tokenizer) is refused there.

`byte_level_tokenizer_json` writes the other way: a tokenizer.json that gives a trained vocabulary's ids.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regex

from scratchllm.core.files import parse_json
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.bpe import BYTE_PIECES, GPT2_PATTERN, bytes_to_unicode
from scratchllm.tokenizer.hf_pipeline import SPLIT_BEHAVIORS, AddedToken, PrefixSpace, Split

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# The files that make up a Hugging Face tokenizer (what a model directory copies), tokenizer.json first.
HF_TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, CHAT_TEMPLATE_FILE, SPECIAL_TOKENS_MAP)
# tokenizer_config.json's named special tokens (transformers' SPECIAL_TOKENS_ATTRIBUTES); a chat
# template sees each one that is set as a variable ({{ bos_token }}).
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# str.translate table: each of GPT-2's byte characters -> the Latin-1 character of its byte, and every
# other character below 256 -> U+FFFF, which Latin-1 cannot encode, so text that is not byte-level
# fails to encode instead of passing as bytes.
_BYTE_LEVEL_TABLE = {**dict.fromkeys(range(256), 0xFFFF), **{ord(ch): b for b, ch in bytes_to_unicode().items()}}


@dataclass(frozen=True)
class HFTokenizerData:
    """A Hugging Face byte-level BPE tokenizer as read from its files (see `read_hf_tokenizer`)."""

    files: dict[str, bytes]  # file name -> bytes, as read (what a model directory copies)
    source: str  # where it came from, for messages
    vocab: dict[bytes, int]  # the BPE model's vocabulary: token bytes -> id
    id_to_bytes: dict[int, bytes]  # every id's bytes (an added token's: its UTF-8 text)
    pair_ranks: dict[tuple[bytes, bytes], int]  # merge (left, right) -> its rank (place in the merge list)
    merges: list[tuple[bytes, bytes]]  # in rank order
    ignore_merges: bool
    added: list[AddedToken]
    normalization: tuple[str, ...]  # unicodedata forms applied in order ("NFC", ...)
    pre_tokenizer: tuple[Callable[[str], list[str]], ...]  # applied in order to every piece
    prefix: tuple[int, ...]  # ids the post-processor puts before a text
    suffix: tuple[int, ...]  # and after it
    named_tokens: dict[str, str]  # tokenizer_config.json: "bos_token" / "eos_token" / ... -> token text
    chat_template: str | None
    chat_template_origin: str  # the file (and field) the template came from
    stop_ids: tuple[int, ...] = ()  # more ids that end generation (generation_config.json's eos_token_id)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t.content: t.id for t in self.added if t.special}

    @property
    def pattern(self) -> str:
        """The regex of the first split (for display: `Tokenizer.pattern`)."""
        return next((step.pattern for step in self.pre_tokenizer if isinstance(step, Split)), "")

    def token_id(self, text: str) -> int | None:
        """The id of a token given as text (an added token's content, or a vocabulary token's bytes)."""
        for token in self.added:
            if token.content == text:
                return token.id
        return self.vocab.get(text.encode("utf-8"))

    def normalize(self, text: str) -> str:
        for form in self.normalization:
            text = unicodedata.normalize(form, text)
        return text

    def with_special_tokens(self, tokens: Sequence[str]) -> HFTokenizerData:
        """A copy with `tokens` added as special tokens after the last id (tokenizer.json rewritten)."""
        data = json.loads(self.files[TOKENIZER_JSON])
        n = len(self.id_to_bytes)
        data.setdefault("added_tokens", []).extend(
            {"id": n + k, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for k, t in enumerate(tokens))
        files = {**self.files, TOKENIZER_JSON: json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8")}
        return parse_hf_tokenizer(files, self.source, self.stop_ids)


# --------------------------------------------------------------------------------------------
# Reading the files


def read_hf_tokenizer(path: str | os.PathLike[str], stop_ids: Collection[int] = ()) -> HFTokenizerData:
    """Read a Hugging Face tokenizer: `path` is a directory holding tokenizer.json, or that file; the
    tokenizer_config.json, chat_template.jinja and special_tokens_map.json beside it are read too when
    present. `stop_ids`: more ids that end generation (a model's generation_config.json eos_token_id)."""
    path = Path(path)
    file = path / TOKENIZER_JSON if path.is_dir() else path
    if not file.is_file():
        what = f"{path}: no {TOKENIZER_JSON} (a Hugging Face tokenizer file)" if path.is_dir() else f"{path}: not found"
        raise ScratchLLMError(what)
    files: dict[str, bytes] = {}
    for name in HF_TOKENIZER_FILES:
        where = file if name == TOKENIZER_JSON else file.parent / name
        if where.is_file():
            try:
                files[name] = where.read_bytes()
            except OSError as exc:
                raise ScratchLLMError(f"{where}: cannot read: {exc}") from None
    return parse_hf_tokenizer(files, str(file), stop_ids)


def parse_hf_tokenizer(files: Mapping[str, bytes], source: str, stop_ids: Collection[int] = ()) -> HFTokenizerData:
    """Check and parse the files `read_hf_tokenizer` read (tokenizer.json is required), a section at a time."""
    data = _load_json(files[TOKENIZER_JSON], source)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ScratchLLMError(f"{source}: not a Hugging Face tokenizer.json (no 'model' object)")
    model = data["model"]
    _model_kind(model, source)
    added = _added_tokens(data.get("added_tokens"), source)
    vocab, id_to_bytes, token_bytes = _vocabulary(model.get("vocab"), added, source)
    merges, pair_ranks = _merges(model.get("merges"), vocab, token_bytes, source)
    prefix, suffix = _post_processor(data.get("post_processor"), id_to_bytes, source)
    _decoder(data.get("decoder"), source)
    config = _tokenizer_config(files, source)
    named = _named_tokens(files, config, source)
    template, origin = _chat_template(files, config, source)
    result = HFTokenizerData(
        files=dict(files), source=source, vocab=vocab, id_to_bytes=id_to_bytes, pair_ranks=pair_ranks, merges=merges,
        ignore_merges=_field(model, "ignore_merges", bool, False, source, "model"), added=added,
        normalization=_normalizer(data.get("normalizer"), source),
        pre_tokenizer=_pre_tokenizer(data.get("pre_tokenizer"), source),
        prefix=prefix, suffix=suffix, named_tokens=named, chat_template=template, chat_template_origin=origin,
        stop_ids=tuple(int(i) for i in stop_ids),
    )
    for name, text in named.items():
        if result.token_id(text) is None:
            raise ScratchLLMError(f"{_beside(source, TOKENIZER_CONFIG)}: {name} {text!r} is not a token of {source}")
    bad = [i for i in result.stop_ids if i not in id_to_bytes]
    if bad:
        raise ScratchLLMError(f"stop ids {bad}: not ids of {source} (0..{len(id_to_bytes) - 1})")
    return result


def _load_json(blob: bytes, source: str) -> Any:
    try:
        return parse_json(blob.decode("utf-8"), source)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScratchLLMError(f"{source}: not valid JSON: {exc}") from None


_JSON_TYPES = {bool: "true or false", int: "an integer", str: "a string", list: "a list", dict: "an object"}


def _field(section: Mapping[str, Any], key: str, kind: type, default: Any, source: str, where: str) -> Any:
    """section[key] (`default` when absent or null), checked to be of JSON type `kind`: a hostile or
    hand-edited file is a one-line error naming the field, not a TypeError deep in the pipeline."""
    value = section.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ScratchLLMError(f"{source}: {where}.{key} is {_short(value)}; expected {_JSON_TYPES[kind]}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _beside(source: str, name: str) -> str:
    return str(Path(source).parent / name)


def _byte_level(token: str, source: str, where: str) -> bytes:
    """The bytes a byte-level token stands for (each character is one byte, in GPT-2's map)."""
    try:
        return token.translate(_BYTE_LEVEL_TABLE).encode("latin-1")
    except UnicodeEncodeError:
        raise ScratchLLMError(f"{source}: {where} {token!r} is not byte-level text (GPT-2's byte-to-character "
                              "map); only byte-level BPE tokenizers are supported") from None


# ---- tokenizer.json, a section at a time ---------------------------------------------------------


def _model_kind(model: dict[str, Any], source: str) -> None:
    """"model": a byte-level BPE, with none of the options byte-level BPEs do without."""
    if model.get("type", "BPE") != "BPE":
        raise ScratchLLMError(f"{source}: model.type is {model.get('type')!r}; only byte-level 'BPE' tokenizers are supported")
    for key in ("dropout", "byte_fallback", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ScratchLLMError(f"{source}: model.{key} is {model.get(key)!r}; byte-level BPE tokenizers have none")


def _added_tokens(entries: Any, source: str) -> list[AddedToken]:
    """"added_tokens": the tokens cut out of the text before anything else."""
    added = []
    if entries is not None and not isinstance(entries, list):
        raise ScratchLLMError(f"{source}: added_tokens is {_short(entries)}; expected a list of tokens")
    for k, entry in enumerate(entries or []):
        if not (isinstance(entry, dict) and _field(entry, "id", int, None, source, f"added_tokens[{k}]") is not None
                and entry["id"] >= 0 and isinstance(entry.get("content"), str) and entry["content"]):
            raise ScratchLLMError(f"{source}: added_tokens[{k}] is {_short(entry)}; expected an object with an int 'id' "
                                  "and a 'content'")
        where = f"added_tokens[{k}]"
        if _field(entry, "single_word", bool, False, source, where):
            raise ScratchLLMError(f"{source}: added token {entry['content']!r} has single_word true, which is not supported")
        special = _field(entry, "special", bool, False, source, where)
        added.append(AddedToken(id=entry["id"], content=entry["content"], special=special,
                                normalized=_field(entry, "normalized", bool, not special, source, where),
                                lstrip=_field(entry, "lstrip", bool, False, source, where),
                                rstrip=_field(entry, "rstrip", bool, False, source, where)))
    return added


def _vocabulary(raw_vocab: Any, added: list[AddedToken],
                source: str) -> tuple[dict[bytes, int], dict[int, bytes], dict[str, bytes]]:
    """"model.vocab" with the added tokens: (token bytes -> id, id -> bytes, the vocabulary's token
    strings -> their bytes, which the merges name tokens by). Ids run from 0 without gaps, and all 256
    single bytes are tokens."""
    if not isinstance(raw_vocab, dict) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                  for i in raw_vocab.values()):
        raise ScratchLLMError(f"{source}: model.vocab must map token strings to ids (integers >= 0)")
    added_text = {t.content: t.id for t in added}
    vocab: dict[bytes, int] = {}
    id_to_bytes: dict[int, bytes] = {}
    token_bytes: dict[str, bytes] = {}
    for token, i in raw_vocab.items():
        if added_text.get(token) == i:  # an added token listed in the vocabulary too: it is its text
            b = token.encode("utf-8")
        else:
            b = _byte_level(token, source, "model.vocab token")
        if i in id_to_bytes and id_to_bytes[i] != b:
            raise ScratchLLMError(f"{source}: model.vocab gives id {i} to two tokens")
        vocab[b] = i
        id_to_bytes[i] = b
        token_bytes[token] = b
    for t in added:
        if t.id in id_to_bytes and id_to_bytes[t.id] != t.content.encode("utf-8"):
            raise ScratchLLMError(f"{source}: added token {t.content!r} has id {t.id}, which the vocabulary gives to "
                                  f"{id_to_bytes[t.id]!r}")
        id_to_bytes[t.id] = t.content.encode("utf-8")
    missing_ids = sorted(set(range(len(id_to_bytes))) - id_to_bytes.keys())
    if missing_ids:
        raise ScratchLLMError(f"{source}: token ids must run from 0 to {len(id_to_bytes) - 1} without gaps; "
                              f"id {missing_ids[0]} is unused")
    missing = [b for b in BYTE_PIECES if b not in vocab]
    if missing:
        raise ScratchLLMError(f"{source}: model.vocab lacks {len(missing)} of the 256 byte tokens (e.g. {missing[0]!r}); "
                              "a byte-level BPE needs them all (train with initial_alphabet=ByteLevel.alphabet())")
    return vocab, id_to_bytes, token_bytes


def _merges(raw_merges: Any, vocab: Mapping[bytes, int], token_bytes: Mapping[str, bytes],
            source: str) -> tuple[list[tuple[bytes, bytes]], dict[tuple[bytes, bytes], int]]:
    """"model.merges" ("left right" strings or [left, right] pairs): (merges in rank order, pair -> rank)."""
    raw_merges = raw_merges or []
    if not isinstance(raw_merges, list):
        raise ScratchLLMError(f"{source}: model.merges must be a list")
    merges: list[tuple[bytes, bytes]] = []
    pair_ranks: dict[tuple[bytes, bytes], int] = {}
    for rank, merge in enumerate(raw_merges):
        parts = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str) for p in parts)):
            raise ScratchLLMError(f"{source}: model.merges[{rank}] is {merge!r}; expected 'left right' or [left, right]")
        left, right = token_bytes.get(parts[0]), token_bytes.get(parts[1])
        for piece in (left, right, (left or b"") + (right or b"")):
            if piece not in vocab:
                name = next(p for p, b in zip(parts, (left, right)) if b is None) if piece is None else piece
                raise ScratchLLMError(f"{source}: model.merges[{rank}] {merge!r} uses {name!r}, "
                                      "which is not in model.vocab")
        assert left is not None and right is not None
        merges.append((left, right))
        pair_ranks[(left, right)] = rank  # a repeated pair keeps its last rank, as in `tokenizers`
    return merges, pair_ranks


def _normalizer(spec: Any, source: str) -> tuple[str, ...]:
    """"normalizer": the Unicode normal forms applied, in order."""
    if spec is None:
        return ()
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return (kind,)
    if kind == "Sequence":
        parts = _field(spec, "normalizers", list, [], source, "normalizer")
        return tuple(form for part in parts for form in _normalizer(part, source))
    raise ScratchLLMError(f"{source}: normalizer {kind!r} is not supported (only NFC, NFD, NFKC, NFKD and a "
                          "Sequence of them)")


def _pre_tokenizer(spec: Any, source: str) -> tuple[Callable[[str], list[str]], ...]:
    """"pre_tokenizer": its steps, applied in order to every piece, ending with the ByteLevel step."""
    if not isinstance(spec, dict):
        raise ScratchLLMError(f"{source}: no pre_tokenizer; only byte-level BPE tokenizers (ending with ByteLevel) "
                              "are supported")
    parts = _field(spec, "pretokenizers", list, [], source, "pre_tokenizer") if spec.get("type") == "Sequence" else [spec]
    steps: list[Callable[..., list[str]]] = []
    for k, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        last = k == len(parts) - 1
        where = f"pre_tokenizer step {k}"
        if kind == "ByteLevel" and last:
            if _field(part, "add_prefix_space", bool, False, source, where):
                steps.append(PrefixSpace())
            if _field(part, "use_regex", bool, True, source, where):
                steps.append(Split(GPT2_PATTERN))
        elif kind == "Split":
            steps.append(_split(part, source, where))
        elif kind == "Digits":
            steps.append(Split(r"\p{N}" if _field(part, "individual_digits", bool, False, source, where) else r"\p{N}+"))
        else:
            raise ScratchLLMError(f"{source}: pre_tokenizer step {kind!r}{'' if last else ' before the last'} is not "
                                  "supported; expected Split and Digits steps followed by one ByteLevel step")
    if not parts or not isinstance(parts[-1], dict) or parts[-1].get("type") != "ByteLevel":
        raise ScratchLLMError(f"{source}: the pre_tokenizer does not end with ByteLevel; only byte-level BPE "
                              "tokenizers are supported")
    return tuple(steps)


def _split(part: Mapping[str, Any], source: str, where: str) -> Split:
    """A Split step: its pattern ({"Regex": ...} or {"String": ...}), behavior and invert flag."""
    pattern = part.get("pattern")
    text = None
    if isinstance(pattern, dict) and isinstance(pattern.get("Regex"), str):
        text = pattern["Regex"]
    elif isinstance(pattern, dict) and isinstance(pattern.get("String"), str):
        text = regex.escape(pattern["String"])
    behavior = part.get("behavior", "Isolated")
    if not text or not isinstance(behavior, str) or behavior not in SPLIT_BEHAVIORS:
        raise ScratchLLMError(f"{source}: {where} Split {_short(part)}: expected a pattern {{\"Regex\": ...}} or "
                              f"{{\"String\": ...}} and a behavior among {', '.join(SPLIT_BEHAVIORS)}")
    try:
        regex.compile(text)
    except (regex.error, RecursionError, OverflowError) as exc:
        raise ScratchLLMError(f"{source}: {where} Split pattern {_short(text)} is not a valid regex: {exc}") from None
    return Split(text, behavior, _field(part, "invert", bool, False, source, where))


def _post_processor(spec: Any, id_to_bytes: Mapping[int, bytes], source: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """"post_processor": (ids before, ids after) a single text: TemplateProcessing's special tokens around "$A"."""
    if spec is None:
        return (), ()
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "ByteLevel":  # only moves offsets
        return (), ()
    if kind == "Sequence":
        prefix: tuple[int, ...] = ()
        suffix: tuple[int, ...] = ()
        for part in _field(spec, "processors", list, [], source, "post_processor"):
            before, after = _post_processor(part, id_to_bytes, source)
            prefix, suffix = prefix + before, suffix + after
        return prefix, suffix
    if kind == "TemplateProcessing":
        specials = _field(spec, "special_tokens", dict, {}, source, "post_processor")
        around: list[list[int]] = [[], []]
        side = 0
        for k, item in enumerate(_field(spec, "single", list, [], source, "post_processor")):
            if isinstance(item, dict) and "Sequence" in item:
                side = 1
                continue
            token = item.get("SpecialToken") if isinstance(item, dict) else None
            name = token.get("id") if isinstance(token, dict) else None
            if not isinstance(name, str):
                raise ScratchLLMError(f"{source}: post_processor.single[{k}] is {_short(item)}; expected "
                                      '{"SpecialToken": {"id": NAME}} or {"Sequence": ...}')
            entry = specials.get(name)
            ids = entry.get("ids") if isinstance(entry, dict) else None
            if not isinstance(ids, list) or not all(isinstance(i, int) and i in id_to_bytes for i in ids):
                raise ScratchLLMError(f"{source}: post_processor special token {name!r} has no ids in this vocabulary")
            around[side].extend(ids)
        return tuple(around[0]), tuple(around[1])
    raise ScratchLLMError(f"{source}: post_processor {kind!r} is not supported (TemplateProcessing, ByteLevel or a "
                          "Sequence of them)")


def _decoder(spec: Any, source: str) -> None:
    """"decoder": ByteLevel (alone or as the only step of a Sequence), the inverse of the byte map."""
    if isinstance(spec, dict) and spec.get("type") == "Sequence":
        kinds = [p.get("type") if isinstance(p, dict) else None
                 for p in _field(spec, "decoders", list, [], source, "decoder")]
    else:
        kinds = [spec.get("type") if isinstance(spec, dict) else None]
    if kinds != ["ByteLevel"]:
        raise ScratchLLMError(f"{source}: decoder {_short(kinds)} is not supported; byte-level BPE tokenizers decode "
                              "with ByteLevel")


# ---- the files beside it -------------------------------------------------------------------------


def _tokenizer_config(files: Mapping[str, bytes], source: str) -> dict[str, Any]:
    """tokenizer_config.json as an object ({} when absent)."""
    if TOKENIZER_CONFIG not in files:
        return {}
    config = _load_json(files[TOKENIZER_CONFIG], _beside(source, TOKENIZER_CONFIG))
    if not isinstance(config, dict):
        raise ScratchLLMError(f"{_beside(source, TOKENIZER_CONFIG)}: expected a JSON object")
    return config


def _named_tokens(files: Mapping[str, bytes], config: Mapping[str, Any], source: str) -> dict[str, str]:
    """The named special tokens ("bos_token", "eos_token", ...) -> their text: tokenizer_config.json's,
    else special_tokens_map.json's (older models)."""
    legacy = _load_json(files[SPECIAL_TOKENS_MAP], _beside(source, SPECIAL_TOKENS_MAP)) if SPECIAL_TOKENS_MAP in files else {}
    named = {}
    for name in NAMED_SPECIAL_TOKENS:
        value = config.get(name, legacy.get(name) if isinstance(legacy, dict) else None)
        if isinstance(value, dict):  # written as an AddedToken: {"content": ..., "lstrip": ...}
            value = value.get("content")
        if value is None:
            continue
        if not isinstance(value, str):
            raise ScratchLLMError(f"{_beside(source, TOKENIZER_CONFIG)}: {name} is {value!r}; expected a token string")
        named[name] = value
    return named


def _chat_template(files: Mapping[str, bytes], config: Mapping[str, Any], source: str) -> tuple[str | None, str]:
    """The chat template and where it came from: chat_template.jinja when present (it takes priority, as in
    transformers), else tokenizer_config.json's "chat_template" (a string, or a list of named templates:
    "default")."""
    if CHAT_TEMPLATE_FILE in files:
        origin = _beside(source, CHAT_TEMPLATE_FILE)
        try:
            return files[CHAT_TEMPLATE_FILE].decode("utf-8"), origin
        except UnicodeDecodeError as exc:
            raise ScratchLLMError(f"{origin}: not UTF-8 text ({exc})") from None
    origin = f"{_beside(source, TOKENIZER_CONFIG)} field 'chat_template'"
    value = config.get("chat_template")
    if isinstance(value, list):
        if not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in value):
            raise ScratchLLMError(f"{origin}: expected a template string or a list of {{\"name\": STRING, \"template\": "
                                  f"STRING}}, got {_short(value)}")
        named = {t["name"]: t.get("template") for t in value}
        value = named.get("default")
        origin += " ('default')"
        if value is None:
            raise ScratchLLMError(f"{origin}: the list of templates has none named 'default' (names: {sorted(named)})")
    if value is not None and not isinstance(value, str):
        raise ScratchLLMError(f"{origin}: expected a Jinja template string")
    return value, origin


# ------------------------------------------------------------------------------------------------
# Writing: a tokenizer trained here, as files transformers' AutoTokenizer reads


def byte_level_tokenizer_json(vocab: Sequence[bytes], special_tokens: Mapping[str, int], pattern: str,
                              merges: Sequence[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    """tokenizer.json for a byte-level BPE whose token i has bytes vocab[i] (merges are id order),
    split by `pattern`, with `special_tokens` (name -> id) after the vocabulary.

    The two merge rules (hf_pipeline.py, step 4) are reconciled by listing, for every token in id
    order, each way of writing it as two earlier tokens: the pair ranks then order pairs by the id
    of the token they make, which is the rule `BPETokenizer.encode` follows (tiktoken's). The trained
    merges alone gave the same ids on tinyshakespeare (vocabularies of 700 and 4,096), but not in
    general: with merges ab, bc, a+bc, our rule turns ab + c into abc and a list of trained pairs
    does not (tests/tokenizer/test_hf.py). One case stays apart: the same token made at two places of
    one piece by different splits (tiktoken takes the leftmost, the list the earlier split).
    `merges` (pairs in rank order) replaces that list where the ranks are known (OpenAI's GPT-2 merges).
    """
    char = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(char[b] for b in token)

    if merges is None:
        ids = {token: i for i, token in enumerate(vocab)}
        merges = [(token[:cut], token[cut:]) for token in vocab for cut in range(1, len(token))
                  if ids.get(token[:cut], len(vocab)) < ids[token] and ids.get(token[cut:], len(vocab)) < ids[token]]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for name, i in sorted(special_tokens.items(), key=lambda kv: kv[1])],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {text(token): i for i, token in enumerate(vocab)},
                  "merges": [[text(left), text(right)] for left, right in merges]},
    }
