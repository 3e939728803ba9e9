"""Two texts the speedrun recipe was not tuned on, made from the running Python (no download):

    python -m benchmarks.other_corpora --out runs/corpora
    python -m benchmarks.speedrun --data runs/corpora/pydoc_topics.txt --fractions 1 --out runs/speedrun-pydoc
    python -m benchmarks.speedrun --data runs/corpora/stdlib_code.txt --fractions 1 --out runs/speedrun-code

- pydoc_topics.txt: `pydoc_data.topics` (help()'s documentation, English prose), joined in key order;
- stdlib_code.txt: the `.py` files of the standard library's packages in PACKAGES order, sorted by
  path within each, as the demo reads them (`recipes.demo.python_corpus`), until just over 1.1 MB (with Python 3.11: asyncio, email, json, concurrent,
  importlib; 1.2 MB).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scratchllm.recipes.demo import python_corpus

PACKAGES = ["asyncio", "email", "json", "concurrent", "importlib", "logging", "xml", "http", "urllib"]


def pydoc_topics() -> str:
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[key] for key in sorted(topics.topics))


def stdlib_code(limit: int = 1_100_000) -> str:
    files = python_corpus()  # the demo's reader: no test suites, no empty files
    parts: list[str] = []
    size = 0
    for package in PACKAGES:
        for relative, text in files:
            if relative.startswith(package + "/"):
                parts.append(text)
                size += len(text)
        if size > limit:
            break
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/corpora", help="folder for the two text files")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("pydoc_topics.txt", pydoc_topics()), ("stdlib_code.txt", stdlib_code())):
        (out / name).write_text(text, encoding="utf-8")
        print(f"{out / name}: {len(text):,} characters")


if __name__ == "__main__":
    main()
