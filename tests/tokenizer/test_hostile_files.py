"""Hugging Face tokenizer files a hostile or careless hand wrote (tokenizer/hf_files.py, hf_pipeline.py,
hf_encoders.py): a section of the wrong JSON type, JSON nested 100,000 deep, and a Split regex that
backtracks. Each is a one-line ScratchLLMError naming the file and the field, on both backends, never a
TypeError, a RecursionError or a Rust panic; a backtracking regex is stopped by a time limit (python) or
refused when the file is read (the tokenizers library, which cannot be stopped)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import Tokenizer
from scratchllm.tokenizer.hf_encoders import split_time_limit
from tests.hostile import mutations, nested


def edited(tmp_path: Path, source: Path, edit, name: str = "tokenizer.json") -> Path:
    """A copy of the tokenizer directory `source` whose JSON file `name` went through edit(data)."""
    d = tmp_path / "tok"
    shutil.copytree(source, d)
    data = json.loads((d / name).read_text(encoding="utf-8"))
    edit(data)
    (d / name).write_text(json.dumps(data), encoding="utf-8")
    return d


def pre(data) -> list:
    return data["pre_tokenizer"]["pretokenizers"]


def post(data) -> dict:
    return data["post_processor"]["processors"][1]  # llama3: ByteLevel, then TemplateProcessing


# (edit of the llama3 test tokenizer's tokenizer.json, the message after "DIR/tokenizer.json: ")
CASES = [
    (lambda d: d.update(normalizer={"type": "Sequence", "normalizers": 5}), "normalizer.normalizers is 5; expected a list"),
    (lambda d: pre(d)[0].update(pattern="\\s+"),
     "pre_tokenizer step 0 Split {'type': 'Split', 'pattern': '\\\\s+', 'behavior': 'Isolated', 'invert': False}: "
     'expected a pattern {"Regex": ...} or {"String": ...} and a behavior among Removed, Isolated, '
     "MergedWithPrevious, MergedWithNext, Contiguous"),
    (lambda d: d["pre_tokenizer"].update(pretokenizers=5), "pre_tokenizer.pretokenizers is 5; expected a list"),
    (lambda d: pre(d)[0].update(invert="no"), "pre_tokenizer step 0.invert is 'no'; expected true or false"),
    (lambda d: post(d).update(single=[5]),
     'post_processor.single[0] is 5; expected {"SpecialToken": {"id": NAME}} or {"Sequence": ...}'),
    (lambda d: post(d).update(single="$A"), "post_processor.single is '$A'; expected a list"),
    (lambda d: post(d).update(special_tokens=[1]), "post_processor.special_tokens is [1]; expected an object"),
    (lambda d: post(d)["special_tokens"]["<|begin_of_text|>"].update(ids="0"),
     "post_processor special token '<|begin_of_text|>' has no ids in this vocabulary"),
    (lambda d: d.update(decoder={"type": "Sequence", "decoders": 5}), "decoder.decoders is 5; expected a list"),
    (lambda d: d["added_tokens"][0].update(special="false"), "added_tokens[0].special is 'false'; expected true or false"),
    (lambda d: d.update(added_tokens={"a": 1}), "added_tokens is {'a': 1}; expected a list of tokens"),
    (lambda d: d["model"].update(ignore_merges="yes"), "model.ignore_merges is 'yes'; expected true or false"),
]


@pytest.mark.parametrize("edit, message", CASES)
@pytest.mark.parametrize("backend", ["python", "tokenizers"])
def test_a_section_of_the_wrong_type_is_one_line(hf_tokenizer_dir, tmp_path, edit, message, backend):
    d = edited(tmp_path, hf_tokenizer_dir("llama3"), edit)
    with pytest.raises(ScratchLLMError) as info:
        Tokenizer.from_hf(d, backend=backend)
    assert str(info.value) == f"{d / 'tokenizer.json'}: {message}"


def test_a_template_list_with_a_list_for_a_name_is_one_line(hf_tokenizer_dir, tmp_path):
    d = edited(tmp_path, hf_tokenizer_dir("smollm2"), lambda c: c["chat_template"][0].update(name=["default"]),
               "tokenizer_config.json")
    with pytest.raises(ScratchLLMError) as info:
        Tokenizer.from_hf(d)
    assert str(info.value).startswith(f"{d / 'tokenizer_config.json'} field 'chat_template': expected a template string "
                                      'or a list of {"name": STRING, "template": STRING}, got [{')


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_json_nested_100000_deep_is_one_line(hf_tokenizer_dir, tmp_path, name):
    d = tmp_path / "tok"
    shutil.copytree(hf_tokenizer_dir("qwen2"), d)
    (d / name).write_text(nested(), encoding="utf-8")
    with pytest.raises(ScratchLLMError) as info:
        Tokenizer.from_hf(d)
    assert str(info.value) == f"{d / name}: JSON nested more than 100 levels deep; expected a config or tokenizer file (about 6)"


def test_every_field_of_the_wrong_type_is_a_one_line_error(hf_tokenizer_dir, tmp_path):
    """Every value of tokenizer.json and tokenizer_config.json (the first three of long lists) replaced by
    an int, a string, a list of objects, or removed: the tokenizer loads, encodes, decodes and renders
    its template, or refuses in one line (benchmarks/bad_inputs.py tries more values, on both backends)."""
    source, d = hf_tokenizer_dir("llama3"), tmp_path / "tok"
    tried = refused = 0
    for name, what, blob in mutations(source, ("tokenizer.json", "tokenizer_config.json"), [5, "x", [{"a": 1}]]):
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(source, d)
        (d / name).write_bytes(blob)
        tried += 1
        try:
            tok = Tokenizer.from_hf(d, backend="python")
            tok.decode(tok.encode("Hi <|eot_id|> 12345", allowed_special="all", add_special_tokens=True))
        except ScratchLLMError as exc:
            assert "\n" not in str(exc), what
            refused += 1
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"{what}: {type(exc).__name__}: {exc}")
    assert tried > 300 and 0 < refused < tried  # the mutations reach every section, and some are harmless


# --------------------------------------------------------------------------------------------------
# A Split regex that backtracks


def with_split(tmp_path: Path, source: Path, pattern: str) -> Path:
    split = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
    return edited(tmp_path, source, lambda d: pre(d).insert(0, split))


def test_a_backtracking_regex_is_stopped_by_the_time_limit(hf_tokenizer_dir, tmp_path):
    d = with_split(tmp_path, hf_tokenizer_dir("llama3"), "(a|aa)+$")
    tok = Tokenizer.from_hf(d)
    assert tok.backend == "python"  # "auto" never gives such a pattern to the library
    text = "a" * 42 + "!"
    assert tok.encode("aaa b") == Tokenizer.from_hf(hf_tokenizer_dir("llama3"), backend="python").encode("aaa b")
    start = time.perf_counter()
    with pytest.raises(ScratchLLMError) as info:
        tok.encode(text)
    assert time.perf_counter() - start < split_time_limit(text) + 3  # before: exponential (hours for 60 a's)
    assert str(info.value) == (f"{d / 'tokenizer.json'}: the regex '(a|aa)+$' took more than 1.0 s on a text of 43 "
                               "characters (it backtracks); this tokenizer cannot encode that text")


def test_the_tokenizers_library_is_refused_a_backtracking_regex_at_load(hf_tokenizer_dir, tmp_path):
    d = with_split(tmp_path, hf_tokenizer_dir("llama3"), "(?:\\w\\w?)+$")
    with pytest.raises(ScratchLLMError) as info:
        Tokenizer.from_hf(d, backend="tokenizers")
    assert str(info.value) == (
        f"{d / 'tokenizer.json'}: the pre_tokenizer regex '(?:\\\\w\\\\w?)+$' repeats a group holding an alternation "
        "or a repetition ((?:\\w\\w?)+), which can backtrack for ever; the tokenizers library cannot be stopped, so "
        "use backend 'python' (a time limit per text)")


def test_a_panic_in_the_tokenizers_library_is_one_line(hf_tokenizer_dir, tmp_path):
    """Two overlapping repetitions pass the check at load (real patterns have such pairs), but Oniguruma
    gives up on a long run (its retry limit) and the library panics: a PanicException, which is a
    BaseException; it comes out as a ScratchLLMError."""
    d = with_split(tmp_path, hf_tokenizer_dir("llama3"), "\\w+\\w+$")
    tok = Tokenizer.from_hf(d, backend="tokenizers")
    assert tok.backend == "tokenizers" and tok.encode("aaa b") == Tokenizer.from_hf(d, backend="python").encode("aaa b")
    with pytest.raises(ScratchLLMError) as info:
        tok.encode("a" * 6000 + "!")
    assert str(info.value) == (f"{d / 'tokenizer.json'}: the tokenizers library failed on a text of 6,001 characters: "
                               "Onig: Regex search error: retry-limit-in-match over")
