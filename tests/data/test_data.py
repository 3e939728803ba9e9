"""Tests for scratchllm.data: `prepare` (shards, meta, splits, chunking, workers, errors) and the loaders.

Exact ids are checked against the tokenizer encoding each document whole (`encode_ordinary(doc) +
[eot]`); loader tests check exact windows, determinism, resume through torch.save/torch.load with
weights_only=True, and the distributed rank-split properties.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from scratchllm.cli import main
from scratchllm.data import (RandomWindowLoader, SequentialLoader, SlidingWindowDataset, TokenData, TokenStream,
                             eval_batches, load_corpus, prepare)
from scratchllm.data.inputs import iter_text_chunks, safe_cut
from scratchllm.data.prepare import val_tokens_for
from scratchllm.data.tokens import corpus_from_texts, token_dtype
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import Tokenizer

RECORDS = [
    {"text": "A naïve café — déjà vu. 東京 2024!"},
    {"text": "Literal <|endoftext|> inside a document is plain text."},
    {"text": ""},  # empty: no document
    {"text": "Last record,\n  with  odd   spacing\n\n"},
]


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.gpt2()


@pytest.fixture(scope="module")
def small_tok(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, str]:
    """A 300-id BPE trained on the-verdict and saved as JSON (fast; a spec string for prepare)."""
    tok = Tokenizer.train([(shared_data / "the-verdict.txt").read_text(encoding="utf-8")], 300)
    path = tmp_path_factory.mktemp("tok") / "tok300.json"
    tok.save(path)
    return tok, str(path)


def read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8")  # no newline translation, as prepare reads


def doc_ids(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    return np.array([i for d in docs for i in tok.encode_ordinary(d) + [tok.eot_id]], dtype=np.int64)


def all_tokens(data: TokenData) -> np.ndarray:
    return np.concatenate([data.train.numpy(), data.val.numpy()]).astype(np.int64)


def split_docs(ids: np.ndarray, eot: int) -> list[tuple[int, ...]]:
    ends = np.flatnonzero(ids == eot)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tuple(ids[s:e + 1]) for s, e in zip(starts, ends)]


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(name + "."))


# ---- prepare: ids, shards, meta ------------------------------------------------------------------


def test_prepare_directory_of_text_markdown_and_jsonl(tmp_path: Path, shared_data: Path, gpt2: Tokenizer):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    shutil.copy(shared_data / "the-verdict.txt", corpus / "the-verdict.txt")
    (corpus / "notes.md").write_text("# Notes\n\nShort *markdown* file.\n", encoding="utf-8")
    lines = [json.dumps(r, ensure_ascii=False) for r in RECORDS]
    (corpus / "sub" / "docs.jsonl").write_text("\n".join(lines[:2] + ["   "] + lines[2:]) + "\n", encoding="utf-8")
    (corpus / "ignored.csv").write_text("a,b\n", encoding="utf-8")
    (corpus / ".hidden.txt").write_text("hidden\n", encoding="utf-8")
    out = tmp_path / "data"

    meta = prepare([str(corpus)], "gpt2", str(out), val_fraction=0.1, shard_tokens=1000, progress=False,
                   context_length=64)

    # Walk order: the folder's files sorted, then its subfolders.
    files = [corpus / "notes.md", corpus / "the-verdict.txt", corpus / "sub" / "docs.jsonl"]
    docs = [read_text(files[0]), read_text(files[1])] + [r["text"] for r in RECORDS if r["text"]]
    expected = doc_ids(gpt2, docs)
    n = len(expected)
    assert meta == json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert (meta["format"], meta["version"], meta["vocab_size"], meta["eot_id"], meta["dtype"]) == (
        "scratchllm-tokens", 1, 50257, 50256, "uint16")
    assert meta["tokenizer"] == {"type": "gpt2"}
    assert meta["split"] == "tail" and meta["documents"] == 5  # 5 * 0.1 < 10 expected val documents
    assert meta["val"]["tokens"] == math.ceil(0.1 * n) == val_tokens_for(n, 0.1, 65)
    assert meta["train"]["tokens"] + meta["val"]["tokens"] == n
    assert meta["bytes"] == sum(len(d.encode("utf-8")) for d in docs)
    assert meta["sources"] == [{"path": str(p), "bytes": p.stat().st_size,
                                "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files]
    # Shards: exactly shard_tokens each but the last, plain uint16 arrays for numpy.memmap.
    shards = meta["train"]["shards"]
    assert [s["file"] for s in shards] == [f"train_{i:03d}.bin" for i in range(len(shards))]
    assert [s["tokens"] for s in shards[:-1]] == [1000] * (len(shards) - 1) and len(shards) >= 5
    flat = np.concatenate([np.memmap(out / s["file"], dtype=np.uint16, mode="r") for s in shards]
                          + [np.memmap(out / s["file"], dtype=np.uint16, mode="r") for s in meta["val"]["shards"]])
    np.testing.assert_array_equal(flat, expected)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["meta.json"] + [s["file"] for s in shards + meta["val"]["shards"]])

    data = TokenData.open(out)
    assert len(data.train) == meta["train"]["tokens"] and data.train.dtype == np.uint16
    np.testing.assert_array_equal(data.train.window(990, 2020), expected[990:3010])  # crosses 3 shard ends
    np.testing.assert_array_equal(all_tokens(data), expected)
    assert data.tokenizer_spec == {"type": "gpt2"}
    assert data.bytes_per_token == pytest.approx(meta["bytes"] / n)
    assert data.train.bytes + data.val.bytes == meta["bytes"]
    assert data.val.bytes == sum(len(gpt2.decode_bytes([int(i)])) for i in expected[-len(data.val):] if i != 50256)


def test_val_gets_one_window_when_possible():
    assert val_tokens_for(10_000, 0.005, 1025) == 1025  # raised to a window
    assert val_tokens_for(1_000_000, 0.005, 1025) == 5000
    assert val_tokens_for(1500, 0.005, 1025) == 8  # two windows impossible: the fraction, train keeps one
    assert val_tokens_for(1500, 0.5, 1025) == 475
    assert val_tokens_for(10_000, 0.0, 1025) == 0


@pytest.mark.parametrize("tokenizer", ["gpt2", "small"])
@pytest.mark.parametrize("chunk_bytes", [8, 33, 200])
def test_chunks_tokenize_like_the_whole_text(tokenizer: str, chunk_bytes: int, tmp_path: Path, gpt2: Tokenizer, small_tok):
    tok = gpt2 if tokenizer == "gpt2" else small_tok[0]
    # Cutting at any whitespace would be wrong: the end of a string changes how "\s+(?!\S)" matches.
    assert gpt2.encode("Hello\n\n") + gpt2.encode("World") != gpt2.encode("Hello\n\nWorld")
    assert safe_cut("Hello\n\nWorld") == 5 and safe_cut("...\n\n ") == 0
    text = ("Hello\n\nWorld  \n\n  foo 12 \r\n\tx'll  don't\n \n" + "naïve 東京\u3000end.\n\n\n") * 60
    path = tmp_path / "ws.txt"
    path.write_bytes(text.encode("utf-8"))
    pieces = [piece for piece, _ in iter_text_chunks(path, chunk_bytes)]
    assert len(pieces) > 10 and "".join(pieces) == text
    assert [i for piece in pieces for i in tok.encode_ordinary(piece)] == tok.encode_ordinary(text)


def test_chunked_prepare_equals_whole_file_tinyshakespeare(tmp_path: Path, shared_data: Path, gpt2: Tokenizer):
    path = shared_data / "tinyshakespeare.txt"
    pieces = list(iter_text_chunks(path, 4096))
    assert len(pieces) > 250 and "".join(p for p, _ in pieces) == read_text(path)
    assert sum(raw for _, raw in pieces) == path.stat().st_size
    meta = prepare([str(path)], "gpt2", str(tmp_path / "ts"), val_fraction=0.0, progress=False, chunk_bytes=4096)
    data = TokenData.open(tmp_path / "ts")
    assert meta["val"] == {"tokens": 0, "bytes": 0, "shards": []} and len(data.val) == 0
    np.testing.assert_array_equal(data.train.numpy(), doc_ids(gpt2, [read_text(path)]))


def test_workers_give_byte_identical_output(tmp_path: Path, shared_data: Path, small_tok):
    tok, tok_path = small_tok
    inputs = [str(shared_data / "tinyshakespeare.txt"), str(shared_data / "the-verdict.txt")]
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        prepare(inputs, tok_path, str(out), workers=workers, shard_tokens=200_000, progress=False,
                chunk_bytes=1 << 15)
        outs.append(out)
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir())
    n_train = sum(name.startswith("train_") for name in names)
    assert n_train >= 3 and names == ["meta.json", "tokenizer.json"] + [f"train_{i:03d}.bin" for i in range(n_train)] + [
        "val_000.bin"]
    for name in names:
        if name != "meta.json":
            assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    metas = [json.loads((o / "meta.json").read_text()) for o in outs]
    assert metas[0]["tokenizer"]["file"] == str((outs[0] / "tokenizer.json").absolute())
    for m in metas:
        m["tokenizer"].pop("file")
    assert metas[0] == metas[1]
    assert metas[0]["dtype"] == "uint16" and metas[0]["vocab_size"] == 300
    # The DATADIR carries its tokenizer: same vocabulary, same ids.
    data = TokenData.open(outs[1])
    assert (outs[1] / "tokenizer.json").read_bytes() == Path(tok_path).read_bytes()
    np.testing.assert_array_equal(all_tokens(data), doc_ids(tok, [read_text(Path(p)) for p in inputs]))
    assert data.tokenizer().encode("Hello there") == tok.encode("Hello there")


def test_split_by_documents_is_seeded_and_keeps_documents_whole(tmp_path: Path, shared_data: Path, small_tok):
    tok, tok_path = small_tok
    paragraphs = [p for p in read_text(shared_data / "the-verdict.txt").split("\n\n") if p.strip()]
    jsonl = tmp_path / "paragraphs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": p, "id": i}) + "\n" for i, p in enumerate(paragraphs)), encoding="utf-8")
    assert len(paragraphs) * 0.2 >= 10
    runs = {}
    for seed in (0, 0, 1):
        out = tmp_path / f"seed{seed}-{len(runs)}"
        meta = prepare([str(jsonl)], tok_path, str(out), val_fraction=0.2, seed=seed, progress=False, context_length=32)
        runs[len(runs)] = (meta, TokenData.open(out))
    meta, data = runs[0]
    assert meta["split"] == "documents" and meta["documents"] == len(paragraphs)
    docs = [tuple(tok.encode_ordinary(p) + [tok.eot_id]) for p in paragraphs]
    train_docs = split_docs(data.train.numpy(), tok.eot_id)
    val_docs = split_docs(data.val.numpy(), tok.eot_id)
    # Whole documents in input order on each side, together exactly the corpus.
    assert set(val_docs) <= set(docs) and len(val_docs) >= 3
    assert sorted(train_docs + val_docs) == sorted(docs)
    assert [d for d in docs if d in set(val_docs)] == val_docs
    assert len(data.val) >= 33
    np.testing.assert_array_equal(runs[1][1].val.numpy(), data.val.numpy())  # same seed, same split
    assert runs[2][1].val.numpy().tolist() != data.val.numpy().tolist()  # another seed, another split


def test_split_by_documents_tops_up_a_short_side_to_one_window(tmp_path: Path, shared_data: Path, small_tok):
    tok, tok_path = small_tok
    verdict = read_text(shared_data / "the-verdict.txt")
    tiny = [f"Tiny record {i}." for i in range(199)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in [verdict] + tiny), encoding="utf-8")
    expected = doc_ids(tok, [verdict] + tiny)
    # The first document draws first: pick seeds that send the long one to train, then to val.
    import random

    to_train = next(s for s in range(100) if random.Random(s).random() >= 0.05)
    to_val = next(s for s in range(100) if random.Random(s).random() < 0.05)
    for seed in (to_train, to_val):
        out = tmp_path / f"s{seed}"
        meta = prepare([str(jsonl)], tok_path, str(out), val_fraction=0.05, seed=seed, progress=False,
                       context_length=4000)
        data = TokenData.open(out)
        assert meta["split"] == "documents" and meta["documents"] == 200
        assert sorted(all_tokens(data).tolist()) == sorted(expected.tolist())
        # The tiny records hold fewer than 4001 tokens: the short side is topped up to one window.
        assert sum(len(tok.encode(t)) + 1 for t in tiny) < 4001
        assert (len(data.val) if seed == to_train else len(data.train)) == 4001


def test_errors_replace_goes_on_and_offsets_count_across_chunks(tmp_path: Path, small_tok):
    tok, tok_path = small_tok
    good = "café au lait, é straddles chunks\n" * 400  # 'é' is two bytes: some chunk ends split it
    blob = good.encode("utf-8") + b"bad \xff byte\n"
    path = tmp_path / "mixed.txt"
    path.write_bytes(blob)
    offset = len(good.encode("utf-8")) + 4
    with pytest.raises(ScratchLLMError, match=rf"mixed.txt: invalid UTF-8 at byte offset {offset} \(invalid start byte\)"):
        prepare([str(path)], tok_path, str(tmp_path / "strict"), progress=False, context_length=8, chunk_bytes=4097)
    prepare([str(path)], tok_path, str(tmp_path / "replaced"), progress=False, context_length=8, chunk_bytes=4097,
            errors="replace")
    np.testing.assert_array_equal(all_tokens(TokenData.open(tmp_path / "replaced")),
                                  doc_ids(tok, [blob.decode("utf-8", "replace")]))


# ---- prepare: bad input through the CLI ------------------------------------------------------------


def _bad_inputs(tmp: Path, tok: Tokenizer) -> dict[str, tuple[list[str], str]]:
    (tmp / "blank.txt").write_text("  \n\t\n   ", encoding="utf-8")
    (tmp / "bad.txt").write_bytes("café ".encode("utf-8") + b"\xc3(")
    (tmp / "bad.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    (tmp / "norecord.jsonl").write_text('{"text": "fine"}\n[1, 2]\n', encoding="utf-8")
    (tmp / "short.txt").write_text("Hello world, a short text.", encoding="utf-8")
    n_short = len(tok.encode("Hello world, a short text.")) + 1
    pattern = str(tmp / "missing" / "*.txt")
    return {
        "no-match": ([pattern, str(tmp / "short.txt")], f"no input files matched '{pattern}' (expected text files, "
                     "directories holding .txt, .md, .jsonl files, or glob patterns)"),
        "blank": ([str(tmp / "blank.txt")], f"the corpus is empty or all whitespace (1 file(s), 8 bytes: {tmp / 'blank.txt'})"),
        "undecodable": ([str(tmp / "bad.txt")], f"{tmp / 'bad.txt'}: invalid UTF-8 at byte offset 6 (invalid continuation "
                        "byte); fix the file or pass errors='replace' (--errors replace) to substitute U+FFFD"),
        "undecodable-jsonl": ([str(tmp / "bad.jsonl")], f"{tmp / 'bad.jsonl'}: invalid UTF-8 at byte offset 30 (invalid "
                              "continuation byte); fix the file or pass errors='replace' (--errors replace) to substitute U+FFFD"),
        "not-a-record": ([str(tmp / "norecord.jsonl")], f"{tmp / 'norecord.jsonl'} line 2: expected a JSON object with a "
                         "string 'text' field"),
        "too-short": ([str(tmp / "short.txt")], f"the corpus has {n_short} tokens, fewer than one training window of "
                      "1025 tokens (context_length 1024 + 1); add text or lower the context length"),
    }


@pytest.mark.parametrize("case", ["no-match", "blank", "undecodable", "undecodable-jsonl", "not-a-record", "too-short"])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case: str, tmp_path: Path, small_tok, capsys):
    tok, tok_path = small_tok
    inputs, message = _bad_inputs(tmp_path, tok)[case]
    out = tmp_path / "out"
    rc = main(["prepare", "--input", *inputs, "--tokenizer", tok_path, "--out", str(out), "--workers", "2"])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err == f"scratchllm prepare: error: {message}\n"
    assert captured.out == ""
    assert leftovers(tmp_path, "out") == []  # no DATADIR, no out.tmp-XXXX


def test_existing_output_needs_overwrite(tmp_path: Path, shared_data: Path, small_tok, capsys):
    _, tok_path = small_tok
    out = tmp_path / "out"
    args = ["prepare", "--input", str(shared_data / "the-verdict.txt"), "--tokenizer", tok_path, "--out", str(out),
            "--context-length", "64", "--no-progress"]
    assert main(args) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"prepared {out}: 1 file, 0.02 MB of text, train ") and line.count("\n") == 1
    assert "val 71 tokens (1 shard(s)), split by stream tail" in line
    assert main(args) == 2
    assert capsys.readouterr().err == (f"scratchllm prepare: error: output directory {out}: already exists and is not "
                                       "empty (pass overwrite=True / --overwrite to replace it)\n")
    assert main(args + ["--overwrite", "--val-fraction", "0.5"]) == 0
    assert json.loads((out / "meta.json").read_text())["val_fraction"] == 0.5
    assert leftovers(tmp_path, "out") == ["out"]


def test_overwrite_replaces_only_a_prepared_data_directory(tmp_path: Path, shared_data: Path, small_tok, capsys):
    """`prepare --overwrite` onto a folder that is not a DATADIR (the issue's `mkdir P; echo x > P/a.txt`)
    is refused and the folder keeps its files, from the CLI and from the library."""
    _, tok_path = small_tok
    folder = tmp_path / "P"
    folder.mkdir()
    (folder / "a.txt").write_text("x\n")
    args = ["prepare", "--input", str(shared_data / "the-verdict.txt"), "--tokenizer", tok_path, "--out", str(folder),
            "--overwrite", "--no-progress"]
    refusal = (f"output directory {folder}: not a prepared data directory (no meta.json with format 'scratchllm-tokens'); "
               "--overwrite only replaces one, so remove it yourself or choose another --out")
    assert main(args) == 2
    assert capsys.readouterr().err == f"scratchllm prepare: error: {refusal}\n"
    with pytest.raises(ScratchLLMError) as info:
        prepare([str(shared_data / "the-verdict.txt")], tok_path, str(folder), overwrite=True, progress=False)
    assert str(info.value) == refusal
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"] and (folder / "a.txt").read_text() == "x\n"
    assert leftovers(tmp_path, "P") == ["P"]


def test_dtype_rule_and_uint32_shards(tmp_path: Path):
    assert token_dtype(300) == np.uint16 and token_dtype(50257) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(200_019) == np.uint32
    ids = np.arange(65_000, 70_000, dtype=np.uint32)
    ids[:2500].tofile(tmp_path / "a.bin")
    ids[2500:].tofile(tmp_path / "b.bin")
    stream = TokenStream.from_files([tmp_path / "a.bin", tmp_path / "b.bin"], "uint32")
    assert len(stream) == 5000 and stream.dtype == np.uint32
    np.testing.assert_array_equal(stream.window(2490, 20), ids[2490:2510])


# ---- load_corpus ------------------------------------------------------------------------------------


def test_load_corpus_splits_a_file_90_10_and_opens_a_datadir(tmp_path: Path, shared_data: Path, gpt2: Tokenizer):
    path = shared_data / "tinyshakespeare.txt"
    data = load_corpus(str(path), gpt2)
    ids = doc_ids(gpt2, [read_text(path)])
    split = int(len(ids) * 0.9)
    np.testing.assert_array_equal(data.train.numpy(), ids[:split])
    np.testing.assert_array_equal(data.val.numpy(), ids[split:])
    assert data.meta["bytes"] == path.stat().st_size == data.train.bytes + data.val.bytes
    assert data.bytes_per_token == pytest.approx(path.stat().st_size / len(ids))
    assert data.meta["train"]["tokens"] == split and data.tokenizer_spec == {"type": "gpt2"}
    prepare([str(shared_data / "the-verdict.txt")], "gpt2", str(tmp_path / "d"), progress=False)
    opened = load_corpus(str(tmp_path / "d"), "gpt2", val_fraction=0.5)  # val_fraction ignored
    assert opened.meta["val_fraction"] == 0.005 and len(opened.val) == 1025
    with pytest.raises(ScratchLLMError, match="corpus .*nope: no such file or directory"):
        load_corpus(str(tmp_path / "nope"), gpt2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScratchLLMError, match="empty: not a prepared data directory"):
        load_corpus(str(tmp_path / "empty"), gpt2)


def test_corpus_from_texts_keeps_each_splits_text_and_bytes(small_tok):
    tok, _ = small_tok
    train_docs, val_docs = ["A naïve café.", "Second document\n"], ["déjà vu, 東京"]
    data = corpus_from_texts(train_docs, val_docs, tok, name="mem")
    np.testing.assert_array_equal(data.train.numpy(), doc_ids(tok, train_docs))
    np.testing.assert_array_equal(data.val.numpy(), doc_ids(tok, val_docs))
    train_bytes, val_bytes = (sum(len(d.encode("utf-8")) for d in docs) for docs in (train_docs, val_docs))
    assert (data.train.bytes, data.val.bytes, data.meta["bytes"]) == (train_bytes, val_bytes, train_bytes + val_bytes)
    # each split's own bytes per token; the corpus-wide figure is their pooled average
    assert data.split_bytes_per_token("val") == val_bytes / len(data.val)
    assert data.split_bytes_per_token("train") == train_bytes / len(data.train)
    assert data.bytes_per_token == (train_bytes + val_bytes) / (len(data.train) + len(data.val))
    assert data.split_bytes_per_token("val") != data.bytes_per_token
    assert data.meta["documents"] == 3 and data.tokenizer_spec == tok.spec
    with pytest.raises(ScratchLLMError, match="split 'test': expected 'train' or 'val'"):
        data.split_bytes_per_token("test")


# ---- loaders ------------------------------------------------------------------------------------------


def shard_stream(n: int = 1000) -> TokenStream:
    ids = np.arange(n, dtype=np.uint16)
    return TokenStream([ids[:300], ids[300:301], ids[301:]])  # windows cross shard ends


def take(loader, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [loader.next_batch() for _ in range(k)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_random_windows_are_nanogpt_get_batch_and_deterministic():
    stream = shard_stream()
    loader = RandomWindowLoader(stream, batch_size=4, context_length=8, seed=1)
    x, y = loader.next_batch()
    offsets = torch.randint(1000 - 8, (4,), generator=torch.Generator().manual_seed(1))
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (4, 8)
    assert torch.equal(x, offsets[:, None] + torch.arange(8))  # the stream is 0, 1, 2, ...
    assert torch.equal(y, x + 1)
    assert_batches_equal(take(RandomWindowLoader(stream, 4, 8, seed=1), 5), take(RandomWindowLoader(stream, 4, 8, seed=1), 5))
    assert not torch.equal(next(iter(RandomWindowLoader(stream, 4, 8, seed=2)))[0], x)
    with pytest.raises(ScratchLLMError, match="fewer than one window of 1001"):
        RandomWindowLoader(stream, 4, 1000, seed=1)


def test_random_windows_resume_from_saved_state(tmp_path: Path):
    stream = shard_stream()
    loader = RandomWindowLoader(stream, 4, 8, seed=7)
    take(loader, 3)
    torch.save(loader.state_dict(), tmp_path / "state.pt")
    expected = take(loader, 4)
    resumed = RandomWindowLoader(stream, 4, 8, seed=0)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.step == 3
    assert_batches_equal(take(resumed, 4), expected)


def test_random_windows_ranks_slice_the_single_process_batch():
    stream = np.arange(5000, dtype=np.uint16)  # a plain array works too
    single = take(RandomWindowLoader(stream, 8, 16, seed=3), 3)
    ranks = [take(RandomWindowLoader(stream, 4, 16, seed=3, rank=r, world_size=2), 3) for r in (0, 1)]
    for step in range(3):
        assert torch.equal(torch.cat([ranks[0][step][0], ranks[1][step][0]]), single[step][0])
        assert torch.equal(torch.cat([ranks[0][step][1], ranks[1][step][1]]), single[step][1])
    assert not torch.equal(ranks[0][0][0], ranks[1][0][0])


def test_sliding_window_dataset_matches_the_book():
    ids = list(range(10))
    for max_length, stride in ((4, 1), (4, 4), (3, 2)):
        dataset = SlidingWindowDataset(ids, max_length, stride)
        # Raschka, LLMs from Scratch, GPTDatasetV1 (ch. 2.6):
        book = [(ids[i:i + max_length], ids[i + 1:i + max_length + 1]) for i in range(0, len(ids) - max_length, stride)]
        assert len(dataset) == len(book)
        assert [(x.tolist(), y.tolist()) for x, y in (dataset[i] for i in range(len(dataset)))] == book
    x, y = SlidingWindowDataset(ids, 4, 4)[1]
    assert x.tolist() == [4, 5, 6, 7] and y.tolist() == [5, 6, 7, 8] and x.dtype == torch.int64


def epoch_batches(loader: SequentialLoader) -> list[torch.Tensor]:
    return [x for x, _ in loader]


def test_sequential_loader_epochs_and_exact_resume(tmp_path: Path):
    dataset = SlidingWindowDataset(np.arange(100), max_length=4, stride=1)  # 96 windows; x[0] names the window
    loader = SequentialLoader(dataset, batch_size=10, shuffle=True, seed=3)
    assert len(loader) == 10 and len(SequentialLoader(dataset, 10, True, 3, drop_last=True)) == 9
    uninterrupted = [epoch_batches(loader) for _ in range(3)]
    for epoch in uninterrupted:
        assert sorted(torch.cat(epoch)[:, 0].tolist()) == list(range(96))  # every window once per epoch
        assert [len(b) for b in epoch] == [10] * 9 + [6]
    assert torch.cat(uninterrupted[0])[:, 0].tolist() != torch.cat(uninterrupted[1])[:, 0].tolist()
    assert loader.epoch == 3 and loader.position == 0

    first = SequentialLoader(dataset, 10, True, 3)
    got = [epoch_batches(first)]
    it = iter(first)
    got.append([next(it)[0] for _ in range(4)])
    torch.save(first.state_dict(), tmp_path / "loader.pt")
    resumed = SequentialLoader(dataset, 10, True, seed=999)
    resumed.load_state_dict(torch.load(tmp_path / "loader.pt", weights_only=True))
    assert (resumed.epoch, resumed.position) == (1, 4)
    got[1] += epoch_batches(resumed)
    got.append(epoch_batches(resumed))
    for a, b in zip(got, uninterrupted):
        assert len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b))
    ordered = epoch_batches(SequentialLoader(dataset, 10, shuffle=False, seed=0))
    assert torch.cat(ordered)[:, 0].tolist() == list(range(96))


def test_sequential_loader_ranks_split_each_global_batch_evenly():
    dataset = SlidingWindowDataset(np.arange(101), max_length=4, stride=1)  # 97 windows: padded to 98
    ranks = [epoch_batches(SequentialLoader(dataset, 5, True, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    single = torch.randperm(97, generator=torch.Generator().manual_seed(1)).tolist()
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]] == [5] * 9 + [4]
    merged = [i for b0, b1 in zip(*ranks) for i in b0[:, 0].tolist() + b1[:, 0].tolist()]
    assert merged == single + single[:1]


def test_eval_batches_are_fixed_non_overlapping_windows():
    stream = shard_stream(100)
    batches = list(eval_batches(stream, batch_size=2, context_length=10))
    xs = torch.cat([x for x, _ in batches])
    assert [len(x) for x, _ in batches] == [2, 2, 2, 2, 1]
    assert xs[:, 0].tolist() == list(range(0, 90, 10))
    assert all(torch.equal(y, x + 1) for x, y in batches)
    limited = list(eval_batches(stream, 2, 10, max_batches=2))
    assert torch.cat([x for x, _ in limited])[:, 0].tolist() == [0, 20, 40, 60]  # evenly spaced
    (x, y), = eval_batches(np.arange(5), 4, 10)  # shorter than a window: one window of all of it
    assert x.tolist() == [[0, 1, 2, 3]] and y.tolist() == [[1, 2, 3, 4]]
