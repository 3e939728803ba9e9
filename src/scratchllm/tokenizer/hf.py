"""Hugging Face tokenizer files of the byte-level BPE kind (GPT-2, Llama 3, Qwen2/2.5/3, SmolLM2), read
from scratch: tokenizer.json, with tokenizer_config.json and chat_template.jinja beside it.

A tokenizer.json describes a pipeline (the `tokenizers` library's "The tokenization pipeline"):

1. Added tokens ("added_tokens": <|im_start|>, <|eot_id|>, ...) are cut out of the text first, so the
   text between them is encoded on its own. Special ones are control tokens; `Tokenizer.encode`
   matches them only when allowed (tiktoken's rule), non-special ones are ordinary vocabulary.
2. Normalizer: Qwen2 applies Unicode NFC; GPT-2 and Llama 3 have none.
3. Pre-tokenizer: a regex splits the text into pieces (Llama 3 and Qwen: a `Split` with their own
   pattern, which cuts digit runs into groups of up to three or into single digits; GPT-2: the
   `ByteLevel` step with GPT-2's pattern), and `ByteLevel` turns each piece into its UTF-8 bytes,
   written with GPT-2's byte-to-character map (bpe.py `bytes_to_unicode`).
4. Model: BPE over a vocabulary (token -> id, in any order) and a merge list. Merging follows the
   *pair* ranks: the adjacent pair that comes earliest in the merge list is merged first (leftmost on
   ties). This differs from bpe.py, where ids are merge ranks and the rule is "the pair whose merged
   token has the lowest id" (tiktoken's). With `ignore_merges` (Llama 3), a piece that is a token
   of the vocabulary as a whole is that token, whatever the merges would do.
5. Post-processor: `TemplateProcessing` puts special tokens around the ids (Llama 3: <|begin_of_text|>
   first); `encode(..., add_special_tokens=True)` applies it, as transformers' `tokenizer(text)` does.
6. Decoder: `ByteLevel` maps the characters back to bytes.

`read_hf_tokenizer` reads and checks the files into an `HFTokenizerData`; two encoders give the same ids
from it with the interface `Tokenizer` uses for a backend (tiktoken.Encoding's `encode_ordinary` /
`encode`): `PythonHFEncoder`, written here step by step, and `TokenizersHFEncoder`, the `tokenizers`
library (optional: `pip install 'scratchllm[hf]'`). Regexes run on the `regex` module here and on
Oniguruma there; the two agree on every character Python's Unicode database knows, but characters
assigned by a later Unicode version than one of them knows may be classified differently.
"""

from __future__ import annotations

import functools
import heapq
import json
import os
import unicodedata
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regex

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.bpe import BYTE_PIECES, GPT2_PATTERN, bytes_to_unicode

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
_CACHE_LIMIT = 100_000  # pieces kept by the python encoder's word cache (cleared when full)
_SPLIT_BEHAVIORS = ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous")


# --------------------------------------------------------------------------------------------
# What the files say


@dataclass(frozen=True)
class AddedToken:
    """One entry of tokenizer.json's "added_tokens": matched in the text before anything else.

    normalized: matched in the normalized text (else in the raw text); lstrip / rstrip: the match
    takes the whitespace on its left / right with it.
    """

    id: int
    content: str
    special: bool
    normalized: bool = False
    lstrip: bool = False
    rstrip: bool = False


@dataclass(frozen=True)
class Split:
    """One regex split of the pre-tokenizer (tokenizers' `Split`; `ByteLevel`'s own regex and
    `Digits` are splits too). The regex's matches and the text between them alternate; `invert`
    swaps the two; `behavior` says what becomes of the matches: "Isolated" pieces of their own,
    "Removed", "MergedWithPrevious" / "MergedWithNext" (joined to the text before / after them),
    "Contiguous" (consecutive matches joined)."""

    pattern: str
    behavior: str = "Isolated"
    invert: bool = False

    @functools.cached_property
    def compiled(self) -> regex.Pattern[str]:
        return regex.compile(self.pattern)

    def __call__(self, text: str) -> list[str]:
        segments: list[tuple[str, bool]] = []  # (text, is a match), in order
        end = 0
        for m in self.compiled.finditer(text):
            if m.start() > end:
                segments.append((text[end : m.start()], False))
            segments.append((m.group(), True))
            end = m.end()
        if end < len(text):
            segments.append((text[end:], False))
        if self.invert:
            segments = [(t, not is_match) for t, is_match in segments]
        if self.behavior == "Removed":
            pieces = [t for t, is_match in segments if not is_match]
        elif self.behavior == "Isolated":
            pieces = [t for t, _ in segments]
        elif self.behavior == "MergedWithNext":  # the mirror image of MergedWithPrevious
            pieces = [t[::-1] for t in _merge_matches([(t[::-1], m) for t, m in reversed(segments)])][::-1]
        elif self.behavior == "MergedWithPrevious":
            pieces = _merge_matches(segments)
        else:  # Contiguous
            pieces = []
            before = False
            for t, is_match in segments:
                if pieces and is_match == before:
                    pieces[-1] += t
                else:
                    pieces.append(t)
                before = is_match
        return [p for p in pieces if p]


def _merge_matches(segments: list[tuple[str, bool]]) -> list[str]:
    """A match joins the piece before it when that piece is not a match itself."""
    pieces: list[str] = []
    before = False
    for t, is_match in segments:
        if is_match and not before and pieces:
            pieces[-1] += t
        else:
            pieces.append(t)
        before = is_match
    return pieces


@dataclass(frozen=True)
class PrefixSpace:
    """`ByteLevel(add_prefix_space=true)`: a piece that does not start with a space gets one."""

    def __call__(self, text: str) -> list[str]:
        return [text if text.startswith(" ") else " " + text]


@dataclass
class HFTokenizerData:
    """A Hugging Face byte-level BPE tokenizer as read from its files (see `read_hf_tokenizer`)."""

    files: dict[str, bytes]  # file name -> bytes, as read (what a model directory copies)
    source: str  # where it came from, for messages
    vocab: dict[bytes, int]  # the BPE model's vocabulary: token bytes -> id
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
    id_to_bytes: dict[int, bytes] = field(default_factory=dict)

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


def _load_json(blob: bytes, source: str) -> Any:
    try:
        return json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScratchLLMError(f"{source}: not valid JSON: {exc}") from None


def _byte_level(token: str, source: str, where: str) -> bytes:
    """The bytes a byte-level token stands for (each character is one byte, in GPT-2's map)."""
    try:
        return token.translate(_BYTE_LEVEL_TABLE).encode("latin-1")
    except UnicodeEncodeError:
        raise ScratchLLMError(f"{source}: {where} {token!r} is not byte-level text (GPT-2's byte-to-character "
                              "map); only byte-level BPE tokenizers are supported") from None


def parse_hf_tokenizer(files: Mapping[str, bytes], source: str, stop_ids: Collection[int] = ()) -> HFTokenizerData:
    """Check and parse the files `read_hf_tokenizer` read (tokenizer.json is required)."""
    data = _load_json(files[TOKENIZER_JSON], source)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ScratchLLMError(f"{source}: not a Hugging Face tokenizer.json (no 'model' object)")
    model = data["model"]
    if model.get("type", "BPE") != "BPE":
        raise ScratchLLMError(f"{source}: model.type is {model.get('type')!r}; only byte-level 'BPE' tokenizers are supported")
    for key in ("dropout", "byte_fallback", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ScratchLLMError(f"{source}: model.{key} is {model.get(key)!r}; byte-level BPE tokenizers have none")
    raw_vocab = model.get("vocab")
    if not isinstance(raw_vocab, dict) or not all(isinstance(i, int) for i in raw_vocab.values()):
        raise ScratchLLMError(f"{source}: model.vocab must map token strings to ids")

    added = [_added_token(entry, k, source) for k, entry in enumerate(data.get("added_tokens") or [])]
    added_text = {t.content: t.id for t in added}
    vocab: dict[bytes, int] = {}
    id_to_bytes: dict[int, bytes] = {}
    text_to_bytes: dict[str, bytes] = {}  # model.vocab's strings -> their bytes (merges name tokens by string)
    for token, i in raw_vocab.items():
        if added_text.get(token) == i:  # an added token listed in the vocabulary too: it is its text
            b = token.encode("utf-8")
        else:
            b = _byte_level(token, source, "model.vocab token")
        if i in id_to_bytes and id_to_bytes[i] != b:
            raise ScratchLLMError(f"{source}: model.vocab gives id {i} to two tokens")
        vocab[b] = i
        id_to_bytes[i] = b
        text_to_bytes[token] = b
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

    merges: list[tuple[bytes, bytes]] = []
    pair_ranks: dict[tuple[bytes, bytes], int] = {}
    raw_merges = model.get("merges") or []
    if not isinstance(raw_merges, list):
        raise ScratchLLMError(f"{source}: model.merges must be a list")
    for rank, merge in enumerate(raw_merges):
        parts = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str) for p in parts)):
            raise ScratchLLMError(f"{source}: model.merges[{rank}] is {merge!r}; expected 'left right' or [left, right]")
        left, right = text_to_bytes.get(parts[0]), text_to_bytes.get(parts[1])
        for piece in (left, right, (left or b"") + (right or b"")):
            if piece not in vocab:
                name = next(p for p, b in zip(parts, (left, right)) if b is None) if piece is None else piece
                raise ScratchLLMError(f"{source}: model.merges[{rank}] {merge!r} uses {name!r}, "
                                      "which is not in model.vocab")
        merges.append((left, right))
        pair_ranks[(left, right)] = rank  # a repeated pair keeps its last rank, as in `tokenizers`

    config: dict[str, Any] = {}
    if TOKENIZER_CONFIG in files:
        config = _load_json(files[TOKENIZER_CONFIG], _beside(source, TOKENIZER_CONFIG))
        if not isinstance(config, dict):
            raise ScratchLLMError(f"{_beside(source, TOKENIZER_CONFIG)}: expected a JSON object")
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
    template, origin = _chat_template(files, config, source)
    result = HFTokenizerData(
        files=dict(files), source=source, vocab=vocab, pair_ranks=pair_ranks, merges=merges,
        ignore_merges=bool(model.get("ignore_merges", False)), added=added,
        normalization=_normalizer(data.get("normalizer"), source),
        pre_tokenizer=_pre_tokenizer(data.get("pre_tokenizer"), source),
        prefix=(), suffix=(), named_tokens=named, chat_template=template, chat_template_origin=origin,
        stop_ids=tuple(int(i) for i in stop_ids), id_to_bytes=id_to_bytes,
    )
    result.prefix, result.suffix = _post_processor(data.get("post_processor"), result, source)
    _decoder(data.get("decoder"), source)
    for name, text in named.items():
        if result.token_id(text) is None:
            raise ScratchLLMError(f"{_beside(source, TOKENIZER_CONFIG)}: {name} {text!r} is not a token of {source}")
    bad = [i for i in result.stop_ids if i not in id_to_bytes]
    if bad:
        raise ScratchLLMError(f"stop ids {bad}: not ids of {source} (0..{len(id_to_bytes) - 1})")
    return result


def _beside(source: str, name: str) -> str:
    return str(Path(source).parent / name)


def _added_token(entry: Any, k: int, source: str) -> AddedToken:
    if not (isinstance(entry, dict) and isinstance(entry.get("id"), int) and isinstance(entry.get("content"), str)
            and entry["content"]):
        raise ScratchLLMError(f"{source}: added_tokens[{k}] is {entry!r}; expected an object with an int 'id' and a 'content'")
    if entry.get("single_word"):
        raise ScratchLLMError(f"{source}: added token {entry['content']!r} has single_word true, which is not supported")
    special = bool(entry.get("special", False))
    return AddedToken(id=entry["id"], content=entry["content"], special=special,
                      normalized=bool(entry.get("normalized", not special)),
                      lstrip=bool(entry.get("lstrip", False)), rstrip=bool(entry.get("rstrip", False)))


def _normalizer(spec: Any, source: str) -> tuple[str, ...]:
    if spec is None:
        return ()
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return (kind,)
    if kind == "Sequence":
        return tuple(form for part in spec.get("normalizers", []) for form in _normalizer(part, source))
    raise ScratchLLMError(f"{source}: normalizer {kind!r} is not supported (only NFC, NFD, NFKC, NFKD and a "
                          "Sequence of them)")


def _pre_tokenizer(spec: Any, source: str) -> tuple[Callable[[str], list[str]], ...]:
    """The pre-tokenizer as a list of steps, ending with the ByteLevel step."""
    if not isinstance(spec, dict):
        raise ScratchLLMError(f"{source}: no pre_tokenizer; only byte-level BPE tokenizers (ending with ByteLevel) "
                              "are supported")
    parts = spec.get("pretokenizers", []) if isinstance(spec, dict) and spec.get("type") == "Sequence" else [spec]
    steps: list[Callable[[str], list[str]]] = []
    for k, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        last = k == len(parts) - 1
        if kind == "ByteLevel" and last:
            if part.get("add_prefix_space", False):
                steps.append(PrefixSpace())
            if part.get("use_regex", True):
                steps.append(Split(GPT2_PATTERN))
        elif kind == "Split":
            pattern = part.get("pattern") or {}
            text = pattern.get("Regex") if "Regex" in pattern else regex.escape(pattern.get("String", ""))
            behavior = part.get("behavior", "Isolated")
            if not text or behavior not in _SPLIT_BEHAVIORS:
                raise ScratchLLMError(f"{source}: pre_tokenizer Split {part!r}: expected a Regex or String pattern "
                                      f"and a behavior among {', '.join(_SPLIT_BEHAVIORS)}")
            try:
                regex.compile(text)
            except regex.error as exc:
                raise ScratchLLMError(f"{source}: pre_tokenizer Split pattern {text!r} is not a valid regex: {exc}") from None
            steps.append(Split(text, behavior, bool(part.get("invert", False))))
        elif kind == "Digits":
            steps.append(Split(r"\p{N}" if part.get("individual_digits", False) else r"\p{N}+"))
        else:
            raise ScratchLLMError(f"{source}: pre_tokenizer step {kind!r}{'' if last else ' before the last'} is not "
                                  "supported; expected Split and Digits steps followed by one ByteLevel step")
    if not parts or not isinstance(parts[-1], dict) or parts[-1].get("type") != "ByteLevel":
        raise ScratchLLMError(f"{source}: the pre_tokenizer does not end with ByteLevel; only byte-level BPE "
                              "tokenizers are supported")
    return tuple(steps)


def _post_processor(spec: Any, data: HFTokenizerData, source: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ids before, ids after) a single text: TemplateProcessing's special tokens around "$A"."""
    if spec is None:
        return (), ()
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "ByteLevel":  # only moves offsets
        return (), ()
    if kind == "Sequence":
        prefix: tuple[int, ...] = ()
        suffix: tuple[int, ...] = ()
        for part in spec.get("processors", []):
            before, after = _post_processor(part, data, source)
            prefix, suffix = prefix + before, suffix + after
        return prefix, suffix
    if kind == "TemplateProcessing":
        specials = spec.get("special_tokens", {})
        around: list[list[int]] = [[], []]
        side = 0
        for item in spec.get("single", []):
            if "Sequence" in item:
                side = 1
                continue
            name = item.get("SpecialToken", {}).get("id")
            ids = specials.get(name, {}).get("ids")
            if not isinstance(ids, list) or not all(isinstance(i, int) and i in data.id_to_bytes for i in ids):
                raise ScratchLLMError(f"{source}: post_processor special token {name!r} has no ids in this vocabulary")
            around[side].extend(ids)
        return tuple(around[0]), tuple(around[1])
    raise ScratchLLMError(f"{source}: post_processor {kind!r} is not supported (TemplateProcessing, ByteLevel or a "
                          "Sequence of them)")


def _decoder(spec: Any, source: str) -> None:
    kinds = [p.get("type") for p in spec.get("decoders", [])] if isinstance(spec, dict) and spec.get("type") == "Sequence" \
        else [spec.get("type") if isinstance(spec, dict) else None]
    if kinds != ["ByteLevel"]:
        raise ScratchLLMError(f"{source}: decoder {kinds} is not supported; byte-level BPE tokenizers decode with ByteLevel")


def _chat_template(files: Mapping[str, bytes], config: Mapping[str, Any], source: str) -> tuple[str | None, str]:
    """The chat template: chat_template.jinja when present (it takes priority, as in transformers),
    else tokenizer_config.json's "chat_template" (a string, or a list of named templates: "default")."""
    if CHAT_TEMPLATE_FILE in files:
        origin = _beside(source, CHAT_TEMPLATE_FILE)
        try:
            return files[CHAT_TEMPLATE_FILE].decode("utf-8"), origin
        except UnicodeDecodeError as exc:
            raise ScratchLLMError(f"{origin}: not UTF-8 text ({exc})") from None
    origin = f"{_beside(source, TOKENIZER_CONFIG)} field 'chat_template'"
    value = config.get("chat_template")
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
        origin += " ('default')"
        if value is None:
            raise ScratchLLMError(f"{origin}: the list of templates has none named 'default' (names: {sorted(map(str, named))})")
    if value is not None and not isinstance(value, str):
        raise ScratchLLMError(f"{origin}: expected a Jinja template string")
    return value, origin


# --------------------------------------------------------------------------------------------
# Encoding, from scratch


def merge_by_pair_rank(piece: bytes, pair_ranks: Mapping[tuple[bytes, bytes], int]) -> list[bytes]:
    """BPE with Hugging Face's rule: merge the adjacent pair with the lowest rank in the merge list,
    leftmost on ties, until no adjacent pair is a merge. A heap of (rank, position) candidates over a
    linked list of parts; an entry is stale (skipped) when the pair now at its position is another."""
    parts: list[bytes | None] = list(map(BYTE_PIECES.__getitem__, piece))
    n = len(parts)
    nxt = list(range(1, n + 1))  # n marks "no right neighbour"
    prv = list(range(-1, n - 1))
    get = pair_ranks.get
    heap = [(r, i) for i in range(n - 1) if (r := get((parts[i], parts[i + 1]))) is not None]  # type: ignore[arg-type]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        j = nxt[i]
        if parts[i] is None or j >= n or get((parts[i], parts[j])) != rank:  # type: ignore[arg-type]
            continue
        merged = parts[i] + parts[j]  # type: ignore[operator]
        parts[i], parts[j] = merged, None
        k = nxt[j]
        nxt[i] = k
        if k < n:
            prv[k] = i
            if (r := get((merged, parts[k]))) is not None:  # type: ignore[arg-type]
                heapq.heappush(heap, (r, i))
        p = prv[i]
        if p >= 0 and (r := get((parts[p], merged))) is not None:  # type: ignore[arg-type]
            heapq.heappush(heap, (r, p))
    return [part for part in parts if part is not None]


class AddedTokenSplitter:
    """Cuts added tokens out of a text, as the `tokenizers` library does: tokens with normalized false
    are found in the raw text, the rest is normalized, then tokens with normalized true are found in
    it. Longest match first; lstrip / rstrip matches take adjacent whitespace with them."""

    def __init__(self, data: HFTokenizerData):
        self.data = data
        self._patterns: dict[tuple[AddedToken, ...], regex.Pattern[str]] = {}

    def _pattern(self, tokens: tuple[AddedToken, ...]) -> regex.Pattern[str]:
        pattern = self._patterns.get(tokens)
        if pattern is None:
            # One capturing group per token, so the match's `lastindex` names the token.
            pattern = regex.compile("|".join(("\\s*" if t.lstrip else "") + f"({regex.escape(t.content)})"
                                             + ("\\s*" if t.rstrip else "") for t in tokens))
            self._patterns[tokens] = pattern
        return pattern

    def _tokens(self, allowed: frozenset[str], normalized: bool) -> tuple[AddedToken, ...]:
        chosen = [t for t in self.data.added
                  if t.normalized == normalized and (not t.special or t.content in allowed)]
        return tuple(sorted(chosen, key=lambda t: (-len(t.content), t.content)))

    def split(self, text: str, allowed: frozenset[str]) -> list[str | AddedToken]:
        """`text` as normalized text pieces and the added tokens between them (specials only if allowed)."""
        out: list[str | AddedToken] = []
        for piece in self._cut(text, self._tokens(allowed, normalized=False)):
            if isinstance(piece, AddedToken):
                out.append(piece)
            else:
                out.extend(self._cut(self.data.normalize(piece), self._tokens(allowed, normalized=True)))
        return out

    def _cut(self, text: str, tokens: tuple[AddedToken, ...]) -> list[str | AddedToken]:
        if not tokens:
            return [text] if text else []
        pattern = self._pattern(tokens)
        out: list[str | AddedToken] = []
        end = 0
        for m in pattern.finditer(text):
            if m.start() > end:
                out.append(text[end : m.start()])
            out.append(tokens[m.lastindex - 1])
            end = m.end()
        if end < len(text):
            out.append(text[end:])
        return out


class PythonHFEncoder:
    """The readable path: added tokens, normalizer, pre-tokenizer, pair-rank BPE, in Python."""

    def __init__(self, data: HFTokenizerData):
        self.data = data
        self.splitter = AddedTokenSplitter(data)
        self._cache: dict[str, tuple[int, ...]] = {}

    def _piece_ids(self, piece: str) -> tuple[int, ...]:
        ids = self._cache.get(piece)
        if ids is None:
            word = piece.encode("utf-8")
            vocab = self.data.vocab
            if self.data.ignore_merges and word in vocab:
                ids = (vocab[word],)
            else:
                ids = tuple(vocab[part] for part in merge_by_pair_rank(word, self.data.pair_ranks))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def _text_ids(self, text: str) -> list[int]:
        pieces = [text]
        for step in self.data.pre_tokenizer:
            pieces = [p for piece in pieces for p in step(piece)]
        return [i for piece in pieces for i in self._piece_ids(piece)]

    def encode(self, text: str, allowed_special: Collection[str] = frozenset(), disallowed_special: Any = ()) -> list[int]:
        """Ids of `text`, matching the special tokens in `allowed_special` (never raises for others)."""
        ids: list[int] = []
        for piece in self.splitter.split(text, frozenset(allowed_special)):
            if isinstance(piece, AddedToken):
                ids.append(piece.id)
            else:
                ids.extend(self._text_ids(piece))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode(text)


class TokenizersHFEncoder:
    """The fast path: the `tokenizers` library reading the same tokenizer.json."""

    def __init__(self, data: HFTokenizerData):
        from tokenizers import Tokenizer as LibTokenizer

        text = data.files[TOKENIZER_JSON].decode("utf-8")
        try:
            self._with_special = LibTokenizer.from_str(text)
            self._plain = LibTokenizer.from_str(text)
        except Exception as exc:  # the library's own parse error type is not exported
            raise ScratchLLMError(f"{data.source}: the tokenizers library cannot read it: {exc}") from None
        for tok in (self._with_special, self._plain):
            tok.no_truncation()
            tok.no_padding()
        self._plain.encode_special_tokens = True  # special-token text is plain text
        self._all_special = frozenset(data.special_tokens)
        self._splitter = AddedTokenSplitter(data)

    def encode_ordinary(self, text: str) -> list[int]:
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode(self, text: str, allowed_special: Collection[str] = frozenset(), disallowed_special: Any = ()) -> list[int]:
        allowed = frozenset(allowed_special)
        if allowed >= self._all_special:
            return self._with_special.encode(text, add_special_tokens=False).ids
        if not allowed:
            return self.encode_ordinary(text)
        # Some special tokens only: cut the text here, and let the library encode the pieces.
        ids: list[int] = []
        for piece in self._splitter.split(text, allowed):
            if isinstance(piece, AddedToken):
                ids.append(piece.id)
            else:
                ids.extend(self._plain.encode(piece, add_special_tokens=False).ids)
        return ids


def make_hf_encoder(data: HFTokenizerData, backend: str) -> tuple[str, Any]:
    """("tokenizers" | "python", encoder): "auto" takes the `tokenizers` library when it is installed."""
    if backend not in ("auto", "tokenizers", "python"):
        raise ScratchLLMError(f"backend {backend!r}: expected 'auto', 'tokenizers' or 'python' for a Hugging Face tokenizer")
    if backend != "python":
        try:
            return "tokenizers", TokenizersHFEncoder(data)
        except ImportError:
            if backend == "tokenizers":
                raise ScratchLLMError("backend 'tokenizers': the tokenizers package is not installed "
                                      "(pip install 'scratchllm[hf]')") from None
    return "python", PythonHFEncoder(data)


# ------------------------------------------------------------------------------------------------
# Writing: a tokenizer trained here, as files transformers' AutoTokenizer reads


def byte_level_tokenizer_json(vocab: Sequence[bytes], special_tokens: Mapping[str, int], pattern: str) -> dict[str, Any]:
    """tokenizer.json for a byte-level BPE whose token i has bytes vocab[i] (merges are id order),
    split by `pattern`, with `special_tokens` (name -> id) after the vocabulary.

    The two merge rules (module docstring, step 4) are reconciled by listing, for every token in id
    order, each way of writing it as two earlier tokens: the pair ranks then order pairs by the id
    of the token they make, which is the rule `Tokenizer.encode` follows (tiktoken's). The trained
    merges alone gave the same ids on tinyshakespeare (vocabularies of 700 and 4,096), but not in
    general: with merges ab, bc, a+bc, our rule turns ab + c into abc and a list of trained pairs
    does not (tests/tokenizer/test_hf.py). One case stays apart: the same token made at two places of
    one piece by different splits (tiktoken takes the leftmost, the list the earlier split).
    """
    char = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(char[b] for b in token)

    ids = {token: i for i, token in enumerate(vocab)}
    merges = []
    for token in vocab:
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if ids.get(left, len(vocab)) < ids[token] and ids.get(right, len(vocab)) < ids[token]:
                merges.append([text(left), text(right)])
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
                  "vocab": {text(token): i for i, token in enumerate(vocab)}, "merges": merges},
    }
