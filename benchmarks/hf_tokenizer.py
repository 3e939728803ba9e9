"""Hugging Face tokenizer.json encoding: scratchllm's from-scratch reader against the `tokenizers` library.

Run from the repository root:  python -m benchmarks.hf_tokenizer [--repeats 5]

The file is OpenAI's GPT-2 vocabulary (../shared/data/gpt2) written as a tokenizer.json by the
`tokenizers` library (50,257 ids, 50,000 merges; nothing is downloaded), so the same text can also
go through scratchllm's GPT-2 paths. The text is tinyshakespeare + the-verdict (~1.2 MB), encoded in
one call and paragraph by paragraph (one call each, in one thread for every encoder). Every encoder
must give the library's ids, or the benchmark fails. Runs alternate within one process; the median
of --repeats is reported, with each time as a ratio to the library's (`tokenizers.Tokenizer` used
directly) in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import tokenizers

from scratchllm.tokenizer import Tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def gpt2_tokenizer_json(directory: Path) -> Path:
    lib = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(SHARED / "gpt2" / "encoder.json"),
                                                               str(SHARED / "gpt2" / "vocab.bpe")))
    lib.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    lib.decoder = tokenizers.decoders.ByteLevel()
    lib.add_special_tokens(["<|endoftext|>"])
    lib.save(str(directory / "tokenizer.json"))
    return directory


def timed(runs: dict, repeats: int, reference) -> dict[str, float]:
    """Median seconds of each run, the runs alternating; each must return `reference`."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            out = run()
            times[name].append(time.perf_counter() - start)
            if reference is not None and out != reference:
                raise SystemExit(f"{name}: ids differ from the tokenizers library's")
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    text = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8") + (SHARED / "the-verdict.txt").read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p]
    with tempfile.TemporaryDirectory() as tmp:
        d = gpt2_tokenizer_json(Path(tmp))
        library = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
        fast, python = Tokenizer.from_hf(d, backend="tokenizers"), Tokenizer.from_hf(d, backend="python")
        gpt2_python, gpt2_tiktoken = Tokenizer.gpt2(backend="python"), Tokenizer.gpt2(backend="tiktoken")
        for tok in (python, gpt2_python):
            tok.encode_ordinary(text)  # warm word caches
        print(f"{len(text.encode()) / 1e6:.2f} MB in {len(paragraphs):,} paragraphs, tokenizers {tokenizers.__version__}, "
              f"median of {args.repeats}, times as a ratio to the library's")
        loads = timed({"tokenizers library: Tokenizer.from_file": lambda: tokenizers.Tokenizer.from_file(str(d / "tokenizer.json")),
                       "from_hf backend=tokenizers": lambda: Tokenizer.from_hf(d, backend="tokenizers"),
                       "from_hf backend=python": lambda: Tokenizer.from_hf(d, backend="python")}, args.repeats, None)
        report("load", loads)
        for workload, encode_all in (("one call on the whole text", lambda enc: enc(text)),
                                     ("one call per paragraph", lambda enc: [i for p in paragraphs for i in enc(p)])):
            reference = encode_all(lambda t: library.encode(t, add_special_tokens=False).ids)
            runs = {
                "tokenizers library": lambda: encode_all(lambda t: library.encode(t, add_special_tokens=False).ids),
                "from_hf backend=tokenizers": lambda: encode_all(fast.encode_ordinary),
                "from_hf backend=python, warm word cache": lambda: encode_all(python.encode_ordinary),
                "from_hf backend=python, cold word cache": lambda: encode_all(python.with_backend("python").encode_ordinary),
                "gpt2() backend=python, warm word cache": lambda: encode_all(gpt2_python.encode_ordinary),
                "gpt2() backend=tiktoken": lambda: encode_all(gpt2_tiktoken.encode_ordinary),
            }
            report(f"encode, {workload}", timed(runs, args.repeats, reference))


def report(title: str, medians: dict[str, float]) -> None:
    base = next(iter(medians.values()))
    print(title)
    for name, median in medians.items():
        print(f"  {name:42s} {median * 1000:9.1f} ms  {median / base:6.2f}x")


if __name__ == "__main__":
    main()
