"""Tokenizer throughput: scratchllm's BPE backends against raw tiktoken, on the same distinct text.

Run from the repository root:  python -m benchmarks.tokenizer [--mb 0] [--shared-only] [--rounds 7] [--workers 2]

The text is distinct documents, each once: tinyshakespeare, the-verdict, every distinct SMS message
and every distinct string of the two instruction-data files (../shared/data), then the topics of
Python's own documentation (`pydoc_data.topics`, which ships with every Python; left out with
--shared-only); `--mb N` appends the standard library's top-level .py sources, sorted by name,
until the text reaches N megabytes. No document is repeated, so a "cold" run (a fresh Tokenizer:
empty word cache) runs BPE on every distinct word once, as a first pass over new data does; but
words repeat across documents, so even a cold cache serves most pre-tokens (about 95% of them on
the default text; the run prints the rate). The "new words" text is every distinct pre-token of the
same documents once, in order of first appearance: a cold cache then serves almost none, which is
what text of mostly unseen words (another language, identifiers, numbers) costs. "warm" encodes
the distinct text again with the word cache the cold runs filled. The pre-tokenization rows give the
bound: the python backend's `encode` is this split plus BPE and cache lookups, so it cannot beat
the split alone. The "split by the regex module" row is the python backend as it split text
before the stdlib-re form (pretokenize.py), measured in the same rounds.

Every implementation is timed once per round, in turn, so a burst of load from other processes
hits all of them alike; each row reports medians over the rounds. The ratios are against raw
tiktoken timed in the same rounds, on CPU seconds (this process, its threads and its finished child
processes), which processes competing for the cores distort less than wall time; the wall-clock
ratio is shown too. Every run's ids must equal tiktoken's, or the benchmark fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import regex
import tiktoken
from pydoc_data.topics import topics as pydoc_topics
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from scratchllm.tokenizer import ENDOFTEXT, BPETokenizer, Tokenizer
from scratchllm.tokenizer.bpe import GPT2_PATTERN_FAST
from scratchllm.tokenizer.gpt2 import GPT2_FILES
from scratchllm.tokenizer.pretokenize import gpt2_re_pattern

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def distinct_documents(mb: float = 0.0, pydoc: bool = True) -> tuple[list[str], dict[str, float]]:
    """(documents, megabytes from each source): every document once, in a fixed order."""
    def strings(name: str) -> list[str]:
        records = json.loads((SHARED / name).read_text(encoding="utf-8"))
        return [v for r in records for v in r.values() if isinstance(v, str) and v]

    sms = [line.split("\t", 1)[1] for line in (SHARED / "sms_spam_collection.tsv").read_text(encoding="utf-8").splitlines()
           if "\t" in line]
    sources = {
        "../shared/data": [(SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8"),
                           (SHARED / "the-verdict.txt").read_text(encoding="utf-8"), *sms,
                           *strings("instruction-data.json"), *strings("instruction-data-with-preference.json")],
        "pydoc_data.topics": [pydoc_topics[name] for name in sorted(pydoc_topics)] if pydoc else [],
        "stdlib *.py": [],
    }
    if mb:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        sources["stdlib *.py"] = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("*.py"))]
    docs: dict[str, None] = {}
    sizes: dict[str, float] = {}
    total = 0
    for source, texts in sources.items():
        for text in texts:
            if source == "stdlib *.py" and total >= mb * 1e6:
                break
            if text not in docs:  # the SMS file and the instruction files repeat some strings
                docs[text] = None
                size = len(text.encode("utf-8")) + 2  # + the "\n\n" that joins documents
                sizes[source] = sizes.get(source, 0.0) + size / 1e6
                total += size
    return list(docs), sizes


def reference_encoding() -> tiktoken.Encoding:
    """tiktoken's GPT-2 exactly as tiktoken_ext builds it, from the local files (no download)."""
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files directly, write no cache
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(SHARED / "gpt2" / "vocab.bpe"), encoder_json_file=str(SHARED / "gpt2" / "encoder.json"),
        vocab_bpe_hash=GPT2_FILES["vocab.bpe"], encoder_json_hash=GPT2_FILES["encoder.json"])
    return tiktoken.Encoding("gpt2-reference", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)


def cpu_seconds() -> float:
    """CPU time of this process (all threads; ns resolution) plus its finished child processes
    (os.times, clock ticks: only the process-pool rows have children)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


class Row:
    """One implementation on one text: `run` is timed, `setup` (e.g. a fresh tokenizer) is not,
    `check` validates each result (the ids against tiktoken's)."""

    def __init__(self, name: str, text: str, mb: float, run: Callable[[], object],
                 setup: Callable[[], object] | None = None, check: Callable[[object], None] | None = None) -> None:
        self.name, self.text, self.mb, self.run, self.setup, self.check = name, text, mb, run, setup, check
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def measure(self) -> None:
        if self.setup is not None:
            self.setup()
        start, start_cpu = time.perf_counter(), cpu_seconds()
        result = self.run()
        self.wall.append(time.perf_counter() - start)
        self.cpu.append(cpu_seconds() - start_cpu)
        if self.check is not None:
            self.check(result)


def cold_cache_hits(pieces: list[str]) -> float:
    """The share of pre-tokens an empty word cache serves in one pass: those that repeat an earlier
    one (the cache keeps every word it has computed; on these texts it never reaches its limit)."""
    return 1 - len(set(pieces)) / len(pieces) if pieces else 0.0


def equal_to(want: object, what: str) -> Callable[[object], None]:
    def check(got: object) -> None:
        if got != want:
            raise SystemExit(f"FAILED: {what}: ids differ from tiktoken's")
    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=0.0,
                        help="text size in megabytes; above the ~2.3 MB of ../shared/data and the pydoc topics, "
                             "standard-library sources are added (default 0: no sources)")
    parser.add_argument("--shared-only", action="store_true",
                        help="only the ../shared/data documents (1.75 MB), without the pydoc topics")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; each row reports its median")
    parser.add_argument("--workers", type=int, default=2, help="processes/threads for the encode_batch rows")
    parser.add_argument("--no-batch", action="store_true", help="skip the encode_batch rows")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"error: data folder {SHARED} is missing (expected ../shared/data beside the repo)", file=sys.stderr)
        return 2

    docs, sizes = distinct_documents(args.mb, pydoc=not args.shared_only)
    text = "\n\n".join(docs)
    mb = len(text.encode("utf-8")) / 1e6
    print(f"load average before: {os.getloadavg()[0]:.2f} (CPUs available: {len(os.sched_getaffinity(0))})")
    print(f"text 'distinct': {mb:.2f} MB, {len(docs)} distinct documents, none repeated: "
          + ", ".join(f"{source} {size:.2f} MB" for source, size in sizes.items() if size)
          + f" (Python {platform.python_version()}, tiktoken {tiktoken.__version__}, regex {regex.__version__})")

    start = time.perf_counter()
    gpt2_re_pattern()
    build_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    python = {"cold": Tokenizer.gpt2(backend="python")}
    load_s = time.perf_counter() - start
    python["warm"] = Tokenizer.gpt2(backend="python")
    auto = Tokenizer.gpt2()
    reference = reference_encoding()
    ref_ids = reference.encode_ordinary(text)
    python["warm"].encode(text)  # fills the warm tokenizer's word cache

    def fresh_python() -> None:  # a new tokenizer: empty word cache
        python["cold"] = Tokenizer.gpt2(backend="python")

    # The same vocabulary with GPT-2's pattern spelled GPT2_PATTERN_FAST (the same language): a pattern
    # other than GPT2_PATTERN is split by the regex module, as the python backend split every text
    # before the stdlib-re form, so this row shows what that form buys.
    with_regex_split = {**python["cold"].to_dict(), "pattern": GPT2_PATTERN_FAST}

    def fresh_python_regex_split() -> None:
        python["regex split"] = BPETokenizer.from_dict(with_regex_split, backend="python")

    re_split = gpt2_re_pattern().findall
    regex_split = regex.compile(GPT2_PATTERN_FAST).findall
    pieces = re_split(text)
    words, hits = len(pieces), cold_cache_hits(pieces)
    new_text = "".join(dict.fromkeys(pieces))  # each distinct pre-token once: mostly new words
    new_mb, new_hits = len(new_text.encode("utf-8")) / 1e6, cold_cache_hits(re_split(new_text))
    new_ids = reference.encode_ordinary(new_text)
    print(f"text 'new words': {new_mb:.2f} MB, the {len(set(pieces)):,} distinct pre-tokens of 'distinct', each once; "
          f"a cold word cache serves {new_hits:.1%} of its pre-tokens, against {hits:.1%} of the {words:,} of 'distinct'")
    new_reference = Row("tiktoken Encoding.encode_ordinary (raw, reference)", "new words", new_mb,
                        lambda: reference.encode_ordinary(new_text))
    rows = [
        Row("tiktoken Encoding.encode_ordinary (raw, reference)", "distinct", mb, lambda: reference.encode_ordinary(text)),
        Row("scratchllm python backend, cold cache (headline)", "distinct", mb, lambda: python["cold"].encode(text),
            fresh_python, equal_to(ref_ids, "python backend, cold")),
        new_reference,
        Row("scratchllm python backend, cold cache", "new words", new_mb, lambda: python["cold"].encode(new_text),
            fresh_python, equal_to(new_ids, "python backend, cold, new words")),
        Row("scratchllm python backend, cold cache, split by the regex module", "distinct", mb,
            lambda: python["regex split"].encode(text), fresh_python_regex_split,
            equal_to(ref_ids, "python backend, regex split")),
        Row("scratchllm python backend, warm cache", "distinct, again", mb, lambda: python["warm"].encode(text),
            None, equal_to(ref_ids, "python backend, warm")),
        Row(f"scratchllm auto backend ({auto.backend})", "distinct", mb, lambda: auto.encode(text),
            None, equal_to(ref_ids, "auto backend")),
        Row("bound: pre-tokenization alone, stdlib re (python backend's split)", "distinct", mb, lambda: re_split(text)),
        Row("pre-tokenization alone, regex module (GPT2_PATTERN_FAST)", "distinct", mb, lambda: regex_split(text)),
    ]
    if not args.no_batch:
        ref_batch = reference.encode_batch(docs, num_threads=args.workers, disallowed_special=())
        rows += [
            Row(f"tiktoken encode_batch, {args.workers} threads (raw)", "distinct docs", mb,
                lambda: reference.encode_batch(docs, num_threads=args.workers, disallowed_special=())),
            Row(f"scratchllm python encode_batch, {args.workers} processes, cold", "distinct docs", mb,
                lambda: python["cold"].encode_batch(docs, num_workers=args.workers), fresh_python,
                equal_to(ref_batch, "python backend encode_batch")),
            Row(f"scratchllm auto encode_batch ({auto.backend}), {args.workers} threads", "distinct docs", mb,
                lambda: auto.encode_batch(docs, num_workers=args.workers), None, equal_to(ref_batch, "auto encode_batch")),
        ]
    loads = []
    for _ in range(args.rounds):
        for row in rows:
            row.measure()
        loads.append(os.getloadavg()[0])

    # Each row against tiktoken on the same text: batch rows against its own encode_batch, the
    # "new words" rows against encode_ordinary of that text, the others against encode_ordinary.
    reference_of = {"distinct": rows[0], "distinct, again": rows[0], "new words": new_reference,
                    "distinct docs": next((row for row in rows if row.name.startswith("tiktoken encode_batch")), None)}
    width = max(len(row.name) for row in rows)
    print(f"\n{'implementation':<{width}}  {'text':<15}  {'MB/CPU s':>8}  {'x tiktoken (CPU)':>16}  "
          f"{'MB/s wall':>9}  {'x tiktoken (wall)':>17}")
    for row in rows:
        cpu, wall = statistics.median(row.cpu), statistics.median(row.wall)
        ref = reference_of[row.text]
        ref_cpu, ref_wall = statistics.median(ref.cpu), statistics.median(ref.wall)
        print(f"{row.name:<{width}}  {row.text:<15}  {row.mb / cpu:8.2f}  {ref_cpu / cpu:16.2f}  "
              f"{row.mb / wall:9.2f}  {ref_wall / wall:17.2f}")
    print("\ntext: 'distinct' is the documents joined into one string; 'distinct, again' the same string a second"
          "\ntime (warm cache); 'new words' each distinct pre-token once" + ("" if args.no_batch else
          "; 'distinct docs' the documents as a list, whose rows compare\nwith tiktoken's own encode_batch instead "
          "of encode_ordinary") + ".")
    print(f"cold cache hits: {hits:.1%} of the {words:,} pre-tokens of 'distinct' (words repeat across its documents), "
          f"{new_hits:.1%} of 'new words'")
    print(f"ids: identical to tiktoken's on every encoder row, every round; medians of "
          f"{args.rounds} rounds; load average during the rounds {min(loads):.2f}-{max(loads):.2f}")
    print(f"GPT-2 tokenizer first load (python backend, parse + check files): {load_s * 1000:.0f} ms; "
          f"stdlib-re form of GPT-2's pattern, built once per process on first use: {build_ms:.0f} ms")

    shakespeare = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")
    start = time.perf_counter()
    trained = Tokenizer.train([shakespeare], 4096, backend="python")
    train_s = time.perf_counter() - start
    ratio = len(shakespeare.encode()) / len(trained.encode(shakespeare))
    print(f"train 4,096-id BPE on tinyshakespeare ({len(shakespeare.encode()) / 1e6:.2f} MB): {train_s:.2f} s, "
          f"{ratio:.2f} bytes/token on it")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
