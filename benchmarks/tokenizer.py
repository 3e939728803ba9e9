"""Tokenizer throughput: scratchllm's BPE backends against raw tiktoken, on the same text.

Run from the repository root:  python -m benchmarks.tokenizer [--mb 5] [--repeats 3]

The corpus is mixed English from ../shared/data (tinyshakespeare, the-verdict, the SMS messages
and the instruction-data strings), concatenated and repeated up to --mb megabytes. Every encoder
must give exactly tiktoken's ids, or the benchmark fails. "cold" means a fresh Tokenizer, so its
word cache starts empty; "unique" encodes one copy of the corpus only (no repeated words from
the repetition), the least favourable case for the word cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from scratchllm.tokenizer import ENDOFTEXT, Tokenizer
from scratchllm.tokenizer.gpt2 import GPT2_FILES

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def base_corpus() -> list[str]:
    """The distinct documents: two books, each SMS message, each instruction record."""
    sms = [line.split("\t", 1)[1] for line in (SHARED / "sms_spam_collection.tsv").read_text(encoding="utf-8").splitlines()
           if "\t" in line]
    records = json.loads((SHARED / "instruction-data.json").read_text(encoding="utf-8"))
    instructions = ["\n\n".join(v for v in r.values() if isinstance(v, str) and v) for r in records]
    return [(SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8"),
            (SHARED / "the-verdict.txt").read_text(encoding="utf-8"), *sms, *instructions]


def reference_encoding() -> tiktoken.Encoding:
    """tiktoken's GPT-2 exactly as tiktoken_ext builds it, from the local files (no download)."""
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files directly, write no cache
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(SHARED / "gpt2" / "vocab.bpe"), encoder_json_file=str(SHARED / "gpt2" / "encoder.json"),
        vocab_bpe_hash=GPT2_FILES["vocab.bpe"], encoder_json_hash=GPT2_FILES["encoder.json"])
    return tiktoken.Encoding("gpt2-reference", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its finished child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def best_time(run: Callable[[], object], setup: Callable[[], object] | None,
              repeats: int) -> tuple[float, float, object]:
    """(wall s, CPU s) of the fastest of `repeats` runs, and its result; setup (e.g. a fresh
    tokenizer) is not timed. CPU seconds show the work done even when other processes compete
    for the cores and stretch the wall time."""
    best, best_cpu, result = float("inf"), 0.0, None
    for _ in range(repeats):
        if setup is not None:
            setup()
        start, start_cpu = time.perf_counter(), cpu_seconds()
        result = run()
        wall, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
        if wall < best:
            best, best_cpu = wall, cpu
    return best, best_cpu, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=5.0, help="corpus size in megabytes (UTF-8)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the fastest counts")
    parser.add_argument("--workers", type=int, default=2, help="processes/threads for the batch rows")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"error: data folder {SHARED} is missing (expected ../shared/data beside the repo)", file=sys.stderr)
        return 2

    docs = base_corpus()
    one_copy = "\n\n".join(docs)
    want = int(args.mb * 1e6)
    batch: list[str] = []
    size = 0
    while size < want:  # whole documents, repeated, until the corpus reaches --mb
        for doc in docs:
            batch.append(doc)
            size += len(doc.encode("utf-8")) + 2
            if size >= want:
                break
    corpus = "\n\n".join(batch)
    mb = len(corpus.encode("utf-8")) / 1e6
    mb_unique = len(one_copy.encode("utf-8")) / 1e6
    print(f"load average before: {os.getloadavg()[0]:.2f} (wall-clock rows are only fair when it is below the CPU count)")
    print(f"corpus: {mb:.2f} MB ({len(batch)} documents; one distinct copy is {mb_unique:.2f} MB), "
          f"{args.repeats} runs each, best counts, CPUs available: {len(os.sched_getaffinity(0))}")

    reference = reference_encoding()
    python: dict[str, Tokenizer] = {}

    def fresh_python() -> None:  # a new tokenizer: empty word cache
        python["tok"] = Tokenizer.gpt2(backend="python")

    start = time.perf_counter()
    fresh_python()
    load_s = time.perf_counter() - start
    auto = Tokenizer.gpt2()

    rows: list[tuple[str, float, float, float]] = []  # name, megabytes, wall seconds, CPU seconds
    t_ref, cpu, ref_ids = best_time(lambda: reference.encode_ordinary(corpus), None, args.repeats)
    rows.append(("tiktoken Encoding.encode (raw, reference)", mb, t_ref, cpu))

    t, cpu, ids = best_time(lambda: python["tok"].encode(corpus), fresh_python, args.repeats)
    assert ids == ref_ids, "python backend (cold) ids differ from tiktoken"
    rows.append(("scratchllm python backend, cold cache", mb, t, cpu))
    t, cpu, ids = best_time(lambda: python["tok"].encode(corpus), None, args.repeats)
    assert ids == ref_ids, "python backend (warm) ids differ from tiktoken"
    rows.append(("scratchllm python backend, warm cache", mb, t, cpu))
    t, cpu, ids = best_time(lambda: python["tok"].encode(one_copy), fresh_python, args.repeats)
    assert ids == reference.encode_ordinary(one_copy), "python backend (unique) ids differ from tiktoken"
    rows.append(("scratchllm python backend, cold, unique text", mb_unique, t, cpu))
    t, cpu, ids = best_time(lambda: auto.encode(corpus), None, args.repeats)
    assert ids == ref_ids, "auto backend ids differ from tiktoken"
    rows.append((f"scratchllm auto backend ({auto.backend})", mb, t, cpu))

    ref_batch = reference.encode_batch(batch, num_threads=args.workers, disallowed_special=())
    t, cpu, ids = best_time(lambda: reference.encode_batch(batch, num_threads=args.workers, disallowed_special=()),
                       None, args.repeats)
    rows.append((f"tiktoken encode_batch, {args.workers} threads (raw)", mb, t, cpu))
    t, cpu, ids = best_time(lambda: python["tok"].encode_batch(batch, num_workers=args.workers), fresh_python, args.repeats)
    assert ids == ref_batch, "python backend encode_batch ids differ from tiktoken"
    rows.append((f"scratchllm python encode_batch, {args.workers} processes, cold", mb, t, cpu))
    t, cpu, ids = best_time(lambda: auto.encode_batch(batch, num_workers=args.workers), None, args.repeats)
    assert ids == ref_batch, "auto backend encode_batch ids differ from tiktoken"
    rows.append((f"scratchllm auto encode_batch ({auto.backend}), {args.workers} threads", mb, t, cpu))

    ref_speed = mb / t_ref
    width = max(len(name) for name, *_ in rows)
    print(f"\n{'encoder':<{width}}  {'MB/s':>7}  {'x tiktoken':>10}  {'CPU s':>6}  {'MB/CPU s':>8}")
    for name, size_mb, seconds, cpu in rows:
        speed = size_mb / seconds
        print(f"{name:<{width}}  {speed:7.2f}  {speed / ref_speed:10.2f}  {cpu:6.2f}  {size_mb / cpu:8.2f}")
    print("\nids: identical to tiktoken for every row")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"GPT-2 tokenizer first load (python backend, parse + check files): {load_s * 1000:.0f} ms")

    shakespeare = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")
    start = time.perf_counter()
    trained = Tokenizer.train([shakespeare], 4096, backend="python")
    train_s = time.perf_counter() - start
    ratio = len(shakespeare.encode()) / len(trained.encode(shakespeare))
    print(f"train 4,096-id BPE on tinyshakespeare ({len(shakespeare.encode()) / 1e6:.2f} MB): {train_s:.2f} s, "
          f"{ratio:.2f} bytes/token on it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
