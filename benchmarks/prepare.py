"""`prepare` throughput against encoding the same files whole, in one process.

Run from the repository root:  python -m benchmarks.prepare [--copies 8] [--repeats 3] [--tokenizer gpt2]

The corpus is --copies copies of ../shared/data/tinyshakespeare.txt as separate files (1.1 MB each).
The reference reads each file and calls `encode_ordinary` on all of it: the least work that
turns the text into ids, with no chunking, no writing and unbounded memory. `prepare` adds reading
in 1 MiB chunks, shard writing, hashing and the split; with --workers it encodes in processes.
Runs alternate (reference, workers=1, workers=2, ...) so that load on the machine hits all alike.
Every run must produce the reference's ids, or the benchmark fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from scratchllm.data import TokenData, prepare
from scratchllm.tokenizer import Tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    tok = Tokenizer.from_spec(args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = root / "corpus"
        corpus.mkdir()
        for i in range(args.copies):
            shutil.copy(SHARED / "tinyshakespeare.txt", corpus / f"part{i:02d}.txt")
        files = sorted(corpus.iterdir())
        mb = sum(p.stat().st_size for p in files) / 1e6

        def reference() -> np.ndarray:
            ids = []
            for p in files:
                ids += tok.encode_ordinary(p.read_bytes().decode("utf-8")) + [tok.eot_id]
            return np.array(ids)

        def run_prepare(workers: int):
            def go() -> np.ndarray:
                out = root / f"out{workers}"
                shutil.rmtree(out, ignore_errors=True)
                prepare([str(corpus)], args.tokenizer, str(out), workers=workers, progress=False)
                data = TokenData.open(out)
                return np.concatenate([data.train.numpy(), data.val.numpy()])
            return go

        runs = {"reference (encode whole files)": reference}
        runs.update({f"prepare workers={w}": run_prepare(w) for w in args.workers})
        times: dict[str, list[float]] = {name: [] for name in runs}
        expected = reference()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                ids = fn()
                times[name].append(time.perf_counter() - start)
                if not np.array_equal(ids, expected):
                    raise SystemExit(f"{name}: ids differ from the reference")

    ref = statistics.median(times["reference (encode whole files)"])
    print(f"corpus: {args.copies} x tinyshakespeare = {mb:.1f} MB, {len(expected):,} tokens, tokenizer {args.tokenizer} "
          f"({tok.backend}), {os.cpu_count()} CPUs, median of {args.repeats}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:32s} {t:6.2f} s  {mb / t:6.2f} MB/s  {len(expected) / t / 1e3:7.0f}k tok/s  "
              f"{ref / t:4.2f}x reference")


if __name__ == "__main__":
    main()
