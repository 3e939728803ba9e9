"""Tests for the Hugging Face tokenizer (hf_files, hf_pipeline, hf_encoders, hf_tokenizer) and
`Tokenizer.from_hf`: tokenizer.json files of the byte-level BPE kind, read by the from-scratch path
("python") and by the `tokenizers` library ("tokenizers"), give transformers.AutoTokenizer's ids; the
pipeline's steps agree with the library's one by one.

The tokenizers are trained here (tests/hf_tokenizers.py); nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
import unicodedata
from pathlib import Path

import pytest
import tokenizers
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import BPETokenizer, Tokenizer, bytes_to_unicode
from scratchllm.tokenizer.hf_files import read_hf_tokenizer
from scratchllm.tokenizer.hf_pipeline import PrefixSpace, Split, merge_by_pair_rank
from tests.hf_tokenizers import KINDS, LLAMA3_PATTERN, TEXTS

BACKENDS = ("python", "tokenizers")


@pytest.fixture(scope="module")
def reference(hf_tokenizer_dir):
    """kind -> transformers.AutoTokenizer of that directory (loaded once)."""
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = transformers.AutoTokenizer.from_pretrained(hf_tokenizer_dir(kind))
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def ours(hf_tokenizer_dir):
    cache = {}

    def get(kind, backend):
        if (kind, backend) not in cache:
            cache[kind, backend] = Tokenizer.from_hf(hf_tokenizer_dir(kind), backend=backend)
        return cache[kind, backend]

    return get


def shakespeare_lines(shared_data: Path, n: int = 400) -> list[str]:
    return (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines(keepends=True)[:n]


# --------------------------------------------------------------------------------------------------
# Ids against transformers


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_ids_equal_transformers(kind, backend, ours, reference, shared_data):
    tok, hf = ours(kind, backend), reference(kind)
    texts = TEXTS + shakespeare_lines(shared_data) + ["".join(shakespeare_lines(shared_data, 2000))]
    for text in texts:
        # transformers always matches special-token text and applies the post-processor
        assert tok.encode(text, allowed_special="all", add_special_tokens=True) == hf(text)["input_ids"], text
        # split_special_tokens=True: special-token text is plain text, as in encode_ordinary
        plain = hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert tok.encode_ordinary(text) == plain, text
        assert tok.encode(text, disallowed_special=()) == plain


@pytest.mark.parametrize("kind", KINDS)
def test_decode_inverts_encode(kind, ours):
    lib = tokenizers.Tokenizer.from_file(str(Path(ours(kind, "python").spec["file"])))
    normalize = unicodedata.normalize if kind == "qwen2" else (lambda form, text: text)
    for backend in BACKENDS:
        tok = ours(kind, backend)
        for text in TEXTS:
            ids = tok.encode(text, allowed_special="all")
            assert tok.decode(ids) == normalize("NFC", text)  # Qwen2's normalizer composes characters
            assert tok.decode(ids) == lib.decode(ids, skip_special_tokens=False)


# Pieces that exercise the rules: special and added tokens, their fragments, digits, whitespace,
# contractions, combining marks.
FRAGMENTS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|begin_of_text|>", "<think>", "</think>",
             "<|", "|>", " ", "  ", "\n", "\r\n", "\t", "'s", "'LL", "123", "4567", "é", "e\u0301", "日本", "🎉", "x"]
TEXT = st.lists(st.one_of(st.text(st.characters(exclude_categories=("Cs", "Cn", "Co")), max_size=8),
                          st.sampled_from(FRAGMENTS)), max_size=12).map("".join)


@pytest.mark.parametrize("kind", KINDS)
def test_python_path_equals_the_library(kind, ours):
    """Random text: the from-scratch encoder gives the library's ids, with and without special tokens;
    and allowing one special token only gives the same ids on both backends."""
    python, fast = ours(kind, "python"), ours(kind, "tokenizers")
    lib = tokenizers.Tokenizer.from_file(python.spec["file"])
    plain = tokenizers.Tokenizer.from_file(python.spec["file"])
    plain.encode_special_tokens = True
    one = sorted(python.special_tokens)[-1]

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(TEXT)
    def check(text):
        assert python.encode(text, allowed_special="all") == lib.encode(text, add_special_tokens=False).ids
        assert python.encode_ordinary(text) == plain.encode(text, add_special_tokens=False).ids
        assert python.encode(text, allowed_special={one}, disallowed_special=()) == \
            fast.encode(text, allowed_special={one}, disallowed_special=())

    check()


def test_gpt2_files_through_the_hf_reader(tmp_path, shared_data):
    """OpenAI's GPT-2 vocabulary as a tokenizer.json: the pair-rank merge rule gives the ids of the
    merged-token-rank rule (our GPT-2 path, checked against tiktoken elsewhere)."""
    lib = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(shared_data / "gpt2" / "encoder.json"),
                                                                str(shared_data / "gpt2" / "vocab.bpe")))
    lib.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    lib.decoder = tokenizers.decoders.ByteLevel()
    lib.add_special_tokens(["<|endoftext|>"])
    lib.save(str(tmp_path / "tokenizer.json"))
    hf = Tokenizer.from_hf(tmp_path, backend="python")
    gpt2 = Tokenizer.gpt2()
    assert hf.vocab_size == gpt2.vocab_size == 50257 and hf.eot_id == 50256  # no config: <|endoftext|>
    for text in [*TEXTS, (shared_data / "the-verdict.txt").read_text(encoding="utf-8")]:
        assert hf.encode(text, allowed_special="all") == gpt2.encode(text, allowed_special="all")


def test_the_python_path_needs_no_tokenizers_library(hf_tokenizer_dir, monkeypatch):
    d = hf_tokenizer_dir("llama3")
    fast = Tokenizer.from_hf(d, backend="tokenizers")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if it were not installed
    tok = Tokenizer.from_hf(d)
    assert tok.backend == "python"
    assert tok.encode(TEXTS[4], add_special_tokens=True) == fast.encode(TEXTS[4], add_special_tokens=True)
    with pytest.raises(ScratchLLMError, match=r"backend 'tokenizers': the tokenizers package is not installed"):
        Tokenizer.from_hf(d, backend="tokenizers")


# --------------------------------------------------------------------------------------------------
# What the files say: special tokens, BOS, end of text, stop ids


@pytest.mark.parametrize("kind, eot, bos, stops", [
    ("gpt2", "<|endoftext|>", [], ["<|endoftext|>"]),
    ("llama3", "<|eot_id|>", ["<|begin_of_text|>"], ["<|eot_id|>"]),  # eos_token, and the template's turn end
    ("qwen2", "<|im_end|>", [], ["<|im_end|>"]),
    ("smollm2", "<|im_end|>", [], ["<|im_end|>"]),  # bos_token is set, but no post-processor adds it
])
def test_named_tokens(kind, eot, bos, stops, ours):
    tok = ours(kind, "python")
    name = {i: t for t, i in tok.special_tokens.items()}
    assert name[tok.eot_id] == eot
    assert [name[i] for i in tok.bos_ids] == bos
    assert sorted(name[i] for i in tok.stop_ids) == stops
    assert tok.encode("hi", add_special_tokens=True) == [*tok.bos_ids, *tok.encode("hi")]


def test_generation_config_stop_ids_join_the_stop_set(hf_tokenizer_dir):
    d = hf_tokenizer_dir("qwen2")
    plain = Tokenizer.from_hf(d)
    eot, im_end = plain.special_tokens["<|endoftext|>"], plain.special_tokens["<|im_end|>"]
    tok = Tokenizer.from_hf(d, stop_ids=[eot])
    assert tok.stop_ids == {eot, im_end} and tok.spec["stop_ids"] == [eot]
    assert Tokenizer.from_spec(tok.spec).stop_ids == {eot, im_end}
    with pytest.raises(ScratchLLMError, match=r"stop ids \[99999\]: not ids of"):
        Tokenizer.from_hf(d, stop_ids=[99999])


@pytest.mark.parametrize("backend", BACKENDS)
def test_special_and_added_token_rules(backend, ours):
    tok = ours("qwen2", backend)
    im_start, im_end = tok.special_tokens["<|im_start|>"], tok.special_tokens["<|im_end|>"]
    text = "<|im_start|>user\nhi<|im_end|>"
    with pytest.raises(ScratchLLMError, match=r"contains special token '<\|im_start\|>' at index 0"):
        tok.encode(text)
    ids = tok.encode(text, allowed_special={"<|im_end|>"}, disallowed_special=())
    assert ids[-1] == im_end and im_start not in ids
    assert tok.encode(text, allowed_special="all")[0] == im_start
    # <think> is an added token that is not special: always one id, never an error
    think = tok.encode("<think>")
    assert len(think) == 1 and "<think>" not in tok.special_tokens
    assert tok.encode_ordinary("a<think>b")[1:2] == think
    assert tok.token_byte_lengths()[im_end] == 0 and tok.token_byte_lengths()[think[0]] == len("<think>")
    texts = [text, "plain", "<think>x</think>", *TEXTS[:8]]
    assert tok.encode_batch(texts, allowed_special="all", num_workers=2) == [tok.encode(t, allowed_special="all") for t in texts]


# --------------------------------------------------------------------------------------------------
# The pipeline's steps against the library's


SPLIT_TEXTS = ["ab12 3x  4", "", "12", "  ", "a\n\nb 99 c", "日本12語 3"]


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("behavior", ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"])
def test_split_behaviors_match_the_library(behavior, invert):
    from tokenizers import Regex, pre_tokenizers

    lib = pre_tokenizers.Split(Regex(r"\d+|\s"), behavior=behavior, invert=invert)
    name = "".join(part.capitalize() for part in behavior.split("_"))
    ours = Split(r"\d+|\s", name, invert)
    for text in SPLIT_TEXTS:
        assert ours(text) == [piece for piece, _ in lib.pre_tokenize_str(text)], text


@given(st.text(st.sampled_from("ab 1\n"), max_size=12))
@settings(max_examples=200, deadline=None, derandomize=True)
def test_split_behaviors_match_the_library_on_random_text(text):
    from tokenizers import Regex, pre_tokenizers

    for behavior in ("removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"):
        name = "".join(part.capitalize() for part in behavior.split("_"))
        for invert in (False, True):
            lib = pre_tokenizers.Split(Regex(r"\d+|\s"), behavior=behavior, invert=invert)
            assert Split(r"\d+|\s", name, invert)(text) == [p for p, _ in lib.pre_tokenize_str(text)]


def test_prefix_space_and_digits_steps():
    from tokenizers import Regex, pre_tokenizers

    lib = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                   pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)])
    # The library shows pieces in byte-level characters; ours are text.
    unmap = {ch: b for b, ch in bytes_to_unicode().items()}
    for text in ["Hello world! x", "ab12345 x99", " lead", "日本 12"]:
        pieces = [text]
        for step in (Split(r"\p{N}"), Split(LLAMA3_PATTERN), PrefixSpace()):
            pieces = [p for piece in pieces for p in step(piece)]
        theirs = [bytes(unmap[c] for c in piece).decode() for piece, _ in lib.pre_tokenize_str(text)]
        assert pieces == theirs, text


def test_pair_rank_rule():
    # "abc": (b, c) ranks before (a, b), so "a" + "bc" although "ab" is also a token.
    ranks = {(b"b", b"c"): 0, (b"a", b"b"): 1, (b"a", b"bc"): 2}
    assert merge_by_pair_rank(b"abc", ranks) == [b"abc"]
    assert merge_by_pair_rank(b"abab", ranks) == [b"ab", b"ab"]
    # overlapping pairs merge leftmost first: "aaa" -> "aa" + "a"
    assert merge_by_pair_rank(b"aaa", {(b"a", b"a"): 0}) == [b"aa", b"a"]
    # a token that another split of the same bytes would give is not merged without its own pair
    assert merge_by_pair_rank(b"xbc", {(b"x", b"b"): 0, (b"xb", b"c"): 1, (b"b", b"c"): 2}) == [b"xbc"]
    assert merge_by_pair_rank(b"xbc", {(b"b", b"c"): 0, (b"xb", b"c"): 1, (b"x", b"b"): 2}) == [b"x", b"bc"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_added_token_flags_match_the_library(backend, hf_tokenizer_dir, tmp_path):
    """lstrip / rstrip take whitespace along; a normalized token is found after NFC, a raw one before."""
    from tokenizers import AddedToken

    lib = tokenizers.Tokenizer.from_file(str(hf_tokenizer_dir("qwen2") / "tokenizer.json"))
    lib.add_special_tokens([AddedToken("<L>", lstrip=True), AddedToken("<R>", rstrip=True)])
    lib.add_tokens([AddedToken("é!", normalized=True), AddedToken("café", normalized=False)])
    lib.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_hf(tmp_path, backend=backend)
    for text in ["a  <L>  b", "a  <R>  b", "<R> <L>", "e\u0301! é!", "cafe\u0301 café", "x<L>y<R>z", "  <L>"]:
        assert tok.encode(text, allowed_special="all") == lib.encode(text, add_special_tokens=False).ids, text


# --------------------------------------------------------------------------------------------------
# Files, specs, pickling, other backends


def test_load_spec_pickle_and_backends(hf_tokenizer_dir, tmp_path):
    d = hf_tokenizer_dir("llama3")
    tok = Tokenizer.from_hf(d)
    text = "Hello <|eot_id|> 123456 日本"
    ids = tok.encode(text, allowed_special="all")
    blob = (d / "tokenizer.json").read_bytes()
    assert tok.spec == {"type": "hf", "file": str((d / "tokenizer.json").absolute()), "sha256": hashlib.sha256(blob).hexdigest()}
    assert tok.to_json_bytes() == blob and list(tok.hf_files) == ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
    for other in (Tokenizer.load(d / "tokenizer.json"), Tokenizer.from_spec(str(d)), Tokenizer.from_spec(tok.spec),
                  pickle.loads(pickle.dumps(tok)), tok.with_backend("python"), tok.with_backend("tokenizers")):
        assert other.encode(text, allowed_special="all") == ids and other.eot_id == tok.eot_id
        assert other.chat_template.source == tok.chat_template.source
    assert tok.with_backend("python").backend == "python" and tok.with_backend("auto").backend == "tokenizers"
    with pytest.raises(ScratchLLMError, match="expected 'auto', 'tokenizers' or 'python'"):
        tok.with_backend("tiktoken")
    with pytest.raises(ScratchLLMError, match="SHA-256 is .*expected 00 as recorded"):
        Tokenizer.from_spec({**tok.spec, "sha256": "00"})
    # save writes the files into a directory, which transformers reads back
    tok.save(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert hf(text)["input_ids"] == tok.encode(text, allowed_special="all", add_special_tokens=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_with_special_tokens_appends_ids(backend, ours, tmp_path):
    tok = ours("qwen2", backend)
    more = tok.with_special_tokens("<|mask|>", "<|im_end|>")
    assert more.special_tokens["<|mask|>"] == tok.vocab_size and more.vocab_size == tok.vocab_size + 1
    assert more.encode("a<|mask|>b", allowed_special="all")[1] == tok.vocab_size
    assert more.spec == {"type": "hf", "file": None} and more.chat_template.source == tok.chat_template.source
    lib = tokenizers.Tokenizer.from_str(more.to_json_bytes().decode())
    assert lib.encode("a<|mask|>b<think>", add_special_tokens=False).ids == more.encode("a<|mask|>b<think>", allowed_special="all")


def _write(tmp_path: Path, data: dict) -> Path:
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    return tmp_path


def _break(*keys, value=None):
    """A function that sets data[keys[0]][keys[1]]... to `value` in a tokenizer.json object."""
    def mutate(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        return data
    return mutate


@pytest.mark.parametrize("mutate, message", [
    (_break("model", "type", value="WordPiece"), r"model.type is 'WordPiece'; only byte-level 'BPE'"),
    (_break("model", "byte_fallback", value=True), r"model.byte_fallback is True"),
    (_break("pre_tokenizer", value={"type": "Metaspace"}), r"pre_tokenizer step 'Metaspace' is not supported"),
    (_break("pre_tokenizer", value=None), r"no pre_tokenizer"),
    (_break("normalizer", value={"type": "Lowercase"}), r"normalizer 'Lowercase' is not supported"),
    (_break("decoder", value={"type": "WordPiece"}), r"decoder \['WordPiece'\] is not supported"),
    (_break("post_processor", value={"type": "BertProcessing"}), r"post_processor 'BertProcessing' is not supported"),
    (_break("model", "merges", 0, value="a b c"), r"model.merges\[0\] is 'a b c'; expected 'left right'"),
    (_break("model", "merges", 0, value=["Ġ", "zzzq"]), r"model.merges\[0\] .* uses 'zzzq', which is not in model.vocab"),
    (_break("added_tokens", 0, "single_word", value=True), r"has single_word true, which is not supported"),
    (_break("pre_tokenizer", "pretokenizers", 0, "pattern", value={"Regex": "("}), r"is not a valid regex"),
])
def test_bad_tokenizer_json(mutate, message, hf_tokenizer_dir, tmp_path):
    data = json.loads((hf_tokenizer_dir("llama3") / "tokenizer.json").read_text(encoding="utf-8"))
    _write(tmp_path, mutate(data))
    with pytest.raises(ScratchLLMError, match=message) as err:
        Tokenizer.from_hf(tmp_path)
    assert str(tmp_path / "tokenizer.json") in str(err.value)


def test_bad_vocabulary_and_config(hf_tokenizer_dir, tmp_path):
    data = json.loads((hf_tokenizer_dir("qwen2") / "tokenizer.json").read_text(encoding="utf-8"))
    del data["model"]["vocab"]["Ġ"]
    _write(tmp_path, data)
    with pytest.raises(ScratchLLMError, match=r"token ids must run from 0 to \d+ without gaps; id \d+ is unused"):
        read_hf_tokenizer(tmp_path)
    # trained without the byte alphabet: bytes the text lacked have no token
    lib = tokenizers.Tokenizer(tokenizers.models.BPE())
    lib.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel()
    lib.decoder = tokenizers.decoders.ByteLevel()
    lib.train_from_iterator(["hello world"], tokenizers.trainers.BpeTrainer(vocab_size=30, show_progress=False))
    lib.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ScratchLLMError, match=r"lacks 248 of the 256 byte tokens .*initial_alphabet=ByteLevel.alphabet"):
        read_hf_tokenizer(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScratchLLMError, match=r"empty: no tokenizer.json"):
        Tokenizer.from_hf(tmp_path / "empty")
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ScratchLLMError, match="tokenizer.json: not valid JSON"):
        Tokenizer.from_hf(tmp_path)
    good = hf_tokenizer_dir("qwen2")
    (tmp_path / "tokenizer.json").write_bytes((good / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}), encoding="utf-8")
    with pytest.raises(ScratchLLMError, match=r"tokenizer_config.json: eos_token '<\|nope\|>' is not a token of"):
        Tokenizer.from_hf(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "tool_use", "template": "x"}]}))
    with pytest.raises(ScratchLLMError, match=r"has none named 'default' \(names: \['tool_use'\]\)"):
        Tokenizer.from_hf(tmp_path)


@pytest.mark.parametrize("text", ["abc", "xabcabc abc", "ab bc abcbc"])
def test_written_tokenizer_json_follows_our_merge_rule_where_pair_ranks_alone_would_not(text):
    """Merges ab, bc, then abc = a + bc: our rule (tiktoken's) merges ab + c into abc as well, which
    a merge list of the trained pairs alone never does; the written file lists that pair too."""
    from scratchllm.tokenizer.hf_files import byte_level_tokenizer_json

    ours = BPETokenizer([(b"a", b"b"), (b"b", b"c"), (b"a", b"bc")], {"<|endoftext|>": 259})
    assert ours.encode("abc") == [258]
    data = byte_level_tokenizer_json([ours.token_bytes(i) for i in range(259)], ours.special_tokens, ours.pattern)
    assert ["ab", "c"] in data["model"]["merges"] and ["a", "bc"] in data["model"]["merges"]
    written = tokenizers.Tokenizer.from_str(json.dumps(data))
    assert written.encode(text, add_special_tokens=False).ids == ours.encode(text)
    only_trained = {**data, "model": {**data["model"], "merges": [["a", "b"], ["b", "c"], ["a", "bc"]]}}
    assert tokenizers.Tokenizer.from_str(json.dumps(only_trained)).encode("abc").ids == [256, ord("c")]
