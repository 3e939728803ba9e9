"""Both tokenizer classes satisfy the one interface (`Tokenizer`, tokenizer/base.py), each test run on
GPT-2's vocabulary, a vocabulary trained here (both `BPETokenizer`) and a Hugging Face tokenizer.json
(`HFTokenizer`): ids equal to the reference library's (tiktoken, built here from the files alone, or
transformers.AutoTokenizer), round trips, save and load, pickling, and a description written, read back
and refused when its file or its SHA-256 was changed (tokenizer/description.py).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import tiktoken
import transformers

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import batch
from scratchllm.tokenizer import (ENDOFTEXT, TOKENIZER_FILE, BPETokenizer, HFTokenizer, Tokenizer, bytes_to_unicode,
                                  same_tokenizer)

KINDS = ("gpt2", "trained", "hf")
CLASSES = {"gpt2": BPETokenizer, "trained": BPETokenizer, "hf": HFTokenizer}
FILES = {"gpt2": [], "trained": ["tokenizer.json"], "hf": ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]}
TEXTS = ["", "Hello, world!", "it's 12345 pounds\r\n\tand  spaces  ", "日本語のテキスト, naïve café 🎉👍🏽",
         f"one{ENDOFTEXT}two", "<|eot_id|> a <|begin_of_text|>", "a" * 300]


@pytest.fixture(scope="module")
def make(shared_data, hf_tokenizer_dir, tmp_path_factory):
    """(kind, backend) -> the tokenizer, built once; the trained one is read from the file it was saved to."""
    cache: dict[tuple[str, str], Tokenizer] = {}
    trained_file = tmp_path_factory.mktemp("trained") / "tok.json"
    Tokenizer.train([(shared_data / "the-verdict.txt").read_text(encoding="utf-8")], 600).save(trained_file)

    def get(kind: str, backend: str = "auto") -> Tokenizer:
        if (kind, backend) not in cache:
            if kind == "gpt2":
                cache[kind, backend] = Tokenizer.gpt2(backend=backend)
            elif kind == "trained":
                cache[kind, backend] = Tokenizer.load(trained_file, backend=backend)
            else:
                cache[kind, backend] = Tokenizer.from_hf(hf_tokenizer_dir("llama3"), backend=backend)
        return cache[kind, backend]

    return get


@pytest.fixture(scope="module")
def reference(make, shared_data, hf_tokenizer_dir):
    """kind -> text -> the reference library's ids, special-token text matched (and for transformers the
    post-processor's BOS added): tiktoken built from the vocabulary files, or transformers.AutoTokenizer."""
    def tiktoken_of(merges: list[tuple[bytes, bytes]], byte_order: list[int], pattern: str, specials: dict[str, int]):
        ranks = {bytes([b]): i for i, b in enumerate(byte_order)}
        for left, right in merges:
            ranks[left + right] = len(ranks)
        encoding = tiktoken.Encoding("reference", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
        return lambda text: encoding.encode(text, allowed_special="all")

    gpt2 = shared_data / "gpt2"
    encoder = json.loads((gpt2 / "encoder.json").read_text(encoding="utf-8"))
    unmap = {ch: b for b, ch in bytes_to_unicode().items()}

    def to_bytes(token: str) -> bytes:  # the files write bytes as GPT-2's printable characters
        return bytes(unmap[c] for c in token)

    lines = (gpt2 / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
    gpt2_merges = [tuple(map(to_bytes, line.split(" "))) for line in lines if line]
    gpt2_order = [to_bytes(t)[0] for t, i in sorted(encoder.items(), key=lambda kv: kv[1])[:256]]
    trained = json.loads(make("trained").to_json_bytes())
    hf = transformers.AutoTokenizer.from_pretrained(hf_tokenizer_dir("llama3"))
    return {
        "gpt2": tiktoken_of(gpt2_merges, gpt2_order, make("gpt2").pattern, {ENDOFTEXT: 50256}),
        "trained": tiktoken_of([(bytes.fromhex(a), bytes.fromhex(b)) for a, b in trained["merges"]], list(range(256)),
                               trained["pattern"], trained["special_tokens"]),
        "hf": lambda text: hf(text)["input_ids"],
    }


def test_the_interface_is_abstract_and_both_classes_implement_it():
    with pytest.raises(TypeError, match="abstract"):
        Tokenizer({}, {}, "python", described_as="bpe", file=None)  # type: ignore[abstract]
    assert BPETokenizer.__abstractmethods__ == HFTokenizer.__abstractmethods__ == frozenset()
    assert issubclass(BPETokenizer, Tokenizer) and issubclass(HFTokenizer, Tokenizer)


@pytest.mark.parametrize("backend", ["python", "auto"])
@pytest.mark.parametrize("kind", KINDS)
def test_ids_equal_the_reference_library(kind, backend, make, reference, shared_data):
    tok = make(kind, backend)
    assert type(tok) is CLASSES[kind] and isinstance(tok, Tokenizer)
    assert tok.backend == ("python" if backend == "python" else "tokenizers" if kind == "hf" else "tiktoken")
    verdict = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    for text in [*TEXTS, verdict[:5000]]:
        assert tok.encode(text, allowed_special="all", add_special_tokens=True) == reference[kind](text), text[:40]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_batches_and_the_shared_surface(kind, make):
    tok = make(kind)
    for text in TEXTS:
        ids = tok.encode(text, disallowed_special=())
        assert tok.decode(ids) == text and tok.decode_bytes(ids) == text.encode("utf-8")
        assert ids == tok.encode_ordinary(text)
        assert int(tok.token_byte_lengths()[ids].sum()) == len(text.encode("utf-8"))
    assert tok.encode_batch(TEXTS, allowed_special="all", num_workers=2) == [tok.encode(t, allowed_special="all") for t in TEXTS]
    assert tok.eot_id in tok.stop_ids and tok.eot_id in tok.special_tokens.values()
    assert tok.document_start == (list(tok.bos_ids) or [tok.eot_id])
    assert tok.vocab_size == len(tok.token_byte_lengths()) and tok.merges and tok.pattern
    assert (tok.chat_template is not None) == (kind == "hf")
    assert sorted(tok.files) == FILES[kind] and tok.to_json_bytes()
    with pytest.raises(ScratchLLMError, match=r"contains special token"):
        tok.encode(f"x{tok.token_bytes(tok.eot_id).decode()}")
    with pytest.raises(ScratchLLMError, match=rf"token id {tok.vocab_size}: expected an int in 0\.\.{tok.vocab_size - 1}"):
        tok.decode([tok.vocab_size])


@pytest.mark.parametrize("backend", ["python", "auto"])
@pytest.mark.parametrize("kind", KINDS)
def test_encode_batch_in_worker_processes_and_threads(kind, backend, make, monkeypatch):
    """The python backend encodes a batch in worker processes, the libraries in threads: the same ids."""
    tok = make(kind, backend)
    monkeypatch.setattr(batch, "PARALLEL_MIN_CHARS", 0)  # worker processes even for a small batch
    texts = TEXTS * 20
    assert tok.encode_batch(texts, allowed_special="all", num_workers=3) == [tok.encode(t, allowed_special="all") for t in texts]


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_and_pickle_keep_the_ids(kind, make, tmp_path):
    tok = make(kind)
    text = TEXTS[3] + TEXTS[5]
    ids = tok.encode(text, allowed_special="all")
    copy = tok.with_backend(tok.backend)  # save repoints the tokenizer's description: not the shared one's
    saved = copy.save(tmp_path / ("tokenizer" if kind == "hf" else "tok.json"))
    for again in (Tokenizer.from_spec(str(saved)), Tokenizer.from_spec(copy.spec), pickle.loads(pickle.dumps(tok))):
        assert type(again) is CLASSES[kind]
        assert again.encode(text, allowed_special="all") == ids and again.to_json_bytes() == tok.to_json_bytes()
    file = saved / TOKENIZER_FILE if kind == "hf" else saved
    assert copy.spec == {"type": "hf" if kind == "hf" else "bpe", "file": str(file.absolute() if kind == "hf" else file),
                         "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    assert pickle.loads(pickle.dumps(tok)).spec == tok.spec


@pytest.mark.parametrize("kind", KINDS)
def test_description_written_then_checked(kind, make, tmp_path):
    """What a model directory does: the tokenizer's files, then its description naming the copy; read back
    through the description, the same tokenizer (and described the same way)."""
    tok = make(kind)
    d = tmp_path / "model"
    d.mkdir()
    tok.write_files(d)
    recorded = json.loads(json.dumps(tok.describe(TOKENIZER_FILE)))  # as a config.json holds it
    assert sorted(p.name for p in d.iterdir()) == FILES[kind]
    if kind == "gpt2":
        assert recorded == {"type": "gpt2"}
    else:
        assert recorded == {"type": "hf" if kind == "hf" else "bpe", "file": TOKENIZER_FILE,
                            "sha256": hashlib.sha256((d / TOKENIZER_FILE).read_bytes()).hexdigest()}
        assert (d / TOKENIZER_FILE).read_bytes() == tok.to_json_bytes()
    again = Tokenizer.from_description(recorded, directory=d, source=str(d / "config.json"))
    assert type(again) is CLASSES[kind] and again.describe(TOKENIZER_FILE) == recorded
    assert again.encode(TEXTS[3], allowed_special="all") == tok.encode(TEXTS[3], allowed_special="all")
    assert same_tokenizer(recorded, tok.spec) and same_tokenizer(again.spec, tok.spec)


@pytest.mark.parametrize("kind", KINDS)
def test_a_changed_file_or_sha256_is_refused_in_one_line(kind, make, tmp_path):
    """GPT-2's vocabulary is checked too once it is a file (saved as a trained one is)."""
    copy = make(kind).with_backend("python")
    copy.save(tmp_path / ("tokenizer" if kind == "hf" else "tok.json"))
    file = Path(copy.spec["file"])
    real = hashlib.sha256(file.read_bytes()).hexdigest()
    source = str(tmp_path / "config.json")
    with pytest.raises(ScratchLLMError) as err:
        Tokenizer.from_description({**copy.spec, "sha256": "0" * 64}, source=source)
    assert str(err.value) == f"tokenizer file {file}: SHA-256 is {real}, expected {'0' * 64} as recorded in {source}"
    file.write_bytes(file.read_bytes().replace(b"}", b" }", 1))  # still valid JSON, other bytes
    changed = hashlib.sha256(file.read_bytes()).hexdigest()
    with pytest.raises(ScratchLLMError) as err:
        Tokenizer.from_description(copy.spec | {"sha256": real}, source=source)
    assert str(err.value) == f"tokenizer file {file}: SHA-256 is {changed}, expected {real} as recorded in {source}"
    assert not same_tokenizer({**copy.spec, "sha256": changed}, copy.spec)


@pytest.mark.parametrize("recorded, directory, message", [
    ("gpt2", None, "tokenizer spec is 'gpt2', expected an object with a 'type'"),
    ({"type": "wordpiece"}, None, "tokenizer spec 'type' is 'wordpiece', expected 'gpt2', 'bpe', 'hf' or 'scratchllm-bpe'"),
    ({"type": "bpe", "file": None}, None,
     "tokenizer spec 'file' is None: the tokenizer was never saved, so it cannot be found again"),
    ({"type": "bpe", "file": 7}, None, "tokenizer spec 'file' is 7, expected the path of a tokenizer file"),
    ({"type": "hf", "file": "../other/tokenizer.json"}, "d",
     "CONFIG: tokenizer 'file' is '../other/tokenizer.json', expected a file name inside the directory"),
    ({"type": "hf", "file": "tokenizer.json", "stop_ids": "eos"}, "d",
     "CONFIG: tokenizer 'stop_ids' is 'eos', expected a list of token ids"),
    ({"type": "bpe", "file": "tokenizer.json", "sha256": 5}, "d", "CONFIG: tokenizer 'sha256' is 5, expected the file's SHA-256 as hex"),
])
def test_bad_descriptions_are_one_line_errors(recorded, directory, message, tmp_path):
    source = str(tmp_path / "config.json") if directory else None
    with pytest.raises(ScratchLLMError) as err:
        Tokenizer.from_description(recorded, directory=tmp_path if directory else None, source=source)
    assert str(err.value) == message.replace("CONFIG", str(source))


def test_old_descriptions_still_read(make, tmp_path):
    """The whole vocabulary inline (its file's object as the description), a description without a SHA-256,
    and the extra keys run_config.json adds, as earlier versions wrote them."""
    trained = make("trained")
    text = TEXTS[3]
    inline = Tokenizer.from_description(trained.to_dict())
    assert inline.encode(text) == trained.encode(text) and inline.spec == {"type": "bpe", "file": None}
    unchecked = Tokenizer.from_description({"type": "bpe", "file": trained.spec["file"], "vocab_size": 600, "mask_token": "x"})
    assert unchecked.encode(text) == trained.encode(text) and unchecked.spec == trained.spec
