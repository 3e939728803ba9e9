"""The `scratchllm` command line: one verb per library function, and the one place that prints results.

Each verb is a small `add_<verb>` function that declares its arguments and a `run` function that calls
the library, in the module of its group (`text`, `training`, `using` and `chat`, `evaluating` and
`measuring`, `converting`; the shared machinery in `base`); all the work lives in the library so notebooks and
tests use the same path. Every flag comes from a field of the library's config dataclasses (`add_config`:
one flag per field, its groups' fields included, with its type, default and help declared once, beside
the field). Bad input raises ScratchLLMError,
printed here as one line on stderr with exit code 2. Results go to stdout so they can be piped;
progress and logs go to stderr. The package is imported inside the `run` functions, so that
`scratchllm --help` stays fast and needs no torch.
"""

from __future__ import annotations

import argparse
import os
import sys

# each module registers its verbs
from scratchllm.cli import chat, converting, evaluating, measuring, text, training, using  # noqa: F401
from scratchllm.cli.base import GROUPS, VERBS, Parser
from scratchllm.cli.chat import chat_piped, chat_repl
from scratchllm.errors import ScratchLLMError

__all__ = ["build_parser", "chat_piped", "chat_repl", "main"]


def build_parser() -> argparse.ArgumentParser:
    from scratchllm import __version__

    parser = Parser(
        prog="scratchllm", usage="scratchllm [-h] [--version] VERB ...", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build, train, fine-tune, evaluate and serve GPT-style language models from scratch.",
        epilog="`scratchllm VERB --help` shows a verb's options.",
    )
    parser.add_argument("--version", action="version", version=f"scratchllm {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", help=argparse.SUPPRESS, prog="scratchllm")
    listed = [name for _, names in GROUPS for name in names]
    assert sorted(listed) == sorted(VERBS), "every verb belongs to one group"
    lines = []
    for group, names in GROUPS:
        lines.append(f"{group}:")
        for name in names:
            VERBS[name](sub)
            lines.append(f"  {name:<11} {sub.choices[name].description}")
    parser.description += "\n\nverbs, in the order of a model's life:\n" + "\n".join(lines)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except ScratchLLMError as exc:
        print(f"scratchllm {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scratchllm {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our stdout went away (e.g. `| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(result or 0)

